"""What both sides of the gate (serving/runtime/gate.py) share: calls to Triton that outlive their caller, the budget
of request bytes held at once, bounded error messages, the admin key check."""

from __future__ import annotations

import asyncio
import collections
import functools
import hmac
import sys
from collections.abc import Awaitable, Callable

from common import contract
from serving.runtime.door import MAX_BODY

#: Most bytes of an error message passed back (Triton echoes caller-chosen names into its messages).
ERROR_BYTES = 1024
#: Most calls in flight to Triton at once; more wait here (Triton's own queues hold far fewer).
MAX_UPSTREAM = 256
UNREACHABLE = "Triton is not reachable (restarting?); retry shortly"
#: How long a request for a model that Triton loads after the ensembles (first_load.py, command.loads_first) waits here
#: for it: its load takes about 0.4 s on the development machine; past this the request goes on and gets Triton's
#: own answer.
LOADING_WAIT_S = 30.0
#: How often a waiting request asks Triton whether its model is ready.
LOADING_POLL_S = 0.05
NOT_FROM_THE_DOOR = "call the public port: the gate serves the front door only"
#: Most request bytes the gate holds at once, both protocols together (:class:`Budget`). nginx lets each address have
#: 128 requests in flight and streams each HTTP body (up to door.MAX_BODY, 65 MiB) here, where it waits for its last
#: byte for up to 270 s (gate_http.body_deadline_s): ten 60 MiB bodies one byte short took the gate from 53 to 655 MiB
#: in 0.6 s, and three addresses could have taken this 24 GB machine (red-team probe, 2026-12-07). Eight of the largest
#: bodies, or about fifty photos at the per-image 10 MiB limit (common/upload.py), at once: a real photo (1-10 MiB) is
#: never refused for want of room unless dozens are uploading at that moment, while the gate's memory for bodies stays
#: near 1 GiB (each body is held up to about twice while read: aiohttp's buffer, then its copy).
MAX_HELD_BYTES = 8 * MAX_BODY
#: Most of it one address may hold behind the door (which names it): its bodies are reserved at their declared length
#: before a byte is read, so a few bodies declared and never sent would otherwise hold everyone's room for 270 s. Two
#: of the largest bodies: one address still sends one while another of its own is in flight.
MAX_HELD_PER_CLIENT = 2 * MAX_BODY
#: What a request the budget has no room for is answered (HTTP 503 with Retry-After / gRPC UNAVAILABLE: retried).
BUSY = contract.BUSY + " ({} MiB); retry in a second"
#: ... and one whose address holds its share (HTTP 429 / gRPC RESOURCE_EXHAUSTED, as for too many calls: TooMany).
BUSY_CLIENT = "too many requests from your address being received here (their bodies hold {} MiB at most); retry later"


def bounded(message: str) -> str:
    data = message.encode("utf-8", "replace")
    if len(data) <= ERROR_BYTES:
        return message
    return data[: ERROR_BYTES - 30].decode("utf-8", "ignore") + f"... ({len(data)} bytes, cut)"


def from_the_door(expected: str | None, given: str | None) -> bool:
    """Whether a caller presents the internal key the door adds (``expected``; None: no key configured). The gate's
    loopback ports would otherwise let a local user skip the door's limits, and the gate adds the key Triton wants."""
    return expected is None or (given is not None and hmac.compare_digest(given.encode(), expected.encode()))


def is_admin(admin_key: str, given: str) -> bool:
    return bool(admin_key) and hmac.compare_digest(given.encode(), admin_key.encode())


class TooMany(Exception):
    """The caller's address already has its share of calls outstanding here; ``str(err)`` is the message."""


class Busy(Exception):
    """No room in the :class:`Budget` of request bytes; ``str(err)`` is the message. ``client``: the caller's own
    address holds its share (HTTP 429 / RESOURCE_EXHAUSTED), else the gate holds all it may (HTTP 503 / UNAVAILABLE)."""

    def __init__(self, message: str, client: bool):
        super().__init__(message)
        self.client = client


class Budget:
    """The request bytes the gate holds at once (:data:`MAX_HELD_BYTES`; ``per_client`` of them per address the door
    names). A request reserves its size before its body is read (HTTP: the declared length; gRPC: the message, which
    grpc.aio hands over only whole) and gives it back when it ends, however it ends (:class:`Held`). A request that
    finds nothing held is always let in, whatever its size and the limit, so the largest body the door accepts always
    passes on its own."""

    def __init__(self, limit: int = MAX_HELD_BYTES, per_client: int | None = MAX_HELD_PER_CLIENT):
        self.limit = limit
        self.per_client = per_client
        self.held = 0
        self.by_client: collections.Counter[str] = collections.Counter()

    def reserve(self, size: int, client: str | None = None) -> Held:
        """``size`` bytes held for the caller (``client``: its address; None where nobody names it), else
        :class:`Busy`."""
        client = client if self.per_client is not None else None
        if client is not None:
            mine = self.by_client[client]
            if mine and mine + size > self.per_client:
                raise Busy(BUSY_CLIENT.format(self.per_client // 2**20), client=True)
        if self.held and self.held + size > self.limit:
            raise Busy(BUSY.format(self.limit // 2**20), client=False)
        self.held += size
        if client is not None:
            self.by_client[client] += size
        return Held(self, size, client)

    def _give_back(self, size: int, client: str | None) -> None:
        self.held -= size
        if client is not None:
            self.by_client[client] -= size
            if self.by_client[client] <= 0:
                del self.by_client[client]


class Held:
    """Bytes reserved from a :class:`Budget`, given back when the last of their holders lets go: the request's handler
    (``with``) and, once the call is sent, the call to Triton (:meth:`Upstream.run`), which keeps the body until
    Triton answers, its caller gone or not."""

    def __init__(self, budget: Budget, size: int, client: str | None):
        self.budget, self.size, self.client = budget, size, client
        self.holders = 1

    def share(self) -> None:
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            self.budget._give_back(self.size, self.client)

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


class Upstream:
    """Calls to Triton that outlive their caller: started as tasks, awaited through a shield.

    A caller that hangs up frees its place at the door (nginx counts connections and streams), while its call goes
    on here: without a bound, one address that sends and hangs up again and again queued work no door limit saw,
    and every other caller waited behind it (audit, 2026-12-05: 300 abandoned requests from four connections held
    a lone request past the door's 60 s). So a call still waiting for a place (:data:`MAX_UPSTREAM`) when its caller
    goes is dropped, since Triton never saw it; and calls that name their ``client`` (the door's address header)
    count against ``per_client`` until Triton has answered them, abandoned or not: the door's own per-address
    concurrency, now also over the work its callers left behind.
    """

    def __init__(self, per_client: int | None = None, max_upstream: int = MAX_UPSTREAM):
        self.limit = asyncio.Semaphore(max_upstream)
        self.tasks: set[asyncio.Task] = set()
        self.per_client = per_client
        self.outstanding: collections.Counter[str] = collections.Counter()

    async def run(self, coro, client: str | None = None, held: Held | None = None):
        """``coro``'s result; raises :class:`TooMany` (``coro`` not started) when ``client`` is over its share.
        ``held``: the request's bytes (:class:`Budget`), kept until the call ends, since it keeps the body."""
        if client is not None and self.per_client is not None:
            if self.outstanding[client] >= self.per_client:
                coro.close()
                raise TooMany(
                    f"too many requests from your address still being served here (at most {self.per_client}, "
                    "counting those whose callers hung up); retry later"
                )
            self.outstanding[client] += 1
        sent: list[bool] = []
        task = asyncio.ensure_future(self._limited(coro, sent))
        self.tasks.add(task)
        if held is not None:
            held.share()
        task.add_done_callback(functools.partial(self._done, client=client, held=held))
        try:
            # A cancelled caller cancels the shield only: a call Triton has, finishes and its answer is dropped.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not sent:
                task.cancel()  # still waiting for a place: Triton never saw it, so no cancel reaches Triton
            raise

    async def _limited(self, coro, sent: list[bool]):
        try:
            async with self.limit:
                sent.append(True)
                return await coro
        finally:
            if not sent:
                coro.close()  # cancelled while waiting: never started

    def _done(self, task: asyncio.Task, client: str | None, held: Held | None) -> None:
        self.tasks.discard(task)
        if held is not None:
            held.release()
        if client is not None and client in self.outstanding:
            self.outstanding[client] -= 1
            if self.outstanding[client] <= 0:
                del self.outstanding[client]
        if not task.cancelled():
            task.exception()  # retrieved, so an abandoned failure is not logged as "never retrieved"

    async def drain(self, timeout: float) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)


class Loading:
    """The public models Triton loads after the ensembles: a request for one of them that comes first waits here
    until Triton has it ready (at most :data:`LOADING_WAIT_S`), instead of getting "unknown model". Once a model is
    ready it is forgotten, so later requests pay nothing. ``is_ready(name)`` asks Triton."""

    def __init__(self, models, is_ready: Callable[[str], Awaitable[bool]], waiting_line: str = ""):
        self.pending = set(models)
        self.is_ready = is_ready
        # Printed once, when the first request waits: the launcher holds the later loads back for the first
        # answer, and this tells it not to (serving/runtime/first_load.py, LaterLoads).
        self.waiting_line = waiting_line

    async def wait(self, model: str) -> None:
        if model not in self.pending:
            return
        if self.waiting_line:
            print(f"{self.waiting_line} {model}", file=sys.stderr, flush=True)
            self.waiting_line = ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOADING_WAIT_S
        while model in self.pending and loop.time() < deadline:
            if await self.is_ready(model):
                self.pending.discard(model)
                return
            await asyncio.sleep(LOADING_POLL_S)

"""What both sides of the gate (serving/runtime/gate.py) share: calls to Triton that outlive their caller, bounded
error messages, the admin key check."""

from __future__ import annotations

import asyncio
import collections
import functools
import hmac
import sys
from collections.abc import Awaitable, Callable

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

    async def run(self, coro, client: str | None = None):
        """``coro``'s result; raises :class:`TooMany` (``coro`` not started) when ``client`` is over its share."""
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
        task.add_done_callback(functools.partial(self._done, client=client))
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

    def _done(self, task: asyncio.Task, client: str | None) -> None:
        self.tasks.discard(task)
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

"""What both sides of the gate (serving/runtime/gate.py) share: calls to Triton that outlive their caller, bounded
error messages, the admin key check."""

from __future__ import annotations

import asyncio
import hmac
import sys
from collections.abc import Awaitable, Callable

#: Most bytes of an error message passed back (Triton echoes caller-chosen names into its messages).
ERROR_BYTES = 1024
#: Most calls in flight to Triton at once; more wait here (Triton's own queues hold far fewer).
MAX_UPSTREAM = 256
UNREACHABLE = "Triton is not reachable (restarting?); retry shortly"
#: How long a request for a model that Triton loads after the ensembles (server.py, command.loads_first) waits here
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


class Upstream:
    """Calls to Triton that outlive their caller: started as tasks, awaited through a shield."""

    def __init__(self):
        self.limit = asyncio.Semaphore(MAX_UPSTREAM)
        self.tasks: set[asyncio.Task] = set()

    async def run(self, coro):
        task = asyncio.ensure_future(self._limited(coro))
        self.tasks.add(task)
        task.add_done_callback(self._done)
        # A cancelled caller cancels the shield only: the task finishes and its answer is dropped.
        return await asyncio.shield(task)

    async def _limited(self, coro):
        async with self.limit:
            return await coro

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
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
        # answer, and this tells it not to (serving/runtime/server.py, _load_the_rest).
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

"""What both sides of the gate (serving/runtime/gate.py) share: calls to Triton that outlive their caller, bounded
error messages, the admin key check."""

from __future__ import annotations

import asyncio
import hmac

#: Most bytes of an error message passed back (Triton echoes caller-chosen names into its messages).
ERROR_BYTES = 1024
#: Most calls in flight to Triton at once; more wait here (Triton's own queues hold far fewer).
MAX_UPSTREAM = 256
UNREACHABLE = "Triton is not reachable (restarting?); retry shortly"
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

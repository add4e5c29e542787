"""The few server calls the client needs, implemented once per protocol (gRPC, HTTP).

Timeouts over gRPC are enforced by the client, not by gRPC deadlines: cancelling an in-flight request
crashes the Triton build this project runs on CPU (see :class:`GrpcTransport`).
"""

from __future__ import annotations

import atexit
import http.client
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np
from tritonclient.utils import InferenceServerException

from common import triton_workarounds

log = logging.getLogger(__name__)

#: Longest wait in close() (and at exit) for requests the client stopped waiting for.
GRPC_DRAIN_S = 30.0


class Transport(Protocol):
    """What :class:`client.AgeGenderClient` calls; one implementation per protocol."""

    #: Exceptions the transport's library raises that :func:`client.errors.translate` understands.
    errors: tuple[type[BaseException], ...]

    def live(self) -> bool: ...

    def ready(self) -> bool: ...

    def model_ready(self, model: str) -> bool: ...

    def max_batch_size(self, model: str) -> int: ...

    def infer(
        self, model: str, input_name: str, batch: np.ndarray, outputs: Sequence[str]
    ) -> dict[str, np.ndarray | None]:
        """Sends ``batch`` (N x 1 encoded images) as ``input_name`` and returns the requested outputs by name."""
        ...

    def close(self) -> None: ...


def _grpc_channel_args() -> list[tuple[str, int]]:
    """tritonclient's default channel options, plus a short reconnect backoff.

    After a refused connection gRPC waits up to two minutes before it tries the address again, failing every
    call meanwhile; capping that wait lets our own retries reach a server that has just started.
    """
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class GrpcTransport:
    """gRPC calls over one shared channel (gRPC channels are thread-safe and multiplex calls).

    Inference never lets gRPC cancel a request the server is running (why: common/triton_workarounds.py): the
    client stops *waiting* after ``timeout`` but sends only a distant backstop deadline, and :meth:`close` lets
    abandoned requests finish before closing.
    """

    def __init__(self, address: str, *, timeout: float, ssl: bool, root_certificates: str | None) -> None:
        import grpc
        import tritonclient.grpc as grpcclient

        self._mod = grpcclient
        self._timeout = timeout
        self._backstop = max(triton_workarounds.GRPC_BACKSTOP_MIN_S, triton_workarounds.GRPC_BACKSTOP_FACTOR * timeout)
        self._submit_lock = threading.Lock()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._client = grpcclient.InferenceServerClient(
            address, ssl=ssl, root_certificates=root_certificates, channel_args=_grpc_channel_args()
        )
        self.errors = (InferenceServerException, grpc.RpcError, OSError)
        _open_grpc_transports.add(self)

    def live(self) -> bool:
        return bool(self._client.is_server_live(client_timeout=self._timeout))

    def ready(self) -> bool:
        return bool(self._client.is_server_ready(client_timeout=self._timeout))

    def model_ready(self, model: str) -> bool:
        return bool(self._client.is_model_ready(model, client_timeout=self._timeout))

    def max_batch_size(self, model: str) -> int:
        config = self._client.get_model_config(model, as_json=True, client_timeout=self._timeout)
        return int(config.get("config", {}).get("max_batch_size", 0))

    def infer(
        self, model: str, input_name: str, batch: np.ndarray, outputs: Sequence[str]
    ) -> dict[str, np.ndarray | None]:
        inp = self._mod.InferInput(input_name, list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch)
        requested = [self._mod.InferRequestedOutput(name) for name in outputs]
        done = threading.Event()
        answer: dict[str, Any] = {}

        def callback(result: Any, error: Any) -> None:
            answer["result"], answer["error"], answer["at"] = result, error, time.monotonic()
            done.set()
            self._finished()

        with self._idle:
            self._in_flight += 1
        # The timeout counts from here: on a busy machine this thread may not run again until after the answer
        # came, and an answer later than the timeout is a timeout however soon this thread sees it.
        start = time.monotonic()
        try:
            # async_infer keeps the call in an attribute between two statements, so concurrent submissions race.
            with self._submit_lock:
                self._client.async_infer(model, [inp], callback, outputs=requested, client_timeout=self._backstop)
        except BaseException:
            self._finished()
            raise
        if not done.wait(max(0.0, start + self._timeout - time.monotonic())) or answer["at"] - start > self._timeout:
            raise TimeoutError(f"no answer within {self._timeout:g} s")
        if answer["error"] is not None:
            raise answer["error"]
        result = answer["result"]
        return {name: result.as_numpy(name) for name in outputs}

    def _finished(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for abandoned requests to finish; True when none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight <= 0, timeout=timeout)

    def close(self) -> None:
        if not self.drain(GRPC_DRAIN_S):
            log.warning("closing the gRPC channel with requests still running on the server")
        self._client.close()
        _open_grpc_transports.discard(self)


#: Transports not closed yet; drained at interpreter exit so a forgotten close() cannot cancel requests either.
_open_grpc_transports: weakref.WeakSet[GrpcTransport] = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    for transport in list(_open_grpc_transports):
        transport.drain(GRPC_DRAIN_S)


#: Most HTTP calls in flight at once per client (:class:`HttpTransport`), whatever the number of calling threads.
HTTP_LANES = 32
#: Longest wait in close(), in seconds, for the idle HTTP lanes together to close their connections and event loops
#: (each takes milliseconds).
HTTP_CLOSE_WAIT_S = 2.0
#: File descriptors a lane holds: its gevent hub's event loop (4, measured) and its connection, with room to spare.
_FDS_PER_LANE = 8


def _lanes_allowed() -> int:
    """:data:`HTTP_LANES`, or fewer where the process may open few files (``ulimit -n``): a lane that cannot make
    its event loop left gevent spinning at 100% CPU, printing libev errors, instead of failing the call."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return HTTP_LANES
    if soft == resource.RLIM_INFINITY:
        return HTTP_LANES
    return max(1, min(HTTP_LANES, (soft - 64) // _FDS_PER_LANE))


class _LaneEnded(Exception):
    """A call reached a lane that :meth:`HttpTransport.close` had ended; it is made on another."""


class _Lane(threading.Thread):
    """One thread that owns one ``tritonclient.http`` client (and the gevent hub it runs on) and makes the calls
    handed to it; ends by closing both."""

    def __init__(self, make_client: Callable[[], Any], idle: queue.SimpleQueue) -> None:
        super().__init__(name="agegender-http", daemon=True)  # daemon: a client never closed must not block exit
        self._make_client, self._idle = make_client, idle
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._ended = False
        #: In a call: close() does not wait for it (a server that never answers would hold Ctrl-C's exit).
        self.busy = False

    def submit(self, call: Callable[[Any], Any], future: Future) -> bool:
        """Hands ``call`` to this lane; False when the lane has ended (closed), so the caller takes another."""
        with self._lock:
            if self._ended:
                return False
            self._tasks.put((call, future))
            return True

    def end(self) -> None:
        """Ends the lane after the calls already handed to it."""
        self._tasks.put(None)

    def run(self) -> None:
        client = None
        try:
            while (task := self._tasks.get()) is not None:
                call, future = task
                self.busy = True
                if future.set_running_or_notify_cancel():
                    try:
                        client = client if client is not None else self._make_client()
                        future.set_result(call(client))
                    except BaseException as err:  # noqa: BLE001 - handed to the caller, who raises it
                        future.set_exception(err)
                self.busy = False
                self._idle.put(self)
        finally:
            with self._lock:
                self._ended = True
            while True:  # a call handed over between the end and the flag: its caller takes another lane
                try:
                    task = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    task[1].set_exception(_LaneEnded())
            self._close(client)

    @staticmethod
    def _close(client: Any) -> None:
        try:
            if client is not None:
                client.close()
            import gevent

            # The hub of this thread's event loop holds file descriptors until destroyed, not when the thread ends.
            gevent.get_hub().destroy(destroy_loop=True)
        except Exception:  # noqa: BLE001 - closing must not hide anything; the thread is ending anyway
            log.debug("closing an HTTP lane failed", exc_info=True)


class HttpTransport:
    """HTTP calls through at most :data:`HTTP_LANES` threads, each with its own ``tritonclient.http`` client.

    tritonclient.http is built on gevent: its client must not be used from several threads, and each thread that
    uses one gets a gevent hub whose file descriptors stay open after the thread ends. So the calls of every
    caller's thread go to a few long-lived lane threads, made as they are needed and reused; a caller waits for
    a free one when all are busy. :meth:`close` ends them, closing their clients and hubs; a later call starts
    new ones.
    """

    def __init__(self, address: str, *, timeout: float, ssl: bool, root_certificates: str | None) -> None:
        import gevent
        import tritonclient.http as httpclient

        self._mod = httpclient
        self._address = address
        self._timeout = timeout
        self._ssl = ssl
        self._ssl_options = {"ca_certs": root_certificates} if root_certificates else None
        self._max_lanes = _lanes_allowed()
        self._lanes: list[_Lane] = []
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        # HTTPException: a reply that is not HTTP/1 at all, e.g. from a gRPC (HTTP/2) port.
        self.errors = (InferenceServerException, OSError, EOFError, gevent.Timeout, http.client.HTTPException)

    def _new_client(self) -> Any:
        return self._mod.InferenceServerClient(
            self._address,
            connection_timeout=self._timeout,
            network_timeout=self._timeout,
            ssl=self._ssl,
            ssl_options=self._ssl_options,
        )

    def _call(self, call: Callable[[Any], Any]) -> Any:
        """``call(client)`` on a free lane's client; its result, or its exception raised here."""
        try:
            lane = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                lane = None
                if len(self._lanes) < self._max_lanes:
                    lane = _Lane(self._new_client, self._idle)
                    self._lanes.append(lane)
                    lane.start()
            if lane is None:
                lane = self._idle.get()
        future: Future = Future()
        if not lane.submit(call, future):
            return self._call(call)  # the lane was ended by close(): later calls start new ones
        try:
            return future.result()
        except _LaneEnded:
            return self._call(call)

    def live(self) -> bool:
        return bool(self._call(lambda c: c.is_server_live()))

    def ready(self) -> bool:
        return bool(self._call(lambda c: c.is_server_ready()))

    def model_ready(self, model: str) -> bool:
        return bool(self._call(lambda c: c.is_model_ready(model)))

    def max_batch_size(self, model: str) -> int:
        return int(self._call(lambda c: c.get_model_config(model)).get("max_batch_size", 0))

    def infer(
        self, model: str, input_name: str, batch: np.ndarray, outputs: Sequence[str]
    ) -> dict[str, np.ndarray | None]:
        inp = self._mod.InferInput(input_name, list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch, binary_data=True)
        requested = [self._mod.InferRequestedOutput(name, binary_data=True) for name in outputs]
        start = time.monotonic()
        result = self._call(lambda c: c.infer(model, [inp], outputs=requested))
        # network_timeout only bounds each wait on the socket: on a busy machine this thread may read the answer
        # at once after the server took longer than the timeout. The timeout is for the whole call, as over gRPC.
        if time.monotonic() - start > self._timeout:
            raise TimeoutError(f"no answer within {self._timeout:g} s")
        return {name: result.as_numpy(name) for name in outputs}

    def close(self) -> None:
        """Ends every lane, closing its client and hub: an idle one at once (waited for, up to
        :data:`HTTP_CLOSE_WAIT_S`), one in a call once its call returns (within the timeout; not waited for)."""
        with self._lock:
            lanes, self._lanes = self._lanes, []
            self._idle = queue.SimpleQueue()  # later calls start new lanes; the old ones are not handed out again
        for lane in lanes:
            lane.end()
        deadline = time.monotonic() + HTTP_CLOSE_WAIT_S
        for lane in lanes:
            if not lane.busy and lane is not threading.current_thread():
                lane.join(max(0.0, deadline - time.monotonic()))


TRANSPORTS: dict[str, type[GrpcTransport] | type[HttpTransport]] = {"grpc": GrpcTransport, "http": HttpTransport}

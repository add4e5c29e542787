"""The few server calls the client needs, implemented once per protocol (gRPC, HTTP).

Timeouts over gRPC are enforced by the client, not by gRPC deadlines: cancelling an in-flight request
crashes the Triton build this project runs on CPU (see :class:`GrpcTransport`).
"""

from __future__ import annotations

import atexit
import http.client
import logging
import threading
import time
import weakref
from collections.abc import Sequence
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


class HttpTransport:
    """HTTP calls with one ``tritonclient.http`` client per thread.

    tritonclient.http is built on gevent and its client must not be used from several threads, so each
    thread gets its own (``threading.local``) and :meth:`close` closes them all.
    """

    def __init__(self, address: str, *, timeout: float, ssl: bool, root_certificates: str | None) -> None:
        import gevent
        import tritonclient.http as httpclient

        self._mod = httpclient
        self._address = address
        self._timeout = timeout
        self._ssl = ssl
        self._ssl_options = {"ca_certs": root_certificates} if root_certificates else None
        self._local = threading.local()
        # Weak so a client dies with its thread (threading.local drops it) instead of piling up here.
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        # HTTPException: a reply that is not HTTP/1 at all, e.g. from a gRPC (HTTP/2) port.
        self.errors = (InferenceServerException, OSError, EOFError, gevent.Timeout, http.client.HTTPException)

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._mod.InferenceServerClient(
                self._address,
                connection_timeout=self._timeout,
                network_timeout=self._timeout,
                ssl=self._ssl,
                ssl_options=self._ssl_options,
            )
            self._local.client = client
            with self._lock:
                self._clients.add(client)
        return client

    def live(self) -> bool:
        return bool(self._client().is_server_live())

    def ready(self) -> bool:
        return bool(self._client().is_server_ready())

    def model_ready(self, model: str) -> bool:
        return bool(self._client().is_model_ready(model))

    def max_batch_size(self, model: str) -> int:
        return int(self._client().get_model_config(model).get("max_batch_size", 0))

    def infer(
        self, model: str, input_name: str, batch: np.ndarray, outputs: Sequence[str]
    ) -> dict[str, np.ndarray | None]:
        inp = self._mod.InferInput(input_name, list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch, binary_data=True)
        requested = [self._mod.InferRequestedOutput(name, binary_data=True) for name in outputs]
        start = time.monotonic()
        result = self._client().infer(model, [inp], outputs=requested)
        # network_timeout only bounds each wait on the socket: on a busy machine this thread may read the answer
        # at once after the server took longer than the timeout. The timeout is for the whole call, as over gRPC.
        if time.monotonic() - start > self._timeout:
            raise TimeoutError(f"no answer within {self._timeout:g} s")
        return {name: result.as_numpy(name) for name in outputs}

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients)
            self._clients.clear()
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a socket owned by another thread's hub may fail; it is
                # going away anyway and close() must not hide the caller's own exception.
                log.debug("closing an HTTP client failed", exc_info=True)


TRANSPORTS: dict[str, type[GrpcTransport] | type[HttpTransport]] = {"grpc": GrpcTransport, "http": HttpTransport}

"""The gate: a small asyncio process between the nginx front door and Triton that reads what nginx cannot.

    nginx (public ports) --> gate (127.0.0.1: gRPC + HTTP infer) --> Triton (127.0.0.1)

nginx bounds sizes and times but cannot look inside a gRPC message, and Triton 2.51 trusts what is inside
(issue 18). The gate, per request:

* **Only public models** (``common.contract.PUBLIC_MODELS``): inference, metadata, config and readiness of any
  other model (the CNNs, pre/postprocess) get NOT_FOUND / HTTP 404.
* **Declared shapes and sizes** are held against the model's exact input schema (serving/runtime/gate_check.py)
  before Triton's batcher sees them: Triton 2.51's size arithmetic wraps on ``[2**62, ...]`` and mixes callers'
  rows. So are the parameters' types and, over HTTP, the ``id`` and ``outputs`` fields, whose wrong types 2.51
  answers with HTTP 500. INVALID_ARGUMENT / HTTP 400 with the reason. HTTP answers in JSON are made valid JSON
  (gate_http.strict_json: 2.51 writes NaN as a bare token).
* **Cancellations stop here**: the call to Triton runs in its own task, with no deadline, which a caller's cancel,
  deadline or stream reset does not touch; the answer is dropped at the gate (Triton 2.51 segfaults when an
  in-flight ensemble request is cancelled: common/triton_workarounds.py). Calls to Triton are bounded
  (``gate_relay.MAX_UPSTREAM``) so abandoned work cannot pile up without limit.
* **Request bytes held at once are bounded** (``gate_relay.MAX_HELD_BYTES``, :class:`gate_relay.Budget`): an HTTP body
  is reserved at its declared length before it is read, a gRPC message once grpc.aio hands it over whole; no room
  gets HTTP 503 / UNAVAILABLE (429 / RESOURCE_EXHAUSTED for one address over its share), with Retry-After.
* **Admin RPCs** (security.RESTRICTED_APIS) need the admin key, else PERMISSION_DENIED (not the retryable
  UNAVAILABLE Triton 2.51 answers). ``ModelStreamInfer`` is refused (UNIMPLEMENTED): one stream would carry many
  requests past one check, and nothing here uses it.
* **Errors relayed as they are**: Triton's status is kept and its message cut to ``gate_relay.ERROR_BYTES``.
* **Readiness** behind the door (HTTP ``/v2/health/ready``, ``ServerReady``, the gRPC health check): every model
  the server serves ready, asked model by model (:meth:`GrpcGate.not_ready`), not Triton's own answer.
* **The internal credential**: callers' metadata and headers are not passed on; the gate adds what Triton's own
  ports need (``GATE_UPSTREAM_HEADERS``, JSON in the environment, never on a command line).

This file is the gRPC side and the process; the HTTP side is gate_http.py, the checks gate_check.py, what both
share gate_relay.py. Run by the launcher (serving/runtime/gate_process.py) before nginx; in a KServe pod, where no
nginx runs, by serving/runtime/edge.py with ``--edge``; standalone:

    TRITON_ADMIN_KEY=... python -m serving.runtime.gate --grpc 127.0.0.1:P --http 127.0.0.1:Q \\
        --triton-grpc 127.0.0.1:X --triton-http 127.0.0.1:Y
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys

import grpc
from aiohttp import web
from google.protobuf.message import DecodeError

from serving.runtime import security
from serving.runtime.door import CLIENT_HEADER, MAX_BODY, REQUEST_TIMEOUT_S, ClientLimits
from serving.runtime.gate_check import COMPANION, Refused, check_grpc_infer, companion_needed, model_for
from serving.runtime.gate_http import HttpGate, ProtocolErrors
from serving.runtime.gate_process import (
    LATER_MODELS_ENV,
    READY_LINE,
    SERVED_MODELS_ENV,
    UPSTREAM_HEADERS_ENV,
    WAITING_LINE,
)
from serving.runtime.gate_relay import (
    MAX_HELD_BYTES,
    MAX_HELD_PER_CLIENT,
    NOT_FROM_THE_DOOR,
    UNREACHABLE,
    Budget,
    Busy,
    Held,
    Loading,
    TooMany,
    Upstream,
    bounded,
    from_the_door,
    is_admin,
)
from serving.runtime.triton_messages import service_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"
#: The standard gRPC health check (grpc.health.v1): Kubernetes' gRPC probes of a KServe pod
#: (deploy/kserve/overlays/grpc) reach the gate, the pod's only open gRPC port, which answers it from the served
#: models' readiness (:meth:`GrpcGate.not_ready`), or relays Triton's where it knows none.
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
#: Its two answers (HealthCheckResponse, field 1 ``status``: 1 SERVING, 2 NOT_SERVING), when the gate answers it.
_SERVING, _NOT_SERVING = b"\x08\x01", b"\x08\x02"
#: RPCs whose API group is restricted (security.RESTRICTED_APIS), by Triton's grouping.
ADMIN_RPCS = frozenset(
    {
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "SystemSharedMemoryStatus",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
        "TraceSetting",
        "LogSettings",
    }
)
#: RPCs about one model: refused for models that are not public.
NAMED_RPCS = {
    "ModelReady": pb.ModelReadyRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelConfig": pb.ModelConfigRequest,
}
OPEN_RPCS = frozenset({"ServerLive", "ServerReady", "ServerMetadata", "ModelInfer", *NAMED_RPCS})
_MESSAGE_OPTIONS = [("grpc.max_receive_message_length", MAX_BODY), ("grpc.max_send_message_length", MAX_BODY)]
#: The gate starts before Triton listens, so its first connection attempts fail; gRPC's default reconnect backoff
#: (1 s, growing 1.6x) then held the first answer of a cold start about 2 s after Triton was ready, and a backoff of
#: 0.1-0.5 s still 0.3-0.4 s (the launcher's timeline: Triton ready at 1.4-1.7 s, the gate answering "not reachable"
#: until 1.7-2.1 s). Triton is on loopback, where a refused connection costs next to nothing: retry every 20-100 ms.
_RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
]
#: What bounds a gRPC body that never completes (issue 18, "Fair sharing at the door"). grpc.aio calls a handler only
#: once the whole message is in, so the gate cannot time the upload as gate_http does, and nginx times only the gaps
#: between reads. But nginx carries one request at a time on each connection to the gate (it does not multiplex
#: upstream), so the age of that connection bounds the request on it: GRPC_CONNECTION_AGE_S after it opened (+-10%
#: jitter, gRPC's) the gate sends GOAWAY, nginx opens a fresh connection for the next request, and
#: GRPC_CONNECTION_GRACE_S later the gate closes the connection with whatever is still on it (the caller gets
#: UNAVAILABLE). A trickled stream thus ends within about 33 + 120 s; a request that starts just before a GOAWAY still
#: has the grace, twice the door's answer timeout (door.REQUEST_TIMEOUT_S), for its upload and answer.
GRPC_CONNECTION_AGE_S = 30
#: How long an HTTP connection may wait for its next complete request head: from its opening, then from each answer.
#: aiohttp's one timer for both (its keep-alive), which it checks whatever arrives, so a head trickled a byte at a time
#: is cut off as an idle connection is; a request whose head is in is timed by its body's deadline
#: (gate_http.body_deadline_s) and the door's. Behind the door this never fires first (nginx closes its idle
#: connections to the gate after 60 s). In a KServe pod nothing else in the container times a head: aiohttp's default,
#: 3630 s, let one slow caller hold a connection for an hour. 100 s stays above the idle timeout of Go's HTTP client
#: (90 s, net/http's default, which Knative's proxies in front of a pod build on), so the pod does not close a
#: connection such a proxy is about to reuse: the race that answers a POST 502. (aiohttp 3.14 arms this timer when
#: a connection opens, so one that never sends a byte is closed too: tests/test_gate.py.)
HTTP_IDLE_S = 100
GRPC_CONNECTION_GRACE_S = 2 * REQUEST_TIMEOUT_S
#: How a gzip or a deflate (zlib) message starts; a ModelInferRequest starts with a field tag, never these bytes.
COMPRESSED_STARTS = (b"\x1f\x8b", b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")
_SERVER_OPTIONS = [
    *_MESSAGE_OPTIONS,
    ("grpc.max_connection_age_ms", GRPC_CONNECTION_AGE_S * 1000),
    ("grpc.max_connection_age_grace_ms", GRPC_CONNECTION_GRACE_S * 1000),
    # Never inflate a message (grpc-encoding): 58 KB of gzip became 60 MB here, behind the door's check of the first
    # grpc-encoding header only, and in a KServe pod with no door at all. A compressed message then fails to parse.
    ("grpc.per_message_decompression", 0),
    # The launcher holds the gate's ports for its life (ports.Held): its listeners bind beside that socket with
    # SO_REUSEPORT (gRPC's default on Linux, set here so that no other option turns it off unnoticed).
    ("grpc.so_reuseport", 1),
]


class GrpcGate(grpc.GenericRpcHandler):
    def __init__(
        self,
        triton_grpc: str,
        admin_key: str,
        upstream_headers: dict[str, str],
        upstream: Upstream,
        later_models=(),
        served_models=(),
        budget: Budget | None = None,
    ):
        # No retries: they would buffer every request a second time, and Triton's answer is final anyway.
        self.channel = grpc.aio.insecure_channel(
            triton_grpc, options=[*_MESSAGE_OPTIONS, ("grpc.enable_retries", 0), *_RECONNECT_OPTIONS]
        )
        self.admin_key = admin_key
        self.metadata = tuple((k.lower(), v) for k, v in upstream_headers.items())
        # The door presents the same internal key it gives Triton; other local callers of the gate's port do not.
        self.door_key = upstream_headers.get(security.GRPC_INTERNAL_METADATA)
        self.upstream = upstream
        self.budget = budget or Budget()  # request bytes held at once, shared with the HTTP side
        # The models Triton loads after the ensembles: their requests wait for them (the HTTP side shares this).
        self.loading = Loading(later_models, self.model_ready, WAITING_LINE)
        self.served_models = tuple(served_models)
        self.stubs = {}
        # Built once per method: service() runs for every call. The health check is relayed like an open RPC.
        methods = (*(SERVICE + rpc for rpc in (*OPEN_RPCS, *ADMIN_RPCS)), HEALTH_CHECK)
        self.handlers = {method: self._handler(method) for method in methods}
        self.handlers[SERVICE + "ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self._refuse_stream)

    def service(self, handler_call_details):
        # Anything else (other services, unknown RPCs): None, i.e. UNIMPLEMENTED.
        return self.handlers.get(handler_call_details.method)

    def _handler(self, method: str):
        # No (de)serializers: requests and answers pass as bytes; only the ones checked are parsed.
        async def handler(request: bytes, context) -> bytes:  # a coroutine function: grpc.aio checks for one
            return await self._unary(method, request, context)

        return grpc.unary_unary_rpc_method_handler(handler)

    async def _refuse_stream(self, request_iterator, context):
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "ModelStreamInfer is not served here; send each request with ModelInfer",
        )

    async def _unary(self, method: str, request: bytes, context) -> bytes:
        given = dict(context.invocation_metadata() or ())
        if method != SERVICE + "ModelInfer":  # the others carry a name at most, and probes must never wait for room
            return await self._relay(method, request, context, given, None)
        try:
            # As early as grpc.aio allows: it calls a handler only once the whole message is in, which until then sat
            # in gRPC's own buffers (bounded by the door's streams per address and GRPC_CONNECTION_AGE_S, not here).
            held = self.budget.reserve(len(request), given.get(CLIENT_HEADER.lower()))
        except Busy as busy:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if busy.client else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, str(busy))
        with held:  # given back however the call ends; the call to Triton keeps its share (Upstream.run)
            return await self._relay(method, request, context, given, held)

    async def _relay(self, method: str, request: bytes, context, given: dict, held: Held | None) -> bytes:
        rpc = method.removeprefix(SERVICE)
        metadata = self.metadata
        if not from_the_door(self.door_key, given.get(security.GRPC_INTERNAL_METADATA)):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, NOT_FROM_THE_DOOR)
        if rpc in ("ServerReady", HEALTH_CHECK) and (missing := await self.not_ready()) is not None:
            if rpc == HEALTH_CHECK:
                return _NOT_SERVING if missing else _SERVING
            return pb.ServerReadyResponse(ready=not missing).SerializeToString()
        name = client = None
        companion = False
        try:
            if rpc == "ModelInfer":
                parsed = pb.ModelInferRequest.FromString(request)
                check_grpc_infer(parsed, admin=is_admin(self.admin_key, self._given(context)))
                name = parsed.model_name
                client = given.get(CLIENT_HEADER.lower())  # set by the door (none in a KServe pod)
                if companion := companion_needed(name, [output.name for output in parsed.outputs]):
                    parsed.outputs.add(name=COMPANION)
                    request = parsed.SerializeToString()
            elif rpc in NAMED_RPCS:
                name = NAMED_RPCS[rpc].FromString(request).name
                if not is_admin(self.admin_key, self._given(context)):  # operators (rollout) read internal models
                    model_for(name)
            elif rpc in ADMIN_RPCS:
                given = self._given(context)
                if not is_admin(self.admin_key, given):
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"{rpc} is restricted to admins: send the admin key as metadata {security.GRPC_ADMIN_METADATA}",
                    )
                metadata = (*metadata, (security.GRPC_ADMIN_METADATA, given))
        except DecodeError:
            if request[:2] in COMPRESSED_STARTS:  # gzip or deflate, never inflated (above): said so, as the door does
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"compressed gRPC messages are refused ({rpc})")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the {rpc} request is not a valid protobuf message")
        except Refused as refusal:
            await context.abort(getattr(grpc.StatusCode, refusal.code), bounded(str(refusal)))
        if name is not None and rpc != "ModelReady":  # readiness is answered as it is, loading or not
            await self.loading.wait(name)
        try:
            status, payload = await self.upstream.run(self._call(method, request, metadata), client=client, held=held)
        except TooMany as refusal:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(refusal))
        if status is not None:
            await context.abort(status, payload)
        return without_companion(payload) if companion else payload

    async def not_ready(self) -> list[str] | None:
        """The served models Triton does not have ready (all of them while it cannot be reached); None where none
        were given (a gate started without ``GATE_SERVED_MODELS``, or a pod whose repository is not a local folder:
        edge.served_models): Triton's own answer then.

        Why not Triton's own: from the moment any version fails to load (a rollout of a broken version, or a
        restart after a crash that finds one in the repository), Triton 2.51 says "not ready" for as long as it
        runs, although the version before serves on and every model says ready (docs/serverless.md). A model is
        ready while a version of it serves, rollouts included; one an admin unloaded is left out, as Triton's strict
        readiness leaves it out."""
        if not self.served_models:
            return None
        ready = await asyncio.gather(*(self.model_ready(name) for name in self.served_models))
        missing = [name for name, yes in zip(self.served_models, ready, strict=True) if not yes]
        if missing:  # rare: only then is the index read
            unloaded = await self._unloaded()
            missing = [name for name in missing if name not in unloaded]
        return missing

    async def _unloaded(self) -> set[str]:
        """The models every version of which an admin unloaded or is unloading (Triton's index: UNLOADING, or
        UNAVAILABLE "unloaded"); none when the index cannot be read."""
        metadata = (*self.metadata, (security.GRPC_ADMIN_METADATA, self.admin_key))
        status, payload = await self._call(SERVICE + "RepositoryIndex", b"", metadata)
        if status is not None:
            return set()
        states: dict[str, set[tuple[str, str]]] = {}
        for model in pb.RepositoryIndexResponse.FromString(payload).models:
            states.setdefault(model.name, set()).add((model.state, model.reason))
        return {
            name
            for name, seen in states.items()
            if all(state == "UNLOADING" or (state, reason) == ("UNAVAILABLE", "unloaded") for state, reason in seen)
        }

    async def model_ready(self, name: str) -> bool:
        """Whether Triton has the model ready (for :class:`Loading`); False while it cannot be reached."""
        try:
            request = pb.ModelReadyRequest(name=name).SerializeToString()
            answer = await self._call(SERVICE + "ModelReady", request, self.metadata)
        except grpc.aio.AioRpcError:
            return False
        return answer[0] is None and pb.ModelReadyResponse.FromString(answer[1]).ready

    @staticmethod
    def _given(context) -> str:
        return str(dict(context.invocation_metadata() or ()).get(security.GRPC_ADMIN_METADATA, ""))

    async def _call(self, method: str, request: bytes, metadata) -> tuple[grpc.StatusCode | None, bytes | str]:
        stub = self.stubs.get(method)
        if stub is None:
            stub = self.stubs[method] = self.channel.unary_unary(method)
        try:
            # No timeout: Triton must never see a deadline or a cancel (common/triton_workarounds.py).
            return None, await stub(request, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            code, details = err.code(), err.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
                return code, UNREACHABLE
            return code, bounded(details)


def without_companion(payload: bytes) -> bytes:
    """A ModelInferResponse without the output the gate added (gate_check.COMPANION)."""
    answer = pb.ModelInferResponse.FromString(payload)
    index = next((i for i, output in enumerate(answer.outputs) if output.name == COMPANION), None)
    if index is None:
        return payload
    del answer.outputs[index]
    if answer.raw_output_contents:
        del answer.raw_output_contents[index]
    return answer.SerializeToString()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(args, admin_key: str, upstream_headers: dict[str, str], stop: asyncio.Event) -> None:
    edge = getattr(args, "edge", False)
    # Per address only behind the door, which names it (X-Agegender-Client); in a KServe pod any caller could.
    per_client = getattr(args, "per_client", None)
    if edge:
        per_client = None
    elif per_client is None:
        per_client = ClientLimits.from_env().connections
    upstream = Upstream(per_client=per_client)
    # Bytes per address only behind the door, as calls (above); any request may use the whole when nothing is held.
    budget = Budget(getattr(args, "held_bytes", MAX_HELD_BYTES), per_client=None if edge else MAX_HELD_PER_CLIENT)
    later = [m for m in os.environ.get(LATER_MODELS_ENV, "").split(",") if m]
    served = [m for m in os.environ.get(SERVED_MODELS_ENV, "").split(",") if m]
    grpc_gate = GrpcGate(args.triton_grpc, admin_key, upstream_headers, upstream, later, served, budget)
    server = grpc.aio.server(options=_SERVER_OPTIONS, maximum_concurrent_rpcs=None)
    server.add_generic_rpc_handlers((grpc_gate,))
    if server.add_insecure_port(args.grpc) == 0:
        raise OSError(f"cannot listen on {args.grpc}")
    await server.start()
    http_gate = HttpGate(
        args.triton_http,
        admin_key,
        upstream_headers,
        upstream,
        grpc_gate.loading,
        grpc_gate.not_ready,
        edge=edge,
        budget=budget,
    )
    # Bodies are never inflated here (compressed ones are refused before; this makes sure of it).
    # handler_cancellation: a caller that hangs up cancels its handler (aiohttp's default lets it run on), so a call
    # still waiting for a place to Triton is dropped, as on the gRPC side; one Triton has runs on (Upstream's shield).
    runner = web.AppRunner(
        http_gate.app(),
        access_log=None,
        auto_decompress=False,
        handler_cancellation=True,
        keepalive_timeout=getattr(args, "http_idle_s", HTTP_IDLE_S),
    )
    logging.getLogger("aiohttp.server").addFilter(ProtocolErrors())  # once a process: each filter counts on its own
    await runner.setup()
    host, port = _split(args.http)
    await web.TCPSite(runner, host, port, reuse_port=True).start()  # beside the launcher's ports.Held, as gRPC's
    print(f"{READY_LINE}: gRPC {args.grpc}, HTTP {args.http}", file=sys.stderr, flush=True)
    await stop.wait()
    # The door drains first, so little is left: calls still answering get 5 s, and calls whose callers are gone
    # (answered 504 by the door, or cancelled) 5 s more in Triton. Closing the channel then cancels what remains,
    # moments before Triton itself is stopped; Triton 2.51 may crash on that cancel, which loses nothing accepted,
    # since no caller waits for those answers any more. (GateProcess.stop and edge.GATE_STOP_S allow for these
    # 10 s.)
    await server.stop(grace=5)
    await upstream.drain(timeout=5)
    await runner.cleanup()
    await grpc_gate.channel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grpc", required=True, help="host:port the gate's gRPC side listens on")
    p.add_argument("--http", required=True, help="host:port the gate's HTTP infer side listens on")
    p.add_argument("--triton-grpc", required=True, help="Triton's gRPC host:port")
    p.add_argument("--triton-http", required=True, help="Triton's HTTP host:port")
    p.add_argument(
        "--edge",
        action="store_true",
        help="no nginx in front (a KServe pod, serving/runtime/edge.py): the HTTP side also answers health and server "
        "metadata, relays other paths for admins only, and refuses compressed bodies",
    )
    p.add_argument(
        "--per-client",
        type=int,
        default=None,
        help="calls one address may have outstanding here, abandoned ones included (the door's "
        "connections per client; default from DOOR_CLIENT_CONNECTIONS, else 128)",
    )
    p.add_argument(
        "--held-bytes",
        type=int,
        default=MAX_HELD_BYTES,
        help="request bytes the gate holds at once, both protocols together (default %(default)s); a request that "
        "finds nothing held always passes",
    )
    p.add_argument(
        "--http-idle-s",
        type=float,
        default=HTTP_IDLE_S,
        help="seconds an HTTP connection may wait for its next complete request head (default %(default)s)",
    )
    args = p.parse_args(argv)
    # Secrets come from the environment (never argv, which every local user can read in /proc).
    admin_key = os.environ.get(security.ADMIN_KEY_ENV, "").strip()
    try:  # compose starts the gate with the operator's key: refuse one a caller could guess, as the launcher does
        security.check_admin_key(admin_key)
    except ValueError as err:
        print(f"gate: {err}", file=sys.stderr)
        return 2
    upstream_headers = json.loads(os.environ.get(UPSTREAM_HEADERS_ENV) or "{}")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args, admin_key, upstream_headers, stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())

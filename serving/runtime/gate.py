"""The gate: a small asyncio process between the nginx front door and Triton that reads what nginx cannot.

    nginx (public ports) --> gate (127.0.0.1: gRPC + HTTP infer) --> Triton (127.0.0.1)

nginx bounds sizes and times but cannot look inside a gRPC message, and Triton 2.51 trusts what is inside
(issue 18). The gate, per request:

* **Only public models** (``common.contract.PUBLIC_MODELS``): inference, metadata, config and readiness of any
  other model (the CNNs, pre/postprocess) get NOT_FOUND / HTTP 404.
* **Declared shapes and sizes** are held against the model's exact input schema (serving/runtime/gate_check.py)
  before Triton's batcher sees them: Triton 2.51's size arithmetic wraps on ``[2**62, ...]`` and mixes callers'
  rows. INVALID_ARGUMENT / HTTP 400 with the reason.
* **Cancellations stop here**: the call to Triton runs in its own task, with no deadline, which a caller's cancel,
  deadline or stream reset does not touch; the answer is dropped at the gate (Triton 2.51 segfaults when an
  in-flight ensemble request is cancelled: common/triton_workarounds.py). Calls to Triton are bounded
  (:data:`MAX_UPSTREAM`) so abandoned work cannot pile up without limit.
* **Admin RPCs** (security.RESTRICTED_APIS) need the admin key, else PERMISSION_DENIED (not the retryable
  UNAVAILABLE Triton 2.51 answers). ``ModelStreamInfer`` is refused (UNIMPLEMENTED): one stream would carry many
  requests past one check, and nothing here uses it.
* **Errors relayed as they are**: Triton's status is kept and its message cut to :data:`ERROR_BYTES`.
* **The internal credential**: callers' metadata and headers are not passed on; the gate adds what Triton's own
  ports need (``GATE_UPSTREAM_HEADERS``, JSON in the environment, never on a command line).

Run by the launcher (serving/runtime/launch.py) before nginx; standalone:

    TRITON_ADMIN_KEY=... python -m serving.runtime.gate --grpc 127.0.0.1:P --http 127.0.0.1:Q \\
        --triton-grpc 127.0.0.1:X --triton-http 127.0.0.1:Y
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import signal
import sys
import urllib.parse

import aiohttp
import grpc
from aiohttp import web
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from serving.runtime import security
from serving.runtime.door import MAX_BODY, MAX_JSON_BYTES
from serving.runtime.gate_check import INVALID_ARGUMENT, Refused, check_grpc_infer, check_http_infer, model_for

SERVICE = "/inference.GRPCInferenceService/"
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
#: Most bytes of an error message passed back (Triton echoes caller-chosen names into its messages).
ERROR_BYTES = 1024
#: Most calls in flight to Triton at once; more wait here (Triton's own queues hold far fewer).
MAX_UPSTREAM = 256
#: Environment variable with the headers / metadata the gate adds to every call to Triton (a JSON object).
UPSTREAM_HEADERS_ENV = "GATE_UPSTREAM_HEADERS"
UNREACHABLE = "Triton is not reachable (restarting?); retry shortly"
READY_LINE = "gate listening"
_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "PERMISSION_DENIED": 403, "UNIMPLEMENTED": 501}
_MESSAGE_OPTIONS = [("grpc.max_receive_message_length", MAX_BODY), ("grpc.max_send_message_length", MAX_BODY)]


def bounded(message: str) -> str:
    data = message.encode("utf-8", "replace")
    if len(data) <= ERROR_BYTES:
        return message
    return data[: ERROR_BYTES - 30].decode("utf-8", "ignore") + f"... ({len(data)} bytes, cut)"


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


class GrpcGate(grpc.GenericRpcHandler):
    def __init__(self, triton_grpc: str, admin_key: str, upstream_headers: dict[str, str], upstream: Upstream):
        # No retries: they would buffer every request a second time, and Triton's answer is final anyway.
        self.channel = grpc.aio.insecure_channel(triton_grpc, options=[*_MESSAGE_OPTIONS, ("grpc.enable_retries", 0)])
        self.admin_key = admin_key
        self.metadata = tuple((k.lower(), v) for k, v in upstream_headers.items())
        self.upstream = upstream
        self.stubs = {}
        # Built once per RPC name: service() runs for every call.
        self.handlers = {rpc: self._handler(rpc) for rpc in (*OPEN_RPCS, *ADMIN_RPCS)}
        self.handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self._refuse_stream)

    def service(self, handler_call_details):
        method = handler_call_details.method
        # Anything else (other services, unknown RPCs): None, i.e. UNIMPLEMENTED.
        return self.handlers.get(method[len(SERVICE) :]) if method.startswith(SERVICE) else None

    def _handler(self, rpc: str):
        # No (de)serializers: requests and answers pass as bytes; only the ones checked are parsed.
        async def handler(request: bytes, context) -> bytes:  # a coroutine function: grpc.aio checks for one
            return await self._unary(rpc, request, context)

        return grpc.unary_unary_rpc_method_handler(handler)

    async def _refuse_stream(self, request_iterator, context):
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "ModelStreamInfer is not served here; send each request with ModelInfer",
        )

    async def _unary(self, rpc: str, request: bytes, context) -> bytes:
        metadata = self.metadata
        try:
            if rpc == "ModelInfer":
                check_grpc_infer(pb.ModelInferRequest.FromString(request))
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
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the {rpc} request is not a valid protobuf message")
        except Refused as refusal:
            await context.abort(getattr(grpc.StatusCode, refusal.code), bounded(str(refusal)))
        status, payload = await self.upstream.run(self._call(rpc, request, metadata))
        if status is not None:
            await context.abort(status, payload)
        return payload

    @staticmethod
    def _given(context) -> str:
        return str(dict(context.invocation_metadata() or ()).get(security.GRPC_ADMIN_METADATA, ""))

    async def _call(self, rpc: str, request: bytes, metadata) -> tuple[grpc.StatusCode | None, bytes | str]:
        stub = self.stubs.get(rpc)
        if stub is None:
            stub = self.stubs[rpc] = self.channel.unary_unary(SERVICE + rpc)
        try:
            # No timeout: Triton must never see a deadline or a cancel (common/triton_workarounds.py).
            return None, await stub(request, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            code, details = err.code(), err.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
                return code, UNREACHABLE
            return code, bounded(details)


class HttpGate:
    """What nginx sends here: ``POST /v2/models/NAME[/versions/N]/infer`` of public models (body buffered), and
    metadata, config and readiness of any model when the caller presents an admin key (the operators' tools, such
    as serving.ops.rollout, read the internal models' configs); everything else nginx answers or passes itself."""

    def __init__(self, triton_http: str, admin_key: str, upstream_headers: dict[str, str], upstream: Upstream):
        self.base = f"http://{triton_http}"
        self.admin_key = admin_key
        self.headers = dict(upstream_headers)
        self.upstream = upstream
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v2/models/{name}/infer", self.infer)
        app.router.add_post("/v2/models/{name}/versions/{version}/infer", self.infer)
        for version in ("", "/versions/{version}"):
            for suffix in ("", "/config", "/ready"):
                app.router.add_get(f"/v2/models/{{name}}{version}{suffix}", self._about(suffix))
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app) -> None:
        # No total timeout: the door bounds the request (door.REQUEST_TIMEOUT_S) and answers 504 itself.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_UPSTREAM), timeout=aiohttp.ClientTimeout(total=None)
        )

    async def _close(self, _app) -> None:
        if self.session is not None:
            await self.session.close()

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"error": bounded(message)}, status=status)

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")
        try:
            model_for(name)
            if version is not None and not (version.isdigit() and len(version) <= 18):
                raise Refused(INVALID_ARGUMENT, "the model version must be a number")
            body = await request.read()
            length = request.headers.get("Inference-Header-Content-Length")
            split = len(body) if length is None else (int(length) if length.isdigit() else -1)
            if not 0 <= split <= len(body):
                raise Refused(INVALID_ARGUMENT, "Inference-Header-Content-Length does not fit the body")
            if split > MAX_JSON_BYTES:
                return self._error(413, f"the JSON part of the request is over {MAX_JSON_BYTES} bytes")
            try:
                header = json.loads(body[:split])
            except (ValueError, RecursionError):
                raise Refused(INVALID_ARGUMENT, "the JSON part of the request is not valid JSON") from None
            check_http_infer(name, header, memoryview(body)[split:])
        except Refused as refusal:
            return self._error(_HTTP_STATUS[refusal.code], str(refusal))
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
        headers = {"Content-Type": request.headers.get("Content-Type", "application/octet-stream"), **self.headers}
        if length is not None:
            headers["Inference-Header-Content-Length"] = str(split)
        return await self.upstream.run(self._forward(path, body, headers))

    def _about(self, suffix: str):
        async def about(request: web.Request) -> web.Response:
            name, version = request.match_info["name"], request.match_info.get("version")
            if not is_admin(self.admin_key, request.headers.get(security.ADMIN_HEADER, "")):
                return self._error(403, f"metadata of models that are not public needs the {security.ADMIN_HEADER} key")
            if version is not None and not (version.isdigit() and len(version) <= 18):
                return self._error(400, "the model version must be a number")
            path = (
                f"/v2/models/{urllib.parse.quote(name, safe='')}" + (f"/versions/{version}" if version else "") + suffix
            )
            return await self.upstream.run(self._forward(path, None, dict(self.headers), method="GET"))

        return about

    async def _forward(self, path: str, body: bytes | None, headers: dict[str, str], method: str = "POST"):
        try:
            async with self.session.request(method, self.base + path, data=body, headers=headers) as answer:
                data = await answer.read()
                if answer.status >= 400:
                    try:
                        message = str(json.loads(data)["error"])
                    except (ValueError, KeyError, TypeError):
                        message = data.decode("utf-8", "replace")
                    return self._error(answer.status, message)
                out = {"Content-Type": answer.headers.get("Content-Type", "application/json")}
                if "Inference-Header-Content-Length" in answer.headers:
                    out["Inference-Header-Content-Length"] = answer.headers["Inference-Header-Content-Length"]
                return web.Response(status=answer.status, body=data, headers=out)
        except aiohttp.ClientError:
            return self._error(503, UNREACHABLE)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(args, admin_key: str, upstream_headers: dict[str, str], stop: asyncio.Event) -> None:
    upstream = Upstream()
    grpc_gate = GrpcGate(args.triton_grpc, admin_key, upstream_headers, upstream)
    server = grpc.aio.server(options=_MESSAGE_OPTIONS, maximum_concurrent_rpcs=None)
    server.add_generic_rpc_handlers((grpc_gate,))
    if server.add_insecure_port(args.grpc) == 0:
        raise OSError(f"cannot listen on {args.grpc}")
    await server.start()
    runner = web.AppRunner(HttpGate(args.triton_http, admin_key, upstream_headers, upstream).app(), access_log=None)
    await runner.setup()
    host, port = _split(args.http)
    await web.TCPSite(runner, host, port).start()
    print(f"{READY_LINE}: gRPC {args.grpc}, HTTP {args.http}", file=sys.stderr, flush=True)
    await stop.wait()
    # The door drains first, so little is left; what is, finishes (bounded by the door's request timeout).
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
    args = p.parse_args(argv)
    # Secrets come from the environment (never argv, which every local user can read in /proc).
    admin_key = os.environ.get(security.ADMIN_KEY_ENV, "")
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

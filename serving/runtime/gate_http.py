"""The gate's HTTP side (serving/runtime/gate.py): inference of the public models, checked, and admins' reads of any
model's metadata."""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import aiohttp
from aiohttp import web

from serving.runtime import security
from serving.runtime.door import MAX_BODY, MAX_JSON_BYTES
from serving.runtime.gate_check import INVALID_ARGUMENT, Refused, check_http_infer, model_for
from serving.runtime.gate_relay import (
    MAX_UPSTREAM,
    NOT_FROM_THE_DOOR,
    UNREACHABLE,
    Loading,
    Upstream,
    bounded,
    from_the_door,
    is_admin,
)

_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "PERMISSION_DENIED": 403, "UNIMPLEMENTED": 501}

#: Total upload deadline of an inference body (issue 18, "Fair sharing at the door"): nginx streams it here unbuffered
#: (door.py) and only times the gaps between reads, so a body trickled at 1 KB every 5 s held its slot for as long as
#: its sender liked. Base: time for headers to settle and a slow start on any live uplink (nginx's gap limit is 10 s
#: too). Rate: 256 KiB/s (2 Mbit/s) is below a poor mobile uplink, so a real photo never meets the deadline (a 10 MB
#: photo gets 50 s), while a trickle is cut after base + length / rate.
BODY_DEADLINE_BASE_S = 10.0
BODY_MIN_RATE = 256 * 1024
_TOO_SLOW = (
    "the request body did not arrive within {:.0f} s ({:.0f} s plus 1 s per 256 KiB declared); "
    "send it at 256 KiB/s or more"
)


def body_deadline_s(content_length: int | None) -> float:
    """Seconds the whole body of ``content_length`` bytes may take; chunked bodies (no length) get the largest."""
    length = MAX_BODY if content_length is None else min(content_length, MAX_BODY)
    return BODY_DEADLINE_BASE_S + length / BODY_MIN_RATE


class HttpGate:
    """What nginx sends here: ``POST /v2/models/NAME[/versions/N]/infer`` of public models (body streamed as it
    arrives, read under :func:`body_deadline_s`), and
    metadata, config and readiness of any model when the caller presents an admin key (the operators' tools, such
    as serving.ops.rollout, read the internal models' configs); everything else nginx answers or passes itself."""

    def __init__(
        self,
        triton_http: str,
        admin_key: str,
        upstream_headers: dict[str, str],
        upstream: Upstream,
        loading: Loading,
    ):
        self.base = f"http://{triton_http}"
        self.admin_key = admin_key
        self.headers = dict(upstream_headers)
        # The door presents the same internal key it gives Triton; other local callers of the gate's port do not.
        self.door_key = upstream_headers.get(security.INTERNAL_HEADER)
        self.upstream = upstream
        self.loading = loading  # the models Triton loads after the ensembles (gate_relay.Loading)
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._only_the_door])
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

    @web.middleware
    async def _only_the_door(self, request: web.Request, handler):
        if not from_the_door(self.door_key, request.headers.get(security.INTERNAL_HEADER)):
            return self._error(403, NOT_FROM_THE_DOOR)
        return await handler(request)

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"error": bounded(message)}, status=status)

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")
        try:
            model_for(name)
            if version is not None and not (version.isdigit() and len(version) <= 18):
                raise Refused(INVALID_ARGUMENT, "the model version must be a number")
            deadline = body_deadline_s(request.content_length)
            try:
                # Memory: at most MAX_BODY per request (client_max_size; nginx refuses longer declared lengths first),
                # and a slow body holds only what has arrived.
                body = await asyncio.wait_for(request.read(), deadline)
            except TimeoutError:
                # Closed after the answer: the rest of the body is never read, and the connection is not reused.
                answer = self._error(408, _TOO_SLOW.format(deadline, BODY_DEADLINE_BASE_S))
                answer.force_close()
                return answer
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
        await self.loading.wait(name)
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

"""The gate's HTTP side (serving/runtime/gate.py): inference of the public models, checked, and admins' reads of any
model's metadata."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from serving.runtime import security
from serving.runtime.door import BODY_TOO_LARGE, CLIENT_HEADER, COMPRESSED, MAX_BODY, MAX_JSON_BYTES, NOT_PUBLIC
from serving.runtime.gate_check import (
    COMPANION,
    INVALID_ARGUMENT,
    PUBLIC_INPUTS,
    Refused,
    check_http_infer,
    companion_needed,
    model_for,
)
from serving.runtime.gate_relay import (
    MAX_UPSTREAM,
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

_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "PERMISSION_DENIED": 403, "UNIMPLEMENTED": 501}
#: With a refusal that a moment's wait may cure (too many calls or bytes held here): the door's own 429 asks for 1 s.
RETRY = {"Retry-After": "1"}

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


#: A number in a header or a path as the gate reads it: ASCII digits, at most 9 (a length; a version takes 18, below).
#: ``str.isdigit`` also passes "²" and other Unicode digits, and 4,301 digits or more, all of which ``int`` then
#: refuses with ValueError: HTTP 500 and a 27-line traceback naming the caller's address in the log, per request
#: (red-team probe, 2026-12-07; in a KServe pod nothing in front refuses them first).
_NUMBER = re.compile(r"[0-9]{1,9}")
_VERSION = re.compile(r"[0-9]{1,18}")
_BAD_LENGTH = "Inference-Header-Content-Length must be a number of at most 9 digits (0-9)"
_BAD_VERSION = "the model version must be a number"


def number(value: str | None, pattern: re.Pattern = _NUMBER) -> int | None:
    """``value`` as a number if it is one by ``pattern`` (ASCII digits, bounded), else None."""
    return int(value) if value is not None and pattern.fullmatch(value) else None


#: What the gate answers itself when nothing is in front of it (``edge``): the health and server-metadata paths, and
#: the refusals of compressed bodies and of non-public paths in the words of the door (door.COMPRESSED, NOT_PUBLIC).
READY_PATH = "/v2/health/ready"
EDGE_OPEN_PATHS = ("/v2/health/live", READY_PATH, "/v2")


class RepeatedKey(ValueError):
    """A JSON object that names a key twice."""


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` refusing a key given twice in one object.

    JSON leaves repeated keys to the parser, and two parsers differ: Python keeps the last, Triton's (rapidjson's
    FindMember) reads the first. ``{"inputs": [shape [2**62, 1]], "inputs": [a valid one]}`` passed the gate's
    checks on the second while Triton ran the first (seen with a harmless ``[2, 1]``: the gate checked one item,
    Triton answered two). Refusing the repetition leaves one reading.
    """
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise RepeatedKey(f"the JSON part of the request names the key {key[:80]!r} twice in one object")
    return out


def request_json(part: bytes) -> object:
    """The JSON part of an HTTP inference, read as Triton reads it, or ValueError (:class:`RepeatedKey` included).

    Triton's parser takes UTF-8 only (a leading byte-order mark is skipped), while Python's ``json.loads(bytes)``
    also reads UTF-16 and UTF-32, and it refuses a ``\\ud800`` escape without its pair, which Python reads into a
    lone surrogate: both reached Triton past the gate and came back as HTTP 500.
    """
    text = bytes(part).decode("utf-8-sig")
    header = json.loads(text, object_pairs_hook=unique_keys)
    if "\\u" in text:  # escapes are rare in a request; only then look for a lone surrogate
        try:
            json.dumps(header, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError("a \\u escape names half of a surrogate pair") from None
    return header


def _null(_constant: str) -> None:
    return None


def strict_json(data: bytes, header_length: str | None, drop: str | None = None) -> tuple[bytes, str | None]:
    """Triton's JSON answer to an inference, made valid JSON; ``header_length``: its Inference-Header-Content-Length.

    Triton 2.51 writes a float output's NaN as a bare ``NaN`` token (and infinities as ``Infinity``), which JSON
    does not have: a browser's ``JSON.parse``, Go's encoding/json or jq refuse the whole answer, and the crop path
    has NaN in every answer (``detection_score``; age and gender of a face it could not read). It also repeats the
    answer's ``parameters`` keys once per output. Here NaN and infinities become ``null`` (the usual JSON stand-in;
    tritonclient's ``as_numpy`` reads null back as NaN for float outputs) and each key appears once. Binary outputs
    (after the JSON header) are passed as they are, with the header's new length. A body that is not JSON is
    passed as it is. ``drop``: the name of an output the gate asked for itself (gate_check.COMPANION), taken out,
    with its bytes if it came binary.
    """
    split = len(data) if header_length is None else int(header_length)
    binary = data[split:]
    try:
        header = json.loads(data[:split], parse_constant=_null)
        if drop is not None:
            binary = _without_output(header, binary, drop)
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError:  # not JSON, or a float literal too large for a double (Triton writes none)
        return data, header_length
    return text + binary, None if header_length is None else str(len(text))


def _without_output(header: dict, binary: bytes, name: str) -> bytes:
    """Removes output ``name`` from an answer's JSON ``header`` and returns the binary part without its bytes."""
    at = 0
    for index, output in enumerate(header.get("outputs", [])):
        size = output.get("parameters", {}).get("binary_data_size", 0)
        if output.get("name") == name:
            del header["outputs"][index]
            return binary[:at] + binary[at + size :]
        at += size
    return binary


def body_deadline_s(content_length: int | None) -> float:
    """Seconds the whole body of ``content_length`` bytes may take; chunked bodies (no length) get the largest."""
    length = MAX_BODY if content_length is None else min(content_length, MAX_BODY)
    return BODY_DEADLINE_BASE_S + length / BODY_MIN_RATE


def body_room(request: web.Request) -> int:
    """What a request's body may take (:class:`gate_relay.Budget`): its declared length; a chunked body, which declares
    none, may be the largest (client_max_size)."""
    if request.content_length is not None:
        return min(request.content_length, MAX_BODY)
    return MAX_BODY if request.body_exists else 0


def _let_go(error: BaseException) -> None:
    """Frees what a body read cut short had received. aiohttp's ``read`` gathers it in a local of its frame, which the
    exception's traceback keeps alive in a reference cycle until Python's cyclic collector runs, and that runs by
    counts of objects, not bytes: the eight 60 MiB bodies the budget let in, abandoned one byte short, kept the gate at
    534 MiB after their sockets closed (1.26 GB for twenty before the budget). Clearing the finished frames' locals
    frees them at once (52-54 MiB). ``seen``: a chain that names itself again ends there."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


#: At most one log line per kind of malformed HTTP request in this many seconds (:class:`ProtocolErrors`).
PROTOCOL_LOG_EVERY_S = 10.0


class ProtocolErrors(logging.Filter):
    """aiohttp logs each request it cannot parse ("Error handling request") at ERROR, with a 10-40 line traceback
    and up to 100 bytes of what the caller sent: in a KServe pod, where no nginx refuses them first, any caller could
    fill the pod's log (red-team probe, 2026-12-07). One short line per kind every :data:`PROTOCOL_LOG_EVERY_S`,
    counting those left out; every other record passes as it is."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError | ConnectionResetError):
            return True
        kind, now = type(error).__name__, time.monotonic()
        if now - self._last.get(kind, -math.inf) < PROTOCOL_LOG_EVERY_S:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return False
        self._last[kind] = now
        more = self._left_out.pop(kind, 0)
        record.msg = f"refused a malformed HTTP request ({kind})" + (f"; {more} more since" if more else "")
        record.args, record.exc_info, record.exc_text = (), None, None
        return True


class HttpGate:
    """What nginx sends here: ``POST /v2/models/NAME[/versions/N]/infer`` of public models (body streamed as it
    arrives, read under :func:`body_deadline_s`), and
    metadata, config and readiness of any model when the caller presents an admin key (the operators' tools, such
    as serving.ops.rollout, read the internal models' configs); everything else nginx answers or passes itself.

    ``edge``: no nginx in front (a KServe pod, serving/runtime/edge.py), so the gate answers the rest of the API too:
    health and server metadata for anyone, public models' metadata, compressed bodies refused (415, as the door
    does), and every other path only for a caller with the admin key (relayed with it; Triton checks it again).
    """

    def __init__(
        self,
        triton_http: str,
        admin_key: str,
        upstream_headers: dict[str, str],
        upstream: Upstream,
        loading: Loading,
        not_ready: Callable[[], Awaitable[list[str] | None]] | None = None,
        *,
        edge: bool = False,
        budget: Budget | None = None,
    ):
        self.base = f"http://{triton_http}"
        self.edge = edge
        self.admin_key = admin_key
        # aiohttp asks for "gzip, deflate, br" by default, and Triton then compressed every answer on loopback for
        # the gate to inflate again (a 1.3 KB crop-path answer: 329 bytes gzipped): CPU twice, for nothing.
        self.headers = {**upstream_headers, "Accept-Encoding": "identity"}
        # The door presents the same internal key it gives Triton; other local callers of the gate's port do not.
        self.door_key = upstream_headers.get(security.INTERNAL_HEADER)
        self.upstream = upstream
        self.budget = budget or Budget()  # request bytes held at once, shared with the gRPC side
        self.loading = loading  # the models Triton loads after the ensembles (gate_relay.Loading)
        self.not_ready = not_ready  # readiness: the served models not ready (gate.GrpcGate.not_ready)
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        edge_checks = [self._not_compressed, self._declared_size] if self.edge else []
        middlewares = [self._json_errors, self._only_the_door, *edge_checks]
        app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
        app.router.add_post("/v2/models/{name}/infer", self.infer)
        app.router.add_post("/v2/models/{name}/versions/{version}/infer", self.infer)
        if self.edge:  # before the metadata routes, which would read it as the model "stats"
            app.router.add_route("*", "/v2/models/stats", self._admin_only)
        for version in ("", "/versions/{version}"):
            for suffix in ("", "/config", "/ready"):
                app.router.add_get(f"/v2/models/{{name}}{version}{suffix}", self._about(suffix))
        app.router.add_get(READY_PATH, self._ready)  # behind the door too, which sends readiness here
        if self.edge:
            for path in EDGE_OPEN_PATHS:
                if path != READY_PATH:
                    app.router.add_get(path, self._open_path)
            app.router.add_route("*", "/{tail:.*}", self._admin_only)  # last: the routes above match first
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
    async def _json_errors(self, request: web.Request, handler):
        """aiohttp's own refusals (a path no route matches, such as ``/v2/models/age_gender//infer``, or a method a
        route does not take) as JSON like every other error here, not its plain-text "404: Not Found"."""
        try:
            return await handler(request)
        except web.HTTPException as err:
            if err.status not in (404, 405):
                raise
            what = "no such path" if err.status == 404 else f"method {request.method} not allowed on this path"
            return self._error(err.status, f"{what}: {request.path[:200]}")

    @web.middleware
    async def _only_the_door(self, request: web.Request, handler):
        if not from_the_door(self.door_key, request.headers.get(security.INTERNAL_HEADER)):
            return self._error(403, NOT_FROM_THE_DOOR)
        return await handler(request)

    @web.middleware
    async def _not_compressed(self, request: web.Request, handler):
        # Every Content-Encoding header, not the first: "identity" then "gzip" passed a first-only check. (The
        # server does not inflate bodies at all, gate.serve; refused, the caller learns why.)
        if any(
            value.strip().lower() not in ("", "identity") for value in request.headers.getall("Content-Encoding", [])
        ):
            return self._error(415, COMPRESSED)
        return await handler(request)

    @web.middleware
    async def _declared_size(self, request: web.Request, handler):
        # A body declared larger than any the gate reads gets its 413 at once, as from the door, instead of after
        # up to MAX_BODY of it has been sent and buffered.
        if request.content_length is not None and request.content_length > MAX_BODY:
            return self._error(413, BODY_TOO_LARGE)
        return await handler(request)

    async def _open_path(self, request: web.Request) -> web.Response:
        """Health and server metadata, relayed as they are (the probes of a KServe pod come here)."""
        return await self.upstream.run(self._forward(request.path, None, dict(self.headers), method="GET"))

    async def _ready(self, request: web.Request) -> web.Response:
        """Server readiness: Triton's HTTP side up and every served model ready (gate.GrpcGate.not_ready, asked
        over gRPC), else 503 naming what is not; Triton's own answer where the gate knows no served models.

        Triton opens its gRPC port before its HTTP port: asked over gRPC alone, readiness said yes while an HTTP
        caller's connection to Triton was still refused (seen once in `make test`)."""
        missing = None if self.not_ready is None else await self.not_ready()
        if missing is None:
            return await self._open_path(request)
        live = await self.upstream.run(self._forward("/v2/health/live", None, dict(self.headers), method="GET"))
        if live.status != 200:
            return self._error(503, UNREACHABLE)
        if missing:
            return self._error(503, f"not ready: {', '.join(missing)} (loading, or failed to load)")
        return web.Response(status=200)

    async def _admin_only(self, request: web.Request) -> web.Response:
        """Everything else Triton serves (repository, statistics, logging, trace, shared memory) for admins only;
        other callers get 404, as behind the door."""
        given = request.headers.get(security.ADMIN_HEADER, "")
        if not is_admin(self.admin_key, given):
            return self._error(404, f"{NOT_PUBLIC}; other paths need the admin key")
        body = await request.read() if request.can_read_body else None
        headers = {**self.headers, security.ADMIN_HEADER: given}
        if body is not None:
            headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
        return await self.upstream.run(self._forward(request.path_qs, body, headers, method=request.method))

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"error": bounded(message)}, status=status)

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")
        length = request.headers.get("Inference-Header-Content-Length")
        try:
            model_for(name)
            if version is not None and number(version, _VERSION) is None:
                raise Refused(INVALID_ARGUMENT, _BAD_VERSION)
            if length is not None and number(length) is None:  # before the body is read: refused at once
                raise Refused(INVALID_ARGUMENT, _BAD_LENGTH)
            client = request.headers.get(CLIENT_HEADER)  # the caller's address from the door (none in a KServe pod)
            held = self.budget.reserve(body_room(request), client)  # before a byte of the body is read
        except Refused as refusal:
            return self._error(_HTTP_STATUS[refusal.code], str(refusal))
        except Busy as busy:
            return web.json_response({"error": str(busy)}, status=429 if busy.client else 503, headers=RETRY)
        with held:  # given back however the request ends; the call to Triton keeps its share (Upstream.run)
            return await self._infer(request, name, version, number(length), held)

    async def _infer(self, request: web.Request, name: str, version: str | None, length: int | None, held: Held):
        deadline = body_deadline_s(request.content_length)
        try:
            # Memory: at most MAX_BODY per request (client_max_size; nginx refuses longer declared lengths first),
            # a slow body holds only what has arrived, and all bodies together what the budget allows.
            body = await asyncio.wait_for(request.read(), deadline)
        except TimeoutError as late:
            _let_go(late)
            # Closed after the answer: the rest of the body is never read, and the connection is not reused.
            answer = self._error(408, _TOO_SLOW.format(deadline, BODY_DEADLINE_BASE_S))
            answer.force_close()
            return answer
        except BaseException as gone:  # the caller hung up (cancelled), or its connection broke
            _let_go(gone)
            raise
        split = len(body) if length is None else length
        try:
            if split > len(body):
                raise Refused(INVALID_ARGUMENT, "Inference-Header-Content-Length does not fit the body")
            if split > MAX_JSON_BYTES:
                return self._error(413, f"the JSON part of the request is over {MAX_JSON_BYTES} bytes")
            try:
                header = request_json(body[:split])
            except RepeatedKey as repeated:
                raise Refused(INVALID_ARGUMENT, str(repeated)) from None
            except (ValueError, RecursionError):
                raise Refused(INVALID_ARGUMENT, "the JSON part of the request is not valid JSON in UTF-8") from None
            admin = is_admin(self.admin_key, request.headers.get(security.ADMIN_HEADER, ""))
            check_http_infer(name, header, memoryview(body)[split:], admin=admin)
        except Refused as refusal:
            return self._error(_HTTP_STATUS[refusal.code], str(refusal))
        drop = None
        if companion_needed(name, [output["name"] for output in header.get("outputs", [])]):
            drop = COMPANION
            header["outputs"].append({"name": COMPANION, "parameters": {"binary_data": False}})
            text = json.dumps(header, separators=(",", ":")).encode()
            body, split = text + body[split:], len(text)
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
        headers = {"Content-Type": request.headers.get("Content-Type", "application/octet-stream"), **self.headers}
        if length is not None:
            headers["Inference-Header-Content-Length"] = str(split)
        await self.loading.wait(name)
        try:
            client = request.headers.get(CLIENT_HEADER)  # its calls outstanding here are bounded
            call = self._forward(path, body, headers, strict=True, drop=drop)
            return await self.upstream.run(call, client=client, held=held)
        except TooMany as refusal:
            return web.json_response({"error": str(refusal)}, status=429, headers=RETRY)

    def _about(self, suffix: str):
        async def about(request: web.Request) -> web.Response:
            name, version = request.match_info["name"], request.match_info.get("version")
            # Public models' metadata is public (behind the door nginx sends it to Triton itself, not here).
            public = name in PUBLIC_INPUTS
            given = request.headers.get(security.ADMIN_HEADER, "")
            if not public and not is_admin(self.admin_key, given):
                # Without a key the model is simply not public (404, as the door and the gRPC side answer), so
                # internal model names are not confirmed to strangers; a wrong key hears that the key is wrong.
                if not given:
                    return self._error(404, NOT_PUBLIC)
                return self._error(403, f"metadata of models that are not public needs the {security.ADMIN_HEADER} key")
            if version is not None and number(version, _VERSION) is None:
                return self._error(400, _BAD_VERSION)
            path = (
                f"/v2/models/{urllib.parse.quote(name, safe='')}" + (f"/versions/{version}" if version else "") + suffix
            )
            return await self.upstream.run(self._forward(path, None, dict(self.headers), method="GET"))

        return about

    async def _forward(
        self,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        method: str = "POST",
        strict: bool = False,
        drop: str | None = None,
    ):
        """Triton's answer; ``strict``: an inference's JSON made valid JSON, without output ``drop``
        (:func:`strict_json`)."""
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
                length = answer.headers.get("Inference-Header-Content-Length")
                declared = number(length)
                if strict and (length is None or declared is not None and declared <= len(data)):
                    data, length = strict_json(data, length, drop)
                if length is not None:
                    out["Inference-Header-Content-Length"] = length
                return web.Response(status=answer.status, body=data, headers=out)
        except aiohttp.ClientError:
            return self._error(503, UNREACHABLE)

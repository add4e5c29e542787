"""Abuse suite: sends >= 1,000 malformed requests over HTTP and gRPC to a live server and checks it survives.

    python -m loadtest.abuse --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 \\
        [--count 1200] [--seed 0] [--concurrency 2] [--pid LAUNCHER_PID] [--out loadtest/results/abuse]

The inputs (loadtest/abuse/cases.py): admin calls without the key (shared-memory register included), compressed
and oversized bodies, batches of 32 40-MP 16-bit PNG bombs, tiny images and landscapes on the crop path, no-face
images, undecodable and random bytes, mutated and truncated real images, decompression bombs (PNG, GIF, WebP,
JPEG, BMP declaring huge sizes), wrong dtypes, shapes and batch sizes, unknown models and inputs, malformed JSON
and binary-extension framing, truncated and broken HTTP, gRPC messages with wrong tensor contents. Well-formed
requests are interleaved and their answers checked: a face gets a finite age and a gender, no face gets NaN and
``face_found`` false.

Every request is classified: ``clean_error`` (4xx or gRPC status with a message, or a per-item ``error``),
``answered`` (a right answer), ``wrong_answer`` (numbers for garbage, numbers without a face, a refused
well-formed request, an admin call that worked without the key), ``server_error`` (HTTP 5xx other than the door's
503, gRPC INTERNAL/UNKNOWN/DATA_LOSS), ``unavailable`` (503 / UNAVAILABLE), ``no_answer`` (connection dropped,
timeout). After every batch of requests the server's health is checked over both protocols and the Triton pid
compared (a restart by the launcher's supervisor counts as a death). RSS of Triton, its stubs and nginx is read
from /proc before and after (the server is found from ``--pid`` or from the process listening on the HTTP port).
Writes ``<out>.json`` and ``<out>.md``; exits 1 on any death or wrong answer.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import random
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc
import tritonclient.http as httpclient

from common import contract
from loadtest import procs
from loadtest.abuse import cases

OUTCOMES = ("clean_error", "answered", "wrong_answer", "server_error", "unavailable", "no_answer")
TIMEOUT_S = 60.0
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "abuse"


@dataclass
class Result:
    category: str
    protocol: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0


# -- sending -----------------------------------------------------------------------------------------------


def _serialize_bytes(blobs: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in blobs)


def _tensor_spec(case: cases.Case) -> tuple[str, str, list[int], bytes]:
    """Input name, datatype, shape and raw contents of an "infer" case."""
    spec = case.spec
    datatype = spec.get("datatype", "BYTES")
    raw = _serialize_bytes(case.blobs) if datatype == "BYTES" else b"".join(case.blobs)
    shape = spec.get("shape", [len(case.blobs), 1])
    return spec.get("input", contract.IMAGE_INPUT), datatype, shape, raw


class Sender:
    """Sends cases; HTTP over fresh ``http.client`` connections, gRPC over one shared channel."""

    def __init__(self, http_url: str, grpc_url: str):
        self.http_host, port = http_url.removeprefix("http://").rsplit(":", 1)
        self.http_port = int(port)
        self.grpc_url = grpc_url.removeprefix("grpc://")
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(self.grpc_url, options=options)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.raw_infer = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

    def close(self) -> None:
        self.channel.close()

    # HTTP ---------------------------------------------------------------------------------------------

    def http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """Returns (status, headers, body); raises OSError / HTTPException when no answer came."""
        conn = http.client.HTTPConnection(self.http_host, self.http_port, timeout=TIMEOUT_S)
        try:
            try:
                conn.request(method, path, body=body, headers=headers or {})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the door may answer (413) and close before reading a huge body; read that answer
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def http_infer(self, case: cases.Case):
        name, datatype, shape, raw = _tensor_spec(case)
        spec = case.spec
        inputs = [{"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}]
        if spec.get("extra_input"):
            inputs.append({"name": "foo", "datatype": "BYTES", "shape": [1, 1], "data": ["x"]})
        outputs = spec.get("outputs", cases.OUTPUTS)
        header = json.dumps(
            {"inputs": inputs, "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs]}
        ).encode()
        body = header + raw
        headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
        if spec.get("compress"):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        model = urllib.parse.quote(spec.get("model", case.model), safe="")
        version = f"/versions/{spec['version']}" if "version" in spec else ""
        status, response_headers, data = self.http("POST", f"/v2/models/{model}{version}/infer", body, headers)
        if status != 200:
            return status, _message(data), None
        length = response_headers.get("Inference-Header-Content-Length")
        result = httpclient.InferResult.from_response_body(data, header_length=int(length) if length else None)
        return status, "", {o: result.as_numpy(o) for o in outputs if result.get_output(o) is not None}

    def http_raw(self, case: cases.Case):
        spec = case.spec
        status, _, data = self.http(spec["method"], spec["path"], spec["body"], spec["headers"])
        if status != 200:
            return status, _message(data), None
        result = httpclient.InferResult.from_response_body(data)
        return status, "", {o: result.as_numpy(o) for o in cases.OUTPUTS if result.get_output(o) is not None}

    def http_socket(self, case: cases.Case):
        """Broken HTTP on a raw socket; returns the status line's code, or raises ConnectionError if none came."""
        path = f"/v2/models/{case.model}/infer"
        variant = case.spec["i"] % 5
        head = f"POST {path} HTTP/1.1\r\nHost: abuse\r\n"
        if variant == 0:  # body shorter than Content-Length, then the caller stops sending
            data, shut = (head + "Content-Length: 5000\r\n\r\n" + '{"inputs": [').encode(), True
        elif variant == 1:  # broken chunked encoding
            data, shut = (head + "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").encode(), False
        elif variant == 2:  # a 40 KB header
            data, shut = (head + "X-Big: " + "a" * 40_000 + "\r\nContent-Length: 0\r\n\r\n").encode(), False
        elif variant == 3:  # not HTTP at all
            data, shut = b"GARBAGE \x00\xff\r\n\r\n", False
        else:  # binary extension whose header length points past the body
            body = b'{"inputs":[{"name":"image","datatype":"BYTES","shape":[1,1]}]}'
            data = (head + f"Inference-Header-Content-Length: 4000\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            data, shut = data + body, False
        with socket.create_connection((self.http_host, self.http_port), timeout=15) as sock:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
            answer = b""
            while b"\r\n\r\n" not in answer:
                piece = sock.recv(65536)
                if not piece:
                    break
                answer += piece
        if not answer.startswith(b"HTTP/"):
            raise ConnectionError("connection closed without an answer")
        status = int(answer.split(b" ", 2)[1])
        return status, answer.partition(b"\r\n\r\n")[2][:300].decode(errors="replace") or "(no body)", None

    def http_admin(self, case: cases.Case):
        i = case.spec["variant"]
        register = json.dumps({"key": "/abuse", "offset": 0, "byte_size": 64}).encode()
        cuda = json.dumps({"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64}).encode()
        calls = [
            ("POST", "/v2/systemsharedmemory/region/abuse/register", register),
            ("POST", "/v2/cudasharedmemory/region/abuse/register", cuda),
            ("POST", "/v2/repository/models/age/unload", b"{}"),
            ("POST", "/v2/repository/models/age/load", b"{}"),
            ("POST", "/v2/repository/index", b"{}"),
            ("POST", "/v2/logging", json.dumps({"log_verbose_level": 1}).encode()),
            ("POST", "/v2/trace/setting", json.dumps({"trace_level": ["TIMESTAMPS"]}).encode()),
            ("GET", "/v2/models/stats", None),
            ("GET", "/v2/systemsharedmemory/status", None),
        ]
        method, path, body = calls[i % len(calls)]
        headers = {"admin-key": "wrong-key"} if (i // len(calls)) % 2 else {}
        status, _, data = self.http(method, path, body, headers)
        return status, _message(data), ({} if status == 200 else None)

    # gRPC ---------------------------------------------------------------------------------------------

    def grpc_infer(self, case: cases.Case):
        name, datatype, shape, raw = _tensor_spec(case)
        spec = case.spec
        request = pb.ModelInferRequest(model_name=spec.get("model", case.model), model_version=spec.get("version", ""))
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
        if spec.get("extra_input"):
            request.inputs.add(name="foo", datatype="BYTES", shape=[1, 1])
            request.raw_input_contents.append(_serialize_bytes([b"x"]))
        outputs = spec.get("outputs", cases.OUTPUTS)
        for o in outputs:
            request.outputs.add(name=o)
        compression = grpc.Compression.Gzip if spec.get("compress") else None
        response = self.stub.ModelInfer(request, timeout=TIMEOUT_S, compression=compression)
        result = grpcclient.InferResult(response)
        return 200, "", {o: result.as_numpy(o) for o in outputs if result.get_output(o) is not None}

    def grpc_raw(self, case: cases.Case):
        variant = case.spec["variant"]
        if variant == 0:
            response = self.raw_infer(random.Random(case.spec.get("seed", 0)).randbytes(200), timeout=TIMEOUT_S)
        else:
            request = pb.ModelInferRequest(model_name="" if variant == 1 else case.model)
            tensor = request.inputs.add(name=contract.IMAGE_INPUT, datatype="BYTES", shape=[1, 1])
            if variant == 2:  # length prefix claims 4 GiB
                request.raw_input_contents.append(struct.pack("<I", 2**32 - 1) + b"abc")
            elif variant == 3:  # trailing bytes after the last element
                request.raw_input_contents.append(struct.pack("<I", 3) + b"abcdef")
            elif variant == 4:  # two raw buffers for one input
                request.raw_input_contents.extend([_serialize_bytes([b"a"]), _serialize_bytes([b"b"])])
            elif variant == 5:  # typed contents whose count does not match the shape
                tensor.contents.bytes_contents.extend([b"a", b"b", b"c"])
            elif variant == 6:  # typed and raw contents at once
                tensor.contents.bytes_contents.append(b"a")
                request.raw_input_contents.append(_serialize_bytes([b"a"]))
            elif variant == 7:  # float contents for a BYTES input
                tensor.contents.fp32_contents.extend([1.0])
            else:  # negative and huge dimensions
                del tensor.shape[:]
                tensor.shape.extend([-1, 2**40])
                request.raw_input_contents.append(_serialize_bytes([b"a"]))
            response = self.stub.ModelInfer(request, timeout=TIMEOUT_S)
        result = grpcclient.InferResult(response)
        return 200, "", {o: result.as_numpy(o) for o in cases.OUTPUTS if result.get_output(o) is not None}

    def grpc_admin(self, case: cases.Case):
        i = case.spec["variant"]
        calls = [
            (
                self.stub.SystemSharedMemoryRegister,
                pb.SystemSharedMemoryRegisterRequest(name="a", key="/a", byte_size=64),
            ),
            (self.stub.CudaSharedMemoryRegister, pb.CudaSharedMemoryRegisterRequest(name="a", byte_size=64)),
            (self.stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=contract.AGE_MODEL)),
            (self.stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=contract.AGE_MODEL)),
            (self.stub.RepositoryIndex, pb.RepositoryIndexRequest()),
            (self.stub.LogSettings, pb.LogSettingsRequest()),
            (self.stub.TraceSetting, pb.TraceSettingRequest()),
            (self.stub.ModelStatistics, pb.ModelStatisticsRequest()),
            (self.stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest()),
        ]
        call, request = calls[i % len(calls)]
        metadata = [("triton-grpc-protocol-admin-key", "wrong-key")] if (i // len(calls)) % 2 else None
        call(request, timeout=TIMEOUT_S, metadata=metadata)
        return 200, "", {}

    def send(self, case: cases.Case):
        """Returns (status, message, outputs or None); raises on transport failures and gRPC errors."""
        if case.kind == "infer":
            return self.http_infer(case) if case.protocol == "http" else self.grpc_infer(case)
        return getattr(self, case.kind)(case)

    # health -------------------------------------------------------------------------------------------

    def healthy(self) -> bool:
        try:
            status, _, _ = self.http("GET", "/v2/health/ready")
            ready = self.stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
            return status == 200 and ready
        except (OSError, http.client.HTTPException, grpc.RpcError):
            return False


def _message(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    try:
        return str(json.loads(text).get("error", text))[:300]
    except (ValueError, AttributeError):
        return text[:300]


# -- judging -----------------------------------------------------------------------------------------------


def check_items(outputs: dict, case: cases.Case) -> tuple[list[str], bool]:
    """Contract violations of a 200 answer to an ensemble, and whether any item carries an error."""
    needed = (*contract.ESTIMATE_OUTPUTS, contract.ENSEMBLE_SCORE)
    if any(o not in outputs for o in needed):
        return [f"answer lacks outputs {sorted(set(needed) - set(outputs))}"], False
    age = outputs[contract.ENSEMBLE_AGE].reshape(-1)
    low = outputs[contract.ENSEMBLE_AGE_LOW].reshape(-1)
    high = outputs[contract.ENSEMBLE_AGE_HIGH].reshape(-1)
    prob = outputs[contract.ENSEMBLE_FEMALE].reshape(-1)
    found = outputs[contract.ENSEMBLE_FOUND].reshape(-1)
    score = outputs[contract.ENSEMBLE_SCORE].reshape(-1)
    gender = [g.decode() if isinstance(g, bytes) else str(g) for g in outputs[contract.ENSEMBLE_GENDER].reshape(-1)]
    error = [
        e.decode(errors="replace") if isinstance(e, bytes) else str(e)
        for e in outputs[contract.ENSEMBLE_ERROR].reshape(-1)
    ]
    expects = case.expect.items or ("any",) * len(age)
    if len(age) != len(expects):
        return [f"{len(age)} items answered for {len(expects)} sent"], False
    bad = []
    for j, want in enumerate(expects):
        face = bool(found[j]) and not error[j]
        if not face and not (np.isnan([age[j], low[j], high[j], prob[j]]).all() and gender[j] == ""):
            bad.append(
                f"item {j}: numbers without a face (age {age[j]} [{low[j]}, {high[j]}], p {prob[j]}, "
                f"gender {gender[j]!r})"
            )
        if face and not (np.isfinite(age[j]) and 0 <= prob[j] <= 1 and gender[j] in ("male", "female")):
            bad.append(f"item {j}: face found but age {age[j]}, p {prob[j]}, gender {gender[j]!r}")
        # The interval: both ends NaN (an age model without one) or an ordered pair of finite ages.
        ends = np.array([low[j], high[j]])
        if face and not (np.isnan(ends).all() or (np.isfinite(ends).all() and ends[0] <= ends[1])):
            bad.append(f"item {j}: face found but age interval [{low[j]}, {high[j]}]")
        if face and case.model == cases.CROP and not np.isnan(score[j]):
            bad.append(f"item {j}: crop path reports detection_score {score[j]} (no detector ran)")
        if want == "error" and not error[j]:
            bad.append(f"item {j}: garbage accepted without an error (face_found {bool(found[j])}, age {age[j]})")
        if want == "noface" and face:
            bad.append(f"item {j}: a face found where there is none (age {age[j]})")
        if want == "face" and not face:
            bad.append(f"item {j}: the face was missed (error {error[j]!r})")
    return bad, any(error)


def judge(case: cases.Case, status: int, message: str, outputs: dict | None) -> tuple[str, str]:
    if status == 200:
        if case.kind.endswith("admin"):
            return "wrong_answer", "admin call succeeded without the key"
        bad, any_error = check_items(outputs or {}, case)
        if bad:
            return "wrong_answer", "; ".join(bad[:3])
        if case.expect.request == "error" and not (any_error and all(_all_errors(outputs))):
            return "wrong_answer", f"answered a request that must be refused ({case.note or case.spec})"
        return ("clean_error" if any_error else "answered"), ""
    if status == 503:
        return "unavailable", message
    if status >= 500:
        return "server_error", f"HTTP {status}: {message}"
    if case.expect.request == "items":
        return "wrong_answer", f"well-formed request refused: HTTP {status}: {message}"
    return ("clean_error" if message else "server_error"), f"HTTP {status}: {message or '(no message)'}"


def _all_errors(outputs: dict) -> list[bool]:
    return [bool(e) for e in outputs[contract.ENSEMBLE_ERROR].reshape(-1)]


def judge_rpc_error(case: cases.Case, err: grpc.RpcError) -> tuple[str, str]:
    code, details = err.code(), err.details() or ""
    if case.kind.endswith("admin") and details:
        return "clean_error", f"{code.name}: {details}"  # Triton 2.51 refuses restricted protocols as UNAVAILABLE
    if code == grpc.StatusCode.UNAVAILABLE:
        return "unavailable", details
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no_answer", "deadline exceeded"
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
        return "server_error", f"{code.name}: {details}"
    if case.expect.request == "items":
        return "wrong_answer", f"well-formed request refused: {code.name}: {details}"
    return ("clean_error" if details else "server_error"), f"{code.name}: {details}"


def run_case(sender: Sender, case: cases.Case) -> Result:
    start = time.monotonic()
    try:
        status, message, outputs = sender.send(case)
        outcome, detail = judge(case, status, message, outputs)
    except grpc.RpcError as err:
        outcome, detail = judge_rpc_error(case, err)
    except (OSError, http.client.HTTPException) as err:
        if case.expect.close_ok and not isinstance(err, TimeoutError):
            outcome, detail = "clean_error", f"connection closed ({type(err).__name__})"
        else:
            outcome, detail = "no_answer", f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - an unparseable answer is a finding, not a crash of the suite
        outcome, detail = "server_error", f"unparseable answer: {type(err).__name__}: {err}"
    return Result(case.category, case.protocol, outcome, detail, time.monotonic() - start)


# -- the run -----------------------------------------------------------------------------------------------


def well_formed(rng: random.Random, k: int) -> cases.Case:
    proto = ("http", "grpc")[k % 2]
    choice = k % 4
    if choice == 0:
        return cases.Case(
            "well_formed",
            proto,
            "infer",
            cases.DETECT,
            [rng.choice(cases.face_images())],
            cases.Expect("items", ("face",)),
        )
    if choice == 1:
        return cases.Case(
            "well_formed", proto, "infer", cases.DETECT, [cases.no_face_photo()], cases.Expect("items", ("noface",))
        )
    if choice == 2:
        blobs = [rng.choice(cases.face_images()), cases.no_face_image(rng)]
        return cases.Case("well_formed", proto, "infer", cases.DETECT, blobs, cases.Expect("items", ("face", "noface")))
    return cases.Case("well_formed", proto, "infer", cases.CROP, [cases.face_crop()], cases.Expect("items", ("face",)))


def build(count: int, seed: int, chunk: int, skip_known: bool = False) -> list[list[cases.Case]]:
    """Chunks of cases (one category each, plus two well-formed requests), in a shuffled order."""
    rng = random.Random(seed)
    chunks = []
    for category, n in cases.plan(count).items():
        made = [cases.make_case(category, i, rng) for i in range(n)]
        if skip_known:
            made = [c for c in made if c.note not in cases.KNOWN_TRITON_BUGS]
        for case in made:
            case.spec.setdefault("seed", rng.randrange(2**32))
        chunks += [made[i : i + chunk] for i in range(0, n, chunk)]
    rng.shuffle(chunks)
    for k, group in enumerate(chunks):
        group.insert(len(group) // 2, well_formed(rng, 2 * k))
        group.append(well_formed(rng, 2 * k + 1))
    return chunks


def wait_healthy(sender: Sender, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sender.healthy():
            return True
        time.sleep(0.5)
    return False


def run(
    http_url: str,
    grpc_url: str,
    *,
    count: int = 1200,
    seed: int = 0,
    concurrency: int = 2,
    chunk: int = 20,
    pid: int | None = None,
    time_limit: float = 900.0,
    recover_s: float = 180.0,
    skip_known: bool = False,
    log=print,
) -> dict:
    """Runs the suite and returns the report (see :func:`write_report`)."""
    sender = Sender(http_url, grpc_url)
    if not wait_healthy(sender, 60):
        raise SystemExit(f"server at {http_url} / {grpc_url} is not ready")
    root = procs.server_root(pid=pid, port=sender.http_port)
    tritons = procs.triton_pids(root) if root else set()
    rss_before = procs.rss_by_name(root) if root else None
    chunks = build(count, seed, chunk, skip_known)
    counts: dict[str, Counter] = defaultdict(Counter)
    items: Counter = Counter()
    samples: dict[str, list[dict]] = defaultdict(list)
    deaths: list[dict] = []
    latencies: list[float] = []
    started = time.monotonic()
    stopped_early = aborted = False
    lock = threading.Lock()

    def record(result: Result, case: cases.Case) -> None:
        with lock:
            counts[result.category][result.outcome] += 1
            counts[result.category]["sent"] += 1
            items[result.category] += max(1, len(case.blobs))
            if result.category == "well_formed" and result.outcome == "answered":
                latencies.append(result.seconds)
            if result.outcome in ("wrong_answer", "server_error", "no_answer", "unavailable"):
                if len(samples[result.outcome]) < 25:
                    samples[result.outcome].append(
                        {"category": result.category, "protocol": result.protocol, "detail": result.detail[:400]}
                    )

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for n, group in enumerate(chunks):
            if time.monotonic() - started > time_limit:
                stopped_early = True
                break
            for case, result in zip(group, pool.map(lambda c: run_case(sender, c), group), strict=True):
                record(result, case)
            category = group[0].category
            now = procs.triton_pids(root) if root else tritons
            if not sender.healthy() or now != tritons:
                detail = "Triton restarted (pid changed)" if now != tritons else "health check failed"
                deaths.append({"category": category, "batch": n, "detail": detail})
                counts[category]["deaths"] += 1
                log(f"  DEATH after a batch of {category}: {detail}; waiting for the server")
                if not wait_healthy(sender, recover_s):
                    aborted = True
                    log("  the server did not come back; stopping")
                    break
                tritons = procs.triton_pids(root) if root else tritons
            if n % 10 == 0:
                log(f"  batch {n + 1}/{len(chunks)} ({category}), {time.monotonic() - started:.0f} s")
    time.sleep(1)  # let freed memory settle before the second reading
    rss_after = procs.rss_by_name(root) if root else None
    sender.close()
    totals = Counter()
    for c in counts.values():
        totals.update(c)
    abuse_sent = sum(c["sent"] for cat, c in counts.items() if cat != "well_formed")
    return {
        "server": {"http_url": http_url, "grpc_url": grpc_url, "root_pid": root},
        "config": {"count": count, "seed": seed, "concurrency": concurrency, "batch": chunk, "skip_known": skip_known},
        "known_triton_bugs": cases.KNOWN_TRITON_BUGS,
        "duration_s": round(time.monotonic() - started, 1),
        "stopped_early": stopped_early,
        "aborted": aborted,
        "abuse_requests": abuse_sent,
        "items": sum(items.values()),
        "totals": {k: totals.get(k, 0) for k in ("sent", *OUTCOMES, "deaths")},
        "categories": {
            cat: {k: c.get(k, 0) for k in ("sent", *OUTCOMES, "deaths")} | {"items": items[cat]}
            for cat, c in sorted(counts.items())
        },
        "deaths": deaths,
        "samples": dict(samples),
        "well_formed_latency_ms": _percentiles(latencies),
        "rss_bytes": {"before": rss_before, "after": rss_after},
    }


def _percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    ms = np.array(seconds) * 1000
    return {k: round(float(np.percentile(ms, q)), 1) for k, q in (("p50", 50), ("p95", 95), ("max", 100))}


def failed(report: dict) -> bool:
    return bool(report["totals"]["deaths"] or report["totals"]["wrong_answer"] or report["aborted"])


def markdown(report: dict) -> str:
    t = report["totals"]
    mib = 2**20
    lines = [
        "# Abuse suite report",
        "",
        f"`python -m loadtest.abuse --count {report['config']['count']} --seed {report['config']['seed']} "
        f"--concurrency {report['config']['concurrency']}` against {report['server']['http_url']} (HTTP) / "
        f"{report['server']['grpc_url']} (gRPC); {report['duration_s']} s.",
        "",
        f"**{report['abuse_requests']} malformed requests** ({report['items']} items, well-formed ones included) "
        f"and {report['categories'].get('well_formed', {}).get('sent', 0)} interleaved well-formed ones: "
        f"**{t['deaths']} server deaths, {t['wrong_answer']} wrong answers**, {t['server_error']} server errors "
        f"(5xx / INTERNAL), {t['unavailable']} unavailable (503), {t['no_answer']} without an answer."
        + (" Stopped early at the time limit." if report["stopped_early"] else "")
        + (" ABORTED: the server did not come back." if report["aborted"] else ""),
        "",
        "| category | requests | items | clean errors | right answers | wrong answers | 5xx/INTERNAL | 503 | "
        "no answer | deaths |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cat, c in report["categories"].items():
        lines.append(
            f"| {cat} | {c['sent']} | {c['items']} | {c['clean_error']} | {c['answered']} | {c['wrong_answer']} | "
            f"{c['server_error']} | {c['unavailable']} | {c['no_answer']} | {c['deaths']} |"
        )
    lines.append(
        f"| **total** | {t['sent']} | {report['items']} | {t['clean_error']} | {t['answered']} | {t['wrong_answer']} "
        f"| {t['server_error']} | {t['unavailable']} | {t['no_answer']} | {t['deaths']} |"
    )
    lat = report["well_formed_latency_ms"]
    if lat:
        lines += [
            "",
            f"Well-formed requests during the run: p50 {lat['p50']} ms, p95 {lat['p95']} ms, max {lat['max']} ms.",
        ]
    rss = report["rss_bytes"]
    if rss["before"]:
        lines += ["", "| RSS (MiB) | before | after |", "|---|---:|---:|"]
        for name in rss["before"]:
            lines.append(f"| {name} | {rss['before'][name] / mib:.0f} | {rss['after'][name] / mib:.0f} |")
        before, after = sum(rss["before"].values()), sum(rss["after"].values())
        lines.append(f"| total | {before / mib:.0f} | {after / mib:.0f} |")
    else:
        lines += ["", "RSS not measured: the server's processes were not found (pass --pid on the serving host)."]
    for outcome, rows in report["samples"].items():
        lines += ["", f"Examples of `{outcome}`:", ""]
        lines += [f"- {r['category']} ({r['protocol']}): {r['detail']}" for r in rows[:8]]
    lines += [
        "",
        "Known bugs of the pinned Triton these inputs include"
        + (" (left out: --skip-known)" if report["config"]["skip_known"] else "")
        + ":",
        "",
    ]
    lines += [f"- {name}: {why}" for name, why in report["known_triton_bugs"].items()]
    for d in report["deaths"]:
        lines.append(f"- death after batch {d['batch']} ({d['category']}): {d['detail']}")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http-url", default="127.0.0.1:8000", help="host:port of the HTTP endpoint (the door)")
    p.add_argument("--grpc-url", default="127.0.0.1:8001", help="host:port of the gRPC endpoint")
    p.add_argument("--count", type=int, default=1200, help="malformed requests to send (>= 1,000 by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight (the machine may be shared)")
    p.add_argument("--batch", type=int, default=20, help="requests between two health checks")
    p.add_argument("--pid", type=int, help="the launcher's pid (else found from the HTTP port's listener)")
    p.add_argument("--time-limit", type=float, default=900, help="stop sending after this many seconds")
    p.add_argument("--skip-known", action="store_true", help="leave out inputs that trigger known Triton bugs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report path without suffix (.json and .md)")
    args = p.parse_args(argv)
    report = run(
        args.http_url,
        args.grpc_url,
        count=args.count,
        seed=args.seed,
        concurrency=args.concurrency,
        chunk=args.batch,
        pid=args.pid,
        time_limit=args.time_limit,
        skip_known=args.skip_known,
    )
    paths = write_report(report, args.out)
    print(markdown(report))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 1 if failed(report) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Sending the abuse suite's cases: HTTP over fresh ``http.client`` connections or raw sockets, gRPC over one
channel with hand-built protobufs, so that malformed requests reach the server as malformed as they were made.

Admin calls present a wrong secret under the header and metadata names the server really checks
(:mod:`serving.runtime.security`), so a renamed header cannot make them pass by accident.
"""

from __future__ import annotations

import gzip
import http.client
import json
import random
import socket
import struct
import time
import urllib.parse

import grpc
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc
import tritonclient.http as httpclient

from common import contract
from loadtest.abuse import cases
from loadtest.bench.wire import serialize_bytes
from serving.runtime.security import ADMIN_HEADER, GRPC_ADMIN_METADATA

TIMEOUT_S = 60.0
#: What the admin calls present as the secret: never the real one.
WRONG_KEY = "wrong-key"


def _tensor_spec(case: cases.Case) -> tuple[str, str, list[int], bytes]:
    """Input name, datatype, shape and raw contents of an "infer" case."""
    spec = case.spec
    datatype = spec.get("datatype", "BYTES")
    raw = serialize_bytes(case.blobs) if datatype == "BYTES" else b"".join(case.blobs)
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
        headers = {ADMIN_HEADER: WRONG_KEY} if (i // len(calls)) % 2 else {}
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
            request.raw_input_contents.append(serialize_bytes([b"x"]))
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
                request.raw_input_contents.extend([serialize_bytes([b"a"]), serialize_bytes([b"b"])])
            elif variant == 5:  # typed contents whose count does not match the shape
                tensor.contents.bytes_contents.extend([b"a", b"b", b"c"])
            elif variant == 6:  # typed and raw contents at once
                tensor.contents.bytes_contents.append(b"a")
                request.raw_input_contents.append(serialize_bytes([b"a"]))
            elif variant == 7:  # float contents for a BYTES input
                tensor.contents.fp32_contents.extend([1.0])
            else:  # negative and huge dimensions
                del tensor.shape[:]
                tensor.shape.extend([-1, 2**40])
                request.raw_input_contents.append(serialize_bytes([b"a"]))
            response = self.stub.ModelInfer(request, timeout=TIMEOUT_S)
        result = grpcclient.InferResult(response)
        return 200, "", {o: result.as_numpy(o) for o in cases.OUTPUTS if result.get_output(o) is not None}

    def grpc_cancel(self, case: cases.Case):
        """A complete request the caller gives up on: a 5 ms deadline (even ``i``) or an explicit cancel, i.e. an
        HTTP/2 RST_STREAM, 2-40 ms after sending (odd). Either crashed Triton 2.51's ensembles (issue 18); the gate
        (serving/runtime/gate.py) keeps the cancel from reaching Triton. A caller that gave up gets status 499."""
        i = case.spec["i"]
        request = pb.ModelInferRequest(model_name=case.model)
        request.inputs.add(name=contract.IMAGE_INPUT, datatype="BYTES", shape=[len(case.blobs), 1])
        request.raw_input_contents.append(serialize_bytes(case.blobs))
        try:
            if i % 2 == 0:
                response = self.stub.ModelInfer(request, timeout=0.005)
            else:
                future = self.stub.ModelInfer.future(request, timeout=TIMEOUT_S)
                time.sleep(0.002 + 0.038 * (i // 2 % 7) / 6)
                future.cancel()
                response = future.result()
        except grpc.FutureCancelledError:
            return 499, "cancelled by the caller", None
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                return 499, f"given up by the caller ({err.code().name})", None
            raise
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
        metadata = [(GRPC_ADMIN_METADATA, WRONG_KEY)] if (i // len(calls)) % 2 else None
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

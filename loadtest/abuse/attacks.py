"""The attacker's senders of issue 18's probes: declared-shape overflows and cancelled calls.

HTTP and the raw HTTP/2 resets bind 127.0.0.2 (the attacker's own address for the door's per-client limits);
the 5 ms-deadline gRPC calls go through grpcio, which cannot choose its source address (127.0.0.1).
Used by tests/test_gate.py and ``python -m loadtest.abuse.probes``.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from common import contract, spec
from loadtest.abuse import slow
from loadtest.abuse.victims import CROP, grpc_request
from loadtest.bench.wire import frame, serialize_bytes

ATTACKER = "127.0.0.2"
TIMEOUT_S = 60.0
#: Issue 18 item 1: the internal ``age`` model with a batch dimension that Triton 2.51 truncates, and the crop
#: ensemble with the shapes it accepted. (model, declared shape); ``age`` takes square uint8 RGB crops.
_AGE_SIDE = spec.image_size(contract.AGE_MODEL)
OVERFLOW_TARGETS = (
    (contract.AGE_MODEL, [2**62, _AGE_SIDE, _AGE_SIDE, 3]),
    (CROP, [2**62, 1]),
    (CROP, [2**62 + 1, 1]),
    (CROP, [2**32 + 1, 1]),
)
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
_RST_CANCEL = 0x8  # HTTP/2 error code CANCEL, what a client library sends when its caller gives up
_MAX_FRAME = 16384  # HTTP/2's default SETTINGS_MAX_FRAME_SIZE


def http_call(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None, source: str = ATTACKER
) -> tuple[int, bytes]:
    """(status, body) of one request on a fresh connection bound to ``source``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def http_infer(
    url: str, model: str, shape: list[int], raw: bytes, datatype: str = "BYTES", input_name: str = contract.IMAGE_INPUT
) -> tuple[int, bytes]:
    """An inference in the binary data extension with the declared ``shape`` as given; ``raw`` is the tensor data."""
    header = json.dumps(
        {
            "inputs": [
                {"name": input_name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
            ]
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return http_call(url, "POST", f"/v2/models/{model}/infer", header + raw, headers)


def age_request(shape: list[int], image: np.ndarray) -> pb.ModelInferRequest:
    """A ModelInfer to the internal ``age`` model: one uint8 64 x 64 crop under a (lying) declared shape."""
    request = pb.ModelInferRequest(model_name=contract.AGE_MODEL)
    tensor = request.inputs.add(name=contract.CROP_INPUT, datatype="UINT8")
    tensor.shape.extend(shape)
    request.raw_input_contents.append(image.astype(np.uint8).tobytes())
    return request


def raw_reset(grpc_url: str, request: pb.ModelInferRequest, after_s: float, source: str = ATTACKER) -> None:
    """A complete ModelInfer on a hand-framed HTTP/2 connection, then RST_STREAM(CANCEL) ``after_s`` later.

    The message must fit the peer's initial 64 KiB flow-control window (no WINDOW_UPDATE is awaited).
    """
    host, port = grpc_url.removeprefix("grpc://").rsplit(":", 1)
    body = frame(request)
    if len(body) > 65535:
        raise ValueError("the request must fit HTTP/2's initial flow-control window")
    with socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0)) as sock:
        frames = [slow._PREFACE, slow._frame(slow._SETTINGS, 0, 0)]
        frames.append(slow._frame(slow._HEADERS, slow._END_HEADERS, 1, slow._grpc_headers(f"{host}:{port}")))
        chunks = [body[i : i + _MAX_FRAME] for i in range(0, len(body), _MAX_FRAME)]
        for k, chunk in enumerate(chunks):
            frames.append(slow._frame(slow._DATA, slow._END_STREAM if k == len(chunks) - 1 else 0, 1, chunk))
        sock.sendall(b"".join(frames))
        time.sleep(after_s)
        sock.sendall(slow._frame(slow._RST, 0, 1, struct.pack(">I", _RST_CANCEL)))
        time.sleep(0.01)  # let the reset arrive before the FIN


def deadline_call(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest, timeout: float = 0.005) -> str:
    """A gRPC call with a 5 ms deadline: grpcio resets the stream (RST_STREAM) mid-inference. Returns the status."""
    try:
        stub.ModelInfer(request, timeout=timeout)
        return "OK"
    except grpc.RpcError as err:
        return err.code().name


def cancel_request(photo: bytes) -> pb.ModelInferRequest:
    """The cancel flood's request: one photo to the ``age_gender`` ensemble (detection, then both models)."""
    return grpc_request(contract.DETECT_ENSEMBLE, [1, 1], [photo])


def overflow_raw(model: str, image: np.ndarray, crop: bytes) -> tuple[str, bytes]:
    """(datatype, raw tensor bytes) an overflow call to ``model`` carries: one image's worth of data."""
    if model == contract.AGE_MODEL:
        return "UINT8", image.astype(np.uint8).tobytes()
    return "BYTES", serialize_bytes([crop])

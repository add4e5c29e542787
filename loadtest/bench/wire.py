"""Request bodies as they travel, for load generators that send fixed bytes (h2load, wrk): no Python client runs.

* :func:`grpc_frame`: one gRPC message, a ``ModelInfer`` call with one encoded image (what tritonclient.grpc sends);
  :func:`faces_grpc_frame` the same for ``faces``, which has no batch dimension;
* :func:`http_body`: the KServe v2 HTTP request with the image in the binary-data extension (what tritonclient.http
  sends), and the header that says where its JSON part ends.

Both ask for :data:`loadtest.bench.driver.OUTPUTS`, as the Python-client benchmark does, so the two measure the
same answer.
"""

from __future__ import annotations

import json
import struct

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from common import contract
from loadtest.bench.driver import OUTPUTS

#: The method path h2load posts to (gRPC over HTTP/2 is a POST to /<package>.<service>/<method>).
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
#: Headers a gRPC server requires on every call; nginx's grpc_pass refuses a call without ``te: trailers``.
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
#: The KServe v2 binary-data extension's header: bytes of JSON before the raw tensor data.
HEADER_LENGTH = "Inference-Header-Content-Length"


def serialize_bytes(blobs: list[bytes]) -> bytes:
    """A BYTES tensor's raw contents as Triton lays them out (each element a little-endian uint32 length, then the
    bytes), by tritonclient's own serializer; also what the abuse suite's hand-built requests carry."""
    column = np.empty(len(blobs), dtype=object)
    column[:] = blobs  # element by element: numpy would otherwise make equal-length blobs a 2-D array
    return serialize_byte_tensor(column).item() if len(blobs) else b""


def infer_request(model: str, image: bytes) -> service_pb2.ModelInferRequest:
    """``image`` as a ``[1, 1]`` BYTES tensor (batch of one, as the Python benchmark sends it) in raw_input_contents."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=contract.IMAGE_INPUT, datatype="BYTES", shape=[1, 1])
    for name in OUTPUTS:
        request.outputs.add(name=name)
    request.raw_input_contents.append(serialize_bytes([image]))
    return request


def frame(request: service_pb2.ModelInferRequest) -> bytes:
    """A length-prefixed gRPC message: flag 0 (not compressed), 4-byte big-endian length, the protobuf."""
    message = request.SerializeToString()
    return struct.pack(">BI", 0, len(message)) + message


def grpc_frame(model: str, image: bytes) -> bytes:
    """The framed ``ModelInfer`` of :func:`infer_request`: what h2load sends."""
    return frame(infer_request(model, image))


def faces_grpc_frame(image: bytes) -> bytes:
    """A framed ``faces`` call: no batch dimension (one image, any number of faces), every output asked for."""
    request = service_pb2.ModelInferRequest(model_name=contract.FACES_MODEL)
    request.inputs.add(name=contract.IMAGE_INPUT, datatype="BYTES", shape=[1])
    request.raw_input_contents.append(serialize_bytes([image]))
    return frame(request)


def parse_grpc_frame(frame: bytes) -> service_pb2.ModelInferRequest:
    """The inverse of :func:`grpc_frame` (tests, and a check that the file h2load sends is what we meant)."""
    flag, length = struct.unpack(">BI", frame[:5])
    if flag != 0 or length != len(frame) - 5:
        raise ValueError(f"not one uncompressed gRPC message: flag {flag}, length {length}, {len(frame) - 5} bytes")
    return service_pb2.ModelInferRequest.FromString(frame[5:])


def http_body(image: bytes) -> tuple[bytes, int]:
    """The v2 infer body for ``image`` and the length of its JSON part (the value of :data:`HEADER_LENGTH`).

    Outputs come back as JSON (``binary_data: false``): a few hundred bytes that wrk reads and drops."""
    raw = serialize_bytes([image])
    header = {
        "inputs": [
            {
                "name": contract.IMAGE_INPUT,
                "shape": [1, 1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": False}} for name in OUTPUTS],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + raw, len(head)

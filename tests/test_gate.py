"""Issue 18, items 1, 2 and 6: the gate between the door and Triton (serving/runtime/gate.py), against a real server.

Attackers send from 127.0.0.2 where the client library lets us choose (HTTP); victims call the crop path at the
same time and must get their own answers, and only those.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import itertools
import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
from PIL import Image, ImageOps
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from common import contract
from loadtest.abuse import attacks, cases
from loadtest.abuse import victims as victims_mod
from loadtest.abuse.attacks import http_call, http_infer
from loadtest.abuse.victims import Victims
from loadtest.abuse.victims import grpc_answer as _answer
from loadtest.abuse.victims import grpc_request as _request
from loadtest.bench.wire import serialize_bytes
from serving.runtime import door, gate_check, gate_http, gate_relay, ports, security
from tests.conftest import OTHER_UID, binds_as

ROOT = Path(__file__).resolve().parents[1]
CROP, DETECT = contract.CROP_ENSEMBLE, contract.DETECT_ENSEMBLE
OVERFLOWS = ([2**62, 1], [2**62 + 1, 1], [2**62 + 3, 1], [2**32 + 1, 1], [2**63 - 1, 1], [-1, 1], [0, 1], [33, 1])


# -- pure checks (no server) -------------------------------------------------------------------------------------


def test_victims_crops_are_told_apart_by_mirror_invariant_models():
    # The served models average each face with its mirror: a victim crop that is another's mirror gets the same
    # answer, and a swap between those two callers would pass as "their own".
    crops = [Image.open(io.BytesIO(blob)).convert("RGB") for blob in victims_mod.images()]
    for a, b in itertools.combinations(crops, 2):
        assert ImageOps.mirror(a).tobytes() != b.tobytes()
    answers = [(b"a", np.float32([30.0])), (b"b", np.float32([30.0004])), (b"c", np.float32([41.0]))]
    assert [crop for crop, _ in victims_mod.choose(answers, 2)] == [b"a", b"c"]
    with pytest.raises(RuntimeError, match="only 2 of 3"):
        victims_mod.choose(answers, 3)


def test_public_schema_matches_the_model_configs():
    for name, model in gate_check.PUBLIC_INPUTS.items():
        for config in [
            ROOT / "model_repository" / name / "config.pbtxt",
            *(ROOT / "model_repository" / name).glob("configs/*.pbtxt"),
        ]:
            text = config.read_text()
            assert int(re.search(r"^max_batch_size:\s*(\d+)", text, re.M).group(1)) == model.max_batch_size, config
            inputs = re.findall(
                r'\{\s*name:\s*"(\w+)"\s+data_type:\s*TYPE_(\w+)\s+dims:\s*\[([^\]]*)\]', text.split("output")[0]
            )
            declared = {
                n: (("BYTES" if t == "STRING" else t), tuple(int(d) for d in dims.split(","))) for n, t, dims in inputs
            }
            assert declared == {n: (t.datatype, t.dims) for n, t in model.inputs.items()}, config


@pytest.mark.parametrize("shape", OVERFLOWS)
def test_declared_shapes_outside_the_schema_are_refused(shape):
    with pytest.raises(gate_check.Refused, match="shape"):
        gate_check.check_grpc_infer(_request(CROP, shape, [b"x"]))
    header = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": 5}}]}
    with pytest.raises(gate_check.Refused, match="shape"):
        gate_check.check_http_infer(CROP, header, struct.pack("<I", 1) + b"x")


#: Shapes outside the schema whose data matches them: only the shape check itself can refuse these (above, the
#: element count refused them too).
HONEST_OUTSIDE = ([33, 1], [0, 1], [1, 2], [1], [1, 1, 1])


@pytest.mark.parametrize("shape", HONEST_OUTSIDE)
def test_the_shape_check_refuses_shapes_whose_data_matches_them(shape):
    blobs = [b"x"] * math.prod(shape)
    expected = r"is not \[batch, 1\] with 1 <= batch <= 32"
    with pytest.raises(gate_check.Refused, match=expected):
        gate_check.check_grpc_infer(_request(CROP, shape, blobs))
    raw = serialize_bytes(blobs)
    header = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": len(raw)}}]
    }
    with pytest.raises(gate_check.Refused, match=expected):
        gate_check.check_http_infer(CROP, header, raw)
    with pytest.raises(gate_check.Refused, match=r"shape \[1, 1\] is not \[1\]"):  # faces takes one image, no batch
        gate_check.check_grpc_infer(_request(contract.FACES_MODEL, [1, 1], [b"x"]))


def _grpc(**change) -> pb.ModelInferRequest:
    """A valid crop-path request of two images, then ``change`` applied: each a callable on the request."""
    request = _request(CROP, [2, 1], [b"x", b"yz"])
    for apply in change.values():
        apply(request)
    return request


def _contents(request):
    del request.raw_input_contents[:]
    request.inputs[0].contents.bytes_contents.extend([b"x"])  # one element where the shape says two


#: Each of the gate's own refusals of a gRPC request (gate_check.check_grpc_infer), by the text it answers: the
#: request is valid but for the one thing changed, so only that check can refuse it (Triton never sees it).
GRPC_REFUSALS = {
    "datatype": (dict(d=lambda r: setattr(r.inputs[0], "datatype", "UINT8")), "must be BYTES, got 'UINT8'"),
    "input name": (dict(n=lambda r: setattr(r.inputs[0], "name", "img")), "has no input 'img'|takes exactly"),
    "second input": (
        dict(i=lambda r: r.inputs.add(name="image", datatype="BYTES", shape=[2, 1])),
        "takes exactly the inputs image; got 2",
    ),
    "raw entries": (dict(r=lambda r: r.raw_input_contents.append(b"")), "one entry per input"),
    "data twice": (
        dict(c=lambda r: r.inputs[0].contents.bytes_contents.extend([b"x", b"yz"])),
        "data given twice",
    ),
    "contents count": (dict(c=_contents), "exactly 2 bytes_contents elements"),
    "no data": (dict(r=lambda r: r.ClearField("raw_input_contents")), "has no data"),
    "NUL in the id": (dict(i=lambda r: setattr(r, "id", "job-1\0job-2")), "'id' must not contain a NUL"),
}


@pytest.mark.parametrize("change,message", GRPC_REFUSALS.values(), ids=GRPC_REFUSALS.keys())
def test_each_grpc_check_refuses_on_its_own(change, message):
    gate_check.check_grpc_infer(_grpc())  # the unchanged request passes
    with pytest.raises(gate_check.Refused, match=message) as refusal:
        gate_check.check_grpc_infer(_grpc(**change))
    assert refusal.value.code == gate_check.INVALID_ARGUMENT


def _http(binary: bytes = b"", **tensor) -> tuple[dict, bytes]:
    raw = serialize_bytes([b"x", b"yz"])
    image = {"name": "image", "datatype": "BYTES", "shape": [2, 1], "parameters": {"binary_data_size": len(raw)}}
    return {"inputs": [{**image, **tensor}]}, raw + binary


#: The same for HTTP (gate_check.check_http_infer).
HTTP_REFUSALS = {
    "datatype": (_http(datatype="UINT8"), "must be BYTES"),
    "negative binary size": (_http(parameters={"binary_data_size": -1}), "binary_data_size does not fit"),
    "binary size past the body": (_http(parameters={"binary_data_size": 10**6}), "binary_data_size does not fit"),
    "bytes after the inputs": (_http(b"extra"), "the inputs' binary_data_size add up to"),
    "data not strings": (
        ({"inputs": [{**_http()[0]["inputs"][0], "parameters": {}, "data": [1, 2]}]}, b""),
        "2 strings",
    ),
    "no data": (({"inputs": [{**_http()[0]["inputs"][0], "parameters": {}}]}, b""), "has no data"),
    "shape not a list": (_http(shape="2,1"), "'shape' must be a list"),
    "inputs not a list": (({"inputs": {"name": "image"}}, b""), "needs 'inputs', a list of objects"),
    "NUL in the id": (({**_http()[0], "id": "job-1\0job-2"}, _http()[1]), "'id' must not contain a NUL"),
}


@pytest.mark.parametrize("request_,message", HTTP_REFUSALS.values(), ids=HTTP_REFUSALS.keys())
def test_each_http_check_refuses_on_its_own(request_, message):
    gate_check.check_http_infer(CROP, *_http())  # the unchanged request passes
    with pytest.raises(gate_check.Refused, match=message):
        gate_check.check_http_infer(CROP, *request_)


def test_the_gate_parses_messages_without_the_grpc_client():
    """The gate starts beside Triton's stubs on a cold start: its message classes come without tritonclient's gRPC
    client, numpy and ml_dtypes (serving/runtime/triton_messages.py), and are the classes the client uses."""
    code = (
        "import sys, serving.runtime.gate as g; "
        "print(','.join(m for m in ('numpy', 'ml_dtypes', 'tritonclient.grpc') if m in sys.modules)); "
        "r = g.pb.ModelInferRequest(model_name='m', inputs=[g.pb.ModelInferRequest.InferInputTensor(shape=[1])]); "
        "import tritonclient.grpc; from tritonclient.grpc import service_pb2; "
        "print(service_pb2.ModelInferRequest.FromString(r.SerializeToString()).inputs[0].shape, service_pb2 is g.pb)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["", "[1] True"], out.stdout


def test_element_count_must_match_the_data():
    with pytest.raises(gate_check.Refused, match="length-prefixed"):
        gate_check.check_grpc_infer(_request(CROP, [2, 1], [b"x"]))
    gate_check.check_grpc_infer(_request(CROP, [2, 1], [b"x", b"yz"]))
    with pytest.raises(gate_check.Refused, match="2 strings"):
        gate_check.check_http_infer(
            CROP, {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1], "data": ["a"]}]}, b""
        )
    request = _request(CROP, [1, 1], [b"x"])
    request.parameters["timeout"].int64_param = 1
    with pytest.raises(gate_check.Refused, match="timeout"):
        gate_check.check_grpc_infer(request)


_IMAGE_JSON = {"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": ["x"]}
#: HTTP request fields of a type Triton 2.51 cannot read, which it answered with HTTP 500 (its own fault) before.
WRONG_JSON = {
    "id 5": {"id": 5},
    "id null": {"id": None},
    "outputs not a list": {"outputs": 5},
    "output not an object": {"outputs": [5]},
    "output without a name": {"outputs": [{}]},
    "output name a number": {"outputs": [{"name": 5}]},
    "output parameters not an object": {"outputs": [{"name": "age", "parameters": 5}]},
    "binary_data a string": {"outputs": [{"name": "age", "parameters": {"binary_data": "yes"}}]},
    "classification": {"outputs": [{"name": "age", "parameters": {"classification": 3}}]},
    "binary_data_output a string": {"parameters": {"binary_data_output": "x"}},
    "binary_data_output a number": {"parameters": {"binary_data_output": 1}},
    "shared memory offset a flag": {"inputs": [{**_IMAGE_JSON, "parameters": {"shared_memory_offset": True}}]},
}


@pytest.mark.parametrize("fields", WRONG_JSON.values(), ids=WRONG_JSON.keys())
def test_wrongly_typed_request_fields_are_the_callers_mistake(fields):
    with pytest.raises(gate_check.Refused) as refusal:  # an admin's mistake too (shared memory is theirs alone)
        gate_check.check_http_infer(CROP, {"inputs": [_IMAGE_JSON], **fields}, b"", admin=True)
    assert refusal.value.code == gate_check.INVALID_ARGUMENT
    # The same request, written right, passes.
    good = {"id": "a", "outputs": [{"name": "age", "parameters": {"binary_data": True}}]}
    good["parameters"] = {"binary_data_output": False}
    gate_check.check_http_infer(CROP, {"inputs": [_IMAGE_JSON], **good}, b"")


def test_grpc_parameters_are_held_to_their_type():
    request = _request(CROP, [1, 1], [b"x"])
    request.outputs.add(name="age").parameters["binary_data"].bool_param = True
    gate_check.check_grpc_infer(request)
    request.outputs[0].parameters["binary_data"].string_param = "yes"
    with pytest.raises(gate_check.Refused, match="'binary_data' must be bool"):
        gate_check.check_grpc_infer(request)
    del request.outputs[0].parameters["binary_data"]
    request.outputs[0].parameters["classification"].int64_param = 3
    with pytest.raises(gate_check.Refused, match="'classification' is not accepted"):
        gate_check.check_grpc_infer(request)


def test_json_answers_are_made_valid_json():
    nan = b'{"parameters":{"sequence_id":0,"sequence_id":0},'
    nan += b'"outputs":[{"data":[NaN,Infinity,-Infinity,1.5,"\xc3\xa9"]}]}'
    text, length = gate_http.strict_json(nan, None)
    assert length is None
    assert json.loads(text, parse_constant=_not_json) == {
        "parameters": {"sequence_id": 0},
        "outputs": [{"data": [None, None, None, 1.5, "\u00e9"]}],
    }
    # Binary outputs after the JSON header are kept, and the header's length follows its new size.
    text, length = gate_http.strict_json(nan + b"\x00\xffraw", str(len(nan)))
    assert text.endswith(b"\x00\xffraw") and int(length) == len(text) - 5
    assert json.loads(text[: int(length)], parse_constant=_not_json)["outputs"][0]["data"][0] is None
    assert gate_http.strict_json(b"not json", None) == (b"not json", None)


#: One reading for the gate, another for Triton: Python's json keeps a repeated key's last value, Triton's parser its
#: first. Each of these passed the gate's checks on a valid input while Triton ran two items (or [2**62, 1]).
REPEATED_KEYS = (
    b'{"inputs": [{"name": "image", "shape": [2, 1], "datatype": "BYTES", "data": ["x", "y"]}],'
    b' "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}]}',
    b'{"inputs": [{"name": "image", "shape": [4611686018427387904, 1], "shape": [1, 1], "datatype": "BYTES",'
    b' "data": ["x"]}]}',
)


#: JSON that Python reads and Triton's parser does not (HTTP 500 from Triton before the gate refused it).
NOT_TRITONS_JSON = (
    json.dumps({"inputs": [_IMAGE_JSON]}).encode("utf-16"),
    json.dumps({"inputs": [_IMAGE_JSON]}).encode("utf-32"),
    json.dumps({"inputs": [{**_IMAGE_JSON, "data": ["\ud800"]}]}, ensure_ascii=True).encode(),  # a lone surrogate
)


def test_the_gate_reads_request_json_as_triton_does():
    nested = b'{"a": {"b": [{"c": "\\ud83d\\ude00"}]}}'  # an escaped surrogate pair is one character
    assert gate_http.request_json(nested) == {"a": {"b": [{"c": "\U0001f600"}]}}
    assert gate_http.request_json(b"\xef\xbb\xbf" + nested) == gate_http.request_json(nested)  # Triton skips a BOM
    for body in REPEATED_KEYS:
        with pytest.raises(gate_http.RepeatedKey, match="twice"):
            gate_http.request_json(body)
    for body in NOT_TRITONS_JSON:
        with pytest.raises(ValueError):
            gate_http.request_json(body)


@pytest.mark.integration
def test_the_gate_asks_triton_for_uncompressed_answers(triton_tiny):
    """aiohttp asks for gzip by default and Triton complies: the gate would inflate what Triton deflated, both on
    loopback. The gate's headers, sent to the real Triton's HTTP port: the answer comes uncompressed; the same call
    with aiohttp's default Accept-Encoding comes gzipped."""
    gate = gate_http.HttpGate(
        f"127.0.0.1:{triton_tiny.triton_http_port}",
        "",
        security.internal_headers(security.internal_key()),
        gate_relay.Upstream(),
        gate_relay.Loading([], None),
    )
    url = f"{gate.base}/v2/models/{CROP}/infer"
    body = json.dumps({"inputs": [_IMAGE_JSON]}).encode()
    aiohttps_own = {k: v for k, v in gate.headers.items() if k != "Accept-Encoding"}

    async def encodings() -> list[tuple[int, str | None]]:
        out = []
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            for headers in (gate.headers, aiohttps_own):
                async with session.post(url, data=body, headers={**headers, "Content-Type": "application/json"}) as a:
                    await a.read()
                    out.append((a.status, a.headers.get("Content-Encoding")))
        return out

    assert asyncio.run(encodings()) == [(200, None), (200, "gzip")]


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


# -- through the door, against a real server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(triton_tiny):
    channel = grpc.insecure_channel(triton_tiny.grpc_url)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def references(triton_tiny):
    return victims_mod.references(triton_tiny.grpc_url)


@pytest.mark.integration
def test_internal_models_are_not_public(triton_tiny, stub):
    crop = cases.face_crop()
    for model in ("age", "gender", "preprocess", "preprocess_crop", "postprocess", "x" * 5000):
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(_request(model, [1, 1], [crop]))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "not a public model" in err.value.details()
        assert len(err.value.details()) <= gate_relay.ERROR_BYTES
        for rpc, message in ((stub.ModelConfig, pb.ModelConfigRequest), (stub.ModelMetadata, pb.ModelMetadataRequest)):
            with pytest.raises(grpc.RpcError) as err:
                rpc(message(name=model))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        status, body = http_infer(triton_tiny.http_url, model, [1, 1], serialize_bytes([crop]))
        assert status == 404 and b"not a public model" in body, body[:200]
    for path in (
        "/v2/models/age",
        "/v2/models/age/config",
        "/v2/models/%61ge/infer",
        "/v2/models/age/versions/1/infer",
    ):
        assert http_call(triton_tiny.http_url, "GET", path)[0] == 404, path
    # The public ones still answer, with the real status of a Triton error.
    assert stub.ModelConfig(pb.ModelConfigRequest(name=CROP)).config.max_batch_size == 32
    assert http_call(triton_tiny.http_url, "GET", f"/v2/models/{CROP}/config")[0] == 200
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(
            pb.ModelInferRequest(
                model_name=CROP,
                model_version="7" * 3000,
                inputs=_request(CROP, [1, 1], [crop]).inputs,
                raw_input_contents=[struct.pack("<I", 1) + b"x"],
            )
        )
    assert (
        err.value.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK)
        and len(err.value.details()) <= gate_relay.ERROR_BYTES
    )


@pytest.mark.integration
def test_shape_overflow_is_refused_and_victims_get_only_their_own_answers(triton_tiny, stub, references):
    crop = cases.face_crop()
    refused = answered = 0
    with Victims(references, grpc_url=triton_tiny.grpc_url) as victims:
        # 2 s of rounds: the gate refuses each at once, so a shape that got through fails the first round; the victims
        # saturate the cores all along (8 s of them cost 11 CPU-s and showed nothing more).
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for shape in OVERFLOWS:
                try:
                    stub.ModelInfer(_request(CROP, shape, [crop]))
                    answered += 1
                except grpc.RpcError as err:
                    refused += err.code() == grpc.StatusCode.INVALID_ARGUMENT
                status, _ = http_infer(triton_tiny.http_url, CROP, shape, serialize_bytes([crop]))
                refused += status == 400
                answered += status == 200
            # The CNN is not public: refused as such before its shape is read. The detection path: for its shape.
            for model, shape, code, words in (
                ("age", [2**62, 64, 64, 3], grpc.StatusCode.NOT_FOUND, "not a public model"),
                (DETECT, [2**62, 1], grpc.StatusCode.INVALID_ARGUMENT, "shape"),
            ):
                with pytest.raises(grpc.RpcError) as err:
                    stub.ModelInfer(_request(model, shape, [crop]))
                assert err.value.code() == code and words in err.value.details(), (model, err.value)
    assert answered == 0 and refused > 0
    victims.assert_served()


@pytest.mark.integration
def test_cancel_flood_never_reaches_triton(triton_tiny, references):
    pid, restarts = triton_tiny._proc.pid, triton_tiny.restarts
    photo = cases.face_images()[0]
    # For the deadline calls, a large PNG, so that decoding and detection outlast the 5 ms deadline by far: the
    # reset must land mid-inference (the 512x600 JPEG was once answered within 5 ms after detection got faster).
    # The hand-framed resets keep the JPEG: their request must fit HTTP/2's initial flow-control window.
    large = cases.encode(cases.face_photo().resize((1536, 1800)), "PNG")
    with (
        Victims(references, grpc_url=triton_tiny.grpc_url) as victims,
        grpc.insecure_channel(triton_tiny.grpc_url) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # A count, not a time window: a slower machine sends every cancel too, it only takes longer (about 4 s).
        for sent in range(40):
            request = attacks.cancel_request(large if sent % 3 == 0 else photo)
            if sent % 3 == 0:
                # A client deadline of 5 ms: its library resets the stream (RST_STREAM) mid-inference.
                assert attacks.deadline_call(stub, request) != "OK"
            elif sent % 3 == 1:
                # A complete request, then an explicit cancel (RST_STREAM) 2-40 ms later.
                future = stub.ModelInfer.future(request)
                time.sleep(0.002 + 0.038 * (sent % 7) / 6)
                future.cancel()
            else:
                # The same on a hand-framed HTTP/2 stream from the attacker's own address.
                attacks.raw_reset(triton_tiny.grpc_url, request, 0.002 + 0.038 * (sent % 7) / 6)
            time.sleep(0.05)  # the victims keep both cores busy meanwhile: a longer pause only costs their CPU
    time.sleep(2)  # a crash would show within a second of the last cancel
    assert triton_tiny._proc.pid == pid and triton_tiny.restarts == restarts and triton_tiny._proc.poll() is None
    victims.assert_served()


@pytest.mark.integration
def test_admin_without_the_key_is_permission_denied(triton_tiny, stub):
    for call, request in (
        (stub.RepositoryIndex, pb.RepositoryIndexRequest()),
        (stub.LogSettings, pb.LogSettingsRequest()),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            call(request, metadata=[(security.GRPC_ADMIN_METADATA, "wrong")])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stub.RepositoryIndex(
        pb.RepositoryIndexRequest(), metadata=[(security.GRPC_ADMIN_METADATA, triton_tiny.admin_key)]
    ).models
    assert http_call(triton_tiny.http_url, "POST", "/v2/repository/index", b"{}")[0] == 403
    # Operators (serving.ops.rollout) read the internal models' config with the key, over both protocols.
    key = {security.ADMIN_HEADER: triton_tiny.admin_key}
    assert http_call(triton_tiny.http_url, "GET", "/v2/models/age/config", headers=key)[0] == 200
    assert http_call(triton_tiny.http_url, "GET", "/v2/models/age/ready", headers=key)[0] == 200
    assert (
        http_call(triton_tiny.http_url, "GET", "/v2/models/age/config", headers={security.ADMIN_HEADER: "x"})[0] == 403
    )
    assert http_call(triton_tiny.http_url, "POST", "/v2/models/age/infer", b"{}", headers=key)[0] == 404
    admin = [(security.GRPC_ADMIN_METADATA, triton_tiny.admin_key)]
    assert stub.ModelConfig(pb.ModelConfigRequest(name="age"), metadata=admin).config.name == "age"
    # One request stream would carry many requests past one check: refused outright.
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ModelStreamInfer(iter([_request(CROP, [1, 1], [b"x"])])))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.integration
def test_a_killed_gate_is_restarted_on_its_ports(triton_tiny, stub):
    gate_process = triton_tiny._gate
    before = gate_process.restarts
    killed = gate_process.proc
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    # Until it listens again, nobody else may: nginx sends the internal key there (ports.Held).
    if os.geteuid() == 0:
        assert not any(binds_as(port, uid=OTHER_UID) for port in gate_process.listen_ports)
    assert not any(binds_as(port, reuse_port=False) for port in gate_process.listen_ports)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if gate_process.restarts > before and stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                break
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    assert gate_process.restarts == before + 1
    assert _answer(stub.ModelInfer(_request(CROP, [1, 1], [cases.face_crop()]))).shape == (1,)


@pytest.mark.integration
def test_the_gate_serves_only_the_door(triton_tiny):
    # Another local user calling the gate's loopback ports directly would skip the door's limits.
    with grpc.insecure_channel(triton_tiny._gate.grpc) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_request(CROP, [1, 1], [cases.face_crop()]))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    host, port = triton_tiny._gate.http.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", f"/v2/models/{CROP}/infer", body=b"{}")
    assert connection.getresponse().status == 403
    connection.close()


@pytest.mark.integration
def test_http_json_is_strict_and_callers_mistakes_are_4xx(triton_tiny):
    """A JSON answer parses with a strict parser (a browser's JSON.parse has no NaN), and a wrongly typed field gets
    400 with the reason, not Triton 2.51's 500."""
    face = http_infer(triton_tiny.http_url, CROP, [1, 1], serialize_bytes([cases.face_crop()]))
    garbage = http_call(
        triton_tiny.http_url, "POST", f"/v2/models/{CROP}/infer", json.dumps({"inputs": [_IMAGE_JSON]}).encode()
    )
    answers = []
    for status, text in (face, garbage):
        assert status == 200, text[:300]
        answers.append({o["name"]: o["data"] for o in json.loads(text, parse_constant=_not_json)["outputs"]})
    assert isinstance(answers[0][contract.ENSEMBLE_AGE][0], float) and answers[0][contract.ENSEMBLE_ERROR] == [""]
    assert answers[0][contract.ENSEMBLE_SCORE] == [None]  # NaN on the crop path: no detector ran
    assert answers[1][contract.ENSEMBLE_AGE] == [None] and answers[1][contract.ENSEMBLE_ERROR][0]
    bodies = [json.dumps({"inputs": [_IMAGE_JSON], **fields}).encode() for fields in WRONG_JSON.values()]
    for body in [*bodies, *REPEATED_KEYS, *NOT_TRITONS_JSON]:
        status, text = http_call(triton_tiny.http_url, "POST", f"/v2/models/{CROP}/infer", body)
        # Shared memory without the admin key is refused for the key (403) before its type is looked at.
        expected = 403 if b"shared_memory" in body else 400
        assert status == expected and json.loads(text)["error"], (body, status, text[:200])
    # Paths no route of the gate takes get JSON too, not aiohttp's plain text (red-team probe, 2026-12-07).
    for path in (f"/v2/models/{CROP}//infer", f"/v2/models/{CROP}%2finfer", f"/v2/models/{CROP}/infer/x"):
        status, text = http_call(triton_tiny.http_url, "POST", path, b"{}")
        assert status in (404, 405) and json.loads(text)["error"], (path, status, text[:200])


def test_calls_still_waiting_when_their_callers_go_are_dropped_and_each_address_is_bounded():
    # A caller that hangs up frees its place at the door while its call went on here: one address could queue work
    # no door limit saw, and everyone waited behind it (audit: a lone request held past the door's 60 s).
    async def scenario():
        upstream = gate_relay.Upstream(per_client=3, max_upstream=1)
        release, ran = asyncio.Event(), []

        async def call(tag):
            ran.append(tag)
            await release.wait()
            return tag

        first = asyncio.ensure_future(upstream.run(call("first"), client="a"))
        await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(upstream.run(call(f"w{i}"), client=f"b{i}")) for i in range(50)]
        await asyncio.sleep(0.01)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await asyncio.sleep(0)
        assert len(upstream.tasks) == 1 and ran == ["first"]  # the 50 never reach Triton, nor wait for it
        assert dict(upstream.outstanding) == {"a": 1}
        # "a" hangs up too: its call has reached Triton, so it runs on and counts until it is answered.
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        more = [asyncio.ensure_future(upstream.run(call("a2"), client="a")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(gate_relay.TooMany, match="at most 3"):
            await upstream.run(call("a4"), client="a")
        assert await asyncio.wait_for(_one(upstream.run(call("other"), client="c"), release), 5) == "other"
        await asyncio.gather(*more)
        await upstream.drain(5)
        assert not upstream.outstanding and not upstream.tasks

    async def _one(coro, release):
        release.set()
        return await coro

    asyncio.run(scenario())


def test_shared_memory_needs_the_admin_key():
    # Triton's regions are one table for every caller: a stranger naming an admin's region read it through
    # inference and wrote an output over it (audit).
    request = _request(contract.CROP_ENSEMBLE, [1, 1], [b"x"])
    del request.raw_input_contents[:]
    request.inputs[0].parameters["shared_memory_region"].string_param = "victim"
    request.inputs[0].parameters["shared_memory_byte_size"].int64_param = 5
    with pytest.raises(gate_check.Refused, match="shared memory needs the admin-key key") as refused:
        gate_check.check_grpc_infer(request)
    assert refused.value.code == "PERMISSION_DENIED"
    gate_check.check_grpc_infer(request, admin=True)
    header = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": 5}}],
        "outputs": [{"name": "age", "parameters": {"shared_memory_region": "victim", "shared_memory_byte_size": 4}}],
    }
    with pytest.raises(gate_check.Refused, match="shared memory") as refused:
        gate_check.check_http_infer(contract.CROP_ENSEMBLE, header, b"\x01\x00\x00\x00x")
    assert refused.value.code == "PERMISSION_DENIED"
    gate_check.check_http_infer(contract.CROP_ENSEMBLE, header, b"\x01\x00\x00\x00x", admin=True)


def _http_body(model: str, blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """An inference request for ``blobs`` in the binary data extension, as tritonclient sends it."""
    import tritonclient.http as httpclient

    inp = httpclient.InferInput(contract.IMAGE_INPUT, [len(blobs), 1], "BYTES")
    inp.set_data_from_numpy(np.array(blobs, dtype=object).reshape(-1, 1), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp])
    return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)}


def _photo(seed: int, side: int = 1024) -> bytes:
    """A smooth random picture (a cheap upload that still costs its decode and a face search)."""
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=1)  # a third of the default level's encoding time, for 1.3x the bytes
    return buffer.getvalue()


@pytest.mark.integration
def test_calls_abandoned_behind_the_door_count_against_their_address(tiny_repo):
    # One connection per address at the door: a caller that hangs up frees it, but its call still runs in Triton and
    # counts against that address at the gate until answered, so sending and hanging up cannot queue work unseen.
    from tests.conftest import start_launcher

    proc, http_url, grpc_url = start_launcher(tiny_repo, "--door-client-connections", "1", start_new_session=True)
    # Seconds of decoding and face search in Triton, whichever the machine: about 0.35 CPU-s a photo on a 2-core VM,
    # one at a time in the single face detector, so 20 photos outlast the 0.6 s deadline and the follow-up call on a
    # machine three times as fast (32 took 11 CPU-s per call, twice, for nothing more).
    photos = [_photo(i) for i in range(20)]
    options = [("grpc.max_send_message_length", door.MAX_BODY)]
    try:
        with grpc.insecure_channel(grpc_url, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            crop = _request(contract.CROP_ENSEMBLE, [1, 1], [cases.face_crop()])
            stub.ModelInfer(crop, timeout=60)  # warm, and served: the bound is not in the way of one caller
            heavy = _request(contract.DETECT_ENSEMBLE, [len(photos), 1], photos)
            with pytest.raises(grpc.RpcError) as abandoned:
                stub.ModelInfer(heavy, timeout=0.6)
            assert abandoned.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(crop, timeout=60)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
            assert "still being served" in refused.value.details()
            deadline = time.monotonic() + 30
            while True:  # once Triton has answered the abandoned call, the address is served again
                try:
                    stub.ModelInfer(crop, timeout=60)
                    break
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline, err
                    time.sleep(0.2)
        # The same over HTTP: the caller closes its connection (aiohttp cancels the gate's handler, the shield keeps
        # Triton's call), and the address stays counted until Triton has answered.
        host, port = http_url.rsplit(":", 1)
        body, headers = _http_body(contract.DETECT_ENSEMBLE, photos)
        conn = http.client.HTTPConnection(host, int(port), timeout=0.6)
        conn.request("POST", f"/v2/models/{contract.DETECT_ENSEMBLE}/infer", body, headers)
        with pytest.raises(TimeoutError):
            conn.getresponse()
        conn.close()
        crop_path, crop = f"/v2/models/{contract.CROP_ENSEMBLE}/infer", victims_mod.http_crop_request(cases.face_crop())
        status, text = http_call(http_url, "POST", crop_path, *crop, source="127.0.0.1")  # the same address
        assert status == 429 and b"still being served" in text, (status, text[:300])
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)


@pytest.mark.integration
@pytest.mark.parametrize("model", [CROP, DETECT])
def test_a_request_for_only_the_first_steps_outputs_is_answered(triton_tiny, model):
    """Triton 2.51 answers a request for one or two of box, detection_score, face_found and error with "unexpected
    deadlock, at least one output is not set"; the gate asks for age too and takes it out of the answer."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    blobs = np.array([[cases.face_crop()], [b"not an image"]], dtype=object)

    def infer(module, client, names, binary=True):
        tensor = module.InferInput(contract.IMAGE_INPUT, [2, 1], "BYTES")
        tensor.set_data_from_numpy(blobs)
        options = {} if module is grpcclient else {"binary_data": binary}
        return client.infer(model, [tensor], outputs=[module.InferRequestedOutput(n, **options) for n in names])

    def values(answer, name):  # strings come back as str from JSON, bytes from binary
        return [v.decode() if isinstance(v, bytes) else v for v in answer.as_numpy(name).ravel()]

    wanted = [[contract.ENSEMBLE_BOX], [contract.ENSEMBLE_ERROR], [contract.ENSEMBLE_FOUND, contract.ENSEMBLE_ERROR]]
    for module, url in ((grpcclient, triton_tiny.grpc_url), (httpclient, triton_tiny.http_url)):
        with module.InferenceServerClient(url) as client:
            everything = infer(module, client, list(contract.ENSEMBLE_OUTPUTS))
            assert values(everything, contract.ENSEMBLE_ERROR)[1]  # the second item's own error
            for names in wanted:
                for binary in (True, False) if module is httpclient else (True,):
                    answer = infer(module, client, names, binary)
                    response = answer.get_response()
                    outputs = response["outputs"] if isinstance(response, dict) else response.outputs
                    given = [o["name"] if isinstance(o, dict) else o.name for o in outputs]
                    assert sorted(given) == sorted(names), (module.__name__, names, binary)
                    for name in names:
                        assert values(answer, name) == values(everything, name), (module.__name__, name, binary)


def _ports(n: int) -> list[int]:
    return [ports.free_port() for _ in range(n)]


def _own_gate(triton_tiny, *args: str):
    """A gate of its own (``--edge``, as in a KServe pod, where nothing in front refuses anything first) in front of
    the shared server's Triton, with ``args``: yields its HTTP and gRPC ``host:port`` and the internal key's headers."""
    grpc_port, http_port = _ports(2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), security.ADMIN_KEY_ENV: triton_tiny.admin_key}
    env["GATE_UPSTREAM_HEADERS"] = json.dumps(triton_tiny.internal_headers())
    cmd = [sys.executable, "-m", "serving.runtime.gate", "--edge", *args]
    cmd += ["--grpc", f"127.0.0.1:{grpc_port}", "--http", f"127.0.0.1:{http_port}"]
    cmd += ["--triton-grpc", triton_tiny.internal_grpc_url, "--triton-http", triton_tiny.internal_http_url]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("gate listening"), line + proc.stderr.read()
        yield f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", triton_tiny.internal_headers()
    finally:
        proc.terminate()
        _, log = proc.communicate(timeout=30)
    assert "Traceback" not in log, log[-3000:]  # a caller's mistake is answered, never logged as the gate's failure


@pytest.fixture
def own_gate(triton_tiny):
    yield from _own_gate(triton_tiny)


@pytest.fixture
def small_gate(triton_tiny):
    """Room for 1,000,000 request bytes at once."""
    yield from _own_gate(triton_tiny, "--held-bytes", "1000000")


def _raw_post(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Status and body of a hand-written HTTP/1.1 inference (header values as raw bytes, UTF-8 as a caller sends)."""
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n" % CROP.encode())
        sock.sendall(head + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.mark.integration
def test_a_malformed_length_header_is_the_callers_mistake(own_gate):
    """``Inference-Header-Content-Length: ²`` (a digit to str.isdigit, not to int) or 5,000 digits (over int's limit)
    got HTTP 500 and a 27-line traceback with the caller's address in the log, per request (red-team probe)."""
    http, _, internal = own_gate
    key = internal[security.INTERNAL_HEADER]
    body, headers = _http_body(CROP, [cases.face_crop()])
    head = b"%s: %s\r\nContent-Length: %d" % (security.INTERNAL_HEADER.encode(), key.encode(), len(body))
    for value in ("²", "1" * 5000, "٣", "-1", "1" * 10, str(len(body) + 1)):
        status, text = _raw_post(http, head + b"\r\nInference-Header-Content-Length: " + value.encode(), body)
        assert status == 400 and "Inference-Header-Content-Length" in json.loads(text)["error"], (value[:9], text)
    good = head + b"\r\nInference-Header-Content-Length: " + headers["Inference-Header-Content-Length"].encode()
    status, text = _raw_post(http, good, body)  # and the gate serves on
    assert status == 200 and text.startswith(b'{"model_name":"%s"' % CROP.encode()), text[:300]


@pytest.fixture
def impatient_gate(triton_tiny):
    """Request heads due within 3 s of a connection's opening or last answer."""
    yield from _own_gate(triton_tiny, "--http-idle-s", "3")


def _closed_after(sock: socket.socket, trickle: bytes) -> float:
    """Sends ``trickle`` a byte every 0.2 s until the gate closes the connection; the seconds that took."""
    started = time.monotonic()
    sock.settimeout(0.2)
    for byte in trickle:
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    raise AssertionError("the gate kept the connection open")


@pytest.mark.integration
def test_a_request_head_trickled_or_never_sent_is_cut_off(impatient_gate):
    """In a KServe pod nothing in front of the gate timed a request's head: aiohttp's default let a caller who sent
    one byte now and then (or nothing) hold a connection for an hour. Such connections are closed after the gate's
    idle bound, counted from the opening and again from each answer; a kept-alive connection serves on until then."""
    url, _, internal = impatient_gate
    host, port = url.rsplit(":", 1)
    trickle = b"GET /v2/health/live HTTP/1.1\r\n" + b"X-Padding: " + b"a" * 200
    key = b"%s: %s\r\n" % (security.INTERNAL_HEADER.encode(), internal[security.INTERNAL_HEADER].encode())
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: gate\r\n" + key + b"\r\n"

    def trickled():
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            return _closed_after(sock, trickle)

    def silent():
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # sends nothing at all
            sock.settimeout(10)
            started = time.monotonic()
            assert sock.recv(65536) == b""
            return time.monotonic() - started

    def answered_then_idle():
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # answered, then idle: the bound again
            time.sleep(1.5)
            sock.sendall(live)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(2.0)  # 3.5 s since the opening, 2 s since the answer: still open
            sock.sendall(live)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            return _closed_after(sock, trickle)

    # Side by side: each waits out the bound on its own connection (three in a row took 13 s of the test's time).
    with ThreadPoolExecutor(3) as pool:
        waits = [future.result() for future in [pool.submit(f) for f in (trickled, silent, answered_then_idle)]]
    assert all(2.5 < wait < 10.0 for wait in waits), waits


def _held_open(url: str, headers: dict[str, str], declared: int) -> socket.socket:
    """An inference whose body declares ``declared`` bytes and sends one: held at the gate until closed."""
    host, port = url.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    lines = [f"POST /v2/models/{CROP}/infer HTTP/1.1", "Host: gate", f"Content-Length: {declared}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n{").encode())
    return sock


@pytest.mark.integration
def test_request_bytes_held_at_once_are_bounded_and_given_back(small_gate):
    """Ten 60 MiB bodies one byte short took a gate from 53 to 655 MiB, and nothing bounded the total (red-team
    probe). With room for 1,000,000 bytes: a body held open takes its declared length at once; another that does
    not fit gets 503 with Retry-After (UNAVAILABLE over gRPC, a chunked body counting as the largest), one that fits
    is served, and once the held ones end the room is back (nothing kept). A body larger than all the room passes
    when nothing else is held."""
    url, grpc_url, internal = small_gate
    headers = {security.INTERNAL_HEADER: internal[security.INTERNAL_HEADER]}
    big, big_headers = _http_body(CROP, [b"x" * 600_000])  # one unreadable "image": answered 200, with its error
    small, small_headers = _http_body(CROP, [cases.face_crop()])
    path = f"/v2/models/{CROP}/infer"
    grpc_big = _request(CROP, [1, 1], [b"x" * 500_000])
    metadata = [(security.GRPC_INTERNAL_METADATA, internal[security.GRPC_INTERNAL_METADATA])]
    options = [("grpc.max_send_message_length", door.MAX_BODY)]

    def post(body, extra):
        return http_call(url, "POST", path, body, {**headers, **extra}, source="127.0.0.1")

    def chunked():
        host, port = url.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("POST", path, body=iter([big]), headers={**headers, **big_headers}, encode_chunked=True)
        answer = connection.getresponse()
        out = answer.status, answer.getheader("Retry-After"), answer.read()
        connection.close()
        return out

    held = [_held_open(url, headers, 700_000)]
    try:
        deadline = time.monotonic() + 10
        while (status := post(big, big_headers))[0] != 503:  # the held body's handler may not have run yet
            assert status[0] == 200 and time.monotonic() < deadline, status
            time.sleep(0.1)
        assert "retry" in json.loads(status[1])["error"], status
        assert chunked()[:2] == (503, "1")
        with grpc.insecure_channel(grpc_url, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(grpc_big, metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "retry" in refused.value.details()
            crop = _request(CROP, [1, 1], [cases.face_crop()])
            assert _answer(stub.ModelInfer(crop, metadata=metadata, timeout=30)).shape == (1,)
        assert post(small, small_headers)[0] == 200  # what fits beside the held body is served
        held.append(_held_open(url, headers, 299_000))  # 999,000 held: even a small one no longer fits
        deadline = time.monotonic() + 10
        while post(small, small_headers)[0] != 503:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while (status := post(big, big_headers))[0] != 200:  # the closed ones give their room back
        assert status[0] == 503 and time.monotonic() < deadline, status
        time.sleep(0.1)
    assert chunked()[0] == 200  # the largest body's room, with nothing else held
    with grpc.insecure_channel(grpc_url, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(_request(CROP, [1, 1], [b"x" * 1_500_000]), metadata=metadata, timeout=30)  # over the room
        stub.ModelInfer(grpc_big, metadata=metadata, timeout=30)  # and nothing of it kept
    assert post(big, big_headers)[0] == 200


async def _as(budget, upstream, client: str, size: int, call):
    """A request of ``size`` bytes from ``client``, as the gate's handlers make it."""
    with budget.reserve(size, client) as held:
        return await upstream.run(call, held=held)


def test_the_budget_is_given_back_when_the_last_holder_ends():
    """A request's bytes stay counted while its call to Triton runs on after the caller left (the call keeps the
    body), and are given back once, whatever ends first; an address holds at most its share; nothing held lets in
    any size."""

    async def scenario():
        budget = gate_relay.Budget(limit=100, per_client=60)
        upstream = gate_relay.Upstream(max_upstream=1)
        release = asyncio.Event()

        async def call():
            await release.wait()
            return "answered"

        first = asyncio.ensure_future(_as(budget, upstream, "a", 50, call()))
        await asyncio.sleep(0.01)
        first.cancel()  # the caller hangs up: its call runs on (shielded) and keeps its bytes
        await asyncio.gather(first, return_exceptions=True)
        assert budget.held == 50
        with pytest.raises(gate_relay.Busy) as busy:
            budget.reserve(20, "a")  # over a's share of 60
        assert busy.value.client
        with pytest.raises(gate_relay.Busy) as busy:
            budget.reserve(51, "b")  # over the whole
        assert not busy.value.client
        # b's call waits for the one place to Triton, and its caller hangs up: never sent, so nothing is kept.
        waiting = asyncio.ensure_future(_as(budget, upstream, "b", 30, call()))
        await asyncio.sleep(0.01)
        assert budget.held == 80
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.sleep(0)
        assert budget.held == 50 and dict(budget.by_client) == {"a": 50}
        with budget.reserve(40, "b"):
            assert budget.held == 90
        release.set()
        await upstream.drain(5)
        assert budget.held == 0 and not budget.by_client
        with budget.reserve(1000, "a"):  # nothing held: any size passes
            pass
        assert budget.held == 0

    asyncio.run(scenario())

"""Well-behaved callers of the crop path that check every answer is their own (issue 18's "victims").

Each victim sends one of a few crops that the models answer differently, compares each answer with a reference
computed before any attack, and counts successes, failures and *wrong* answers (rows that are not its own, the
sign of a cross-request leak). Over gRPC they share the client library's source address (127.0.0.1: grpcio cannot
choose one); over HTTP each victim binds its own loopback address (127.0.0.3, ...) so the door sees distinct clients.
Used by tests/test_gate.py and ``python -m loadtest.abuse.probes``.
"""

from __future__ import annotations

import http.client
import io
import threading

import grpc
import numpy as np
import tritonclient.http as httpclient
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from common import contract
from loadtest.abuse import cases
from loadtest.bench.wire import serialize_bytes

CROP = contract.CROP_ENSEMBLE
ADDRESSES = tuple(f"127.0.0.{i}" for i in range(3, 7))
TIMEOUT_S = 60.0
#: Answers are float32 from the same model over either protocol; anything further apart is someone else's.
ATOL = 1e-3


def grpc_request(model: str, shape: list[int], blobs: list[bytes]) -> pb.ModelInferRequest:
    """A hand-built ModelInfer request: the declared ``shape`` goes out as given, however wrong."""
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=contract.IMAGE_INPUT, datatype="BYTES")
    tensor.shape.extend(shape)
    request.raw_input_contents.append(serialize_bytes(blobs))
    return request


def grpc_answer(response: pb.ModelInferResponse) -> np.ndarray:
    """The age rows of a crop-path answer."""
    names = [o.name for o in response.outputs]
    return np.frombuffer(response.raw_output_contents[names.index(contract.ENSEMBLE_AGE)], np.float32)


def images() -> list[bytes]:
    """Candidate crops for :func:`references` to choose from: different pictures of one face, then pictures of
    nothing (solid colours, noise, stripes), which even the tests' untrained models answer far apart (their answers
    to the face's pictures alone lay within 0.007 years for some random starts, too close to tell five apart).

    No image is another's mirror: the served models average each face with its mirror (flip test-time
    augmentation), so a crop and its mirror get the same answer and a swap between them would pass unseen.
    """
    base = Image.open(io.BytesIO(cases.face_crop())).convert("RGB")
    red, green, blue = base.split()
    variants = [
        base,
        ImageEnhance.Brightness(base).enhance(0.6),
        ImageOps.invert(base),
        base.rotate(90),
        ImageOps.grayscale(base).convert("RGB"),
        Image.merge("RGB", (blue, green, red)),
        base.filter(ImageFilter.GaussianBlur(4)),
        ImageEnhance.Contrast(base).enhance(0.4),
        base.crop((30, 30, 170, 170)).resize(base.size),
        ImageOps.solarize(base, 128),
    ]
    side = base.size[0]
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)
    stripes = np.zeros((side, side, 3), np.uint8)
    stripes[::8] = 255
    variants += [Image.new("RGB", base.size, colour) for colour in ("black", "white", "red", "green", "blue")]
    variants += [Image.fromarray(noise), Image.fromarray(stripes)]
    out = []
    for img in variants:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def references(grpc_url: str, count: int = 5) -> list[tuple[bytes, np.ndarray]]:
    """``count`` (crop, its answer) pairs, computed before any attack, every two answers apart by more than ATOL.

    Chosen from :func:`images` by their answers, since how far apart the answers lie depends on the models
    (the tests' tiny random ones answer every crop within a few hundredths of a year).
    """
    with grpc.insecure_channel(grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        candidates = [
            (crop, grpc_answer(stub.ModelInfer(grpc_request(CROP, [1, 1], [crop]), timeout=TIMEOUT_S)))
            for crop in images()
        ]
    return choose(candidates, count)


def choose(candidates: list[tuple[bytes, np.ndarray]], count: int) -> list[tuple[bytes, np.ndarray]]:
    """The first ``count`` candidates whose answers differ from every one chosen before them; raises if too few."""
    chosen: list[tuple[bytes, np.ndarray]] = []
    for crop, answer in candidates:
        if len(chosen) < count and all(not _same(answer, other) for _, other in chosen):
            chosen.append((crop, answer))
    if len(chosen) < count:
        raise RuntimeError(
            f"only {len(chosen)} of {len(candidates)} reference crops get answers {ATOL} apart, {count} needed: "
            "callers sending the same answer could not tell a swapped one from their own"
        )
    return chosen


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """What a victim takes for its own answer (:meth:`Victims._record`)."""
    return a.shape == b.shape and np.allclose(a, b, atol=ATOL)


def http_crop_request(image: bytes) -> tuple[bytes, dict[str, str]]:
    """A crop-path request in the binary data extension, asking for binary outputs (as tritonclient sends it)."""
    inp = httpclient.InferInput(contract.CROP_INPUT, [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[image]], dtype=object), binary_data=True)
    outputs = [httpclient.InferRequestedOutput(contract.ENSEMBLE_AGE, binary_data=True)]
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp], outputs=outputs)
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)}
    return body, headers


class Victims:
    """Threads calling the crop path until stopped; each checks it got exactly its own answer.

    ``grpc_url``: gRPC victims (from 127.0.0.1). ``http_url``: HTTP victims, victim ``i`` bound to
    ``addresses[i]``. ``count`` victims in all.
    """

    def __init__(
        self,
        references,
        *,
        grpc_url: str | None = None,
        http_url: str | None = None,
        count: int = 3,
        addresses: tuple[str, ...] = ADDRESSES,
    ):
        if (grpc_url is None) == (http_url is None):
            raise ValueError("give exactly one of grpc_url and http_url")
        if http_url is not None and count > len(addresses):
            raise ValueError(f"{count} HTTP victims need {count} source addresses")
        self.grpc_url, self.http_url, self.references, self.count = grpc_url, http_url, references, count
        self.addresses = addresses
        self.ok = self.failed = self.wrong = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        run = self._run_http if http_url is not None else self._run_grpc
        self._threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]

    def _record(self, got: np.ndarray | None, expected: np.ndarray, error: str = "") -> None:
        with self._lock:
            if got is None:
                self.failed += 1
                if len(self.errors) < 50:
                    self.errors.append(error[:200])
            elif _same(got, expected):
                self.ok += 1
            else:
                self.wrong += 1

    def _run_grpc(self, index: int) -> None:
        image, expected = self.references[index % len(self.references)]
        with grpc.insecure_channel(self.grpc_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    got = grpc_answer(stub.ModelInfer(grpc_request(CROP, [1, 1], [image]), timeout=TIMEOUT_S))
                except grpc.RpcError as err:
                    self._record(None, expected, f"{err.code()}: {err.details()}")
                    continue
                self._record(got, expected)

    def _run_http(self, index: int) -> None:
        image, expected = self.references[index % len(self.references)]
        body, headers = http_crop_request(image)
        host, port = self.http_url.removeprefix("http://").rsplit(":", 1)
        path = f"/v2/models/{CROP}/infer"
        while not self._stop.is_set():
            # A fresh connection each time, as a browser's or a script's might be: the door's per-client
            # connection limit applies to these too.
            conn = http.client.HTTPConnection(
                host, int(port), timeout=TIMEOUT_S, source_address=(self.addresses[index], 0)
            )
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    self._record(None, expected, f"HTTP {response.status}: {data[:150]!r}")
                    continue
                length = response.getheader("Inference-Header-Content-Length")
                result = httpclient.InferenceServerClient.parse_response_body(
                    data, header_length=int(length) if length else None
                )
                self._record(result.as_numpy(contract.ENSEMBLE_AGE).reshape(-1), expected)
            except (OSError, http.client.HTTPException, ValueError) as err:
                self._record(None, expected, f"{type(err).__name__}: {err}")
            finally:
                conn.close()

    def __enter__(self) -> Victims:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=TIMEOUT_S + 30)

    @property
    def requests(self) -> int:
        return self.ok + self.failed + self.wrong

    @property
    def success(self) -> float:
        return self.ok / self.requests if self.requests else 0.0

    def assert_served(self, min_success: float = 0.99) -> None:
        assert self.wrong == 0, f"{self.wrong} victim answers held another caller's rows"
        assert self.requests > 0 and self.success >= min_success, (self.ok, self.failed, self.errors[:5])

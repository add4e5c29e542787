"""End to end through a real tritonserver: the ensembles over HTTP and gRPC, bad uploads included."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from common import contract as c
from common import spec
from research.measure_faces import dead_leaves

pytestmark = pytest.mark.integration

GRACE = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # public domain portrait
OUTPUTS = c.ENSEMBLE_OUTPUTS
#: Where the age interval can lie: the age head's bins 0..116, each read as a year wide.
AGE_RANGE = (0.0, 116.5)


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def no_face() -> bytes:
    x = np.linspace(0, 255, 320, dtype=np.uint8)
    return encode(Image.fromarray(np.stack([np.tile(x, (240, 1))] * 3, -1)))


# Uploads and what must come back: a substring of `error` ("" for none) and whether a face is found.
CASES = {
    "garbage": (lambda: b"certainly not an image " * 20, "not a recognised image", False),
    "empty": (lambda: b"", "empty", False),
    "truncated": (lambda: GRACE.read_bytes()[:20_000], "truncated", False),
    # Cut below the face and given its end marker back: PIL decodes it, the bottom painted grey.
    "cut_and_mended": (lambda: GRACE.read_bytes()[:40_000] + b"\xff\xd9", "premature end", False),
    "bomb": (lambda: encode(Image.new("1", (8000, 6000)), "PNG"), "megapixels", False),  # 48 MP in ~8 KB
    "too_big": (lambda: b"\xff\xd8\xff" + bytes(11 * 2**20), "MiB", False),
    "no_face": (no_face, "", False),
    # Overlapping random discs: the detectors "find" a face at 0.66, which is not found again framed as a portrait
    # (detect.CONFIRM_MIN_SCORE; tests/test_faces.py).
    "texture": (lambda: encode(dead_leaves(np.random.default_rng(20), (640, 480)), "PNG"), "", False),
    "portrait": (GRACE.read_bytes, "", True),
}


def assert_interval(out: dict[str, np.ndarray], row: int) -> None:
    """A face's age interval: finite, ordered, within the ages the model knows (any distribution; the mean
    of a skewed one may lie outside its 10-90% interval, so ``age`` itself is not compared)."""
    low, high = out[c.ENSEMBLE_AGE_LOW][row, 0], out[c.ENSEMBLE_AGE_HIGH][row, 0]
    assert np.isfinite(low) and np.isfinite(high), (low, high)
    assert AGE_RANGE[0] <= low <= high <= AGE_RANGE[1], (low, high)


def assert_label(out: dict[str, np.ndarray], row: int) -> None:
    """The row's label is the decision on its own probability (common.contract, one threshold)."""
    assert out["gender"][row, 0] == c.gender_label(float(out["female_probability"][row, 0])).encode()


def assert_no_estimate(out: dict[str, np.ndarray], row: int) -> None:
    # No face scored either: a detection_score of 0.0 read as a real (if low) confidence to a raw HTTP caller.
    names = (c.ENSEMBLE_AGE, c.ENSEMBLE_AGE_LOW, c.ENSEMBLE_AGE_HIGH, c.ENSEMBLE_FEMALE, c.ENSEMBLE_SCORE)
    assert all(np.isnan(out[name][row, 0]) for name in names), {name: out[name][row, 0] for name in names}


def infer(url: str, protocol: str, model: str, items: list[bytes]) -> dict[str, np.ndarray]:
    lib = httpclient if protocol == "http" else grpcclient
    data = np.array(items, dtype=object).reshape(-1, 1)
    image = lib.InferInput(c.IMAGE_INPUT, list(data.shape), "BYTES")
    image.set_data_from_numpy(data)
    client = lib.InferenceServerClient(url)
    try:
        result = client.infer(model, [image], outputs=[lib.InferRequestedOutput(n) for n in OUTPUTS])
        assert client.is_server_live() and client.is_model_ready(model)
    finally:
        client.close()
    return {name: result.as_numpy(name) for name in OUTPUTS}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_batch_with_bad_uploads(triton_tiny, protocol):
    url = triton_tiny.http_url if protocol == "http" else triton_tiny.grpc_url
    out = infer(url, protocol, c.DETECT_ENSEMBLE, [make() for make, _, _ in CASES.values()])
    assert {k: v.shape[0] for k, v in out.items()} == dict.fromkeys(OUTPUTS, len(CASES))
    for i, (case, (_, error, found)) in enumerate(CASES.items()):
        message = out["error"][i, 0].decode()
        assert (error in message) if error else message == "", f"{case}: error {message!r}"
        assert bool(out["face_found"][i, 0]) is found, case
        assert out["gender"][i, 0] in ((b"male", b"female") if found else (b"",)), case
        if not found:
            assert_no_estimate(out, i)
    good = list(CASES).index("portrait")
    width, height = Image.open(GRACE).size
    x0, y0, x1, y1 = out["box"][good]
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and (x1 - x0) * (y1 - y0) > 0.05 * width * height
    assert 0.5 <= out["detection_score"][good, 0] <= 1
    assert np.isfinite(out["age"][good, 0]) and 0 <= out["female_probability"][good, 0] <= 1
    assert_interval(out, good)  # the tiny model's age head is the distributional one


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_crop_ensemble_serves_aligned_crop(triton_tiny, protocol):
    url = triton_tiny.http_url if protocol == "http" else triton_tiny.grpc_url
    crop = Image.open(GRACE).convert("RGB").crop((120, 80, 320, 280))  # 200x200, UTKFace-sized
    out = infer(url, protocol, c.CROP_ENSEMBLE, [encode(crop), b""])
    assert out["error"][0, 0] == b"" and out["face_found"][0, 0] and np.isfinite(out["age"][0, 0])
    assert out["box"][0].tolist() == [0, 0, 200, 200] and np.isnan(out["detection_score"][0, 0])  # no detector ran
    assert b"empty" in out["error"][1, 0] and not out["face_found"][1, 0] and out["gender"][1, 0] == b""
    assert_interval(out, 0)
    assert_no_estimate(out, 1)


def test_dynamic_batch_is_split_back_per_request(triton_tiny):
    # Concurrent requests of different sizes may be merged into one TF call; each must get its own rows back.
    # `age` is internal (the gate refuses it on the public ports): called on Triton's own port with its key.
    client = httpclient.InferenceServerClient(triton_tiny.internal_http_url, concurrency=4)
    headers = triton_tiny.internal_headers()
    rng = np.random.default_rng(0)
    side = spec.image_size(c.AGE_MODEL)
    batches = [rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8) for n in (1, 2, 3, 4)]
    try:
        pending = []
        for batch in batches:
            image = httpclient.InferInput(c.CROP_INPUT, list(batch.shape), "UINT8")
            image.set_data_from_numpy(batch)
            pending.append(client.async_infer(c.AGE_MODEL, [image], headers=headers))
        results = [p.get_result() for p in pending]
        image = httpclient.InferInput(c.CROP_INPUT, [10, side, side, 3], "UINT8")
        image.set_data_from_numpy(np.concatenate(batches))
        whole = client.infer(c.AGE_MODEL, [image], headers=headers)
    finally:
        client.close()
    for name in c.TASK_MODEL_OUTPUTS[c.AGE_MODEL]:  # the interval's rows must be split back like the age's
        merged = [r.as_numpy(name) for r in results]
        assert [m.shape for m in merged] == [(n, 1) for n in (1, 2, 3, 4)], name
        np.testing.assert_allclose(np.concatenate(merged), whole.as_numpy(name), rtol=1e-4, atol=1e-3, err_msg=name)


def aligned_crop(path: Path) -> bytes:
    """A UTKFace-style 200x200 aligned crop of a photo, made with the serving crop geometry."""
    from serving.pipeline.crops import CropCalibration, render_square, square_for
    from serving.pipeline.detect import FaceCropper

    image = Image.open(path).convert("RGB")
    centre, side, angle = square_for(FaceCropper().detect(image), CropCalibration.load())
    buf = io.BytesIO()
    render_square(image, centre=centre, side=side, angle=angle).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_committed_repository_serves_portrait(triton_committed, protocol):
    url = triton_committed.grpc_url if protocol == "grpc" else triton_committed.http_url
    out = infer(url, protocol, c.DETECT_ENSEMBLE, [GRACE.read_bytes(), b"junk"])
    assert out["face_found"][0, 0] and out["error"][0, 0] == b""
    # Grace Hopper was 77 in this 1984 portrait: the committed models say 86-89 (age v21 and gender v6: 87.7 (80-96),
    # female probability 0.97, "female"; v19 said 88.1 (78-97), v17 87.7 (80-96); gender v5 0.99, v4 0.56, v3 0.45,
    # "male"), errors docs/models.md reports (nothing is tuned on this portrait); the label must be valid.
    assert 45 < out["age"][0, 0] < 100
    assert out["gender"][0, 0] in (b"male", b"female")
    assert_label(out, 0)
    assert out["error"][1, 0] and not out["face_found"][1, 0]
    assert_no_estimate(out, 1)
    # The committed age model has the distributional head, so its interval is always there.
    assert np.isfinite(out[c.ENSEMBLE_AGE_LOW][0, 0]) and np.isfinite(out[c.ENSEMBLE_AGE_HIGH][0, 0])
    assert_interval(out, 0)


def test_committed_repository_serves_an_upside_down_portrait_as_the_upright_one(triton_committed):
    # The portrait's pixels turned upside down, with no EXIF orientation to undo it: the face must be found and cut
    # the right way up, so its answers are the upright portrait's. Before the turned search (serving/pipeline/
    # detect.py, TURNS) the detector put the eyes on the mouth and the CNNs saw the face upside down.
    upright = Image.open(GRACE).convert("RGB")
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_180).save(buf, "PNG")
    out = infer(triton_committed.grpc_url, "grpc", c.DETECT_ENSEMBLE, [GRACE.read_bytes(), buf.getvalue()])
    assert out["face_found"].all() and not out["error"].any()
    assert abs(out["age"][1, 0] - out["age"][0, 0]) < 3, out["age"]
    assert abs(out["female_probability"][1, 0] - out["female_probability"][0, 0]) < 0.1, out["female_probability"]
    assert out["gender"][1, 0] == out["gender"][0, 0]
    w, h = upright.size
    x0, y0, x1, y1 = out[c.ENSEMBLE_BOX][0]
    turned_back = np.array([w - x1, h - y1, w - x0, h - y0])
    assert np.abs(out[c.ENSEMBLE_BOX][1] - turned_back).max() < 0.1 * (x1 - x0)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_committed_ensembles_agree_on_an_aligned_crop(triton_committed, protocol):
    url = triton_committed.grpc_url if protocol == "grpc" else triton_committed.http_url
    crop = aligned_crop(GRACE)
    detect = infer(url, protocol, c.DETECT_ENSEMBLE, [crop])
    skip = infer(url, protocol, c.CROP_ENSEMBLE, [crop])
    assert detect["face_found"][0, 0] and skip["face_found"][0, 0]
    # Detection re-crops the crop with the calibrated UTKFace framing, so both paths see nearly the same face, a few
    # percent off each other (measured: 70.4 vs 76.9 years, female probability 0.21 vs 0.30 with gender v2; 0.19 vs
    # 0.45 with v3; 0.22 vs 0.56 with v4; 0.98 vs 0.99 with v5; 0.95 vs 0.97 with v6). How far a probability moves under
    # such a re-framing is the model's, not the pipeline's: on the validation split, the 99th percentile of that change
    # is 0.43 (v2), 0.39 (v3), 0.41 (v4), 0.41 (v5) and 0.40 (v6) (research/framing.py), so the bound is the largest; a
    # path that fed the CNN another face or the wrong crop would move it further. The labels need not agree: a
    # re-framing flips 3-4% of validation faces' labels, and this face sat near the threshold with v4. Each label must
    # be its own probability's.
    assert abs(detect["age"][0, 0] - skip["age"][0, 0]) < 8
    assert abs(detect["female_probability"][0, 0] - skip["female_probability"][0, 0]) < 0.43
    assert_label(detect, 0)
    assert_label(skip, 0)

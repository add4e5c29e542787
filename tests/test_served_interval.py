"""The served age and its interval are the exported age model's, through every path a caller uses: both
ensembles and ``faces``. The committed version's per-band calibration lives inside the SavedModel
(``training.calibrate``), so nothing in serving may change it; this checks the newest committed version."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from common import contract as c
from common import spec
from loadtest.bench.openvino_reference import served_precision
from tests.conftest import REPOSITORY
from training.export import SAVEDMODEL, latest

ROOT = Path(__file__).resolve().parents[1]
# A real face is needed for detection; nothing is tuned on it, only served and local outputs are compared.
PORTRAIT = ROOT / "gradio_frontend" / "examples" / "grace_hopper.jpg"
AGE_NAMES = (c.AGE_OUTPUT, c.AGE_LOW_OUTPUT, c.AGE_HIGH_OUTPUT)
TOLERANCE = 1e-3


def png(image: Image.Image) -> bytes:
    """Lossless bytes, so the server decodes exactly the pixels the reference crop is made from."""
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def exported(face: np.ndarray) -> dict[str, float]:
    """The exported age model's answer for ``face``: TensorFlow's, or, where the CPU config's precision resolves to
    bf16 on this machine, OpenVINO's in bf16 in-process (tests/test_cpu_runtime.py ties its f32 to TensorFlow)."""
    version = latest(REPOSITORY, c.AGE_MODEL)
    precision = served_precision(REPOSITORY, c.AGE_MODEL)
    if precision != "f32":
        from training.precision import compile_version, run

        out = run(compile_version(version, precision, 1), face[None])
        return {name: float(out[name][0]) for name in AGE_NAMES}
    import tensorflow as tf

    fn = tf.saved_model.load(str(version / SAVEDMODEL)).signatures["serving_default"]
    out = fn(**{spec.INPUT_NAME: tf.constant(face[None])})
    return {name: float(out[name].numpy()[0, 0]) for name in AGE_NAMES}


def infer(url: str, model: str, data: bytes, shape: list[int], outputs) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(url)
    try:
        image = grpcclient.InferInput(c.IMAGE_INPUT, shape, "BYTES")
        image.set_data_from_numpy(np.array([data], dtype=object).reshape(shape))
        result = client.infer(model, [image], outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
        return {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()


@pytest.mark.integration
def test_served_interval_equals_the_exported_model_on_every_path(triton_committed):
    from serving.pipeline.crops import crop_aligned
    from serving.pipeline.detect import FaceCropper

    photo = Image.open(PORTRAIT).convert("RGB")
    crop = photo.crop((120, 80, 320, 280))  # 200x200, framed like UTKFace's crops
    url = triton_committed.grpc_url

    paths = {
        c.CROP_ENSEMBLE: (png(crop), crop_aligned(crop).crops[c.AGE_MODEL]),
        c.DETECT_ENSEMBLE: (png(photo), FaceCropper()(photo).crops[c.AGE_MODEL]),
    }
    for model, (data, face) in paths.items():
        got = infer(url, model, data, [1, 1], AGE_NAMES)
        want = exported(face)
        for name in AGE_NAMES:
            assert got[name][0, 0] == pytest.approx(want[name], abs=TOLERANCE), (model, name)
        assert got[c.AGE_LOW_OUTPUT][0, 0] <= got[c.AGE_HIGH_OUTPUT][0, 0]

    # ``faces``: one face here, so its first row is the detecting ensemble's face.
    got = infer(url, c.FACES_MODEL, png(photo), [1], (c.FACES_AGE, c.FACES_AGE_LOW, c.FACES_AGE_HIGH))
    want = exported(FaceCropper()(photo).crops[c.AGE_MODEL])
    for served, name in zip((c.FACES_AGE, c.FACES_AGE_LOW, c.FACES_AGE_HIGH), AGE_NAMES, strict=True):
        assert got[served][0] == pytest.approx(want[name], abs=TOLERANCE), name

"""The CPU runtime: OpenVINO serves the SavedModels as TensorFlow computes them, BlazeFace gives the same
boxes as on TFLite, and no served process loads TensorFlow. Real servers, real models.

"Ready means warm" is timed in the benchmark (loadtest/bench/warmup.py), not here: first-request times on a
shared 2-core CI machine are too noisy for a test; tests/test_configs.py checks the warm-up covers every
batch size the configs prefer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from common import contract, spec
from tests.conftest import REPOSITORY, TASKS
from training.export import SAVEDMODEL, latest

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "gradio_frontend" / "examples" / "grace_hopper.jpg"
#: Every output of each model is compared, the age interval included.
OUTPUTS = contract.TASK_MODEL_OUTPUTS
TOLERANCE = 1e-3


def crops() -> np.ndarray:
    """A fixed set of 24 crops: the portrait's face at several framings, flat images and seeded noise."""
    face = Image.open(PORTRAIT).convert("RGB").crop((150, 120, 380, 370))
    real = [spec.to_model_input(face.rotate(a).crop((d, d, 230 - d, 250 - d))) for a in (-10, 0, 10) for d in (0, 20)]
    flat = [np.full((spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), v, np.uint8) for v in (0, 128, 255)]
    noise = np.random.default_rng(8).integers(0, 256, (15, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), dtype=np.uint8)
    return np.concatenate([np.stack(real + flat), noise])


def tf_outputs(repo: Path, task: str, x: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    fn = tf.saved_model.load(str(latest(repo, task) / SAVEDMODEL)).signatures["serving_default"]
    result = fn(**{spec.INPUT_NAME: tf.constant(x)})
    return {name: result[name].numpy() for name in OUTPUTS[task]}


def served(url: str, task: str, x: np.ndarray, *, per_item: bool) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(url)
    try:
        outs = []
        for batch in np.split(x, len(x)) if per_item else [x]:
            image = grpcclient.InferInput(spec.INPUT_NAME, list(batch.shape), "UINT8")
            image.set_data_from_numpy(batch)
            requested = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS[task]]
            outs.append(client.infer(task, [image], outputs=requested))
        return {name: np.concatenate([out.as_numpy(name) for out in outs]) for name in OUTPUTS[task]}
    finally:
        client.close()


def check_equal_to_tf(server, repo: Path) -> dict[str, dict[str, np.ndarray]]:
    """Asserts the served outputs equal TensorFlow's; returns TensorFlow's, by task and output name."""
    x = crops()
    references = {}
    for task in TASKS:
        expected = references[task] = tf_outputs(repo, task, x)
        for per_item in (False, True):  # one batch of 24, and 24 single requests (dynamic batching mixes them)
            got = served(server.grpc_url, task, x, per_item=per_item)
            for name in OUTPUTS[task]:
                assert got[name].shape == expected[name].shape == (len(x), 1) and got[name].dtype == np.float32
                # NaN (an age model without an interval) must be NaN in both: assert_allclose counts NaN == NaN.
                np.testing.assert_allclose(
                    got[name], expected[name], rtol=0, atol=TOLERANCE, err_msg=f"{task}/{name} per_item={per_item}"
                )
    return references


@pytest.mark.integration
def test_served_tiny_models_equal_tensorflow(triton_tiny, tiny_repo):
    age = check_equal_to_tf(triton_tiny, tiny_repo)[contract.AGE_MODEL]
    # The tiny age model has the distributional head, so the interval was compared as numbers, not as NaN.
    assert np.isfinite(age[contract.AGE_LOW_OUTPUT]).all() and np.isfinite(age[contract.AGE_HIGH_OUTPUT]).all()


@pytest.mark.integration
def test_served_committed_models_equal_tensorflow(triton_committed):
    check_equal_to_tf(triton_committed, REPOSITORY)


def _group_cmdlines(pid: int) -> list[tuple[int, str]]:
    pgid = os.getpgid(pid)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) == pgid:
                found.append((int(proc.name), (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return found


@pytest.mark.integration
def test_no_tensorflow_in_served_processes(triton_tiny):
    """Neither Triton nor any Python stub has TensorFlow mapped: serving runs on OpenVINO alone."""
    procs = _group_cmdlines(triton_tiny._proc.pid)
    stubs = [pid for pid, cmd in procs if "triton_python_backend_stub" in cmd]
    assert len(stubs) >= 5, procs  # preprocess, preprocess_crop, age, gender, postprocess
    for pid, cmd in procs:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtensorflow" not in maps and "_pywrap_tensorflow" not in maps, cmd
    assert any("openvino" in Path(f"/proc/{pid}/maps").read_text() for pid in stubs)


def test_detector_boxes_equal_tflite():
    """BlazeFace on OpenVINO finds the boxes TFLite finds (within 0.01 px at 2000 px) on a few framings."""
    tf = pytest.importorskip("tensorflow")
    from serving.pipeline import faces

    ov = faces.FaceCropper()
    reference = faces.FaceCropper(calibration=ov.calibration)
    for det in (reference._short, reference._full):
        det.interpreter = tf.lite.Interpreter(model_path=det.model_path, num_threads=1)
        det.interpreter.allocate_tensors()
        inputs, outputs = det.interpreter.get_input_details(), det.interpreter.get_output_details()
        det.input_index, det.input_shape = inputs[0]["index"], inputs[0]["shape"]
        det.bbox_index, det.score_index = outputs[0]["index"], outputs[1]["index"]
    portrait = Image.open(PORTRAIT).convert("RGB")
    framed = Image.new("RGB", (1600, 1200))
    framed.paste(portrait.resize((256, 300)), (700, 500))  # small face: the full-range model finds it
    images = [portrait, portrait.resize((2000, 2344)), portrait.rotate(20, expand=True), framed]
    for image in images:
        got, want = ov.detect(image), reference.detect(image)
        assert got is not None and want is not None
        np.testing.assert_allclose(got.box, want.box, atol=0.01)
        np.testing.assert_allclose(np.ravel(got.eyes), np.ravel(want.eyes), atol=0.01)
        assert abs(got.score - want.score) < 1e-4


def test_serving_installs_no_tensorflow():
    """The `serve` extra and the Triton image bring OpenVINO and our backend, and no TensorFlow or Keras."""
    import tomllib

    serve = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    assert not [r for r in serve if r.startswith(("tensorflow", "keras"))], serve
    openvino = next(r for r in serve if r.startswith("openvino=="))
    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text()
    code = "\n".join(line for line in dockerfile.lower().splitlines() if not line.lstrip().startswith("#"))
    assert "tensorflow" not in code and "keras" not in code
    assert f'"{openvino}"' in dockerfile, "the image must pin the same OpenVINO as the serve extra"
    for backend in (ROOT / "serving" / "pipeline" / "backends").iterdir():
        if (backend / "model.py").is_file():
            line = f"COPY serving/pipeline/backends/{backend.name}/ /opt/tritonserver/backends/{backend.name}/"
            assert line in dockerfile, f"the image lacks the {backend.name} backend"

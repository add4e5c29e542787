"""The CPU runtime: OpenVINO serves the SavedModels as TensorFlow computes them (or, where the config's precision
is bf16 or int8 on this CPU, as OpenVINO computes them at that precision), BlazeFace on LiteRT gives the boxes
TensorFlow's TFLite interpreter gives, and no served process loads TensorFlow. Real servers, real models.

"Ready means warm" is timed in the benchmark (loadtest/bench/warmup.py), not here: first-request times on a
shared 2-core CI machine are too noisy for a test; tests/test_configs.py checks the warm-up covers every
batch size the configs prefer."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from common import contract, spec
from loadtest.bench.openvino_reference import served_precision
from tests.conftest import REPOSITORY, TASKS
from training.export import SAVEDMODEL, latest

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "gradio_frontend" / "examples" / "grace_hopper.jpg"
#: Every output of each model is compared, the age interval included.
OUTPUTS = contract.TASK_MODEL_OUTPUTS
TOLERANCE = 1e-3


def crops(task: str) -> np.ndarray:
    """A fixed set of 24 crops at ``task``'s input size: the portrait's face at several framings, flat images and
    seeded noise."""
    side = spec.image_size(task)
    face = Image.open(PORTRAIT).convert("RGB").crop((150, 120, 380, 370))
    real = [
        spec.to_model_input(face.rotate(a).crop((d, d, 230 - d, 250 - d)), side) for a in (-10, 0, 10) for d in (0, 20)
    ]
    flat = [np.full((side, side, 3), v, np.uint8) for v in (0, 128, 255)]
    noise = np.random.default_rng(8).integers(0, 256, (15, side, side, 3), dtype=np.uint8)
    return np.concatenate([np.stack(real + flat), noise])


def tf_outputs(repo: Path, task: str, x: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    fn = tf.saved_model.load(str(latest(repo, task) / SAVEDMODEL)).signatures["serving_default"]
    result = fn(**{spec.INPUT_NAME: tf.constant(x)})
    return {name: result[name].numpy() for name in OUTPUTS[task]}


def served(url: str, task: str, x: np.ndarray, *, per_item: bool, headers=None) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(url)
    try:
        outs = []
        for batch in np.split(x, len(x)) if per_item else [x]:
            image = grpcclient.InferInput(spec.INPUT_NAME, list(batch.shape), "UINT8")
            image.set_data_from_numpy(batch)
            requested = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS[task]]
            outs.append(client.infer(task, [image], outputs=requested, headers=headers))
        return {name: np.concatenate([out.as_numpy(name) for out in outs]) for name in OUTPUTS[task]}
    finally:
        client.close()


def openvino_outputs(repo: Path, task: str, x: np.ndarray, precision: str) -> dict[str, np.ndarray]:
    """The newest version of ``task`` in-process, compiled as the backend compiles it, at ``precision``."""
    from training.precision import compile_version, run

    return {name: value[:, None] for name, value in run(compile_version(latest(repo, task), precision, 1), x).items()}


def check_equal_to_tf(server, repo: Path) -> dict[str, dict[str, np.ndarray]]:
    """Asserts the served outputs equal the exported model's: TensorFlow's within 1e-3 where the config's precision
    is f32 here, else OpenVINO's at that precision in-process (whose f32 must equal TensorFlow's). Returns
    TensorFlow's, by task and output name."""
    references = {}
    for task in TASKS:
        x = crops(task)
        # The one batch is larger than the most the backend runs per OpenVINO call, so it is served in slices.
        cpu_config = (repo / task / "configs" / "cpu.pbtxt").read_text()
        cap = re.search(r'"max_infer_batch" value \{ string_value: "(\d+)"', cpu_config)
        assert cap and len(x) > int(cap[1]), "the batch must exceed max_infer_batch"
        precision = served_precision(repo, task)
        references[task] = tf_outputs(repo, task, x)
        f32 = openvino_outputs(repo, task, x, "f32")
        for name in OUTPUTS[task]:  # the IR computes what the SavedModel computes
            np.testing.assert_allclose(f32[name], references[task][name], rtol=0, atol=TOLERANCE, err_msg=name)
        expected = f32 if precision == "f32" else openvino_outputs(repo, task, x, precision)
        for per_item in (False, True):  # one batch of 24, and 24 single requests (dynamic batching mixes them)
            # The CNNs are internal (not callable through the door): Triton's own port, with its internal key.
            got = served(server.internal_grpc_url, task, x, per_item=per_item, headers=server.internal_headers())
            for name in OUTPUTS[task]:
                assert got[name].shape == expected[name].shape == (len(x), 1) and got[name].dtype == np.float32
                # NaN (an age model without an interval) must be NaN in both: assert_allclose counts NaN == NaN.
                np.testing.assert_allclose(
                    got[name], expected[name], rtol=0, atol=TOLERANCE, err_msg=f"{task}/{name} per_item={per_item}"
                )
            if precision != "f32":  # the config's choice took effect: bf16 and int8 answers are not f32's
                assert any(np.abs(got[n] - f32[n]).max() > 1e-6 for n in OUTPUTS[task]), task
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
    """BlazeFace as served (LiteRT, serving/pipeline/detector_runtime.py) finds the boxes TensorFlow's own TFLite
    interpreter finds (within 0.01 px at 2000 px) on a few framings. (The check was written for OpenVINO, which ran
    the detectors until 2026-12-06; LiteRT has its own build of the kernels, so it stays.)"""
    tf = pytest.importorskip("tensorflow")
    from serving.pipeline import detect

    served = detect.FaceCropper()
    reference = detect.FaceCropper(calibration=served.calibration)
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
        got, want = served.detect(image), reference.detect(image)
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
    for pin in serve:  # the rest of what runs inside Triton, pinned alike (pytriton is the local Triton itself)
        assert pin.startswith("nvidia-pytriton") or f'"{pin}"' in dockerfile, pin
    for backend in (ROOT / "serving" / "pipeline" / "backends").iterdir():
        if (backend / "model.py").is_file():
            line = f"COPY serving/pipeline/backends/{backend.name}/ /opt/tritonserver/backends/{backend.name}/"
            assert line in dockerfile, f"the image lacks the {backend.name} backend"


# The OpenVINO IR beside each SavedModel (serving/pipeline/backends/openvino_savedmodel/ir.py): a cache that must
# never serve anything but the SavedModel beside it.


def test_ir_is_used_only_while_it_matches_its_savedmodel(tiny_repo, tmp_path):
    from serving.pipeline.backends.openvino_savedmodel import ir

    version = tmp_path / "1"
    shutil.copytree(latest(tiny_repo, contract.AGE_MODEL), version)
    assert ir.valid(version) == (True, "valid"), "training.export writes the IR with the SavedModel"
    # Any byte of the SavedModel changed: the IR no longer counts, and ensure() makes a new one.
    weights = version / SAVEDMODEL / "variables" / "variables.data-00000-of-00001"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert ir.valid(version)[1].startswith("savedmodel_sha256 differs")
    assert ir.ensure(version) and ir.valid(version)[0] and not ir.ensure(version)
    # Another OpenVINO, or an IR file that is not the one converted (a truncated download): not used either.
    key_file = version / ir.IR_DIR / ir.KEY
    key = json.loads(key_file.read_text())
    key_file.write_text(json.dumps({**key, "openvino": "2020.1"}))
    assert ir.valid(version)[1].startswith("openvino differs")
    key_file.write_text(json.dumps(key))
    with open(version / ir.IR_DIR / ir.BIN, "r+b") as f:
        f.truncate(100)
    assert not ir.valid(version)[0]


def test_committed_served_versions_ship_a_valid_ir():
    """The served versions carry an IR made from their SavedModel by this OpenVINO; if not, make it with
    `python -m serving.ops.publish model_repository --ir-only` (training.export makes it for new versions)."""
    from serving.pipeline.backends.openvino_savedmodel import ir

    for task in TASKS:
        ok, why = ir.valid(latest(REPOSITORY, task))
        assert ok, f"{latest(REPOSITORY, task)}: {why}"


@pytest.mark.integration
def test_stale_ir_is_never_served(tiny_repo, tmp_path, monkeypatch):
    """The age SavedModel is replaced by another model while the old IR stays beside it and the old compiled
    model sits in OpenVINO's cache: Triton must serve the new SavedModel (converted at load), and gender's still
    valid IR is read instead of converting."""
    from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime
    from serving.runtime.launch import TritonServer
    from training.export import export_model
    from training.model import build

    repo = tmp_path / "model_repository"
    for task in TASKS:  # only the two CNNs: a lean server
        shutil.copytree(tiny_repo / task, repo / task, symlinks=True)

    def server() -> TritonServer:
        # Triton itself, no front door: the door passes only the public ensembles, and this checks the backend.
        return TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, front_door=False)

    # A first start compiles the original models into a private cache, as a machine's earlier start would.
    cache = tmp_path / "ov-cache"
    monkeypatch.setenv(ov_runtime.ENV, str(cache))
    with server():
        pass
    primed = set(cache.glob("*.blob"))
    assert len(primed) >= 2 and cache.stat().st_mode & 0o777 == 0o700
    age = latest(repo, contract.AGE_MODEL)
    other = export_model(build(contract.AGE_MODEL, widths=(4, 8)), contract.AGE_MODEL, tmp_path / "other")
    shutil.rmtree(age / SAVEDMODEL)
    shutil.copytree(other / SAVEDMODEL, age / SAVEDMODEL)
    x = crops(contract.AGE_MODEL)
    old_ir = ov_outputs(age / ir.IR_DIR / ir.XML, x)
    new = tf_outputs(repo, contract.AGE_MODEL, x)
    # The test can fail: the stale IR answers differently from the SavedModel now in the folder.
    assert np.abs(old_ir[contract.AGE_OUTPUT] - new[contract.AGE_OUTPUT]).max() > 10 * TOLERANCE
    with server() as second:
        check_equal_to_tf(second, repo)
        sources = {
            record["model"]: record["source"]
            for line in second.logs().splitlines()
            if (m := re.search(r"\[coldstart\] (\{.*\})", line)) and (record := json.loads(m[1]))
        }
    assert sources[contract.AGE_MODEL].startswith("converted: savedmodel_sha256 differs"), sources
    # ("ir; int8 chosen, serving f32: no model.int8" where auto picks int8: the tiny models have none)
    assert sources[contract.GENDER_MODEL].split(";")[0] == "ir", sources
    # The new age model was compiled and cached beside the old blob, which stays unused.
    assert set(cache.glob("*.blob")) > primed


def ov_outputs(xml: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """What an IR computes, in-process, with the backend's precision."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(x)
    return {name: result[compiled.output(name)] for port in compiled.outputs for name in port.get_names()}

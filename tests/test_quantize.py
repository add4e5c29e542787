"""training.quantize: the int8 model beside a SavedModel, calibrated on training faces only, never served beside
another SavedModel; and the backend serving it where a config asks for int8 (real Triton, tiny models)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import contract, spec
from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime
from tests.conftest import TASKS, _serve
from tests.test_cpu_runtime import crops, served
from training import data as utk
from training import precision, quantize
from training.export import latest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def int8_repo(tiny_repo, archive, tmp_path_factory):
    """A copy of the tiny repository (the session's is shared) with both models quantized on the fixture archive."""
    repo = tmp_path_factory.mktemp("int8") / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    cache = tmp_path_factory.mktemp("cache")
    # The fixture archive holds far fewer than the 200 faces a real calibration needs (quantize.MIN_FACES).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantize, "MIN_FACES", 16)
        argv = ["--data", str(archive), "--repo", str(repo), "--faces", "16", "--cache-dir", str(cache)]
        written = quantize.main(argv)
    assert written == [latest(repo, task) / ir.INT8_DIR for task in TASKS]
    return repo


def test_int8_is_calibrated_on_training_faces_and_keyed_to_its_savedmodel(int8_repo, archive, tmp_path):
    version = latest(int8_repo, contract.AGE_MODEL)
    assert ir.int8_valid(version) == (True, "valid")
    key = json.loads((version / ir.INT8_DIR / ir.KEY).read_text())
    assert key["savedmodel_sha256"] == ir.savedmodel_digest(version / ir.SAVEDMODEL)
    assert key["calibration"]["split"] == "train" and key["calibration"]["faces"] == 16
    assert key["format"] == quantize.FORMAT and key["bias_correction"] == "full"
    # The calibration faces are training faces of the version's split, never validation or test ones.
    data = utk.load(archive, size=spec.image_size(contract.AGE_MODEL), cache_dir=None)
    faces = quantize.calibration_faces(data, key["calibration"]["split_seed"], 16)
    train = data.images[utk.split(data, seed=key["calibration"]["split_seed"]) == "train"]
    assert len(faces) == 16 and all(any(np.array_equal(f, t) for t in train) for f in faces)
    # Its convolutions run in int8, its heads in float: it answers close to, but not exactly, the f32 model.
    x = crops(contract.AGE_MODEL)
    f32 = precision.run(precision.compile_version(version, "f32", 1), x)
    int8 = precision.run(precision.compile_version(version, "int8", 1), x)
    assert np.isfinite(int8[spec.AGE_OUTPUT]).all() and not np.array_equal(int8[spec.AGE_OUTPUT], f32[spec.AGE_OUTPUT])
    # Another SavedModel in the folder (a new export, a half-copied upload): the int8 model is not used.
    copy = tmp_path / "v"
    shutil.copytree(version, copy)
    variables = next((copy / ir.SAVEDMODEL / "variables").glob("*.data*"))
    variables.write_bytes(variables.read_bytes()[:-1] + bytes([variables.read_bytes()[-1] ^ 1]))
    ok, why = ir.int8_valid(copy)
    assert not ok and "savedmodel_sha256 differs" in why
    shutil.copytree(version, copy, dirs_exist_ok=True)
    (copy / ir.INT8_DIR / ir.BIN).write_bytes((copy / ir.INT8_DIR / ir.BIN).read_bytes()[:100])
    assert ir.int8_valid(copy) == (False, "model.int8/model.bin is missing or not the one written")
    with pytest.raises(SystemExit, match="no int8 model to score"):
        precision.compile_version(copy, "int8", 1)


#: The version's model at a precision, compiled as the backend compiles it, in a fresh process: oneDNN reads its ISA cap
#: once per process, and int8 kernels without VNNI round differently (by up to 0.07 years on the tiny age model).
_IN_PROCESS = """
import sys
from pathlib import Path

import numpy as np

from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime

version, precision, src, dst = sys.argv[1:]
core = ov_runtime.import_openvino().Core()
model, _, served = ir.load_served(Path(version), core, precision)
assert served == precision, (served, precision)
compiled = ov_runtime.compile_model(core, model, ov_runtime.settings(1, precision))
result = compiled.create_infer_request().infer([np.load(src)])
np.savez(dst, **{port.get_any_name(): np.array(result[port])[:, 0] for port in compiled.outputs})
"""


def in_process(version, precision: str, x: np.ndarray, tmp_path) -> dict[str, np.ndarray]:
    np.save(tmp_path / "x.npy", x)
    cmd = [sys.executable, "-c", _IN_PROCESS, str(version), precision, str(tmp_path / "x.npy"), str(tmp_path / "y.npz")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(np.load(tmp_path / "y.npz"))


@pytest.mark.integration
def test_int8_is_served_where_a_config_or_auto_picks_it_or_the_log_says_f32(int8_repo, tmp_path, monkeypatch):
    """age says auto, gender int8; oneDNN held to AVX512_CORE, as on a CPU without native bf16 (Ice Lake without
    its VNNI, or Zen 3 with AVX-512 in name only): auto serves age's int8 model; gender, whose int8 model is gone,
    serves f32 and the log says so."""
    repo = tmp_path / "repo"
    shutil.copytree(int8_repo, repo, symlinks=True)
    config = repo / contract.GENDER_MODEL / "configs" / "cpu.pbtxt"
    config.write_text(config.read_text().replace('string_value: "auto"', 'string_value: "int8"'))
    shutil.rmtree(latest(repo, contract.GENDER_MODEL) / ir.INT8_DIR)
    monkeypatch.setenv(ov_runtime.ISA_CAP, "AVX512_CORE")  # the server's processes inherit it
    native = ov_runtime.native()
    assert native["bf16"] == "" and ov_runtime.resolve_precision("int8") == "int8"
    age_wants = "int8" if native["int8"] else "f32"  # a CPU without AVX2 keeps f32
    server_gen = _serve(repo)
    server = next(server_gen)
    try:
        for task, want in ((contract.AGE_MODEL, age_wants), (contract.GENDER_MODEL, "f32")):
            x = crops(task)
            expected = in_process(latest(repo, task), want, x, tmp_path)  # under the server's cap
            got = served(server.internal_grpc_url, task, x, per_item=False, headers=server.internal_headers())
            for name in contract.TASK_MODEL_OUTPUTS[task]:
                np.testing.assert_allclose(got[name][:, 0], expected[name], rtol=0, atol=1e-3, err_msg=f"{task}/{name}")
        logs = server.logs()
        assert "int8 chosen, serving f32: no model.int8" in logs
        lines = [json.loads(line.split("[coldstart] ", 1)[1]) for line in logs.splitlines() if "[coldstart] {" in line]
        assert {(t["model"], t["precision"]) for t in lines} == {("age", age_wants), ("gender", "f32")}
        assert {(t["native_bf16"], t["native_int8"]) for t in lines} == {("none", native["int8"] or "none")}
    finally:
        server_gen.close()

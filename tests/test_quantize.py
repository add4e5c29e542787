"""training.quantize: the int8 model beside a SavedModel, calibrated on training faces only, never served beside
another SavedModel; and the backend serving it where a config asks for int8 (real Triton, tiny models)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from common import contract, spec
from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime
from tests.conftest import TASKS, _serve
from tests.test_cpu_runtime import crops, served
from training import data as utk
from training import precision, quantize
from training.export import latest


@pytest.fixture(scope="module")
def int8_repo(tiny_repo, archive, tmp_path_factory):
    """A copy of the tiny repository (the session's is shared) with both models quantized on the fixture archive."""
    repo = tmp_path_factory.mktemp("int8") / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    cache = tmp_path_factory.mktemp("cache")
    written = quantize.main(["--data", str(archive), "--repo", str(repo), "--faces", "16", "--cache-dir", str(cache)])
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


@pytest.mark.integration
def test_a_config_asking_for_int8_serves_the_int8_model_or_says_it_serves_f32(int8_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(int8_repo, repo, symlinks=True)
    for task in TASKS:
        config = repo / task / "configs" / "cpu.pbtxt"
        config.write_text(config.read_text().replace('string_value: "auto"', 'string_value: "int8"'))
    # gender without a valid int8 model: served in f32, and the log says so.
    shutil.rmtree(latest(repo, contract.GENDER_MODEL) / ir.INT8_DIR)
    assert ov_runtime.resolve_precision("int8") == "int8"
    server_gen = _serve(repo)
    server = next(server_gen)
    try:
        for task, want in ((contract.AGE_MODEL, "int8"), (contract.GENDER_MODEL, "f32")):
            x = crops(task)
            expected = precision.run(precision.compile_version(latest(repo, task), want, 1), x)
            got = served(server.internal_grpc_url, task, x, per_item=False, headers=server.internal_headers())
            for name in contract.TASK_MODEL_OUTPUTS[task]:
                np.testing.assert_allclose(got[name][:, 0], expected[name], rtol=0, atol=1e-3, err_msg=f"{task}/{name}")
        logs = server.logs()
        assert "int8 asked for, serving f32: no model.int8" in logs
        lines = [json.loads(line.split("[coldstart] ", 1)[1]) for line in logs.splitlines() if "[coldstart] {" in line]
        assert {(t["model"], t["precision"]) for t in lines} == {("age", "int8"), ("gender", "f32")}
        assert {t["native_bf16"] for t in lines} == {ov_runtime.native_bf16() or "none"}
    finally:
        server_gen.close()

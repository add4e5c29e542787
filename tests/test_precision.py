"""training.precision: the served versions scored at f32 and bf16 on the same faces, in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common import spec
from serving.pipeline.backends.openvino_savedmodel import ov_runtime
from tests import utk_fixture
from training import data as utk
from training import evaluate, precision
from training.export import latest


def test_report_scores_each_precision_and_f32_is_the_exported_model(archive, tiny_repo, tmp_path):
    out = tmp_path / "report"
    args = ["--data", str(archive), "--repo", str(tiny_repo), "--split", "all", "--out", str(out), "--name", "cpu-x"]
    report = precision.main([*args, "--cache-dir", str(tmp_path / "cache"), "--speed-seconds", "0.05"])
    n = utk_fixture.EXPECTED["kept"]
    assert report["n"] == n and set(report["scores"]) == set(precision.PRECISIONS)
    assert report["machine"]["auto_resolves_to"] == ov_runtime.resolve_precision("auto")
    # OpenVINO compiles f32 as asked, and bf16 wherever the CPU has the instructions for it (else f32).
    assert all(c["f32"] == "f32" and c["bf16"] in ("bf16", "f32") for c in report["compiled_as"].values())
    # f32 through OpenVINO scores what TensorFlow's SavedModel scores (training.evaluate) on the same faces.
    data = utk.load(archive, size=spec.image_size("age"), cache_dir=tmp_path / "cache")
    ages = evaluate.predict(latest(tiny_repo, "age"), data.images)[spec.AGE_OUTPUT]
    assert abs(report["scores"]["f32"]["age"]["mae"] - float(np.abs(ages - data.ages).mean())) < 1e-3
    moved = report["moved_from_f32"]["bf16"]
    assert set(moved) == {spec.AGE_OUTPUT, spec.AGE_LOW_OUTPUT, spec.AGE_HIGH_OUTPUT, spec.GENDER_OUTPUT}
    assert 0 <= moved[spec.GENDER_OUTPUT]["decisions_flipped"] <= n
    assert all(v > 0 for by_p in report["cpu_ms_per_image"].values() for v in by_p.values())
    assert json.loads((out / "cpu-x.json").read_text()) == report
    text = (out / "cpu-x.md").read_text()
    assert "| f32 |" in text and "| bf16 |" in text and f"of {n}" in text


def test_precisions_to_score_can_be_named(archive, tiny_repo, tmp_path):
    """--precisions: a stand-in CPU whose oneDNN cannot compile bf16 still scores f32 (always) and int8."""
    args = ["--data", str(archive), "--repo", str(tiny_repo), "--split", "all", "--out", str(tmp_path)]
    args += ["--cache-dir", str(tmp_path / "cache"), "--speed-seconds", "0.01"]
    report = precision.main([*args, "--precisions", "bf16"])
    assert report["precisions"] == ["f32", "bf16"] and set(report["moved_from_f32"]) == {"bf16"}
    with pytest.raises(SystemExit, match="no int8 model to score"):  # the tiny models have none
        precision.main([*args, "--precisions", "int8"])
    with pytest.raises(SystemExit):
        precision.main([*args, "--precisions", "fp16"])

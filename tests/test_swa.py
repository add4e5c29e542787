"""training.swa and the training options that feed it (the order seed, a constant rate, kept epochs).

The average holds every snapshot's mean weight (BatchNorm's moving statistics estimated again), snapshots of other
splits or architectures are refused, and a constant-rate run that keeps its epochs averages into a run that exports
like any other; the order seed changes the training but never the split."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import spec
from training import evaluate, export, heads, swa, train
from training import model as models

from .test_ensemble import WIDTHS, member


def moving(path: str) -> bool:
    return "moving_mean" in path or "moving_variance" in path


def test_the_average_holds_the_snapshots_mean_weights(tmp_path):
    (a, net_a), (b, net_b), (c, net_c) = (member(tmp_path, n, "age", s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    model, nets, configs = swa.average("age", [a, b, c], spec.image_size("age"))
    assert len(nets) == len(configs) == 3
    assert [w.path for w in model.weights] == [w.path for w in net_a.weights]  # a plain network, served as one
    for w, *parts in zip(model.weights, net_a.weights, net_b.weights, net_c.weights, strict=True):
        np.testing.assert_allclose(w.numpy(), np.mean([p.numpy() for p in parts], axis=0), atol=1e-6)
    # The snapshots differ, so a mean that kept one of them would fail above.
    assert np.abs(net_a.get_layer("fc").kernel.numpy() - net_b.get_layer("fc").kernel.numpy()).max() > 1e-3


def test_snapshots_of_other_splits_or_architectures_are_refused(tmp_path):
    a, _ = member(tmp_path, "a", "gender", 1)
    b, _ = member(tmp_path, "b", "gender", 2, split_seed=7)
    with pytest.raises(ValueError, match="different splits"):
        swa.average("gender", [a, b], spec.image_size("gender"))
    other = tmp_path / "other"
    other.mkdir()
    models.build("gender", widths=(2, 2)).save(other / "model.keras")
    (other / "config.json").write_text(json.dumps({"task": "gender", "widths": "2,2", "seed": 1337}))
    with pytest.raises(ValueError, match="different architectures"):
        swa.average("gender", [a, other / "model.keras"], spec.image_size("gender"))
    # The trunk is fully convolutional, so a 96 px gender net would load; it is another model all the same.
    larger = tmp_path / "larger"
    larger.mkdir()
    models.build("gender", widths=(4, 8), size=96).save(larger / "model.keras")
    (larger / "config.json").write_text(
        json.dumps({"task": "gender", "widths": WIDTHS, "seed": 1337, "image_size": 96})
    )
    with pytest.raises(ValueError, match="px"):
        swa.average("gender", [a, larger / "model.keras"], spec.image_size("gender"))


LR = 4e-3


@pytest.fixture(scope="module")
def constant_runs(archive, tmp_path_factory):
    """Two short constant-rate runs that keep their epochs: one in the split seed's order, one in order 5."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for order in (None, 5):
        out = root / f"run-{order}"
        args = ["--task", "gender", "--data", str(archive), "--out", str(out), "--epochs", "2", "--batch-size", "16"]
        args += ["--widths", WIDTHS, "--cache-dir", str(root / "cache"), "--lr", str(LR), "--patience", "10"]
        args += ["--schedule", "constant", "--keep-epochs", "--run-eagerly", "--limit", "16"]  # a batch an epoch
        train.main(args + (["--order-seed", str(order)] if order is not None else []))
        runs[order] = out
    return runs


def test_the_order_seed_changes_training_but_never_the_split(constant_runs):
    runs = constant_runs
    assert (runs[None] / "manifest.csv").read_text() == (runs[5] / "manifest.csv").read_text()
    configs = {k: json.loads((v / "config.json").read_text()) for k, v in runs.items()}
    assert configs[None]["seed"] == configs[5]["seed"] == 1337
    assert (configs[None]["order_seed"], configs[5]["order_seed"]) == (1337, 5)
    weights = [keras.models.load_model(v / "model.keras").get_layer("fc").get_weights()[0] for v in runs.values()]
    assert np.abs(weights[0] - weights[1]).max() > 1e-4


def test_a_constant_phase_keeps_its_epochs_and_their_average_exports(archive, constant_runs, tmp_path):
    run = constant_runs[5]
    snapshots = sorted(run.glob("epoch*.keras"))
    assert [p.name for p in snapshots] == ["epoch001.keras", "epoch002.keras"]
    with open(run / "history.csv") as f:
        rates = [float(row["lr"]) for row in csv.DictReader(f)]
    np.testing.assert_allclose(rates, [LR / 2, LR], rtol=1e-5)  # the warm-up epoch, then held (cosine would fall)

    out = swa.main(
        ["--task", "gender", "--data", str(archive), "--cache-dir", str(tmp_path / "cache")]
        + ["--out", str(tmp_path / "swa"), "--snapshots", *map(str, snapshots)]
    )
    record = json.loads((out / "config.json").read_text())
    assert (out / "history.csv").read_text() == (run / "history.csv").read_text()  # the curves travel with the export
    assert [s["source"] for s in record["weight_average"]["snapshots"]] == list(map(str, snapshots))
    assert record["seed"] == 1337 and record["widths"] == WIDTHS and "post_training" not in record
    averaged = keras.models.load_model(out / "model.keras")
    saved = [keras.models.load_model(p) for p in snapshots]
    for w, *parts in zip(averaged.weights, *(s.weights for s in saved), strict=True):
        if not moving(w.path):
            np.testing.assert_allclose(w.numpy(), np.mean([p.numpy() for p in parts], axis=0), atol=1e-6)
    # BatchNorm's statistics were estimated again on clean faces, not averaged.
    means = [
        (w, *parts)
        for w, *parts in zip(averaged.weights, *(s.weights for s in saved), strict=True)
        if "moving_mean" in w.path
    ]
    assert means and any(
        np.abs(w.numpy() - np.mean([p.numpy() for p in parts], axis=0)).max() > 1e-4 for w, *parts in means
    )

    version = export.main(["--runs", str(tmp_path / "swa"), "--repo", str(tmp_path / "repo"), "--tasks", "gender"])[0]
    faces = np.random.default_rng(5).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    served = evaluate.predict(version, faces)[spec.GENDER_OUTPUT]
    expected = heads.flat(
        heads.served_outputs(averaged, "gender", tf.constant(faces), temperature=record["temperature"])
    )
    np.testing.assert_allclose(served, expected[spec.GENDER_OUTPUT], atol=1e-3)

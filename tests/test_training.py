"""Loader, split, rebalancing, smoke training, export and signature checks on a tiny fixture."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from common import spec
from tests import utk_fixture
from training import data as utk
from training import evaluate, export, heads, runs, train
from training import model as models


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return utk_fixture.write_folder(tmp_path_factory.mktemp("folder"))


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("25_1_3_20170119164425613.jpg.chip.jpg", utk.Label(25, 1, 3)),
        ("39_1_20170116174525125.jpg.chip.jpg", utk.Label(39, 1, -1)),
        ("24_0_1_20170116220224657 .jpg.chip.jpg", utk.Label(24, 0, 1)),
        ("UTKFace/61_1_201701091425.jpg.chip.jpg", utk.Label(61, 1, -1)),
        ("200_0_0_20170116174525125.jpg.chip.jpg", None),
        ("20_2_0_20170116174525125.jpg.chip.jpg", None),
        ("a_b_c_d.jpg", None),
        ("notaface.jpg", None),
        # int() takes these; no UTKFace name has them, and whose label they would be is a guess.
        ("+5_0_0_20170116174525125.jpg.chip.jpg", None),
        (" 7_0_0_20170116174525125.jpg.chip.jpg", None),
        ("-0_1_0_20170116174525125.jpg.chip.jpg", None),
        ("\u0663\u0660_1_0_20170116174525125.jpg.chip.jpg", None),  # Arabic-Indic 30
        ("30_\u0661_0_20170116174525125.jpg.chip.jpg", None),
    ],
)
def test_parse_name(name, label):
    assert utk.parse_name(name) == label


def test_loader_counts_archive_and_folder_agree(archive, folder, tmp_path):
    side = spec.image_size("gender")
    a = utk.load(archive, size=side, cache_dir=None)
    f = utk.load(folder, size=side, cache_dir=None)
    assert dataclasses.asdict(a.summary) == utk_fixture.EXPECTED
    assert dataclasses.asdict(f.summary) == utk_fixture.EXPECTED
    assert a.images.shape == (utk_fixture.EXPECTED["kept"], side, side, 3)
    assert a.images.dtype == np.uint8
    assert sorted(a.names) == sorted(f.names)
    assert len(set(a.hashes)) == len(a)
    # Conflicting copies are gone; the agreeing pair left its first name.
    assert not {"20_1_0_20170117000000003.jpg.chip.jpg", "45_1_0_20170117000000004.jpg.chip.jpg"} & set(a.names)
    assert "30_0_0_20170117000000001.jpg.chip.jpg" in set(a.names)
    # Its copies agree on age and gender but name races 0 and 2: the race is unknown, not the first name's.
    assert a.races[list(a.names).index("30_0_0_20170117000000001.jpg.chip.jpg")] == -1
    assert utk.LoadSummary(**utk_fixture.EXPECTED).line("x").startswith("x: 73 files, kept 65")


def test_cache_round_trip(archive, tmp_path):
    first = utk.load(archive, size=32, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("utkface-*.npz"))) == 1
    second = utk.load(archive, size=32, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.ages, second.ages)
    assert second.summary == first.summary


def test_split_is_grouped_by_hash_and_seeded(archive):
    data = utk.load(archive, size=32, cache_dir=None)
    # Duplicate every row: copies of one image must land in the same split.
    doubled = data.subset(np.concatenate([np.arange(len(data)), np.arange(len(data))]))
    splits = utk.split(doubled, seed=7)
    for digest in set(doubled.hashes):
        assert len(set(splits[doubled.hashes == digest])) == 1
    assert set(splits) <= set(utk.SPLITS)
    np.testing.assert_array_equal(utk.split(data, seed=7), utk.split(data, seed=7))
    assert (utk.split(data, seed=7) != utk.split(data, seed=8)).any()
    big = data.subset(np.zeros(0, int))
    big.hashes = np.array([f"{i:064x}" for i in range(5000)])
    big.thumbs = np.random.default_rng(0).integers(0, 256, (5000, 4, 4), dtype=np.uint8)  # no two alike
    fractions = {s: (utk.split(big, seed=1) == s).mean() for s in utk.SPLITS}
    assert abs(fractions["train"] - 0.8) < 0.03 and abs(fractions["test"] - 0.1) < 0.02


def test_a_photo_saved_twice_under_other_names_never_trains_and_scores(tmp_path):
    # UTKFace holds one photo under several names, re-encoded or mirrored, often with other labels: a test or
    # validation face that is a training face's copy would score memory.
    folder = utk_fixture.write_folder(tmp_path)
    photo = Image.open(io.BytesIO(utk_fixture.jpeg(5000)))
    for i, variant in enumerate([photo, photo.resize((180, 180)), ImageOps.mirror(photo)]):
        buf = io.BytesIO()
        variant.save(buf, "JPEG", quality=95 - 5 * i)
        (folder / f"{30 + i}_{i % 2}_0_20170118{i:09d}.jpg.chip.jpg").write_bytes(buf.getvalue())
    data = utk.load(folder, size=32, cache_dir=None)
    copies = np.flatnonzero(np.char.find(data.names, "_20170118") > 0)
    assert len(copies) == 3 and len(set(data.hashes[copies])) == 3  # three files, three different byte strings
    seen = set()
    for seed in range(40):
        splits = utk.split(data, seed=seed)
        ours = splits[copies]
        seen.add(tuple(sorted(ours)))
        # One of them may train, or be scored once; never both, never in two evaluation splits.
        assert not ("train" in ours and ({"val", "test"} & set(ours))), ours
        assert sum(s in ("val", "test") for s in ours) <= 1 or len(set(ours) - {utk.COPY}) == 1, ours
        # The fixture's other faces are different photos: none is left out.
        others = np.setdiff1d(np.arange(len(data)), copies)
        assert utk.COPY not in set(splits[others])
    assert any(utk.COPY in s for s in seen)  # the rule ran, not just luck of the hash


def test_a_part_is_the_faces_of_one_split_under_its_seed(archive):
    data = utk.load(archive, size=32, cache_dir=None)
    parts = {name: utk.part(data, name, seed=7) for name in utk.SPLITS}
    for name, part in parts.items():
        np.testing.assert_array_equal(part.hashes, data.hashes[utk.split(data, seed=7) == name])
    assert sum(len(p) for p in parts.values()) == len(data) - (utk.split(data, seed=7) == utk.COPY).sum()
    assert set(utk.part(data, "val", seed=7).hashes) != set(utk.part(data, "val", seed=8).hashes)
    with pytest.raises(ValueError, match="split 'validation'"):
        utk.part(data, "validation")


def test_rebalance_drops_old_and_thins_young():
    n = 3000
    ages = np.repeat(np.array([2, 30, 85]), n)
    data = utk.Dataset(
        np.zeros((3 * n, 1, 1, 3), np.uint8),
        ages,
        np.zeros(3 * n, int),
        np.zeros(3 * n, int),
        np.array(["x"] * 3 * n),
        np.array(["h"] * 3 * n),
        np.zeros((3 * n, 1, 1), np.uint8),
    )
    kept = ages[utk.rebalance(data, seed=0)]
    assert (kept < 80).all()
    assert (kept == 30).sum() == n
    assert abs((kept == 2).sum() / n - 1 / 3) < 0.05


def test_smoke_train_export_signature_and_evaluate(archive, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    recalibrated = []
    original = models.recalibrate_batchnorm
    monkeypatch.setattr(models, "recalibrate_batchnorm", lambda *a, **k: recalibrated.append(1) or original(*a, **k))
    for task in ("age", "gender"):
        run = tmp_path / "runs" / task
        best = train.main(
            [
                "--task",
                task,
                "--data",
                str(archive),
                "--out",
                str(run),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--widths",
                "4,8",
                "--cache-dir",
                str(tmp_path / "cache"),
                # Age trains in graph mode, the path real runs take (the only test that traces it, custom loss and
                # metric included); gender eagerly, as the other training tests do (tracing costs more than its steps).
                *(["--run-eagerly"] if task == "gender" else []),
            ]
        )
        assert best.exists()
        config = json.loads((run / "config.json").read_text())
        assert config["image_size"] == spec.image_size(task) and config["task"] == task and config["epochs"] == 1
        assert (run / "manifest.csv").read_text().count("\n") == utk_fixture.EXPECTED["kept"] + 1
        assert len((run / "history.csv").read_text().splitlines()) == 2
    # One epoch: its checkpoint is the best and the last, finished once for both (train._same_weights).
    assert len(recalibrated) == 2
    written = export.main(["--runs", str(tmp_path / "runs"), "--repo", str(repo)])
    assert [p.name for p in written] == ["1", "1"]

    outputs = {"age": [spec.AGE_OUTPUT, spec.AGE_HIGH_OUTPUT, spec.AGE_LOW_OUTPUT], "gender": [spec.GENDER_OUTPUT]}
    for task, names in outputs.items():
        version = export.latest(repo, task)
        # Only the artifact and its records: serving code lives in serving/pipeline/backends, not in version folders.
        assert not list(version.glob("*.py"))
        assert json.loads((version / "training_config.json").read_text())["task"] == task
        sig = tf.saved_model.load(str(version / export.SAVEDMODEL)).signatures["serving_default"]
        inputs = sig.structured_input_signature[1]
        assert list(inputs) == [spec.INPUT_NAME]
        assert inputs[spec.INPUT_NAME].dtype == tf.uint8
        side = spec.image_size(task)
        assert inputs[spec.INPUT_NAME].shape.as_list() == [None, side, side, 3]
        assert sorted(sig.structured_outputs) == names
        result = sig(image=tf.zeros((3, side, side, 3), tf.uint8))
        for output in names:
            assert sig.structured_outputs[output].shape.as_list() == [None, 1]
            out = result[output].numpy()
            assert out.shape == (3, 1) and np.isfinite(out).all()
    config = json.loads((export.latest(repo, "age") / "training_config.json").read_text())
    assert config["tta"] is True and config["age_head"] == "bins" and config["temperature"] > 0
    # Both candidates were finished on the validation split and the kept one is recorded.
    assert {"best", "last"} <= set(config["post_training"]) and config["post_training"]["chosen"] in ("best", "last")
    assert 0 <= config["val_served"]["interval_coverage"] <= 1

    report_dir = tmp_path / "report"
    report = evaluate.main(
        [
            "--data",
            str(archive),
            "--repo",
            str(repo),
            "--out",
            str(report_dir),
            "--predictions",
            str(tmp_path / "pred.csv"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--split",
            "all",  # the fixture's test split is a handful of faces (the default, refused below 20)
        ]
    )
    assert report["all_ages"]["age"]["n"] == utk_fixture.EXPECTED["kept"]
    assert report["under_80"]["age"]["n"] < report["all_ages"]["age"]["n"]
    for name in (
        "evaluation.json",
        "evaluation.md",
        "training_curves.png",
        "age_histogram.png",
        "age_scatter.png",
        "gender_confusion.png",
        "age_interval_coverage.png",
    ):
        assert (report_dir / name).stat().st_size > 0
    rows = (tmp_path / "pred.csv").read_text().splitlines()
    assert rows[0] == "file,true_age,predicted_age,age_low,age_high,true_gender,female_probability"
    assert len(rows) == utk_fixture.EXPECTED["kept"] + 1
    for row in rows[1:]:
        low, high = float(row.split(",")[3]), float(row.split(",")[4])
        assert 0 <= low <= high <= 116.5
    assert 0 <= report["all_ages"]["age"]["coverage"] <= 1
    assert all("coverage" in band for band in report["all_ages"]["age_by_band"].values())
    assert "80% interval coverage" in (report_dir / "evaluation.md").read_text()
    # A gender network trained on another split would be scored on faces it trained on: refused.
    gender_record = export.latest(repo, "gender") / "training_config.json"
    record = json.loads(gender_record.read_text())
    gender_record.write_text(json.dumps({**record, "seed": record["seed"] + 1}))
    with pytest.raises(SystemExit, match="different splits"):
        evaluate.main(["--data", str(archive), "--repo", str(repo), "--out", str(tmp_path / "mixed"), "--split", "all"])
    gender_record.write_text(json.dumps(record))

    # Test-time augmentation is a per-deployment choice: the same run exported without it answers for the face
    # alone, which the flip-averaged version does not (a tiny untrained model is not mirror-symmetric).
    (plain,) = export.main(["--runs", str(tmp_path / "runs"), "--repo", str(repo), "--tasks", "age", "--no-tta"])
    # A second export adds version 2 and keeps version 1.
    assert export.versions(repo / "age") == [1, 2] and plain.name == "2"
    record = json.loads((plain / "training_config.json").read_text())
    assert record["tta"] is False and record["tta_trained"] is True
    side = spec.image_size("age")
    faces = np.random.default_rng(3).integers(0, 255, (4, side, side, 3), dtype=np.uint8)
    model = keras.models.load_model(tmp_path / "runs" / "age" / "model.keras")
    alone = heads.served_outputs(model, "age", tf.constant(faces), tta=False, temperature=config["temperature"])
    alone = heads.flat(alone)
    got = evaluate.predict(plain, faces)
    same = np.abs(got[spec.AGE_OUTPUT] - alone[spec.AGE_OUTPUT]).max()
    flipped = evaluate.predict(export.latest(repo, "age").with_name(str(int(plain.name) - 1)), faces)
    # An untrained tiny model is nearly mirror-symmetric: the flip-averaged answer differs little, but by far
    # more than float noise, which is all that separates the no-TTA export from the model run on the face alone.
    assert same < 1e-5 and np.abs(flipped[spec.AGE_OUTPUT] - got[spec.AGE_OUTPUT]).max() > max(10 * same, 1e-4)


def test_models_take_uint8_and_carry_their_normalisation():
    model = models.build("gender", widths=(4, 8))
    assert model.input.dtype == "uint8"
    assert any(layer.__class__.__name__ == "Rescaling" for layer in model.layers)
    with pytest.raises(ValueError):
        models.build("race")


def test_batchnorm_recalibration_moves_statistics_to_the_given_faces():
    model = models.build("age", widths=(4, 8))
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    bn.moving_mean.assign(np.full(bn.moving_mean.shape, 50.0, np.float32))
    # 64 passes of 4 faces (every face once): momentum 0.9 leaves 0.9 ** 64 of the old 50; small batches keep it fast.
    bright = np.full((256, spec.image_size("age"), spec.image_size("age"), 3), 200, np.uint8)
    weights_before = [w.numpy().copy() for w in model.trainable_weights]
    models.recalibrate_batchnorm(model, bright, batch_size=4, steps=64)
    assert np.abs(bn.moving_mean.numpy()).max() < 5.0  # 50 decays towards the conv outputs' real mean
    assert bn.momentum == 0.99  # restored
    for before, after in zip(weights_before, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())  # statistics only, no learning


def test_architecture_benchmark_times_each_candidate(capsys):
    from training import benchmark

    # Tiny inputs and a short timing: what is checked is that each candidate gets its row of positive rates.
    benchmark.main(["--seconds", "0.01", "--architectures", "16:4,8", "8:4"])
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| 16 |") or line.startswith("| 8 |")
    ]
    assert len(rows) == 2
    for row in rows:
        inference, training, served = (float(cell) for cell in row.strip("| ").split(" | ")[-3:])
        assert inference > 0 and training > 0 and served > 0


def test_gender_calibration_error_and_reliability_table():
    from training.evaluate import calibration

    rng = np.random.default_rng(0)
    prob = rng.random(20_000)
    calibrated = (rng.random(20_000) < prob).astype(int)  # "p" is right a fraction p of the time
    assert calibration(calibrated, prob)["ece"] < 0.02
    overconfident = (rng.random(20_000) < 0.5 + (prob - 0.5) / 2).astype(int)  # truth only half as extreme
    result = calibration(overconfident, prob, bins=10)
    assert 0.1 < result["ece"] < 0.15  # mean |p - (0.5 + (p - 0.5) / 2)| = 0.125
    assert len(result["bins"]) == 10 and sum(b["n"] for b in result["bins"]) == 20_000
    assert result["bins"][0]["observed"] > result["bins"][0]["mean_p"]  # low predictions are too low


def test_a_small_band_s_ece_is_read_against_what_sampling_alone_gives():
    from training.evaluate import calibration, ece_noise

    rng = np.random.default_rng(1)
    prob = rng.beta(0.5, 0.5, 130)  # a baby band's size, probabilities spread to both ends as the model's are
    calibrated = (rng.random(130) < prob).astype(int)
    noise = ece_noise(calibrated, prob, draws=500)
    # ECE of an exactly calibrated model is far from 0 on 130 faces; the test does not call that miscalibration.
    assert 0.03 < noise["calibrated_mean"] < noise["calibrated_p95"] < 0.2
    assert calibration(calibrated, prob)["ece"] > 0.03 and noise["p"] > 0.05
    # The same probabilities for faces that are a coin toss: over-confident beyond any sampling noise.
    coin = (rng.random(130) < 0.5).astype(int)
    assert ece_noise(coin, prob, draws=500)["p"] < 0.01
    # Reproducible (a fixed seed), and nothing to say about an empty band.
    assert ece_noise(calibrated, prob, draws=500) == noise
    assert ece_noise(np.zeros(0, int), np.zeros(0))["p"] is None


def test_calibrated_export_keeps_the_source_estimate_and_refuses_one_that_moves(tmp_path):
    """training.calibrate's path on a tiny model: weights read back from the SavedModel, the interval changed
    in the exported graph, the estimate not; an export whose estimate differs is refused before it is a version."""
    from training import calibrate, heads

    model = models.build("age", widths=(4, 8))
    # A peaked, skewed distribution: the interval has a width to move, and its mean lies years above its median.
    head = model.get_layer("age_logits")
    skewed = -0.5 * ((np.log1p(np.arange(heads.AGE_BINS)) - np.log(30)) / 0.4) ** 2
    head.set_weights([head.get_weights()[0], skewed.astype("f")])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"task": "age", "widths": "4,8", "temperature": 1.0, "tta": True}))
    source = export.export_model(model, "age", tmp_path, extra_files={"training_config.json": config})
    loaded, _ = export.load_version(source)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    interval = {"cells": [{**c, "q_low": 0.5, "q_high": 0.25} for c in calibrate.cells_for(threshold=0.3)]}
    version = export.export_model(loaded, "age", tmp_path, interval=interval)
    side = spec.image_size("age")
    faces = np.random.default_rng(9).integers(0, 255, (8, side, side, 3), dtype=np.uint8)
    estimates = {
        e: heads.flat(heads.served_outputs(loaded, "age", tf.constant(faces), estimate=e))[spec.AGE_OUTPUT]
        for e in heads.AGE_ESTIMATES
    }
    calibrate.check_estimate_unchanged(estimates["median"], version, faces)
    before, after = evaluate.predict(source, faces), evaluate.predict(version, faces)
    np.testing.assert_array_equal(before[spec.AGE_OUTPUT], after[spec.AGE_OUTPUT])
    width = before[spec.AGE_HIGH_OUTPUT] - before[spec.AGE_LOW_OUTPUT]
    np.testing.assert_allclose(after[spec.AGE_LOW_OUTPUT], before[spec.AGE_LOW_OUTPUT] - 0.5 * width, atol=1e-3)
    np.testing.assert_allclose(after[spec.AGE_HIGH_OUTPUT], before[spec.AGE_HIGH_OUTPUT] + 0.25 * width, atol=1e-3)

    # The check runs in the export's temporary folder: a refused export never appears as a version (removing one
    # after the rename could pull a version Triton had loaded).
    before_refusal = export.versions(tmp_path / "age")
    with pytest.raises(RuntimeError, match="moves the age estimate"):
        export.export_model(
            models.build("age", widths=(4, 8)),
            "age",
            tmp_path,
            check=lambda folder: calibrate.check_estimate_unchanged(estimates["median"], folder, faces),
        )
    assert export.versions(tmp_path / "age") == before_refusal
    assert not [p for p in (tmp_path / "age").iterdir() if p.name.startswith(".tmp")]
    # The version serves the median; the same weights read out as the mean are another estimate, refused too.
    copy = shutil.copytree(version, tmp_path / "copy")
    with pytest.raises(RuntimeError, match="moves the age estimate"):
        calibrate.check_estimate_unchanged(estimates["mean"], copy, faces)


def test_tail_weights_count_rare_age_bands_more():
    ages = np.array([25] * 600 + [45] * 150 + [65] * 60 + [95] * 6 + [1] * 100)
    plain = utk.tail_weights(ages, 0.0)
    np.testing.assert_allclose(plain, 1.0)  # power 0: every face alike
    w = utk.tail_weights(ages, 0.5)
    assert w.dtype == np.float32 and abs(float(w.mean()) - 1.0) < 1e-5  # the learning rate keeps its meaning
    by_age = {age: float(w[ages == age][0]) for age in (25, 45, 65, 95)}
    assert by_age[25] < by_age[45] < by_age[65] < by_age[95]  # rarer band, larger weight
    np.testing.assert_allclose(by_age[45] / by_age[25], (600 / 150) ** 0.5, rtol=1e-5)
    # Six faces past 90 would weigh 4.1x the mean before the cap: capped at 4x, then all scaled to mean 1 again.
    uncapped = utk.tail_weights(ages, 0.5, cap=100.0)
    assert float(uncapped[ages == 95][0]) > 4.1 and 4.0 < by_age[95] < 4.1
    even = utk.tail_weights(ages, 1.0)  # every band alike, up to the cap
    assert even[ages == 45].sum() == pytest.approx(even[ages == 65].sum(), rel=1e-5)


@pytest.mark.parametrize("function, option", [("tail_weights", "--tail-weight"), ("child_weights", "--child-weight")])
def test_loss_weights_reach_the_gender_loss_beside_the_auxiliary_head(archive, tmp_path, monkeypatch, function, option):
    # Weights of zero for every training face: if they reach the loss, the training loss is zero, for the gender
    # output and the auxiliary head alike, while validation (never weighted) is not.
    called = []

    def zeros(ages, value):
        called.append((len(ages), value))
        return np.zeros(len(ages), "float32")

    monkeypatch.setattr(train.utk, function, zeros)
    run = tmp_path / "gender-weighted"
    args = ["--task", "gender", "--data", str(archive), "--out", str(run), "--epochs", "1", "--batch-size", "16"]
    args += ["--widths", "4,8", "--cache-dir", str(tmp_path / "cache"), "--aux-age", "0.5", option, "3.0"]
    args += ["--run-eagerly", "--limit", "16"]  # one batch: every weight of it is zero all the same

    # What is checked is written while the epoch trains (the history); the post-training steps after it (BatchNorm
    # recalibration, temperature), which never see a loss weight, are cut short where they start.
    class Trained(Exception):
        pass

    def stop(model):
        raise Trained

    monkeypatch.setattr(models, "without_aux", stop)
    with pytest.raises(Trained):
        train.main(args)
    assert called and called[0][1] == 3.0
    history = dict(zip(*[line.split(",") for line in (run / "history.csv").read_text().splitlines()[:2]], strict=True))
    assert float(history[f"{spec.GENDER_OUTPUT}_loss"]) == 0.0 and float(history[f"{models.AUX_AGE}_loss"]) == 0.0
    assert float(history[f"val_{spec.GENDER_OUTPUT}_loss"]) > 0.0
    with pytest.raises(SystemExit, match="mixup"):
        base = ["--task", "gender", "--data", str(archive), "--out", str(tmp_path / "x")]
        train.main([*base, option, "0.5", "--mixup", "0.2"])
    if option == "--child-weight":
        with pytest.raises(SystemExit, match="child-weight is for --task gender"):
            train.main(["--task", "age", "--data", str(archive), "--out", str(tmp_path / "y"), option, "3.0"])


def test_child_weights_count_children_the_given_times_and_keep_mean_one():
    ages = np.array([1] * 10 + [9] * 10 + [10] * 30 + [40] * 50)
    w = utk.child_weights(ages, 3.0)
    assert w.dtype == np.float32 and abs(float(w.mean()) - 1.0) < 1e-6
    assert float(w[0]) == pytest.approx(3 * float(w[-1])) and float(w[19]) == float(w[0])
    assert float(w[20]) == float(w[-1])  # ten is not a child here
    np.testing.assert_allclose(utk.child_weights(ages, 1.0), 1.0)


def test_occlusion_augmentation_erases_patches_and_keeps_the_standard_one_unchanged():
    # A flat grey batch: the standard steps (flip, shifts, turns and zoom with reflected borders, brightness and
    # contrast per face) leave every face flat, so only an erased rectangle of noise can make one face uneven.
    faces = np.full((64, 32, 32, 3), 128.0, "float32")
    standard = models.augmentation(seed=0)(faces, training=True).numpy()
    assert standard.std(axis=(1, 2, 3)).max() < 1.0
    occluded = models.augmentation(seed=0, strength="occlude")(faces, training=True).numpy()
    uneven = occluded.std(axis=(1, 2, 3)) > 5.0
    # factor 0.5: each face's erasing probability is drawn in [0, 0.5], so about a quarter of the faces.
    assert 4 <= uneven.sum() <= 40, uneven.sum()
    assert occluded.min() >= 0 and occluded.max() <= 255
    # Served models trained with the standard steps: the default must stay exactly those six.
    assert [type(layer).__name__ for layer in models.augmentation().layers] == [
        "RandomFlip",
        "RandomTranslation",
        "RandomRotation",
        "RandomZoom",
        "RandomBrightness",
        "RandomContrast",
    ]
    with pytest.raises(ValueError, match="augmentation"):
        models.augmentation(strength="strong")


def test_auxiliary_age_head_trains_beside_gender_and_is_not_kept(archive, tmp_path):
    run = tmp_path / "gender-aux"
    args = ["--task", "gender", "--data", str(archive), "--out", str(run), "--epochs", "1", "--batch-size", "16"]
    args += ["--widths", "4,8", "--cache-dir", str(tmp_path / "cache"), "--keep-epochs", "--aux-age", "0.5"]
    args += ["--run-eagerly", "--limit", "16"]  # one training step trains the head as well as four
    best = train.main(args)
    # The head trained: its loss is in the history, and the epoch checkpoint carries both outputs.
    history = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert f"{models.AUX_AGE}_loss" in history and f"val_{spec.GENDER_OUTPUT}_loss" in history
    trained = keras.models.load_model(run / "epoch001.keras")
    assert sorted(trained.output_names) == sorted([spec.GENDER_OUTPUT, models.AUX_AGE])
    # What is kept (and exported) is the gender network alone, the same size as one trained without the head.
    kept = keras.models.load_model(best)
    plain = models.build("gender", widths=(4, 8))
    assert len(kept.outputs) == 1 and kept.count_params() == plain.count_params()
    faces = np.random.default_rng(0).integers(0, 256, (4, *kept.input_shape[1:]), dtype=np.uint8)
    both = trained(faces, training=False)
    assert np.asarray(both[models.AUX_AGE]).shape == (4, models.AGE_BINS)
    assert json.loads((run / "config.json").read_text())["aux_age"] == 0.5
    with pytest.raises(SystemExit, match="aux-age"):
        train.main(["--task", "age", "--data", str(archive), "--out", str(tmp_path / "x"), "--aux-age", "0.5"])


def test_a_mixture_plots_the_training_histories_of_its_members_still_on_disk(tmp_path):
    repo = tmp_path / "repo"
    trained, mixture, member_run = repo / "gender" / "5", repo / "gender" / "6", tmp_path / "runs" / "gender-x"
    for folder in (trained, mixture, member_run):
        folder.mkdir(parents=True)
    for folder in (trained, member_run):
        (folder / "history.csv").write_text("epoch,accuracy,val_accuracy\n0,0.8,0.79\n")
    assert runs.histories(trained) == [("v5", trained / "history.csv")]
    record = {
        "ensemble": [
            {"source": str(trained)},
            {"source": str(member_run / "model.keras")},
            {"source": str(tmp_path / "runs" / "gone" / "model.keras")},
        ]
    }
    (mixture / "training_config.json").write_text(json.dumps(record))
    assert runs.histories(mixture) == [
        ("member 1 (gender/5)", trained / "history.csv"),
        ("member 2 (gender-x)", member_run / "history.csv"),
    ]
    (trained / "history.csv").unlink()
    (member_run / "history.csv").unlink()
    assert runs.histories(mixture) == []

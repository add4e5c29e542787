"""training.ensemble: the average of networks is one model whose outputs are its members' mean, it exports like any
run, its weights read back from the SavedModel (for training.calibrate and export --from-repo), and members from
different splits are refused."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import spec
from research import shared_errors, views
from training import calibrate, ensemble, evaluate, export, heads
from training import data as utk
from training import model as models

WIDTHS = "4,8"


def member(tmp_path, name: str, task: str, seed: int, *, split_seed: int = 1337):
    """A saved run with distinct random weights, as training leaves one (``model.keras`` and ``config.json``)."""
    keras.utils.set_random_seed(seed)
    net = models.build(task, widths=(4, 8))
    if task == "age":  # a skewed distribution per member, so mean and median differ and members disagree
        head = net.get_layer("age_logits")
        centre = np.log(20 + 15 * seed)
        head.set_weights([head.get_weights()[0], (-0.5 * ((np.log1p(np.arange(heads.AGE_BINS)) - centre) / 0.4) ** 2)])
    run = tmp_path / name
    run.mkdir()
    net.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"task": task, "widths": WIDTHS, "seed": split_seed, "tta": True}))
    return run / "model.keras", net


def infer(net: keras.Model, faces: np.ndarray) -> np.ndarray:
    """What ``net.predict`` returns, by a direct call in inference mode: predict() traces a graph per network first,
    which costs more than these few faces."""
    return np.asarray(net(faces, training=False))


@pytest.mark.parametrize("task", ["age", "gender"])
def test_the_ensemble_outputs_its_members_mean(tmp_path, task):
    (a, net_a), (b, net_b) = member(tmp_path, "a", task, 1), member(tmp_path, "b", task, 2)
    side = spec.image_size(task)
    model, configs = ensemble.build(task, [a, b], side)
    assert [c["seed"] for c in configs] == [1337, 1337]
    faces = np.random.default_rng(3).integers(0, 255, (6, side, side, 3), dtype=np.uint8)
    mean = (infer(net_a, faces) + infer(net_b, faces)) / 2
    np.testing.assert_allclose(infer(model, faces), mean, atol=1e-6)
    # The members disagree, so the average is neither of them: the test would catch a member copied twice.
    assert np.abs(infer(net_a, faces) - infer(net_b, faces)).max() > 1e-3
    # Every weight path is unique, so saving and the SavedModel's variables keep the members apart.
    paths = [w.path for w in model.weights]
    assert len(paths) == len(set(paths)) == 2 * len(net_a.weights)


def test_an_exported_ensemble_reads_back_for_calibration_and_serves_the_mixture(tmp_path):
    (a, net_a), (b, net_b) = member(tmp_path, "a", "age", 1), member(tmp_path, "b", "age", 2)
    side = spec.image_size("age")
    model, configs = ensemble.build("age", [a, b], side)
    record = tmp_path / "training_config.json"
    record.write_text(
        json.dumps({"task": "age", "image_size": side, "tta": True, "ensemble": [{"config": c} for c in configs]})
    )
    version = export.export_model(model, "age", tmp_path / "repo", extra_files={"training_config.json": record})
    loaded, _ = export.load_version(version)
    for x, y in zip(model.weights, loaded.weights, strict=True):
        assert x.path == y.path
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    faces = np.random.default_rng(4).integers(0, 255, (5, side, side, 3), dtype=np.uint8)
    served = evaluate.predict(version, faces)
    # The served age is the median of the mixture of the members' distributions (each averaged over the flip).
    views = [faces, faces[:, :, ::-1]]
    mixture = [(infer(net_a, v) + infer(net_b, v)) / 2 for v in views]
    expected = heads.flat(heads.summarize(mixture, "age"))[spec.AGE_OUTPUT]
    np.testing.assert_allclose(served[spec.AGE_OUTPUT], expected, atol=1e-3)
    alone = heads.flat(heads.served_outputs(net_a, "age", tf.constant(faces)))[spec.AGE_OUTPUT]
    assert np.abs(alone - expected).max() > 0.5


def served_mixture(tmp_path, task: str, **record) -> tuple[Path, keras.Model]:
    """A two-member mixture exported with flip TTA into ``tmp_path/repo``, as training.ensemble and export leave it."""
    (a, _), (b, _) = member(tmp_path, "a", task, 1), member(tmp_path, "b", task, 2)
    side = spec.image_size(task)
    model, configs = ensemble.build(task, [a, b], side)
    config = {"task": task, "image_size": side, "tta": True, "temperature": 1.5, **record}
    (tmp_path / "training_config.json").write_text(json.dumps({**config, "ensemble": [{"config": c} for c in configs]}))
    version = export.export_model(
        model,
        task,
        tmp_path / "repo",
        temperature=1.5,
        extra_files={"training_config.json": tmp_path / "training_config.json"},
    )
    return version, model


def test_a_served_mixture_is_exported_without_flip_tta_from_the_repository_alone(tmp_path):
    """export --from-repo --no-tta, the per-deployment choice with only the committed models: the newest version's
    weights read back from its SavedModel and exported again, answering for the face alone."""
    scores = {"val_served": {"accuracy": 0.94}, "val_served_no_tta": {"accuracy": 0.93}}
    served, model = served_mixture(tmp_path, "gender", **scores)
    repo = tmp_path / "repo"
    (variant,) = export.main(["--from-repo", "--repo", str(repo), "--tasks", "gender", "--no-tta"])
    assert variant == export.latest(repo, "gender") and int(variant.name) == int(served.name) + 1
    record = json.loads((variant / "training_config.json").read_text())
    assert record["tta"] is False and record["tta_source"] is True and record["source_version"] == int(served.name)
    assert record["temperature"] == 1.5 and len(record["ensemble"]) == 2
    assert record["val_served"] == scores["val_served_no_tta"]  # what the variant serves, not the source's score

    side = spec.image_size("gender")
    faces = np.random.default_rng(5).integers(0, 255, (6, side, side, 3), dtype=np.uint8)
    faces[:, :, : side // 2] //= 4  # a dark left half: the mirror is another picture
    alone = heads.flat(heads.served_outputs(model, "gender", tf.constant(faces), tta=False, temperature=1.5))
    got = evaluate.predict(variant, faces)[spec.GENDER_OUTPUT]
    same = np.abs(got - alone[spec.GENDER_OUTPUT]).max()
    # The served version averages the face and its mirror. An untrained tiny network answers nearly the same for
    # both, so that answer differs little, but by far more than the float noise between the variant and the
    # network run on the face alone: the test sees which one ran.
    flipped = np.abs(evaluate.predict(served, faces)[spec.GENDER_OUTPUT] - got).max()
    assert same < 1e-6 and flipped > 10 * max(same, 1e-7), (same, flipped)

    # A variant that would change nothing is refused, and so is one that names no choice; nothing is written.
    for argv in (["--no-tta"], []):
        with pytest.raises(SystemExit, match="already serves"):
            export.main(["--from-repo", "--repo", str(repo), "--tasks", "gender", *argv])
    assert export.latest(repo, "gender") == variant


def test_a_calibrated_version_records_its_own_interval_on_validation():
    # Its source's record described the source's interval: copied forward, v21 claimed v20's coverage and width.
    source = {
        "val_served": {"mae": 4.4, "interval_coverage": 0.804, "interval_width": 13.6},
        "val_served_no_tta": {"mae": 4.5, "interval_coverage": 0.796, "interval_width": 13.4},
    }
    record = {
        "val_mae": 4.4,
        "estimate": "mean",
        "source_estimate": "mean",
        "val_fitted": {"coverage": 0.801, "width": 15.0, "worst_big_band_gap": 0.02, "bands": {}},
    }
    served = calibrate.served_on_validation(source, record)
    assert served == {
        "val_served": {"mae": 4.4, "interval_coverage": 0.801, "interval_width": 15.0},
        "val_served_no_tta": {"mae": 4.5},
    }
    # Another estimate (the median) has another MAE, unmeasured without the mirror: none claimed.
    assert "val_served_no_tta" not in calibrate.served_on_validation(source, {**record, "estimate": "median"})


@pytest.mark.parametrize("task", ["age", "gender"])
def test_the_served_versions_read_back_into_what_they_serve(task):
    """The committed newest version of each CNN, read back by export.load_version (what --from-repo and
    training.calibrate start from), serves what its SavedModel serves once its record's TTA, temperature, estimate
    and interval are folded in again: a clone can make its variants from the committed versions alone."""
    version = export.latest(Path(__file__).resolve().parents[1] / "model_repository", task)
    model, config = export.load_version(version)
    side = spec.image_size(task)
    faces = np.random.default_rng(11).integers(0, 255, (4, side, side, 3), dtype=np.uint8)
    faces[:, :, : side // 2] //= 3
    again = heads.served_outputs(
        model,
        task,
        tf.constant(faces),
        tta=config["tta"],
        temperature=config.get("temperature", 1.0),
        interval=config.get("interval_calibration", {}).get("interval"),
        estimate=heads.recorded_estimate(config),
    )
    served = evaluate.predict(version, faces)
    for name, values in heads.flat(again).items():
        np.testing.assert_allclose(values, served[name], atol=1e-3, err_msg=f"{version} {name}")


def test_members_from_different_splits_are_refused(tmp_path):
    a, _ = member(tmp_path, "a", "gender", 1)
    b, _ = member(tmp_path, "b", "gender", 2, split_seed=7)
    with pytest.raises(ValueError, match="different splits"):
        ensemble.build("gender", [a, b], spec.image_size("gender"))


def test_a_member_of_another_architecture_is_refused(tmp_path):
    a, _ = member(tmp_path, "a", "gender", 1)
    other = tmp_path / "other"
    other.mkdir()
    models.build("gender", widths=(2, 2)).save(other / "model.keras")
    (other / "config.json").write_text(json.dumps({"task": "gender", "widths": WIDTHS, "seed": 1337}))
    with pytest.raises(ValueError, match="weights match"):
        ensemble.build("gender", [a, other / "model.keras"], spec.image_size("gender"))


def test_shared_errors_counts_what_no_mixture_can_fix_per_band():
    ages = np.array([1, 1, 5, 25, 25, 25])
    wrong = np.array(
        [
            [1, 1, 0, 1, 0, 0],  # member 0
            [1, 0, 1, 1, 0, 0],  # member 1
        ],
        dtype=bool,
    )
    rows = shared_errors.shared_errors(wrong, ages)
    assert rows["all"] == {"n": 6, "errors": [3, 3], "all_wrong": 2, "any_right": pytest.approx(4 / 6)}
    assert rows["0-2"] == {"n": 2, "errors": [2, 1], "all_wrong": 1, "any_right": 0.5}
    assert rows["3-9"]["all_wrong"] == 0 and rows["3-9"]["any_right"] == 1.0
    assert rows["20-29"] == {"n": 3, "errors": [1, 1], "all_wrong": 1, "any_right": pytest.approx(2 / 3)}
    assert "10-19" not in rows  # no faces there


def test_shared_errors_reads_each_members_served_label_on_the_validation_split(tmp_path, archive):
    # One member says female for every face, the other male: each is wrong on exactly the other sex, and no face is
    # missed by both. A label read the wrong way round, or faces matched to another split's labels, fail here.
    sources = []
    for name, bias, seed in (("female", 40.0, 1), ("male", -40.0, 2)):
        path, net = member(tmp_path, name, "gender", seed)
        head = net.get_layer(models.OUTPUT_NAMES["gender"])
        kernel, _ = head.get_weights()
        head.set_weights([np.zeros_like(kernel), np.full((1,), bias, dtype="float32")])
        net.save(path)
        sources.append(path)
    wrong, val = shared_errors.member_errors(sources, archive, cache_dir=tmp_path / "cache")
    assert wrong.shape == (2, len(val.ages)) and 0 < val.genders.sum() < len(val.ages)  # both sexes among them
    np.testing.assert_array_equal(wrong[0], val.genders == 0)  # "female" for all: wrong on the males (gender 0)
    np.testing.assert_array_equal(wrong[1], val.genders == 1)
    rows = shared_errors.shared_errors(wrong, val.ages)
    assert rows["all"]["all_wrong"] == 0 and rows["all"]["any_right"] == 1.0


def test_zoomed_view_cuts_the_margin_and_keeps_the_served_shape():
    faces = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    faces[:, 0, :] = faces[:, -1, :] = faces[:, :, 0] = faces[:, :, -1] = 255  # a one-pixel frame around black
    zoomed = views.zoom(faces, 1)
    assert zoomed.shape == faces.shape and zoomed.dtype == np.uint8
    assert zoomed.max() == 0  # the frame is cut away, nothing else is added
    assert views.zoom(faces, 0) is faces
    v = views.views(faces, 1)
    np.testing.assert_array_equal(v["mirror"], faces[:, :, ::-1])
    np.testing.assert_array_equal(v["zoom_mirror"], zoomed[:, :, ::-1])


def test_view_scores_read_the_served_label_and_estimate(tmp_path, archive):
    # A member that says "female" for every face scores the share of females in every view set; a wrong way round
    # label, or faces matched to another split's labels, fail here.
    path, net = member(tmp_path, "female", "gender", 1)
    head = net.get_layer(models.OUTPUT_NAMES["gender"])
    head.set_weights([np.zeros_like(head.get_weights()[0]), np.full((1,), 40.0, dtype="float32")])
    net.save(path)
    s = views.member_scores(path, archive, 0.02, cache_dir=tmp_path / "cache")
    faces = utk.load(archive, size=spec.image_size("gender"), cache_dir=tmp_path / "cache")
    val_genders = faces.genders[utk.split(faces) == "val"]
    assert s["n"] == len(val_genders) and s["margin"] == 1
    assert [s[c] for c in views.COMBOS] == [pytest.approx(val_genders.mean())] * len(views.COMBOS)
    # Age: the MAE of the served estimate, the same number whichever path computes it.
    ages = np.array([10.0, 30.0])
    onehot = np.zeros((2, heads.AGE_BINS), dtype="float32")
    onehot[[0, 1], [12, 30]] = 1.0
    raw = {name: onehot for name in ("face", "mirror", "zoom", "zoom_mirror")}
    assert views.score("age", raw, ages, np.zeros(2)) == {c: pytest.approx(1.0) for c in views.COMBOS}

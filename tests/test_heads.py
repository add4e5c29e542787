"""The distributional age head: quantiles, losses, flip TTA, temperature, weight averaging, warm start, resume."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import spec
from training import heads, train
from training import model as models
from training.model import AGE_BINS


def one_hot(ages, width=0):
    """Distributions uniform over ``age - width .. age + width`` (whole years)."""
    probs = np.zeros((len(ages), AGE_BINS), np.float32)
    for i, a in enumerate(ages):
        probs[i, a - width : a + width + 1] = 1
    return probs / probs.sum(axis=1, keepdims=True)


def test_quantiles_read_bins_as_uniform_years():
    probs = one_hot([30, 0, 116])
    np.testing.assert_allclose(heads.expected_age(probs).numpy(), [30, 0, 116], atol=1e-4)
    # One year's bin spans age-0.5 .. age+0.5: the 10th percentile is 0.1 into it, clipped at 0 and 116.5.
    np.testing.assert_allclose(heads.age_quantile(probs, 0.1).numpy(), [29.6, 0.0, 115.6], atol=1e-4)
    np.testing.assert_allclose(heads.age_quantile(probs, 0.9).numpy(), [30.4, 0.4, 116.4], atol=1e-4)
    wide = one_hot([50], width=10)  # 21 equal years, 39.5 .. 60.5
    np.testing.assert_allclose(heads.age_quantile(wide, 0.1).numpy(), [39.5 + 2.1], atol=1e-3)
    np.testing.assert_allclose(heads.age_quantile(wide, 0.9).numpy(), [39.5 + 18.9], atol=1e-3)


def test_quantiles_match_sampling_on_a_skewed_distribution():
    rng = np.random.default_rng(0)
    p = rng.gamma(0.5, size=AGE_BINS)
    p /= p.sum()
    probs = p[None, :].astype(np.float32)
    samples = rng.choice(AGE_BINS, size=400_000, p=p) + rng.uniform(-0.5, 0.5, 400_000)
    for q in spec.AGE_INTERVAL:
        assert abs(heads.age_quantile(probs, q).numpy()[0] - np.quantile(samples, q)) < 0.3


def test_losses_prefer_the_true_age_and_ldl_gives_neighbours_credit():
    true = np.array([[40.0]], np.float32)
    right, near, far = one_hot([40]), one_hot([42]), one_hot([70])
    for loss in (heads.age_ce, heads.age_ldl, heads.age_ldl_l1):
        assert float(loss(true, right)[0]) < float(loss(true, far)[0])
    # ldl+l1 adds the expected age's error in years to the label-distribution term.
    assert float(heads.age_ldl_l1(true, far)[0]) == pytest.approx(float(heads.age_ldl(true, far)[0]) + 30.0, rel=1e-4)
    # Cross-entropy counts 42 as wrong as 70; the label distribution does not.
    soft = lambda p: np.clip(p + 1e-4, 0, 1) / np.clip(p + 1e-4, 0, 1).sum()  # noqa: E731
    assert float(heads.age_ldl(true, soft(near))[0]) < float(heads.age_ldl(true, soft(far))[0])
    assert float(heads.age_mae(true, right)[0]) == pytest.approx(0.0, abs=1e-4)
    assert float(heads.age_mae(true, far)[0]) == pytest.approx(30.0, abs=1e-3)


def test_served_outputs_average_the_mirror_and_temperature_widens_only_the_interval():
    model = models.build("age", widths=(4, 8))
    # A peaked distribution (an untrained head's is nearly flat, where a temperature changes little).
    head = model.get_layer("age_logits")
    kernel, _ = head.get_weights()
    head.set_weights([kernel, (-0.5 * ((np.arange(AGE_BINS) - 30) / 5.0) ** 2).astype(np.float32)])
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 255, (6, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), dtype=np.uint8)
    plain = heads.flat(heads.served_outputs(model, "age", tf.constant(faces), tta=False))
    mirror = heads.flat(heads.served_outputs(model, "age", tf.constant(faces[:, :, ::-1]), tta=False))
    both = heads.flat(heads.served_outputs(model, "age", tf.constant(faces), tta=True))
    # The expected value is linear in the distribution, so TTA's age is the mean of the two views' ages.
    np.testing.assert_allclose(both[spec.AGE_OUTPUT], (plain[spec.AGE_OUTPUT] + mirror[spec.AGE_OUTPUT]) / 2, atol=1e-3)
    hot = heads.flat(heads.served_outputs(model, "age", tf.constant(faces), tta=True, temperature=2.0))
    cold = heads.flat(heads.served_outputs(model, "age", tf.constant(faces), tta=True, temperature=0.5))
    np.testing.assert_allclose(hot[spec.AGE_OUTPUT], both[spec.AGE_OUTPUT], atol=1e-4)
    width = lambda o: o[spec.AGE_HIGH_OUTPUT] - o[spec.AGE_LOW_OUTPUT]  # noqa: E731
    assert (width(cold) < width(both)).all() and (width(both) < width(hot)).all()

    regression = models.build("age", widths=(4, 8), age_head="regression")
    out = heads.flat(heads.served_outputs(regression, "age", tf.constant(faces)))
    assert np.isfinite(out[spec.AGE_OUTPUT]).all() and np.isnan(out[spec.AGE_LOW_OUTPUT]).all()


def test_temperature_fit_reaches_the_nominal_coverage_on_held_out_ages():
    rng = np.random.default_rng(2)
    ages = rng.integers(5, 90, 3000)
    # An over-confident model: its distributions are 3 years wide where the errors are 8 years wide.
    centres = np.clip(np.round(ages + rng.normal(0, 8, len(ages))), 0, 116).astype(int)
    logits = -0.5 * ((np.arange(AGE_BINS)[None, :] - centres[:, None]) / 3.0) ** 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fit = heads.fit_temperature([probs.astype(np.float32)], "age", ages, None)
    raw = heads.flat(heads.summarize([probs.astype(np.float32)], "age"))
    before = ((ages >= raw[spec.AGE_LOW_OUTPUT]) & (ages <= raw[spec.AGE_HIGH_OUTPUT])).mean()
    assert before < 0.5
    assert fit["temperature"] > 4 and abs(fit["chosen"]["coverage"] - 0.8) < 0.03


def test_weight_average_is_what_gets_validated_and_saved(tmp_path):
    x = np.random.default_rng(3).normal(size=(256, 4)).astype(np.float32)
    y = x @ np.array([[1.0], [2.0], [-1.0], [0.5]], np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    ema = train.WeightAverage(0.9, tmp_path / "ema.npz")
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_test_end(self, logs=None):
            seen["validated"] = model.get_weights()[0].copy()

    model.fit(
        x, y, batch_size=32, epochs=2, validation_data=(x, y), callbacks=[ema, Spy(), ema.restore_callback()], verbose=0
    )
    with np.load(tmp_path / "ema.npz") as z:
        saved = z["w0"]
    np.testing.assert_allclose(seen["validated"], saved, atol=1e-6)  # validation ran on the average
    assert not np.allclose(model.get_weights()[0], saved)  # live weights back for training


def test_warm_start_copies_the_trunk_and_resume_continues_the_run(archive, tmp_path):
    common = ["--task", "age", "--data", str(archive), "--batch-size", "16", "--widths", "4,8"]
    common += ["--cache-dir", str(tmp_path / "cache")]
    first = train.main([*common, "--out", str(tmp_path / "a"), "--epochs", "1", "--age-loss", "huber"])
    source = keras.models.load_model(first)
    # A bins model started from the regression run: same trunk, new head.
    train.main([*common, "--out", str(tmp_path / "b"), "--epochs", "1", "--init-from", str(first)])
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["init_copied"] == len([w for w in source.weights if not w.path.startswith("age/")])
    with pytest.raises(ValueError, match="no weight matches"):
        train.init_weights(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="other")]), first)

    # Stop after one of two epochs, then resume: the history holds both epochs once each.
    run = [*common, "--out", str(tmp_path / "c"), "--epochs", "2"]
    train.main([*run[:-1], "1"])
    state = json.loads((tmp_path / "c" / "state.json").read_text())
    assert state["epoch"] == 0
    train.main([*run, "--resume"])
    history = (tmp_path / "c" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1"]
    assert json.loads((tmp_path / "c" / "state.json").read_text())["epoch"] == 1


def test_candidate_input_size_trains_and_exports_at_its_own_size(archive, tmp_path):
    from training import data as utk

    served = utk.load(archive, cache_dir=tmp_path / "cache")  # the served size, cached first
    run = tmp_path / "runs" / "gender"
    common = ["--task", "gender", "--data", str(archive), "--batch-size", "16", "--widths", "4,8", "--epochs", "1"]
    best = train.main([*common, "--out", str(run), "--image-size", "40", "--cache-dir", str(tmp_path / "cache")])
    assert keras.models.load_model(best).input.shape[1:] == (40, 40, 3)
    assert json.loads((run / "config.json").read_text())["image_size"] == 40
    from training import export

    (version,) = export.main(["--runs", str(tmp_path / "runs"), "--repo", str(tmp_path / "repo"), "--tasks", "gender"])
    sig = tf.saved_model.load(str(version / export.SAVEDMODEL)).signatures["serving_default"]
    assert sig.structured_input_signature[1][spec.INPUT_NAME].shape.as_list() == [None, 40, 40, 3]
    # The candidate size has its own cache file: the served size's cache is left as it was.
    assert len(list((tmp_path / "cache").glob("utkface-*.npz"))) == 2
    assert utk.load(archive, cache_dir=tmp_path / "cache").images.shape == served.images.shape

"""The distributional age head: quantiles, losses, flip TTA, temperature, weight averaging, warm start, resume."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import spec
from training import callbacks, heads, runs, train
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


def test_the_median_estimate_errs_less_than_the_mean_on_skewed_distributions():
    """Where the model's distribution is right, its median has the smallest mean absolute error of any one
    number (the targets measure that); the mean is pulled toward the long tail. Old versions keep the mean."""
    probs = np.zeros((1, AGE_BINS), np.float32)
    probs[0, 20], probs[0, 70] = 0.6, 0.4  # median in the bin of 20 (20 - 0.5 + 0.5 / 0.6), mean 40
    np.testing.assert_allclose(heads.age_estimate(probs, "median").numpy(), [19.5 + 0.5 / 0.6], atol=1e-4)
    np.testing.assert_allclose(heads.age_estimate(probs, "mean").numpy(), [40.0], atol=1e-4)
    with pytest.raises(ValueError, match="estimate"):
        heads.age_estimate(probs, "mode")

    rng = np.random.default_rng(3)
    dist = np.stack([rng.gamma(0.7, size=AGE_BINS) ** 3 for _ in range(400)]).astype(np.float32)
    dist /= dist.sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(AGE_BINS, p=p / p.sum()) for p in dist.astype(np.float64)])
    served = {e: heads.flat(heads.summarize([dist], "age", estimate=e))[spec.AGE_OUTPUT] for e in heads.AGE_ESTIMATES}
    mae = {e: np.abs(v - truth).mean() for e, v in served.items()}
    assert mae["median"] < 0.95 * mae["mean"], mae
    np.testing.assert_allclose(served["mean"], heads.expected_age(dist).numpy(), atol=1e-3)
    assert heads.AGE_ESTIMATE == "median"  # what new exports serve (docs/models.md)
    # A record from before the choice (age versions 1-8) was exported with the mean; calibrate and export keep it.
    assert heads.recorded_estimate({"temperature": 1.0}) == "mean"
    assert heads.recorded_estimate({"estimate": "median"}) == "median"


def test_quantiles_match_sampling_on_a_skewed_distribution():
    rng = np.random.default_rng(0)
    p = rng.gamma(0.5, size=AGE_BINS)
    p /= p.sum()
    probs = p[None, :].astype(np.float32)
    samples = rng.choice(AGE_BINS, size=400_000, p=p) + rng.uniform(-0.5, 0.5, 400_000)
    for q in spec.AGE_INTERVAL:
        assert abs(heads.age_quantile(probs, q).numpy()[0] - np.quantile(samples, q)) < 0.3


def test_median_l1_loss_counts_the_median_and_its_gradient_stays_finite():
    """ldl+l1med's L1 term is the median's error; its gradient is the expected age's, signed by the median's error,
    so a median sitting in a nearly empty bin cannot blow it up."""
    true = tf.constant([[40.0]])
    # Two modes, at 10 and 60, and a trickle between: the median falls in a bin holding 1e-6 of the mass.
    probs = np.full((1, AGE_BINS), 1e-6, np.float32)
    probs[0, 10] = 0.5 - 2e-5
    probs[0, 60] = 1 - probs.sum() + probs[0, 60]
    probs = tf.constant(probs)
    median = float(heads.age_quantile(probs, 0.5).numpy()[0])
    assert 11 < median < 59
    want = float(heads.age_ldl(true, probs)[0]) + abs(median - 40.0)
    assert float(heads.age_ldl_l1_median(true, probs)[0]) == pytest.approx(want, rel=1e-4)

    logits = tf.Variable(tf.math.log(probs))

    def gradient(loss_fn):
        with tf.GradientTape() as tape:
            loss = loss_fn(true, tf.nn.softmax(logits))
        return tape.gradient(loss, logits).numpy()

    naive = gradient(lambda t, p: tf.abs(heads.age_quantile(p, 0.5) - heads._age_true(t)))
    assert np.abs(naive).max() > 1e3  # the median's own gradient: divided by that bin's 1e-6
    grad = gradient(heads.age_ldl_l1_median)
    assert np.isfinite(grad).all() and np.abs(grad).max() < 100
    assert heads.age_loss("ldl+l1med") is heads.age_ldl_l1_median


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
    side = spec.image_size("age")
    faces = rng.integers(0, 255, (6, side, side, 3), dtype=np.uint8)
    views = {"plain": tf.constant(faces), "mirror": tf.constant(faces[:, :, ::-1])}
    as_mean = {
        k: heads.flat(heads.served_outputs(model, "age", v, tta=False, estimate="mean")) for k, v in views.items()
    }
    both_mean = heads.flat(heads.served_outputs(model, "age", tf.constant(faces), tta=True, estimate="mean"))
    # The expected value is linear in the distribution, so TTA's mean age is the mean of the two views' ages.
    np.testing.assert_allclose(
        both_mean[spec.AGE_OUTPUT],
        (as_mean["plain"][spec.AGE_OUTPUT] + as_mean["mirror"][spec.AGE_OUTPUT]) / 2,
        atol=1e-3,
    )
    # The median is not linear: TTA's is the median of the two views' averaged distributions.
    both = heads.flat(heads.served_outputs(model, "age", tf.constant(faces), tta=True))
    dist = (model(views["plain"], training=False) + model(views["mirror"], training=False)) / 2
    np.testing.assert_allclose(both[spec.AGE_OUTPUT], heads.age_quantile(dist, 0.5).numpy(), atol=1e-3)
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
    ema = callbacks.WeightAverage(0.9, tmp_path / "ema.npz")
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
    common = ["--task", "age", "--data", str(archive), "--batch-size", "16", "--widths", "4,8", "--run-eagerly"]
    # Four runs: small faces and one batch an epoch (the split and its manifest are still the whole fixture's).
    common += ["--cache-dir", str(tmp_path / "cache"), "--image-size", "32", "--limit", "16"]
    first = train.main([*common, "--out", str(tmp_path / "a"), "--epochs", "1", "--age-loss", "huber"])
    source = keras.models.load_model(first)
    # A bins model started from the regression run: same trunk, new head.
    train.main([*common, "--out", str(tmp_path / "b"), "--epochs", "1", "--init-from", str(first)])
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["init_copied"] == len([w for w in source.weights if not w.path.startswith("age/")])
    with pytest.raises(ValueError, match="no weight matches"):
        runs.init_weights(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="other")]), first)
    # Weights trained on another split have seen this one's validation and test faces: refused.
    with pytest.raises(SystemExit, match="split of seed 1337"):
        train.main([*common, "--out", str(tmp_path / "b2"), "--epochs", "1", "--init-from", str(first), "--seed", "7"])

    # Stop after one of two epochs, then resume: the history holds both epochs once each. The warm-started run
    # above stopped after its one epoch; it is the run continued (one training run fewer than a fresh one).
    run = [*common, "--out", str(tmp_path / "b"), "--epochs", "2"]
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epoch"] == 0
    manifest = (tmp_path / "b" / "manifest.csv").read_text()
    train.main([*run, "--resume", "--seed", "7"])  # the run's split (1337), not the command line's
    assert (tmp_path / "b" / "manifest.csv").read_text() == manifest
    train.main([*run, "--finish-only", "--seed", "7"])  # its choices on the run's validation faces too
    assert (tmp_path / "b" / "manifest.csv").read_text() == manifest
    history = (tmp_path / "b" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1"]
    assert json.loads((tmp_path / "b" / "state.json").read_text())["epoch"] == 1


def test_candidate_input_size_trains_and_exports_at_its_own_size(archive, tmp_path):
    from training import data as utk

    served = utk.load(archive, size=spec.image_size("gender"), cache_dir=tmp_path / "cache")  # cached first
    run = tmp_path / "runs" / "gender"
    common = ["--task", "gender", "--data", str(archive), "--batch-size", "16", "--widths", "4,8", "--epochs", "1"]
    common += ["--run-eagerly", "--limit", "16"]
    best = train.main([*common, "--out", str(run), "--image-size", "40", "--cache-dir", str(tmp_path / "cache")])
    assert keras.models.load_model(best).input.shape[1:] == (40, 40, 3)
    assert json.loads((run / "config.json").read_text())["image_size"] == 40
    from training import export

    (version,) = export.main(["--runs", str(tmp_path / "runs"), "--repo", str(tmp_path / "repo"), "--tasks", "gender"])
    sig = tf.saved_model.load(str(version / export.SAVEDMODEL)).signatures["serving_default"]
    assert sig.structured_input_signature[1][spec.INPUT_NAME].shape.as_list() == [None, 40, 40, 3]
    # The candidate size has its own cache file: the served size's cache is left as it was.
    assert len(list((tmp_path / "cache").glob("utkface-*.npz"))) == 2
    again = utk.load(archive, size=spec.image_size("gender"), cache_dir=tmp_path / "cache")
    assert again.images.shape == served.images.shape


def gaussians(centres: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Per-face distributions over whole years: a Gaussian of ``sigma`` years around each centre."""
    logits = -0.5 * ((np.arange(AGE_BINS)[None, :] - centres[:, None]) / sigma[:, None]) ** 2
    return (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)


def test_band_coverage_counts_each_band_with_its_wilson_interval():
    # 100 faces aged 25 of which exactly 80 are inside, 10 aged 5 all inside, none aged 50.
    true = np.array([25] * 100 + [5] * 10, np.float32)
    low = np.array([20] * 80 + [26] * 20 + [0] * 10, np.float32)
    high = low + 10
    bands = heads.band_coverage(true, low, high)
    assert set(bands) == {"3-9", "20-29"}
    assert bands["20-29"]["n"] == 100 and bands["20-29"]["coverage"] == pytest.approx(0.8)
    # Wilson 95% for 80/100: 0.711-0.867 (a textbook value); for 10/10 it stays below 1 at the bottom.
    np.testing.assert_allclose(bands["20-29"]["ci"], (0.7112, 0.8666), atol=1e-3)
    assert bands["3-9"]["coverage"] == 1.0 and bands["3-9"]["ci"][0] == pytest.approx(0.7225, abs=1e-3)
    assert bands["20-29"]["width"] == pytest.approx(10.0)
    # ``by`` groups by another quantity (the estimate) while counting hits against the truth.
    by_estimate = heads.band_coverage(true, low, high, bands=((0, 50),), by=np.zeros_like(true))
    assert by_estimate["0-50"]["n"] == 110 and by_estimate["0-50"]["coverage"] == pytest.approx(90 / 110)


def test_band_coverage_of_a_synthetic_model_with_known_quantiles():
    """Ages drawn from the model's own distribution are covered 80% in every band; where the truth is twice as
    spread as the model says, the 10-90% interval (+-1.28 sd) covers P(|Z| < 0.64) = 0.478."""
    rng = np.random.default_rng(4)
    centres = rng.uniform(15, 95, 20_000)
    sigma = np.where(centres < 50, 3.0, 6.0)  # honest model, two widths
    honest = np.round(centres + rng.normal(0, sigma))  # UTKFace ages are whole years, so the bins are too
    out = heads.flat(heads.summarize([gaussians(centres, sigma)], "age"))
    low, high = out[spec.AGE_LOW_OUTPUT], out[spec.AGE_HIGH_OUTPUT]
    for name, band in heads.band_coverage(honest, low, high, by=centres).items():
        if band["n"] > 500:
            assert band["ci"][0] - 0.02 <= 0.8 <= band["ci"][1] + 0.02, (name, band)
    spread = np.round(centres + rng.normal(0, 2 * sigma))
    for name, band in heads.band_coverage(spread, low, high, by=centres).items():
        if band["n"] > 500:
            assert abs(band["coverage"] - 0.478) < 0.06, (name, band)


def synthetic_validation(rng, n):
    """A model whose interval is too wide for children, too narrow for ages 10-40 and right above: the error's
    spread depends on the true age, the model's stated spread (3 years) does not."""
    ages = rng.integers(4, 80, n).astype(np.float32)  # away from age 0, where the interval is clipped
    error_sd = np.select([ages < 10, ages < 40], [0.8, 8.0], 3.0)
    centres = np.clip(ages + rng.normal(0, error_sd), 0, 116)
    return ages, gaussians(centres, np.full(n, 3.0))


def test_per_band_calibration_never_moves_the_estimate_and_reaches_80_in_each_cell():
    from training import calibrate

    rng = np.random.default_rng(5)
    val_ages, val_dist = synthetic_validation(rng, 6000)
    interval = calibrate.fit(calibrate.base([val_dist], 1.0), val_ages)
    cells = interval["cells"]
    assert len(cells) == len(calibrate.AGE_EDGES) + 2  # one band split in two
    test_ages, test_dist = synthetic_validation(rng, 6000)
    # Every face lies in exactly one cell.
    member = heads.interval_cells(tf.constant(test_dist), heads.age_estimate(test_dist), cells).numpy()
    np.testing.assert_array_equal(member.sum(axis=1), 1)

    plain = heads.flat(heads.summarize([test_dist], "age"))
    fixed = heads.flat(heads.summarize([test_dist], "age", interval=interval))
    np.testing.assert_array_equal(fixed[spec.AGE_OUTPUT], plain[spec.AGE_OUTPUT])  # bit for bit
    assert (fixed[spec.AGE_LOW_OUTPUT] <= fixed[spec.AGE_HIGH_OUTPUT]).all()
    estimate = plain[spec.AGE_OUTPUT]
    edges = [0, *calibrate.AGE_EDGES, AGE_BINS]
    bands = tuple((lo, hi - 1e-3) for lo, hi in zip(edges[:-1], edges[1:], strict=True))
    before = heads.band_coverage(test_ages, plain[spec.AGE_LOW_OUTPUT], plain[spec.AGE_HIGH_OUTPUT], bands, estimate)
    after = heads.band_coverage(test_ages, fixed[spec.AGE_LOW_OUTPUT], fixed[spec.AGE_HIGH_OUTPUT], bands, estimate)
    gaps = [abs(band["coverage"] - 0.8) for band in before.values() if band["n"] >= 200]
    assert max(gaps) > 0.3  # the problem is there before
    for name, band in after.items():
        if band["n"] >= 200:  # held-out faces, per band of the estimate
            assert abs(band["coverage"] - 0.8) < 0.05, (name, band)

    # Through a model's served graph too (what export folds in): the estimate is the uncalibrated one.
    model = models.build("age", widths=(4, 8))
    side = spec.image_size("age")
    faces = tf.constant(rng.integers(0, 255, (5, side, side, 3), dtype=np.uint8))
    a = heads.flat(heads.served_outputs(model, "age", faces))
    b = heads.flat(heads.served_outputs(model, "age", faces, interval=interval))
    np.testing.assert_array_equal(a[spec.AGE_OUTPUT], b[spec.AGE_OUTPUT])


def mixed_validation(rng, n):
    """A model whose error depends on the true age (teenagers and the old are hard, children easy) while its
    stated spread does not. Cells of the estimate mix faces of neighbouring true ages, so a conformal fit per
    cell is right for the cell's mixture and wrong for each true-age band in it."""
    ages = rng.integers(0, 80, n).astype(np.float32)
    error_sd = np.select([ages < 10, ages < 20, ages < 40], [1.0, 6.0, 2.5], 5.0)
    centres = np.clip(ages + rng.normal(0, error_sd), 0, 116)
    return ages, gaussians(centres, np.full(n, 3.0))


def test_balanced_calibration_evens_out_coverage_per_band_of_true_age():
    from training import calibrate

    rng = np.random.default_rng(6)
    val_ages, val_dist = mixed_validation(rng, 6000)
    test_ages, test_dist = mixed_validation(rng, 6000)
    b_val, b_test = calibrate.base([val_dist], 1.0), calibrate.base([test_dist], 1.0)

    def worst(interval) -> float:
        low, high = calibrate.apply(b_test, interval)
        bands = heads.band_coverage(test_ages, low, high)
        return max(abs(band["coverage"] - 0.8) for band in bands.values() if band["n"] >= 300)

    plain = calibrate.fit(b_val, val_ages, split=False)
    balanced = calibrate.fit(b_val, val_ages, split=False, balanced=True)
    assert worst(plain) > 0.1  # per cell of the estimate: children over-covered, teenagers under
    assert worst(balanced) < 0.06  # on held-out faces, per band of the truth
    low, high = calibrate.apply(b_test, balanced)
    assert abs(heads.interval_stats(test_ages, low, high)["coverage"] - 0.8) < 0.02
    # Only the multiples changed: the same cells, so the same served graph, and the estimate is untouched.
    assert [c["age"] for c in balanced["cells"]] == [c["age"] for c in plain["cells"]]
    fixed = heads.flat(heads.summarize([test_dist], "age", interval=balanced))
    np.testing.assert_array_equal(
        fixed[spec.AGE_OUTPUT], heads.flat(heads.summarize([test_dist], "age"))[spec.AGE_OUTPUT]
    )


def test_a_gender_network_can_start_from_the_age_networks_trunk(tmp_path):
    # Both networks share the trunk's layer names (training.model.build), so --init-from an age run gives gender
    # the age network's convolutions, BatchNorm and hidden dense layer; the output layer starts fresh.
    age = models.build("age", size=32, widths=(4, 8))
    for w in age.weights:
        w.assign(np.random.default_rng(len(w.path)).normal(size=w.shape).astype("float32"))
    age.save(tmp_path / "age.keras")
    gender = models.build("gender", size=32, widths=(4, 8))
    before = {w.path: w.numpy().copy() for w in gender.weights}
    copied = set(runs.init_weights(gender, tmp_path / "age.keras"))
    source = {w.path: w.numpy() for w in age.weights}
    head = models.OUTPUT_NAMES["gender"]
    assert {p for p in before if p not in copied} == {f"{head}/kernel", f"{head}/bias"}
    for w in gender.weights:
        np.testing.assert_array_equal(w.numpy(), source[w.path] if w.path in copied else before[w.path])

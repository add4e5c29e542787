"""What the two heads are trained with and what they serve.

Training side: the age losses the comparison chooses between (``training.compare``) and the training metric,
the mean absolute error of the expected age; runs are compared on the served age after training. Serving side:
:func:`served_outputs`, the one function that turns the network's raw output into the served tensors, with
flip test-time augmentation, a temperature and the age estimate (:func:`age_estimate`). ``training.export``
folds it into the SavedModel and the temperature fit calls it too, so the numbers chosen on the validation
split are the numbers the server returns. :func:`calibrate_interval` is the
per-band correction of that interval (``training.calibrate``), and :func:`band_coverage` the one place per-band
coverage is counted, with its uncertainty.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from common import contract, spec
from training.model import AGE_BINS

AGES = np.arange(AGE_BINS, dtype="float32")
#: Standard deviation of the label distribution (years) for the ``ldl`` loss: about the disagreement between
#: people guessing the age of the same face, so neighbouring ages share credit instead of counting as wrong.
LABEL_SIGMA = 2.0
#: Age losses by name. ``huber`` trains the regression head; the others the 117-bin head.
AGE_LOSSES = ("huber", "ce", "ldl", "ldl+l1", "ldl+l1med")
#: Weight of the expected age's absolute error (years) beside the label-distribution loss in ``ldl+l1``.
L1_WEIGHT = 1.0
#: Decade bands of age (inclusive years) that coverage and accuracy are reported in; UTKFace's 80-116 are few.
AGE_BANDS = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 79), (80, 116))
#: The youngest age that is not a teenager: the model's probability of an age below it separates teenagers from
#: the young adults they are predicted among (``training.calibrate``).
ADULT_AGE = 20
#: How the served age is read from the 117-bin distribution. ``median``: the age whose absolute error is
#: smallest on average if the distribution is right, and the targets measure absolute error (validation, age
#: v6: MAE 4.71 against 4.78 for the mean; docs/models-log.md). ``mean``: what age versions 1-7 serve, and what a
#: version whose record names no estimate was made with.
AGE_ESTIMATES = ("mean", "median")
AGE_ESTIMATE = "median"


def recorded_estimate(config: dict) -> str:
    """The estimate a run's or version's record says it serves; records from before the choice existed: the mean."""
    return config.get("estimate", "mean")


def expected_age(probs: tf.Tensor) -> tf.Tensor:
    """``(N, AGE_BINS)`` probabilities -> ``(N,)`` expected age in years."""
    return tf.reduce_sum(probs * AGES, axis=-1)


def age_quantile(probs: tf.Tensor, q: float) -> tf.Tensor:
    """The ``q`` quantile of each age distribution, in years, reading each bin as uniform over ``age +- 0.5``.

    Bin ``k`` contributes its whole width once the cumulative probability passes it, a fraction while ``q``
    falls inside it, and nothing before: a closed form with no search, which OpenVINO converts as well.
    """
    cdf = tf.cumsum(probs, axis=-1)
    before = cdf - probs
    filled = tf.clip_by_value((q - before) / tf.maximum(probs, 1e-12), 0.0, 1.0)
    return tf.clip_by_value(tf.reduce_sum(filled, axis=-1) - 0.5, 0.0, float(AGE_BINS) - 0.5)


def age_estimate(probs: tf.Tensor, estimate: str = AGE_ESTIMATE) -> tf.Tensor:
    """``(N, AGE_BINS)`` probabilities -> ``(N,)`` served age in years (``AGE_ESTIMATES``)."""
    if estimate == "median":
        return age_quantile(probs, 0.5)
    if estimate == "mean":
        return expected_age(probs)
    raise ValueError(f"age estimate must be one of {AGE_ESTIMATES}, got {estimate!r}")


def _age_true(y_true: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(y_true, "float32"), [-1])


@keras.saving.register_keras_serializable(package="agegender")
def age_mae(y_true, y_pred):
    """Mean absolute error of the expected age (bins) or the regression: the training metric, and the L1 term of
    ``ldl+l1``. The served estimate may be the median (``AGE_ESTIMATE``); ``training.train`` scores that after
    training (``val_served``)."""
    pred = expected_age(y_pred) if y_pred.shape[-1] == AGE_BINS else tf.reshape(y_pred, [-1])
    return tf.abs(pred - _age_true(y_true))


@keras.saving.register_keras_serializable(package="agegender")
def age_ce(y_true, y_pred):
    """Cross-entropy against the true year (one-hot); the served age is the distribution's expected value."""
    idx = tf.cast(tf.round(_age_true(y_true)), "int32")
    return keras.losses.sparse_categorical_crossentropy(idx, y_pred)


@keras.saving.register_keras_serializable(package="agegender")
def age_ldl(y_true, y_pred):
    """Label-distribution learning: cross-entropy against a Gaussian of ``LABEL_SIGMA`` years around the label.

    Equal to the KL divergence up to the target's fixed entropy.
    """
    target = tf.exp(-0.5 * ((AGES[None, :] - _age_true(y_true)[:, None]) / LABEL_SIGMA) ** 2)
    target = target / tf.reduce_sum(target, axis=-1, keepdims=True)
    return -tf.reduce_sum(target * tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0)), axis=-1)


@keras.saving.register_keras_serializable(package="agegender")
def age_ldl_l1(y_true, y_pred):
    """The label distribution plus the expected age's absolute error (DLDL-v2): learns the distribution
    and, directly, its expected age's error."""
    return age_ldl(y_true, y_pred) + L1_WEIGHT * age_mae(y_true, y_pred)


@keras.saving.register_keras_serializable(package="agegender")
def age_ldl_l1_median(y_true, y_pred):
    """The label distribution plus the served median's absolute error, for models served as the median.

    The median's own gradient runs through the one bin it falls in (divided by that bin's probability), so the
    error is taken of the median while its gradient is the expected age's (straight-through): the sign says which
    way the whole distribution should move, the mean says how, and no bin's small probability can blow it up.
    """
    mean = expected_age(y_pred)
    median = mean + tf.stop_gradient(age_quantile(y_pred, 0.5) - mean)
    return age_ldl(y_true, y_pred) + L1_WEIGHT * tf.abs(median - _age_true(y_true))


def age_loss(name: str, *, huber_delta: float = 5.0):
    if name == "huber":
        return keras.losses.Huber(delta=huber_delta)
    if name == "ce":
        return age_ce
    if name == "ldl":
        return age_ldl
    if name == "ldl+l1":
        return age_ldl_l1
    if name == "ldl+l1med":
        return age_ldl_l1_median
    raise ValueError(f"age loss must be one of {AGE_LOSSES}, got {name!r}")


def served_outputs(
    model: keras.Model,
    task: str,
    image: tf.Tensor,
    *,
    tta: bool = True,
    temperature: float = 1.0,
    interval: dict | None = None,
    estimate: str = AGE_ESTIMATE,
) -> dict[str, tf.Tensor]:
    """The served tensors for a uint8 batch, each float32 ``(N, 1)``.

    Flip test-time augmentation averages the face and its mirror image, as probabilities (so it averages
    distributions, not ages). The temperature divides log-probabilities (bins) or the logit (gender) before
    that (for age, of the interval only); it is fitted on the validation split after training. A regression
    head serves NaN for the interval. ``interval``: the per-band correction of the age interval, if any;
    ``estimate``: how the age is read from the distribution (``AGE_ESTIMATES``).
    """
    views = [image, tf.reverse(image, axis=[2])] if tta else [image]
    raw = [model(v, training=False) for v in views]
    return summarize(raw, task, temperature=temperature, interval=interval, estimate=estimate)


def summarize(
    raw: list, task: str, *, temperature: float = 1.0, interval: dict | None = None, estimate: str = AGE_ESTIMATE
) -> dict[str, tf.Tensor]:
    """Averages the network's outputs on several views of the same faces into the served tensors.

    ``interval`` is a per-band correction of the 10-90% interval (:func:`calibrate_interval`); None serves the
    tempered quantiles as they are. ``estimate``: the age read from the (untempered) distribution.
    """
    raw = [tf.cast(r, "float32") for r in raw]
    col = lambda t: tf.reshape(t, [-1, 1])  # noqa: E731
    if task == "gender":
        eps = 1e-7
        probs = [tf.clip_by_value(p, eps, 1 - eps) for p in raw]
        probs = [tf.sigmoid(tf.math.log(p / (1 - p)) / temperature) for p in probs]
        return {spec.GENDER_OUTPUT: col(tf.add_n(probs) / len(probs))}
    if raw[0].shape[-1] != AGE_BINS:
        age = col(tf.add_n(raw) / len(raw))
        nan = tf.fill(tf.shape(age), float("nan"))
        return {spec.AGE_OUTPUT: age, spec.AGE_LOW_OUTPUT: nan, spec.AGE_HIGH_OUTPUT: nan}
    # The age is read from the network's own distribution; the temperature only widens or narrows the
    # interval, so fitting it for coverage cannot move the estimate the MAE is measured on.
    dist = tf.add_n(raw) / len(raw)
    tempered = [tf.nn.softmax(tf.math.log(tf.clip_by_value(p, 1e-12, 1.0)) / temperature) for p in raw]
    tempered = tf.add_n(tempered) / len(tempered)
    q_low, q_high = spec.AGE_INTERVAL
    age, low, high = age_estimate(dist, estimate), age_quantile(tempered, q_low), age_quantile(tempered, q_high)
    if interval is not None:
        low, high = calibrate_interval(dist, age, low, high, interval)
    return {spec.AGE_OUTPUT: col(age), spec.AGE_LOW_OUTPUT: col(low), spec.AGE_HIGH_OUTPUT: col(high)}


def interval_cells(dist: tf.Tensor, age: tf.Tensor, cells: list[dict]) -> tf.Tensor:
    """``(N, len(cells))`` 0/1 membership of each face in each calibration cell.

    A cell is a band of the estimate ``age`` (years, ``[lo, hi)``) crossed with a band of the model's own
    probability that the face is under ``ADULT_AGE`` (``[lo, hi)``). Comparisons and casts only, so OpenVINO
    converts it; the cells tile the plane, so every face is in exactly one.
    """
    young = tf.reduce_sum(dist[:, :ADULT_AGE], axis=-1)
    columns = []
    for cell in cells:
        (a_lo, a_hi), (p_lo, p_hi) = cell["age"], cell["p_under_adult"]
        inside = (age >= a_lo) & (age < a_hi) & (young >= p_lo) & (young < p_hi)
        columns.append(tf.cast(inside, "float32"))
    return tf.stack(columns, axis=-1)


def calibrate_interval(
    dist: tf.Tensor, age: tf.Tensor, low: tf.Tensor, high: tf.Tensor, interval: dict
) -> tuple[tf.Tensor, tf.Tensor]:
    """Moves each end of the interval by a per-cell multiple of the interval's own width (Mondrian conformal
    quantile regression with a spread-normalised score); ``age`` is read, never changed.

    ``low - q_low * width`` and ``high + q_high * width``, where ``q_low``/``q_high`` of the face's cell were
    fitted on validation faces so that 10% of that cell's ages fall below and 10% above (negative narrows).
    """
    cells = interval["cells"]
    member = interval_cells(dist, age, cells)
    q_low = tf.reduce_sum(member * tf.constant([c["q_low"] for c in cells], "float32"), axis=-1)
    q_high = tf.reduce_sum(member * tf.constant([c["q_high"] for c in cells], "float32"), axis=-1)
    width = high - low
    top = float(AGE_BINS) - 0.5
    new_low = tf.clip_by_value(low - q_low * width, 0.0, top)
    new_high = tf.clip_by_value(high + q_high * width, 0.0, top)
    # Two narrowing corrections could cross; the ends are then swapped, never left inverted.
    return tf.minimum(new_low, new_high), tf.maximum(new_low, new_high)


def raw_views(model: keras.Model, images: np.ndarray, *, tta: bool = True, batch: int = 256) -> list[np.ndarray]:
    """The network's outputs on the faces and (with ``tta``) their mirror images, for fitting and scoring."""
    views = [images, images[:, :, ::-1]] if tta else [images]
    return [model.predict(v, batch_size=batch, verbose=0) for v in views]


def flat(outputs: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[:, 0] for k, v in outputs.items()}


def interval_stats(true: np.ndarray, low: np.ndarray, high: np.ndarray) -> dict[str, float]:
    """How often the interval holds the true age (``coverage``) and its mean ``width`` in years."""
    return {"coverage": float(((true >= low) & (true <= high)).mean()), "width": float((high - low).mean())}


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a proportion: sound for small bands and for 0 or n hits."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(centre - half, 0.0)), float(min(centre + half, 1.0)))  # rounding can step past 0 or 1


def band_coverage(
    true: np.ndarray, low: np.ndarray, high: np.ndarray, bands=AGE_BANDS, by: np.ndarray | None = None
) -> dict[str, dict]:
    """Per band of ``by`` (the true age unless given): ``n``, ``coverage``, its Wilson 95% ``ci`` and ``width``.

    The one place coverage per band is counted: the calibration's choice, the evaluation report and the tests.
    Bands without faces are left out.
    """
    by = true if by is None else by
    out = {}
    for lo, hi in bands:
        m = (by >= lo) & (by <= hi)
        if not m.any():
            continue
        hits = int(((true[m] >= low[m]) & (true[m] <= high[m])).sum())
        out[f"{lo}-{hi}"] = {
            "n": int(m.sum()),
            "coverage": hits / int(m.sum()),
            "ci": wilson(hits, int(m.sum())),
            "width": float((high[m] - low[m]).mean()),
        }
    return out


def fit_temperature(raw: list[np.ndarray], task: str, ages: np.ndarray | None, genders: np.ndarray | None) -> dict:
    """Chooses the temperature on held-out faces (the validation split).

    Age: the temperature whose 10-90% interval covers closest to 80% of the true ages, so the interval's
    nominal coverage is what a user gets. Gender: the lowest negative log-likelihood.
    """
    if task == "age" and raw[0].shape[-1] != AGE_BINS:
        return {"temperature": 1.0, "chosen": None, "grid": []}  # a regression head has no interval to fit
    grid = np.round(np.exp(np.linspace(np.log(0.25), np.log(10.0), 75)), 4)
    rows = []
    for t in grid:
        out = flat(summarize(raw, task, temperature=float(t)))
        if task == "gender":
            p = np.clip(out[spec.GENDER_OUTPUT], 1e-7, 1 - 1e-7)
            nll = float(-np.mean(genders * np.log(p) + (1 - genders) * np.log(1 - p)))
            rows.append(
                {"temperature": float(t), "nll": nll, "accuracy": float((contract.is_female(p) == genders).mean())}
            )
        else:  # the age itself does not depend on the temperature, only the interval does
            stats = interval_stats(ages, out[spec.AGE_LOW_OUTPUT], out[spec.AGE_HIGH_OUTPUT])
            rows.append({"temperature": float(t), **stats})
    if task == "gender":
        best = min(rows, key=lambda r: r["nll"])
    else:
        best = min(rows, key=lambda r: abs(r["coverage"] - spec.NOMINAL_COVERAGE))
    return {"temperature": best["temperature"], "chosen": best, "grid": rows}

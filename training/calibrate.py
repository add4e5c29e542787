"""Calibrates the served age model's 80% interval per band and exports it as a new version; the estimate stays.

    python -m training.calibrate --data ../shared/datasets/UTKFace.tar.gz [--source V] [--estimate median] [--dry-run]

One temperature (``heads.fit_temperature``) makes the interval cover 80% of validation ages on average, but
not within an age band: too wide for babies, too narrow for teenagers and for ages 40-59. This fits a
Mondrian conformal correction on the validation split only:

* every face falls in one **cell**: a band of its estimated age, and, in the crowded 20-29 band, a band of
  the model's own probability that the face is under 20 (teenagers are predicted among young adults, and
  that probability separates them: validation medians 0.17 against 0.07);
* the score is spread-normalised, one per end: ``(low - y) / width`` and ``(y - high) / width``;
* in each cell the conformal 90% quantile of each score (``ceil((n + 1) * 0.9)``-th smallest) moves that end
  by that many widths, so 10% of the cell's validation ages fall below and 10% above.

The cells and both multiples per cell are folded into the SavedModel (``heads.calibrate_interval``, simple ops
that OpenVINO converts); ``age`` is computed before and never read back, so it is the source weights' estimate
(``--estimate`` may choose how it is read from their distribution, mean or median, and the cells are then bands of
that estimate; ``check_estimate_unchanged`` refuses any export that moves it further). The choice
between the candidate methods and cell layouts was made by 5-fold cross-validation within the validation split
(``CANDIDATES`` below: out-of-fold coverage per true-age band); the test split is only reported on
(``training.evaluate``). Deterministic: sorting, no sampling, folds from a fixed seed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import spec  # noqa: E402
from training import cli, heads  # noqa: E402
from training import data as utk  # noqa: E402
from training.export import HISTORY, RECORD, SAVEDMODEL, export_model, load_version  # noqa: E402

log = logging.getLogger(__name__)

#: Upper edges (years, exclusive) of the bands of estimated age; the last band runs to the oldest age. Each
#: holds at least ~100 validation faces (the 55+ band pools the old, whose decades are too small alone).
AGE_EDGES = (3, 10, 20, 30, 40, 55)
#: The estimated-age band ``[20, 30)`` is split at this quantile (on validation) of P(age < 20): its top fifth.
SPLIT_BAND = (20, 30)
SPLIT_QUANTILE = 0.8
#: Each end misses 10% of a cell's ages: together the nominal 80%.
TAIL = spec.AGE_INTERVAL[0]
#: 5-fold cross-validation within the validation split, for choosing the method; a fixed seed.
FOLDS, FOLD_SEED = 5, 0
#: Bands of TRUE age with at least this many faces are the ones the targets (and the choice) look at.
MIN_BAND = 90


def cells_for(edges=AGE_EDGES, split=SPLIT_BAND, threshold: float | None = None) -> list[dict]:
    """The calibration cells (without their multiples): estimated-age bands, ``split`` cut at ``threshold``."""
    bounds = [0.0, *map(float, edges), float(heads.AGE_BINS)]
    cells = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if threshold is not None and (lo, hi) == tuple(map(float, split)):
            cells += [{"age": [lo, hi], "p_under_adult": [0.0, threshold]}]
            cells += [{"age": [lo, hi], "p_under_adult": [threshold, 2.0]}]
        else:
            cells.append({"age": [lo, hi], "p_under_adult": [0.0, 2.0]})
    return cells


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) * level)``-th smallest score (the largest if that exceeds n): split-conformal's."""
    n = len(scores)
    k = min(int(np.ceil((n + 1) * level)), n)
    return float(np.sort(scores)[k - 1])


def base(raw: list[np.ndarray], temperature: float, estimate: str = heads.AGE_ESTIMATE) -> dict[str, np.ndarray]:
    """The served outputs before calibration plus the mean distribution (what the cells are read from)."""
    out = heads.flat(heads.summarize(raw, "age", temperature=temperature, estimate=estimate))
    out["dist"] = np.mean(raw, axis=0)
    return out


def fit(b: dict[str, np.ndarray], ages: np.ndarray, *, split: bool = True, balanced: bool = False) -> dict:
    """Fits the per-cell multiples on faces ``b`` (``base``) with true ``ages``; returns the ``interval`` dict.

    ``balanced`` then moves the multiples so that coverage is near 80% in every band of *true* age
    (:func:`balance`), not only within each cell of estimated age."""
    age, low, high, dist = b[spec.AGE_OUTPUT], b[spec.AGE_LOW_OUTPUT], b[spec.AGE_HIGH_OUTPUT], b["dist"]
    threshold = None
    if split:
        young = dist[:, : heads.ADULT_AGE].sum(axis=1)
        band = (age >= SPLIT_BAND[0]) & (age < SPLIT_BAND[1])
        threshold = round(float(np.quantile(young[band], SPLIT_QUANTILE)), 4)
    cells = cells_for(threshold=threshold)
    member = heads.interval_cells(tf.constant(dist), tf.constant(age), cells).numpy().astype(bool)
    width = high - low
    # Interval width is >= 0.8 years (one whole-year bin); the floor only guards a division by zero.
    w = np.maximum(width, 1e-3)
    for j, cell in enumerate(cells):
        m = member[:, j]
        if m.sum() < 20:
            raise ValueError(f"calibration cell {cell} holds {int(m.sum())} faces; too few to fit")
        cell["n"] = int(m.sum())
        cell["q_low"] = round(conformal_quantile((low[m] - ages[m]) / w[m], 1 - TAIL), 5)
        cell["q_high"] = round(conformal_quantile((ages[m] - high[m]) / w[m], 1 - TAIL), 5)
    interval = {
        "method": "Mondrian split-conformal, spread-normalised scores, one per end",
        "tail": TAIL,
        "adult_age": heads.ADULT_AGE,
        "cells": cells,
    }
    if balanced:
        interval = balance(b, ages, interval, member.argmax(axis=1))
    return interval


#: Multiples of the width :func:`balance` tries for each end of each cell (negative narrows).
STEPS = np.round(np.arange(-0.6, 1.5001, 0.02), 3)
#: Bands of true age that :func:`balance` evens out: those with at least this many faces in the fitting set.
BALANCE_MIN_BAND = 50
#: Weight of the overall coverage's squared gap from 80% against the mean of the bands' squared gaps.
OVERALL_WEIGHT = 4.0


def balance(b: dict[str, np.ndarray], ages: np.ndarray, interval: dict, cell: np.ndarray, rounds: int = 4) -> dict:
    """Re-fits each cell's two multiples so that coverage is near 80% in every band of TRUE age.

    Cells are bands of the *estimate*, and the estimate regresses toward the middle: a 45-year-old estimated
    at 36 sits in a cell of mostly 30-somethings, whose conformal multiples leave her above the interval. No
    per-cell quantile sees that; this does. Starting from the conformal multiples, coordinate descent over
    :data:`STEPS` (every cell, both ends, ``rounds`` passes) minimises the mean squared gap from 80% over the
    true-age bands with at least :data:`BALANCE_MIN_BAND` faces, plus :data:`OVERALL_WEIGHT` times the overall
    coverage's squared gap. Only multiples change, so the served graph and the estimate stay as they are.
    Deterministic; whether it generalises is what the cross-validation in :func:`main` decides.
    """
    low, high = b[spec.AGE_LOW_OUTPUT], b[spec.AGE_HIGH_OUTPUT]
    width, top = high - low, float(heads.AGE_BINS) - 0.5
    band = np.full(len(ages), -1)
    for i, (lo, hi) in enumerate(heads.AGE_BANDS):
        band[(ages >= lo) & (ages <= hi)] = i
    big = [i for i in range(len(heads.AGE_BANDS)) if (band == i).sum() >= BALANCE_MIN_BAND]
    # Counted once, as the loss runs for every trial step (thousands of times): a band's coverage is its hits
    # counted by band (shifted by one: -1 is no band) over its size, the number the mean of its hits gives.
    shifted, index = band + 1, np.array(big, dtype=int) + 1
    sizes = np.bincount(shifted, minlength=len(heads.AGE_BANDS) + 1)[index]
    q = np.array([[c["q_low"], c["q_high"]] for c in interval["cells"]], dtype=np.float64)

    def loss(q: np.ndarray) -> float:
        new_low = np.clip(low - q[cell, 0] * width, 0.0, top)
        new_high = np.clip(high + q[cell, 1] * width, 0.0, top)
        hit = (ages >= np.minimum(new_low, new_high)) & (ages <= np.maximum(new_low, new_high))
        gaps = np.bincount(shifted[hit], minlength=len(heads.AGE_BANDS) + 1)[index] / sizes - spec.NOMINAL_COVERAGE
        return float(np.mean(np.square(gaps)) + OVERALL_WEIGHT * (hit.mean() - spec.NOMINAL_COVERAGE) ** 2)

    best = loss(q)
    for _ in range(rounds):
        moved = False
        for j in range(len(q)):
            for end in (0, 1):
                trials = []
                for step in STEPS:
                    trial = q.copy()
                    trial[j, end] = step
                    trials.append((loss(trial), abs(step - q[j, end]), step))
                value, _, step = min(trials)  # ties: the smallest move
                if value < best - 1e-12:
                    best, q[j, end], moved = value, step, True
        if not moved:
            break
    cells = [
        {**c, "q_low": round(float(lo), 5), "q_high": round(float(hi), 5)}
        for c, (lo, hi) in zip(interval["cells"], q, strict=True)
    ]
    return {
        **interval,
        "method": interval["method"] + ", then balanced over true-age bands (coordinate descent on the multiples)",
        "cells": cells,
    }


def apply(b: dict[str, np.ndarray], interval: dict) -> tuple[np.ndarray, np.ndarray]:
    """The corrected interval, through the same graph function the SavedModel runs."""
    low, high = heads.calibrate_interval(
        tf.constant(b["dist"]),
        tf.constant(b[spec.AGE_OUTPUT]),
        tf.constant(b[spec.AGE_LOW_OUTPUT]),
        tf.constant(b[spec.AGE_HIGH_OUTPUT]),
        interval,
    )
    return low.numpy(), high.numpy()


def summary(ages: np.ndarray, low: np.ndarray, high: np.ndarray) -> dict:
    """Overall coverage and width, per true-age band, and the worst gap from 80% among the big bands."""
    bands = heads.band_coverage(ages, low, high)
    big = [abs(v["coverage"] - spec.NOMINAL_COVERAGE) for v in bands.values() if v["n"] >= MIN_BAND]
    return {**heads.interval_stats(ages, low, high), "worst_big_band_gap": max(big), "bands": bands}


def cross_validate(b: dict[str, np.ndarray], ages: np.ndarray, *, split: bool, balanced: bool = False) -> dict:
    """Out-of-fold corrected intervals over the validation faces: how the method does on faces it did not see."""
    fold = np.random.default_rng(FOLD_SEED).permutation(len(ages)) % FOLDS
    low, high = np.zeros(len(ages), np.float32), np.zeros(len(ages), np.float32)
    for f in range(FOLDS):
        train, held = fold != f, fold == f
        interval = fit({k: v[train] for k, v in b.items()}, ages[train], split=split, balanced=balanced)
        low[held], high[held] = apply({k: v[held] for k, v in b.items()}, interval)
    return summary(ages, low, high)


#: The candidates compared by cross-validation; the one with the smallest worst big-band gap is exported.
CANDIDATES = {
    "age bands": {"split": False},
    "age bands, 20-29 split by P(<20)": {"split": True},
    "age bands, balanced": {"split": False, "balanced": True},
    "age bands, 20-29 split by P(<20), balanced": {"split": True, "balanced": True},
}


#: The fewest validation faces a calibration is fitted on (UTKFace's validation split holds about 2,300).
MIN_VAL = 200


def validation_faces(data: Path, config: dict, cache_dir: Path | None) -> utk.Dataset:
    """The validation faces of the split ``config`` (a version's record) was trained on, at its input size;
    one line, before anything is written, when ``data`` cannot be read or holds too few."""
    faces = cli.load(data, size=config.get("image_size") or spec.image_size("age"), cache_dir=cache_dir)
    val = utk.part(faces, "val", seed=config.get("seed", utk.SPLIT_SEED))
    if len(val) < MIN_VAL:
        raise SystemExit(
            f"only {len(val)} validation faces in {data}; calibration needs at least {MIN_VAL} (the full UTKFace)"
        )
    return val


def calibration(
    model,
    config: dict,
    val: utk.Dataset,
    *,
    estimate: str,
    source_version: int,
    data: Path,
    argv: list[str] | None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Fits the interval of ``model`` (with ``config``'s temperature and views) on ``val``, choosing the method by
    cross-validation; returns the calibration record (its ``interval`` is what the export folds in) and the
    outputs before calibration (:func:`base`), which :func:`export_calibrated` checks the export against."""
    temperature = float(config.get("temperature", 1.0))
    ages = val.ages.astype(np.float32)
    b = base(heads.raw_views(model, val.images, tta=config.get("tta", True)), temperature, estimate)

    before = summary(ages, b[spec.AGE_LOW_OUTPUT], b[spec.AGE_HIGH_OUTPUT])
    compared = {name: cross_validate(b, ages, **c) for name, c in CANDIDATES.items()}
    chosen = min(compared, key=lambda name: compared[name]["worst_big_band_gap"])
    interval = fit(b, ages, **CANDIDATES[chosen])
    low, high = apply(b, interval)
    record = {
        "source_version": source_version,
        "estimate": estimate,
        "source_estimate": heads.recorded_estimate(config),
        "val_mae": float(np.abs(b[spec.AGE_OUTPUT] - ages).mean()),
        "data": str(data),
        "n_val": len(val),
        "chosen": chosen,
        "interval": interval,
        "val_before": before,
        "val_cross_validated": compared,
        "val_fitted": summary(ages, low, high),
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    log.info(f"validation MAE with the {estimate} as the estimate: {record['val_mae']:.3f}")
    for name, s in [(f"v{source_version}'s interval", before), *compared.items()]:
        gaps = " ".join(f"{k} {v['coverage']:.2f}" for k, v in s["bands"].items())
        log.info(
            f"{name:36s} coverage {s['coverage']:.3f} width {s['width']:.1f} worst gap "
            f"{s['worst_big_band_gap']:.3f} | {gaps}"
        )
    log.info(f"chosen: {chosen}")
    return record, b


def export_calibrated(
    model, config: dict, record: dict, b: dict[str, np.ndarray], val: utk.Dataset, repo: Path, *, history, meta
) -> Path:
    """Exports ``model`` with the fitted interval as the next age version; its record (the source's ``config``
    plus how the interval was calibrated) is written and its estimate checked before the version appears."""
    # The source's record, plus how the interval was calibrated: one file says how this version was made.
    record_all = {**config, "estimate": record["estimate"], "interval_calibration": record}
    record_all.update(served_on_validation(config, record))
    return export_model(
        model,
        "age",
        repo,
        tta=config.get("tta", True),
        temperature=float(config.get("temperature", 1.0)),
        interval=record["interval"],
        estimate=record["estimate"],
        size=config.get("image_size") or spec.image_size("age"),
        extra_files={HISTORY: history},
        records={RECORD: record_all},
        meta=meta,
        # b holds the estimate before calibration, computed from the same weights: nothing runs twice.
        check=lambda folder: check_estimate_unchanged(b[spec.AGE_OUTPUT][:256], folder, val.images[:256]),
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=cli.data_source, help="UTKFace-format archive or folder")
    cli.add_repo(p)
    p.add_argument(
        "--source",
        type=cli.positive_int,
        default=None,
        help="age version whose weights and temperature are kept (default: newest)",
    )
    p.add_argument(
        "--estimate",
        choices=heads.AGE_ESTIMATES,
        default=None,
        help="how the new version reads the age from the distribution; default the source's (its record's "
        "'estimate', 'mean' where it has none). The cells are bands of this estimate, so they are fitted to it",
    )
    p.add_argument("--cache-dir", type=Path, default=utk.default_cache_dir())
    p.add_argument("--dry-run", action="store_true", help="fit and print; export nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    source = cli.version_folder(args.repo, "age", args.source)
    if not (source / RECORD).is_file():
        raise SystemExit(f"error: {source} has no {RECORD}: its network cannot be rebuilt")
    model, config = load_version(source)
    val = validation_faces(args.data, config, args.cache_dir)
    estimate = args.estimate or heads.recorded_estimate(config)
    record, b = calibration(
        model, config, val, estimate=estimate, source_version=int(source.name), data=args.data, argv=argv
    )
    if args.dry_run:
        return record
    meta = {"task": "age", "source": str(source / SAVEDMODEL), "by": "training.calibrate"}
    version = export_calibrated(model, config, record, b, val, args.repo, history=source / HISTORY, meta=meta)
    log.info(f"exported age -> {version}")
    record["version"] = str(version)
    return record


def served_on_validation(config: dict, record: dict) -> dict:
    """The new version's ``val_served`` (and ``val_served_no_tta``): the source's described the source's interval.

    The MAE is the calibrated estimate's; without the mirror only the MAE carries over, since the interval fitted
    here is for the views this version serves (``export --no-tta`` fits it again for the single view).
    """
    fitted = record["val_fitted"]
    out = {
        "val_served": {
            "mae": record["val_mae"],
            "interval_coverage": fitted["coverage"],
            "interval_width": fitted["width"],
        }
    }
    if "val_served_no_tta" in config and record["estimate"] == record["source_estimate"]:
        out["val_served_no_tta"] = {"mae": config["val_served_no_tta"]["mae"]}
    return out


def check_estimate_unchanged(expected: np.ndarray, version: Path, images: np.ndarray) -> None:
    """Refuses an export whose ``age`` on ``images`` differs from ``expected``, the source weights' estimate before
    calibration: only the interval may change. Within 1e-3 years, the project's bar for "the same answer"."""
    fn = tf.saved_model.load(str(version / SAVEDMODEL)).signatures["serving_default"]
    served = fn(image=tf.constant(images))[spec.AGE_OUTPUT].numpy()[:, 0]
    gap = float(np.abs(np.asarray(expected) - served).max())
    if gap > 1e-3:
        # Raised inside export_model's temporary folder, which it then removes: a refused export never appears
        # as a version (removing one after the rename could pull a version Triton had loaded).
        raise RuntimeError(f"{version} moves the age estimate by up to {gap} years; it must not")


if __name__ == "__main__":
    main()

"""Evaluates the exported SavedModels on any UTKFace-format archive or folder.

    python -m training.evaluate --data UTKFace.tar.gz --split test [--predictions out.csv]

Loads the newest version of ``age`` and ``gender`` from the model repository
and writes ``evaluation.json``, ``evaluation.md`` and PNG plots (``training.plots``) to ``--out``.
``--split`` selects one split of the training seed's hash split (the same split
training used): ``test`` by default, the faces no choice was made on; ``val`` the faces the temperature, the
interval and the post-training choices were fitted on; ``all`` scores every image, training faces included (only
for a data set the models never trained on). The report is written whole to a hidden temporary folder inside ``--out``
and moved in at the end: a run that fails leaves the previous report as it was.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import contract, spec  # noqa: E402
from training import calibrate, cli, heads, runs  # noqa: E402
from training import data as utk  # noqa: E402
from training.export import RECORD, SAVEDMODEL, signature_side  # noqa: E402
from training.plots import plots  # noqa: E402

AGE_BANDS = heads.AGE_BANDS
#: Issue 16's targets for the interval: coverage within this range in every true-age band with at least
#: ``TARGET_MIN_N`` faces, and within ``TARGET_OVERALL`` over all faces.
TARGET_BAND, TARGET_OVERALL, TARGET_MIN_N = (0.72, 0.88), (0.78, 0.82), calibrate.MIN_BAND
#: The fewest faces a report is made on: fewer give no band statistics and no plot worth reading.
MIN_FACES = 20
# The seed project's validation figures, for comparison.
SEED = {"age_val_mse": 226.0, "age_val_rmse": 15.0, "gender_val_accuracy": 0.81}


def split_seed(models: dict[str, Path], seed: int | None = None) -> int:
    """The split seed to score ``models`` (version folders by task) on: the one their records name, which
    ``seed`` may repeat but not contradict. Both networks' records must name one split: a gender network trained
    on another seed would be scored on faces it trained on."""
    records = [json.loads(c.read_text()) for v in models.values() if (c := v / RECORD).exists()]
    try:
        trained_on = runs.split_seed(records) if records else None
    except ValueError as err:
        raise SystemExit(f"{err}: no test split is unseen by both") from err
    if seed is None:
        return utk.SPLIT_SEED if trained_on is None else trained_on
    if trained_on is not None and seed != trained_on:
        raise SystemExit(f"--seed {seed}: the models were trained on the split of seed {trained_on}")
    return seed


def predict(version_dir: Path, images: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Every output of an exported model's signature over ``images``, as ``(N,)`` arrays."""
    return outputs(tf.saved_model.load(str(version_dir / SAVEDMODEL)).signatures["serving_default"], images, batch)


def outputs(fn, images: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Every output of a loaded SavedModel signature over ``images``, as ``(N,)`` arrays."""
    parts = [fn(image=tf.constant(images[i : i + batch])) for i in range(0, len(images), batch)]
    names = list(fn.structured_outputs)
    return {k: np.concatenate([p[k].numpy()[:, 0] for p in parts]) if parts else np.zeros(0, np.float32) for k in names}


def age_metrics(
    true: np.ndarray, pred: np.ndarray, low: np.ndarray | None = None, high: np.ndarray | None = None
) -> dict:
    """MAE, RMSE and, for a model with an interval, how often the 10-90% interval holds the true age."""
    err = pred - true
    out = {
        "n": int(len(true)),
        "mae": float(np.abs(err).mean()) if len(true) else None,
        "rmse": float(np.sqrt((err**2).mean())) if len(true) else None,
        "mse": float((err**2).mean()) if len(true) else None,
    }
    if low is not None and len(true) and np.isfinite(low).all():
        out.update(heads.interval_stats(true, low, high))
    return out


#: Equal-width bins of the predicted female probability for the calibration error and the reliability plot.
CALIBRATION_BINS = 10


def _filled_bins(prob: np.ndarray, bins: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray, float, float]]]:
    """The bins' edges, and for each bin that holds a prediction: its number, its faces (a mask), their share of all
    faces and their mean prediction. What :func:`calibration` and every draw of :func:`ece_noise` share."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    return edges, [(b, m, m.sum() / len(prob), float(prob[m].mean())) for b in range(bins) if (m := which == b).any()]


def _ece(labels: np.ndarray, filled: list[tuple[int, np.ndarray, float, float]]) -> np.ndarray:
    """The ECE of each row of ``labels`` (one set of 0/1 labels per row) over the bins of :func:`_filled_bins`: the
    share-weighted absolute gap between each bin's mean prediction and its observed fraction of women."""
    ece = np.zeros(len(labels))
    for _, m, share, mean_p in filled:
        ece += share * np.abs(mean_p - labels[:, m].sum(axis=1) / m.sum())
    return ece


def calibration(true: np.ndarray, prob: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error of ``female_probability`` and its reliability table.

    Per bin of the predicted probability: mean prediction and observed fraction of women. ECE is the
    count-weighted mean of their absolute gap: 0 for a calibrated model, whose "0.8" is right 80% of the time.
    """
    edges, filled = _filled_bins(prob, bins)
    rows = [
        {
            "low": float(edges[b]),
            "high": float(edges[b + 1]),
            "n": int(m.sum()),
            "mean_p": mean_p,
            "observed": float(true[m].mean()),
        }
        for b, m, _, mean_p in filled
    ]
    return {"ece": float(_ece(np.asarray(true)[None], filled)[0]) if len(true) else None, "bins": rows}


#: Label draws for :func:`ece_noise`; a fixed seed, so a report is reproducible.
ECE_DRAWS, ECE_SEED = 2000, 0


def ece_noise(true: np.ndarray, prob: np.ndarray, draws: int = ECE_DRAWS, seed: int = ECE_SEED) -> dict:
    """What ECE a perfectly calibrated model would score on these faces, to read a band's ECE against.

    ECE is biased upward on few faces: with 10 bins and ~130 faces, a model whose every probability is exactly
    right still scores about 0.08, from sampling alone. So labels are drawn from ``prob`` itself (the model taken
    at its word), ``draws`` times: ``calibrated_mean`` and ``calibrated_p95`` are that ECE's mean and 95th
    percentile, and ``p`` the fraction of draws that score at least the observed ECE, a one-sided test of "this
    band is calibrated" (small: the miscalibration is more than sampling noise).
    """
    if not len(true):
        return {"calibrated_mean": None, "calibrated_p95": None, "p": None}
    observed = calibration(true, prob)["ece"]
    rng = np.random.default_rng(seed)
    # Every draw's ECE at once, as calibration() computes its own (one draw at a time was most of a report's time):
    # rows of one rng.random call are the draws' labels one after another, in blocks that bound the memory.
    _, filled = _filled_bins(prob, CALIBRATION_BINS)
    sims = np.empty(draws)
    block = max(1, 1_000_000 // len(prob))
    for start in range(0, draws, block):
        labels = rng.random((min(block, draws - start), len(prob))) < prob
        sims[start : start + len(labels)] = _ece(labels, filled)
    return {
        "calibrated_mean": float(sims.mean()),
        "calibrated_p95": float(np.quantile(sims, 0.95)),
        "p": float((sims >= observed - 1e-12).mean()),
    }


def gender_metrics(true: np.ndarray, prob: np.ndarray) -> dict:
    pred = contract.is_female(prob).astype(int)
    cm = [[int(((true == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    per_class = {}
    for c, name in ((0, "male"), (1, "female")):
        tp, fp, fn = cm[c][c], cm[1 - c][c], cm[c][1 - c]
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    return {
        "n": int(len(true)),
        "accuracy": float((pred == true).mean()) if len(true) else None,
        "per_class": per_class,
        "confusion_matrix": cm,
        "calibration": calibration(true, prob),
    }


def metrics(data: utk.Dataset, pred: dict[str, np.ndarray]) -> dict:
    ages, probs = pred[spec.AGE_OUTPUT], pred[spec.GENDER_OUTPUT]
    low, high = pred.get(spec.AGE_LOW_OUTPUT), pred.get(spec.AGE_HIGH_OUTPUT)

    def on(m):
        return age_metrics(data.ages[m], ages[m], None if low is None else low[m], None if high is None else high[m])

    bands = {f"{lo}-{hi}": on(m) for lo, hi in AGE_BANDS if (m := (data.ages >= lo) & (data.ages <= hi)).any()}
    if low is not None and np.isfinite(low).all():
        for name, cov in heads.band_coverage(data.ages, low, high, AGE_BANDS).items():
            bands[name]["coverage_ci"] = list(cov["ci"])
    # Gender per band: children's faces carry less of it, so accuracy and calibration are read band by band.
    for lo, hi in AGE_BANDS:
        m = (data.ages >= lo) & (data.ages <= hi)
        if m.any():
            p, t = probs[m], data.genders[m]
            bands[f"{lo}-{hi}"]["gender_accuracy"] = float((contract.is_female(p) == t).mean())
            bands[f"{lo}-{hi}"]["gender_ece"] = calibration(t, p)["ece"]
            bands[f"{lo}-{hi}"]["gender_ece_noise"] = ece_noise(t, p)
    races = {name: on(data.races == i) for i, name in enumerate(utk.RACES) if (data.races == i).any()}
    return {
        "age": on(np.ones(len(data), bool)),
        "age_by_band": bands,
        "age_by_race": races,
        "gender": gender_metrics(data.genders, probs),
    }


def interval_targets(m: dict) -> str:
    """One line: does the interval meet issue 16's coverage targets on these faces, and where not."""
    big = {k: v["coverage"] for k, v in m["age_by_band"].items() if v["n"] >= TARGET_MIN_N}
    off = [f"{k} ({c:.3f})" for k, c in big.items() if not TARGET_BAND[0] <= c <= TARGET_BAND[1]]
    overall = m["age"]["coverage"]
    ok = TARGET_OVERALL[0] <= overall <= TARGET_OVERALL[1]
    return (
        f"- coverage targets: overall {TARGET_OVERALL[0]}-{TARGET_OVERALL[1]}: **{'met' if ok else 'missed'}**; "
        f"{TARGET_BAND[0]}-{TARGET_BAND[1]} in every band with >= {TARGET_MIN_N} faces ({len(big)} bands): "
        + (f"**missed** in {', '.join(off)}" if off else "**met**")
    )


def markdown(report: dict) -> str:
    interval = "coverage" in report["all_ages"]["age"]

    def age_row(name, m):
        extra = f" {m['coverage']:.3f} | {m['width']:.1f} |" if interval else ""
        return f"| {name} | {m['n']} | {m['mae']:.2f} | {m['rmse']:.2f} |{extra}"

    def band_row(name, m):
        extra = ""
        if interval:
            lo, hi = m["coverage_ci"]
            extra = f" {m['coverage']:.3f} ({lo:.2f}-{hi:.2f}) | {m['width']:.1f} |"
        noise = m["gender_ece_noise"]  # every band in the report has faces, so a p
        gender = (
            f" {m['gender_accuracy']:.3f} | {m['gender_ece']:.3f} | {noise['calibrated_p95']:.3f} | {noise['p']:.2f} |"
        )
        return f"| {name} | {m['n']} | {m['mae']:.2f} | {m['rmse']:.2f} |{extra}{gender}"

    band_head = "| n | MAE | RMSE |" + (" 80% interval coverage (95% CI) | mean width |" if interval else "")
    band_head += " gender accuracy | gender ECE | ECE a calibrated model stays under (95%) | p |"
    band_rule = "|---|---|---|---|" + ("---|---|" if interval else "") + "---|---|---|---|"

    age_head = "| n | MAE | RMSE |" + (" 80% interval coverage | mean width |" if interval else "")
    age_rule = "|---|---|---|---|" + ("---|---|" if interval else "")

    lines = [
        f"# Evaluation: {report['data']} (split: {report['split']})",
        "",
        f"Models: `{report['models']['age']}`, `{report['models']['gender']}`. {report['summary']}",
        "",
    ]
    for scope in ("all_ages", "under_80"):
        m = report[scope]
        title = "all ages (1-116)" if scope == "all_ages" else "ages under 80"
        g = m["gender"]
        lines += [
            f"## {title}",
            "",
            f"- age MAE **{m['age']['mae']:.2f}** years, RMSE {m['age']['rmse']:.2f} "
            f"(MSE {m['age']['mse']:.1f}); n = {m['age']['n']}",
            *(
                [
                    f"- age interval (10th-90th percentile): covers **{m['age']['coverage']:.3f}** of true ages "
                    f"(nominal {spec.NOMINAL_COVERAGE:.2f}), mean width {m['age']['width']:.1f} years"
                ]
                if interval
                else []
            ),
            *([interval_targets(m)] if interval else []),
            f"- gender accuracy **{g['accuracy']:.4f}**",
            "",
            "By true age band: the coverage's 95% interval is Wilson's (the bands are small); gender ECE per band "
            f"uses the same {CALIBRATION_BINS} bins as overall. On a small band ECE is large even for a calibrated "
            f"model, so beside it: the ECE that a model whose probabilities are exactly right stays under in 95% of "
            f"{ECE_DRAWS} draws of the labels from those probabilities, and p, the fraction of draws at or above the "
            "observed ECE (below 0.05: miscalibrated beyond sampling noise).",
            "",
            "| age band " + band_head,
            band_rule,
        ]
        lines += [band_row(k, v) for k, v in m["age_by_band"].items()]
        lines += ["", "| race " + age_head, age_rule]
        lines += [age_row(k, v) for k, v in m["age_by_race"].items()]
        lines += ["", "| gender | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [
            f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
            for k, v in g["per_class"].items()
        ]
        cm = g["confusion_matrix"]
        lines += ["", f"Confusion matrix (rows true, columns predicted; male, female): `{cm[0]}` / `{cm[1]}`", ""]
        cal = g["calibration"]
        lines += [
            f"`female_probability` calibration: expected calibration error **{cal['ece']:.3f}** "
            f"({CALIBRATION_BINS} equal-width bins)",
            "",
            "| predicted | n | mean predicted | observed female |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['low']:.1f}-{r['high']:.1f} | {r['n']} | {r['mean_p']:.3f} | {r['observed']:.3f} |"
            for r in cal["bins"]
        ]
        lines += [""]
    a, g = report["all_ages"]["age"], report["all_ages"]["gender"]
    lines += [
        "## Against the seed project",
        "",
        "| | seed (validation) | this project |",
        "|---|---|---|",
        f"| age MSE | {SEED['age_val_mse']:.0f} | {a['mse']:.1f} |",
        f"| age RMSE | {SEED['age_val_rmse']:.1f} | {a['rmse']:.2f} |",
        f"| gender accuracy | {SEED['gender_val_accuracy']:.2f} | {g['accuracy']:.4f} |",
        "",
        "## Plots",
        "",
    ] + [f"![{f}]({f})" for f in report["plots"]]
    return "\n".join(lines) + "\n"


def scoring_parser(doc: str, split: str) -> argparse.ArgumentParser:
    """The options of every script that scores the served versions on one split (this one, training.precision)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=cli.data_source, help="UTKFace-format archive or folder")
    cli.add_repo(p)
    p.add_argument(
        "--split",
        choices=("all", *utk.SPLITS),
        default=split,
        help=f"which faces are scored (default {split}); 'all' includes the faces the models trained on",
    )
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the models' training seed)")
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--cache-dir", type=Path, default=utk.default_cache_dir())
    return p


def main(argv: list[str] | None = None) -> dict:
    p = scoring_parser(__doc__, "test")
    p.add_argument(
        "--predictions",
        type=predictions_path,
        default=None,
        help="CSV with one row per image (UTKFace file names and labels: outside the repository, or under runs/)",
    )
    p.add_argument(
        "--age-version",
        type=cli.positive_int,
        default=None,
        help="an earlier age version, to compare (default: newest)",
    )
    args = p.parse_args(argv)

    models = {
        "age": cli.version_folder(args.repo, "age", args.age_version),
        "gender": cli.version_folder(args.repo, "gender", None),
    }
    args.seed = split_seed(models, args.seed)
    # Each model sees the faces at its own input size; the rows (and so the split) are the same at every size.
    # Loaded once (the objects kept alive for their signatures): the signature gives the size, then runs.
    saved = {task: tf.saved_model.load(str(version / SAVEDMODEL)) for task, version in models.items()}
    fns = {task: loaded.signatures["serving_default"] for task, loaded in saved.items()}
    sides = {task: signature_side(fn) for task, fn in fns.items()}
    by_side = {side: cli.load(args.data, size=side, cache_dir=args.cache_dir) for side in set(sides.values())}
    data = by_side[sides["age"]]
    if any(not np.array_equal(other.names, data.names) for other in by_side.values()):
        raise SystemExit("the decode caches of the two input sizes list different faces; delete them and rerun")
    splits = utk.split(data, seed=args.seed)
    rows = np.arange(len(data)) if args.split == "all" else np.flatnonzero(splits == args.split)
    if len(rows) < MIN_FACES:
        raise SystemExit(
            f"error: {len(rows)} faces in the {args.split} split of {args.data}; a report needs at least {MIN_FACES} "
            "(the full UTKFace's test split holds about 2,300)"
        )
    subset = data.subset(rows)
    pred = {task: outputs(fns[task], by_side[sides[task]].images[rows]) for task in models}
    pred = {**pred["age"], **pred["gender"]}

    args.out.mkdir(parents=True, exist_ok=True)
    # Everything is written to a folder of this process first and moved in at the end: a run that fails half-way
    # (a plot, a full disk) must not leave new plots beside an old evaluation.md.
    staging = args.out / f".evaluate.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        report = write_report(args, data, splits, subset, pred, models, staging)
        if args.predictions:  # first: it is not one of the report's files
            args.predictions.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(staging / "predictions.csv", args.predictions)
        for item in sorted(staging.iterdir()):
            item.replace(args.out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    a, g = report["all_ages"]["age"], report["all_ages"]["gender"]
    cover = f" | interval coverage {a['coverage']:.3f}" if "coverage" in a else ""
    print(
        f"{args.split}: age MAE {a['mae']:.2f} RMSE {a['rmse']:.2f}{cover} | gender accuracy {g['accuracy']:.4f} "
        f"| n={a['n']} -> {args.out / 'evaluation.md'}"
    )
    return report


def predictions_path(text: str) -> Path:
    """``--predictions``: a CSV of UTKFace file names with their labels is the data set's, not the project's; a
    path in the repository is refused unless it is under the git-ignored ``runs/``."""
    path = Path(text)
    resolved = path.resolve()
    if resolved.is_relative_to(runs.ROOT) and not resolved.is_relative_to(runs.ROOT / "runs"):
        raise argparse.ArgumentTypeError(
            f"{text} is in the repository: the CSV lists UTKFace file names with their labels, which must not be "
            "committed; write it outside the repository or under runs/"
        )
    return path


def write_report(args, data, splits, subset, pred, models, out: Path) -> dict:
    """Writes the report's files (and the predictions, as ``predictions.csv``) to ``out``; returns the report."""
    ages, probs = pred[spec.AGE_OUTPUT], pred[spec.GENDER_OUTPUT]
    young = subset.ages < 80
    train = data.subset(np.flatnonzero(splits == "train"))
    report = {
        "data": str(args.data),
        "split": args.split,
        "seed": args.seed,
        "summary": data.summary.line(args.data)
        + (
            f"; {int((splits == utk.COPY).sum())} validation and test faces left out as near copies of a face in "
            "an earlier split"
        ),
        "models": {k: str(v) for k, v in models.items()},
        "all_ages": metrics(subset, pred),
        "under_80": metrics(subset.subset(np.flatnonzero(young)), {k: v[young] for k, v in pred.items()}),
        "seed_project": SEED,
    }
    report["plots"] = plots(
        out,
        subset,
        pred,
        report["all_ages"],
        models,
        train.ages if len(train) else None,
        train.ages[utk.rebalance(train, seed=args.seed)] if len(train) else None,
    )
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    (out / "evaluation.md").write_text(markdown(report))
    if args.predictions:
        with (out / "predictions.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            # age_low / age_high: the served 10-90% interval; empty for a model without one.
            w.writerow(
                ["file", "true_age", "predicted_age", "age_low", "age_high", "true_gender", "female_probability"]
            )
            nan = np.full(len(ages), np.nan)
            low, high = pred.get(spec.AGE_LOW_OUTPUT, nan), pred.get(spec.AGE_HIGH_OUTPUT, nan)
            for row in zip(
                subset.names,
                subset.ages,
                np.round(ages, 2),
                ["" if not np.isfinite(v) else round(float(v), 2) for v in low],
                ["" if not np.isfinite(v) else round(float(v), 2) for v in high],
                subset.genders,
                np.round(probs, 4),
                strict=True,
            ):
                w.writerow(row)
    return report


if __name__ == "__main__":
    main()

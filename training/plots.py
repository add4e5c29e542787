"""The PNG plots of the evaluation report (``training.evaluate``): the training curves behind the evaluated
versions, the training split's age histogram, predicted against true age, the gender confusion matrix, the age
interval's coverage by true age band and the gender reliability diagram.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import spec  # noqa: E402
from training import data as utk  # noqa: E402
from training.runs import histories  # noqa: E402


def plots(
    out: Path,
    data: utk.Dataset,
    pred: dict[str, np.ndarray],
    computed: dict,
    versions: dict[str, Path],
    train_ages: np.ndarray | None,
    rebalanced_ages: np.ndarray | None,
) -> list[str]:
    """The report's PNG plots of ``data``'s predictions ``pred``; ``computed``: ``evaluate.metrics`` of the same faces
    (drawn, not computed again: the per-band calibration noise alone takes thousands of draws); ``versions``: the
    evaluated version folder of each task, whose training curves are drawn."""
    files = []
    ages = pred[spec.AGE_OUTPUT]

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        files.append(name)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, task in zip(axes, ("age", "gender"), strict=True):
        version = versions[task]
        found = histories(version)
        for name, hist in found:
            rows = list(csv.DictReader(hist.open()))
            epochs = [int(r["epoch"]) + 1 for r in rows]
            # "age_mae" since the age models share one metric for both heads; "mae" in the first models' history.
            # A gender network trained with an auxiliary age head (train --aux-age) logs per output, by its name.
            if task == "age":
                key = "age_mae" if "age_mae" in rows[0] else "mae"
            else:
                key = "accuracy" if "accuracy" in rows[0] else f"{spec.GENDER_OUTPUT}_accuracy"
            for k in (key, f"val_{key}"):
                ax.plot(epochs, [float(r[k]) for r in rows], label=k if len(found) == 1 else f"{name}: {k}")
        ax.set(title=f"{task} v{version.name} training", xlabel="epoch")
        if found:
            ax.legend(fontsize="small" if len(found) > 1 else None)
        else:
            # A mixture's members were trained elsewhere (runs/ is not committed): say so rather than draw nothing.
            ax.text(
                0.5,
                0.5,
                "no training history on disk\n(docs/models.md says how it was trained)",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            ax.set_axis_off()
    save(fig, "training_curves.png")

    if train_ages is not None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = np.arange(0, 118, 2)
        ax.hist(train_ages, bins=bins, alpha=0.6, label="training split")
        ax.hist(rebalanced_ages, bins=bins, alpha=0.6, label="after rebalancing")
        ax.set(title="Age distribution", xlabel="age", ylabel="images")
        ax.legend()
        save(fig, "age_histogram.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(data.ages, ages, s=3, alpha=0.3)
    ax.plot([0, 116], [0, 116], "k--", lw=1)
    ax.set(title="Predicted vs true age", xlabel="true age", ylabel="predicted age", xlim=(0, 117), ylim=(0, 117))
    save(fig, "age_scatter.png")

    cm = np.array(computed["gender"]["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["male", "female"],
        yticklabels=["male", "female"],
        xlabel="predicted",
        ylabel="true",
        title="Gender confusion matrix",
    )
    save(fig, "gender_confusion.png")

    bands = computed["age_by_band"]
    if bands and all("coverage_ci" in b for b in bands.values()):  # none without faces, or without an interval
        fig, ax = plt.subplots(figsize=(6, 3.5))
        cov = np.array([b["coverage"] for b in bands.values()])
        ci = np.array([b["coverage_ci"] for b in bands.values()])
        ax.bar(
            list(bands),
            cov,
            yerr=np.maximum([cov - ci[:, 0], ci[:, 1] - cov], 0),
            capsize=3,
            label="coverage, Wilson 95%",
        )
        ax.axhline(spec.NOMINAL_COVERAGE, color="k", ls="--", lw=1, label=f"nominal {spec.NOMINAL_COVERAGE:.2f}")
        ax.set(title="Age interval (80%) coverage by true age", xlabel="true age band", ylabel="coverage")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelrotation=45)
        ax.legend()
        save(fig, "age_interval_coverage.png")

    cal = computed["gender"]["calibration"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.plot([r["mean_p"] for r in cal["bins"]], [r["observed"] for r in cal["bins"]], "o-", label="model")
    ax.set(
        title=f"Gender reliability (ECE {cal['ece']:.3f})",
        xlabel="predicted female probability (bin mean)",
        ylabel="observed fraction female",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend()
    save(fig, "gender_reliability.png")
    return files

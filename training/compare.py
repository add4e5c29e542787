"""Short, equal-budget age runs that pick the loss and the rebalancing default.

    python -m training.compare --data UTKFace.tar.gz --budget-minutes 7

Each variant trains for the same wall-clock budget, then its best checkpoint is
scored on the test split over the whole age range (1-116), the criterion the
defaults are chosen by. Writes ``compare.json`` and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np

from training import data as utk
from training import train

VARIANTS = {
    "huber": ["--age-loss", "huber"],
    "mae": ["--age-loss", "mae"],
    "mse": ["--age-loss", "mse"],
    "huber+rebalance": ["--age-loss", "huber", "--rebalance"],
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", type=Path, default=Path("runs/compare"))
    p.add_argument("--budget-minutes", type=float, default=7.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args(argv)

    data = utk.load(args.data, cache_dir=utk.default_cache_dir())
    test = data.subset(np.flatnonzero(utk.split(data, seed=args.seed) == "test"))
    results = {}
    for name in args.variants.split(","):
        best = train.main(
            [
                "--task",
                "age",
                "--data",
                str(args.data),
                "--out",
                str(args.out / name),
                "--budget-minutes",
                str(args.budget_minutes),
                "--threads",
                str(args.threads),
                "--seed",
                str(args.seed),
                *VARIANTS[name],
            ]
        )
        pred = keras.models.load_model(best).predict(test.images, batch_size=256, verbose=0)[:, 0]
        err = np.abs(pred - test.ages)
        results[name] = {
            "test_mae": float(err.mean()),
            "test_mae_under_80": float(err[test.ages < 80].mean()),
            "test_rmse": float(np.sqrt((err**2).mean())),
        }
        print(name, results[name], flush=True)
    (args.out / "compare.json").write_text(
        json.dumps({"budget_minutes": args.budget_minutes, "results": results}, indent=2)
    )
    lines = ["| variant | test MAE (1-116) | test MAE (<80) | test RMSE |", "|---|---|---|---|"]
    lines += [
        f"| {k} | {v['test_mae']:.2f} | {v['test_mae_under_80']:.2f} | {v['test_rmse']:.2f} |"
        for k, v in results.items()
    ]
    (args.out / "compare.md").write_text(
        f"Equal budget of {args.budget_minutes} min each.\n\n" + "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

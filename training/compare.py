"""Equal-budget training runs that settle the training choices, scored on the validation split.

    python -m training.compare --data UTKFace.tar.gz --task age --epochs 3 \
        --init-from model_repository/age/1 --variants huber,ce,ldl,ldl+l1,ldl+l1+ema
    python -m training.compare --data UTKFace.tar.gz --task gender --epochs 10 --variants plain,wide

Every variant trains for the same number of epochs (the same number of steps, so a busy machine changes how
long a run takes, not what it learns) from the same starting weights, then is scored as it would be served:
with and without flip test-time augmentation, with its interval's coverage where it has one. The test split is
never looked at here. Writes ``<out>/compare.json`` and ``<out>/compare.md``; runs are kept under ``<out>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from training import cli, train
from training import data as utk
from training.export import HISTORY

#: Name -> extra ``training.train`` arguments. EMA is off unless the variant names it, so each row changes
#: one thing against its neighbour.
VARIANTS = {
    "age": {
        "huber": ["--age-loss", "huber", "--ema", "0"],
        "ce": ["--age-loss", "ce", "--ema", "0"],
        "ldl": ["--age-loss", "ldl", "--ema", "0"],
        "ldl+l1": ["--age-loss", "ldl+l1", "--ema", "0"],
        "ldl+l1+ema": ["--age-loss", "ldl+l1", "--ema", "0.998"],
        "ce+ema": ["--age-loss", "ce", "--ema", "0.998"],
        "ldl+ema": ["--age-loss", "ldl", "--ema", "0.998"],
        # Width: from scratch only (a wider trunk cannot start from the narrower one's weights).
        "ldl+l1+wide": ["--age-loss", "ldl+l1", "--ema", "0", "--widths", "24,48,96,192"],
        # Input size: from scratch too; faces are decoded and cached at this size.
        "ldl+l1+96px": ["--age-loss", "ldl+l1", "--ema", "0", "--image-size", "96"],
        # The L1 term on the served median instead of the mean (heads.age_ldl_l1_median); against "ldl+l1".
        "ldl+l1med": ["--age-loss", "ldl+l1med", "--ema", "0"],
        # The tail past 40: the same 96 px run with each face's loss weighted by its age band's rarity.
        "ldl+l1+96px+tail": ["--age-loss", "ldl+l1", "--ema", "0", "--image-size", "96", "--tail-weight", "0.5"],
    },
    "gender": {
        "plain": ["--ema", "0"],
        "ema": ["--ema", "0.998"],
        "wide": ["--ema", "0", "--widths", "24,48,96,192"],
        "96px": ["--ema", "0", "--image-size", "96"],
        # Against memorising (training accuracy climbs, validation does not): mixup, at the served 64 px and
        # at 96 px.
        "mixup": ["--ema", "0", "--mixup", "0.2"],
        "96px+mixup": ["--ema", "0", "--image-size", "96", "--mixup", "0.2"],
    },
}


def row(name: str, config: dict, task: str, run: Path) -> dict:
    served, plain = config["val_served"], config["val_served_no_tta"]
    key = "mae" if task == "age" else "accuracy"
    return {
        "variant": name,
        "val": served[key],
        "val_no_tta": plain[key],
        "coverage": served.get("interval_coverage"),
        "width": served.get("interval_width"),
        "temperature": config["temperature"],
        "minutes": round(config.get("train_seconds", 0) / 60, 1),
        "epochs": max(0, len((run / HISTORY).read_text().splitlines()) - 1),  # one CSV row per epoch
    }


def table(rows: list[dict], task: str) -> str:
    metric = "val MAE" if task == "age" else "val accuracy"
    lines = [
        f"| variant | {metric}, flip TTA | {metric}, no TTA | 80% interval coverage | mean width | temperature | "
        "train min | epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cov = f"{r['coverage']:.3f}" if r["coverage"] is not None else "-"
        width = f"{r['width']:.1f}" if r["width"] is not None else "-"
        fmt = ".3f" if task == "age" else ".4f"
        lines.append(
            f"| {r['variant']} | {r['val']:{fmt}} | {r['val_no_tta']:{fmt}} | {cov} | {width} | "
            f"{r['temperature']:.2f} | {r['minutes']} | {r.get('epochs') or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=cli.data_source)
    p.add_argument("--task", choices=tuple(VARIANTS), default="age")
    p.add_argument("--out", type=Path, default=None, help="default: runs/compare-<task>")
    p.add_argument("--epochs", type=cli.positive_int, default=3, help="the equal budget, in epochs")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--init-from", type=Path, default=None, help="common starting weights (training.train)")
    p.add_argument("--threads", type=cli.non_negative_int, default=0)
    p.add_argument("--seed", type=int, default=utk.SPLIT_SEED)
    p.add_argument("--limit", type=cli.non_negative_int, default=0, help="training images per variant (smoke runs)")
    p.add_argument("--variants", default=None, help=f"comma-separated; default all of the task's: {VARIANTS}")
    p.add_argument("--reuse", action="store_true", help="keep variants already finished under --out")
    p.add_argument(
        "--budget-minutes",
        type=cli.positive_float,
        default=None,
        help="also stop each variant after this wall-clock budget (its cosine schedule follows whichever ends "
        "first); the table's epochs column then says how many each got",
    )
    p.add_argument("--jobs", type=cli.positive_int, default=1, help="variants trained at once, each in its own process")
    args = p.parse_args(argv)
    out = args.out or Path("runs") / f"compare-{args.task}"
    names = args.variants.split(",") if args.variants else list(VARIANTS[args.task])
    if unknown := [n for n in names if n not in VARIANTS[args.task]]:
        known = ", ".join(VARIANTS[args.task])
        p.error(f"--variants: no {args.task} variant {', '.join(unknown)}; choose from {known}")

    def finished(name: str) -> bool:
        done = out / name / "config.json"
        return done.exists() and "val_served" in json.loads(done.read_text())

    def train_args(name: str) -> list[str]:
        common = ["--task", args.task, "--data", str(args.data), "--out", str(out / name), "--epochs", str(args.epochs)]
        common += ["--lr", str(args.lr), "--threads", str(args.threads), "--seed", str(args.seed)]
        common += ["--patience", str(args.epochs + 1), "--limit", str(args.limit)]
        common += ["--overwrite"]  # a variant not --reuse'd is trained again, over an earlier try
        common += ["--init-from", str(args.init_from)] if args.init_from else []
        common += ["--budget-minutes", str(args.budget_minutes)] if args.budget_minutes else []
        return [*common, *VARIANTS[args.task][name]]

    todo = [name for name in names if not (args.reuse and finished(name))]
    if args.jobs > 1:
        # Side by side, so both see the same machine (and the same contention) for the same minutes.
        for start in range(0, len(todo), args.jobs):
            procs = [
                subprocess.Popen([sys.executable, "-m", "training.train", *train_args(name)])
                for name in todo[start : start + args.jobs]
            ]
            if any(proc.wait() for proc in procs):
                raise SystemExit("a variant failed; see its output above")
    else:
        for name in todo:
            train.main(train_args(name))

    rows = []
    for name in names:
        rows.append(row(name, json.loads((out / name / "config.json").read_text()), args.task, out / name))
        print(table(rows[-1:], args.task).splitlines()[-1], flush=True)

    out.mkdir(parents=True, exist_ok=True)
    start = f"from `{args.init_from}`" if args.init_from else "from scratch"
    header = (
        f"{args.task}: each variant trained {args.epochs} epochs (equal steps) {start}, peak learning rate "
        f"{args.lr}"
        + (f", or as many as fitted in {args.budget_minutes:g} minutes" if args.budget_minutes else "")
        + (f", {args.jobs} at a time" if args.jobs > 1 else "")
        + "; scored on the validation split as served (temperature fitted on the same split).\n\n"
    )
    (out / "compare.json").write_text(
        json.dumps({"args": vars(args) | {"data": str(args.data)}, "rows": rows}, default=str, indent=2)
    )
    (out / "compare.md").write_text(header + table(rows, args.task) + "\n")
    print(header + table(rows, args.task))
    return rows


if __name__ == "__main__":
    main()

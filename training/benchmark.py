"""Batched in-process throughput of the exported SavedModels.

    python -m training.benchmark [--repo model_repository] [--batch-sizes 1,16,64,256] [--seconds 5]

Runs each model's ``serving_default`` signature on random uint8 faces of the
shared size, the two models side by side in one run, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import spec  # noqa: E402
from training.evaluate import latest  # noqa: E402
from training.export import SAVEDMODEL  # noqa: E402


def throughput(fn, batch: int, seconds: float) -> float:
    """Images per second of ``fn`` on one repeated random batch, after a warm-up call."""
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), np.uint8))
    fn(image=x)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn(image=x)
        n += batch
    return n / elapsed


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", "model_repository")))
    p.add_argument("--batch-sizes", default="1,16,64,256")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    results = {}
    for task in ("age", "gender"):
        fn = tf.saved_model.load(str(latest(args.repo, task) / SAVEDMODEL)).signatures["serving_default"]
        results[task] = {b: throughput(fn, b, args.seconds) for b in batches}
    lines = ["| model | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---" * (len(batches) + 1) + "|"]
    lines += [f"| {t} | " + " | ".join(f"{v:.0f} img/s" for v in r.values()) + " |" for t, r in results.items()]
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, {args.seconds:.0f} s per cell")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

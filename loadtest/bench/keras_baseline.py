"""The benchmark's yardstick: both SavedModels in-process in TensorFlow, no serving stack around them.

    python -m loadtest.bench.keras_baseline inprocess [--repository model_repository] [--batch 64] [--duration 10]

``inprocess`` loads the exported SavedModels with ``tf.saved_model.load`` and prints, as one JSON
line, how many images per second each model (and the pair) processes at a fixed batch size: the
ceiling a serving stack could approach with no network, no decode and no queueing.

Kept out of :mod:`loadtest.bench.benchmark` so its process never imports TensorFlow: TF's thread pools
would compete with the load generator's threads.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from common import spec  # noqa: E402
from training.export import SAVEDMODEL, latest  # noqa: E402
from training.model import OUTPUT_NAMES, TASKS  # noqa: E402
from training.timing import rate  # noqa: E402


def inprocess(args: argparse.Namespace) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    shape = {task: (args.batch, spec.image_size(task), spec.image_size(task), 3) for task in TASKS}
    batch = {task: tf.constant(rng.integers(0, 256, shape[task], dtype=np.uint8)) for task in TASKS}
    fns, keep = {}, []
    for task in TASKS:
        loaded = tf.saved_model.load(str(latest(args.repository, task) / SAVEDMODEL))
        keep.append(loaded)  # the signature needs its object alive
        fns[task] = loaded.signatures["serving_default"]

    def measure(tasks: tuple[str, ...]) -> float:
        return rate(lambda: [fns[t](image=batch[t])[OUTPUT_NAMES[t]].numpy() for t in tasks], args.batch, args.duration)

    result = {
        "batch": args.batch,
        "age_img_s": measure(("age",)),
        "gender_img_s": measure(("gender",)),
        "both_img_s": measure(TASKS),
        "tf_version": tf.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }
    print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inprocess", help="batched SavedModel throughput in this process")
    i.add_argument("--batch", type=int, default=64)
    i.add_argument("--duration", type=float, default=10.0)
    i.add_argument("--repository", type=Path, default=Path("model_repository"))
    inprocess(p.parse_args(argv))


if __name__ == "__main__":
    main()

"""Batched in-process throughput of the exported SavedModels, and of candidate architectures.

    python -m training.benchmark [--repo model_repository] [--batch-sizes 1,16,64,256] [--seconds 5]
    python -m training.benchmark --architectures 64:32,64,128,256 64:16,32,64,128 96:16,32,64,128

Runs each model's ``serving_default`` signature on random uint8 faces of the
shared size, the two models side by side in one run, and prints a Markdown table.
``--architectures`` instead times untrained candidates (input size : channels
per block) for inference at batch 256 and training steps at batch 64 in TensorFlow, and
as served: exported with flip TTA and run by OpenVINO on one thread at batch 64, as the
CPU configs serve them (the per-model speed budget is measured there). How the input
size and widths in ``common/spec.py`` and ``training/model.py`` were chosen.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from serving.pipeline.backends.openvino_savedmodel import ov_runtime  # noqa: E402
from training import cli  # noqa: E402
from training.export import SAVEDMODEL, signature_side  # noqa: E402
from training.timing import rate  # noqa: E402


def throughput(fn, batch: int, seconds: float) -> float:
    """Images per second of a SavedModel signature on one repeated random batch."""
    side = signature_side(fn)
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, side, side, 3), np.uint8))
    return rate(lambda: fn(image=x), batch, seconds)


def architectures(candidates: list[str], seconds: float) -> None:
    from training import model as models

    print(
        "| input | channels | params | TF inference img/s (batch 256) | TF training img/s (batch 64) | "
        "served img/s (OpenVINO, 1 thread, batch 64, flip TTA) |"
    )
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for candidate in candidates:
        size, widths = candidate.split(":")
        size, widths = int(size), models.parse_widths(widths)
        model = models.build("age", size=size, widths=widths)
        model.compile(optimizer="adam", loss="mae")
        x = rng.integers(0, 256, (256, size, size, 3), np.uint8)
        y = rng.random((64, 1), np.float32) * 80
        infer = tf.function(lambda t, m=model: m(t, training=False))
        inference = rate(lambda: infer(x), 256, seconds)  # noqa: B023 - rate() calls it before the loop moves on
        training = rate(lambda: model.train_on_batch(x[:64], y), 64, seconds)  # noqa: B023 - likewise
        served = served_rate(model, size, seconds)
        shape = "-".join(map(str, widths))
        print(f"| {size} | {shape} | {model.count_params():,} | {inference:.0f} | {training:.0f} | {served:.0f} |")


def served_rate(model, size: int, seconds: float) -> float:
    """Images per second of ``model`` exported as served (flip TTA folded in) and run like the CPU configs run it:
    OpenVINO, one inference thread, f32 (not the CPU configs' "auto"), batch 64."""
    import tempfile

    import openvino as ov

    from training.export import export_model

    with tempfile.TemporaryDirectory() as tmp:
        version = export_model(model, "age", Path(tmp), size=size)
        # f32: candidates are compared on the arithmetic they were trained in, whatever this CPU would serve.
        compiled = ov.Core().compile_model(
            ov.convert_model(str(version / SAVEDMODEL)), "CPU", ov_runtime.settings(1, "f32")
        )
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).integers(0, 256, (64, size, size, 3), np.uint8)
    return rate(lambda: request.infer({0: x}), 64, seconds)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_repo(p)
    p.add_argument("--batch-sizes", type=cli.positive_ints, default="1,16,64,256", help="comma-separated, each >= 1")
    p.add_argument("--seconds", type=cli.positive_float, default=5.0)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--architectures", nargs="+", metavar="SIZE:W1,W2,...", help="time untrained candidates instead")
    args = p.parse_args(argv)
    if args.architectures:
        architectures(args.architectures, args.seconds)
        return {}
    batches = list(args.batch_sizes)
    results = {}
    for task in ("age", "gender"):
        version = cli.version_folder(args.repo, task, None)
        fn = tf.saved_model.load(str(version / SAVEDMODEL)).signatures["serving_default"]
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

"""The served CNNs in-process, as the native benchmark's yardstick: OpenVINO, no Triton, no network, no decoding.

    python -m loadtest.bench.openvino_reference [--repository model_repository] [--threads 2] [--duration 10]

Loads both served models (the newest version of each, as their ``latest { num_versions: 1 }`` policy serves) as
the backend does (the IR beside the SavedModel, the backend's compile settings, the precision each CPU config's
``inference_precision`` resolves to on this machine), runs them one after the other as the ensemble does, and
prints one JSON line:

- ``b64_img_s``: images per second at batch 64 (each image through both models): the capacity the crop path is
  held against;
- ``b1_ms``: milliseconds per image through both models at batch 1, after an unmeasured first call (OpenVINO
  compiles shape-specific kernels then): the latency the crop path at c=1 is held against.

A child process of :mod:`loadtest.bench.native`, run while no load runs: its threads must not share the cores
with a server under load. Random pixels: the CNNs' cost does not depend on what the face looks like.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common import spec
from research.runtimes import savedmodel_paths
from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime
from training.timing import rate

ROOT = Path(__file__).resolve().parents[2]


def asked_precision(repository: Path, task: str) -> str:
    """What ``task``'s CPU config asks for (``inference_precision``), resolved for this machine as the backend
    resolves it, before the version's files are looked at."""
    choice = ov_runtime.configured_precision((repository / task / "configs" / "cpu.pbtxt").read_text())
    return ov_runtime.resolve_precision(choice)


def served_precision(repository: Path, task: str) -> str:
    """:func:`asked_precision` as the backend serves it (``ir.served_precision``: int8 where the served version
    has no valid ``model.int8`` is f32)."""
    return ir.served_precision(savedmodel_paths(repository)[task].parent, asked_precision(repository, task))[0]


def measure(repository: Path, threads: int, duration: float) -> dict:
    ov = ov_runtime.import_openvino()
    core, fns, precisions = ov.Core(), {}, {}
    for task, savedmodel in savedmodel_paths(repository).items():
        # load_served falls back from int8 to f32 itself, and says which it served.
        model, _, precisions[task] = ir.load_served(savedmodel.parent, core, asked_precision(repository, task))
        compiled = ov_runtime.compile_model(core, model, ov_runtime.settings(threads, precisions[task]))
        fns[task] = compiled.create_infer_request().infer
    rng = np.random.default_rng(0)

    def both(batch: int):
        # Per model: the two may take different input sizes (common/spec.py).
        xs = {t: rng.integers(0, 256, (batch, spec.image_size(t), spec.image_size(t), 3), np.uint8) for t in fns}
        return lambda: [fn(xs[t]) for t, fn in fns.items()]

    b64 = rate(both(64), 64, duration)
    b1 = rate(both(1), 1, duration)
    return {
        "runtime": f"openvino {ov.__version__}",
        "models": {task: str(path.relative_to(repository)) for task, path in savedmodel_paths(repository).items()},
        "threads": threads,
        "precision": precisions,
        "duration_s": duration,
        "b64_img_s": b64,
        "b1_img_s": b1,
        "b1_ms": 1000.0 / b1,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per batch size")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.repository.resolve(), args.threads, args.duration)), flush=True)


if __name__ == "__main__":
    main()

"""The served CNNs in-process, as the native benchmark's yardstick: OpenVINO, no Triton, no network, no decoding.

    python -m loadtest.bench.openvino_reference [--repository model_repository] [--threads 2] [--duration 10]

Loads both served models (the newest version of each, as their ``latest { num_versions: 1 }`` policy serves)
with the compile settings ``research.runtimes`` compares runtimes with (the backend's: f32, latency hint), runs
them one after the other as the ensemble does, and prints one JSON line:

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
import tempfile
from pathlib import Path

import numpy as np

from common import spec
from research.runtimes import _load, savedmodel_paths
from training.timing import rate

ROOT = Path(__file__).resolve().parents[2]


def measure(repository: Path, threads: int, duration: float) -> dict:
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="ov-reference-") as workdir:  # _load's workdir is ONNX Runtime's only
        fns, _ = _load("openvino", savedmodel_paths(repository), threads, Path(workdir))
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

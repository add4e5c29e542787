"""How much a gender version's served probability moves when the same face is framed a little differently.

    python -m research.framing --data ../shared/datasets/UTKFace.tar.gz --versions 2 3

The detection path re-crops a face with the calibrated UTKFace framing, so for one face it feeds the CNN a crop a few
percent off the one a caller sends to the crop path. This measures that sensitivity on the validation split (never the
example portraits): each face against three re-framings of it (zoom 0.9-1.1, shift up to 5% each way, random per
face, a fixed seed), reporting the mean, 90th and 99th percentile of |change in probability|, how often the label
flips, and the accuracy on the re-framed faces. ``tests/test_serving.py`` bounds the two paths' difference on one
face by what this measures.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import contract, spec  # noqa: E402
from training import data as utk  # noqa: E402
from training import evaluate  # noqa: E402


def reframe(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each face zoomed by 0.9-1.1 and shifted by up to 5% of its side, bilinear, back to uint8."""
    n, side = len(images), images.shape[1]
    scale = rng.uniform(0.9, 1.1, n)
    dx, dy = rng.uniform(-0.05, 0.05, n), rng.uniform(-0.05, 0.05, n)
    boxes = np.stack([0.5 + dy - scale / 2, 0.5 + dx - scale / 2, 0.5 + dy + scale / 2, 0.5 + dx + scale / 2], 1)
    out = tf.image.crop_and_resize(tf.cast(images, "float32"), boxes.astype("float32"), np.arange(n), (side, side))
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8).numpy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--repo", type=Path, default=Path("model_repository"))
    p.add_argument("--versions", nargs="+", type=int, required=True, help="gender versions to compare")
    p.add_argument("--views", type=int, default=3)
    args = p.parse_args(argv)
    data = utk.load(args.data, size=spec.image_size("gender"), cache_dir=utk.default_cache_dir())
    folders = {version: args.repo / "gender" / str(version) for version in args.versions}
    records = [json.loads(r.read_text()) for f in folders.values() if (r := f / utk.TRAINING_RECORD).is_file()]
    # The split the compared versions were trained on: its validation faces are unseen by every one of them.
    val = utk.part(data, "val", seed=utk.shared_split_seed(records) if records else utk.SPLIT_SEED)
    rng = np.random.default_rng(0)
    views = [reframe(val.images, rng) for _ in range(args.views)]  # the same re-framings for every version
    for version in args.versions:
        folder = folders[version]
        p0 = evaluate.predict(folder, val.images)[spec.GENDER_OUTPUT]
        moved = [evaluate.predict(folder, v)[spec.GENDER_OUTPUT] for v in views]
        delta = np.concatenate([np.abs(m - p0) for m in moved])
        flips = np.mean([(contract.is_female(m) != contract.is_female(p0)).mean() for m in moved])
        accuracy = np.mean([(contract.is_female(m) == val.genders).mean() for m in moved])
        print(
            f"gender v{version}: |change| mean {delta.mean():.4f}, p90 {np.percentile(delta, 90):.4f}, "
            f"p99 {np.percentile(delta, 99):.4f}; label flips {flips:.4f}; accuracy re-framed {accuracy:.4f}"
        )


if __name__ == "__main__":
    main()

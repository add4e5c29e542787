"""Whether more test-time views than the served flip help: each network on the validation split, as served (the face
and its mirror image), on a slightly zoomed view and its mirror, and on all four averaged.

    python -m research.views --data ../shared/datasets/UTKFace.tar.gz \\
        --members model_repository/age/18 model_repository/gender/5 model_repository/gender/4

The zoomed view crops ``margin`` pixels from each side of the served crop and resizes it back, as the training
augmentation's zoom (up to 8%) does, so it is a face the network has learnt to read. Four views cost twice the served
CNN work per face, so a gain has to hold for networks that were not chosen on it: pass several members of one task.
Scores are those the targets read (age MAE of the served estimate, gender accuracy of the served label), from
``heads.summarize``, the function the SavedModel is exported with.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import contract, spec  # noqa: E402
from training import data as utk  # noqa: E402
from training import heads, runs  # noqa: E402

#: The view sets compared, by name: the served pair, the zoomed pair alone, and all four.
COMBOS = {
    "served": ("face", "mirror"),
    "zoomed": ("zoom", "zoom_mirror"),
    "four": ("face", "mirror", "zoom", "zoom_mirror"),
}


def zoom(images: np.ndarray, margin: int) -> np.ndarray:
    """``images`` (N, S, S, 3) uint8 with ``margin`` pixels cut from each side and resized back to S (bilinear)."""
    side = images.shape[1]
    if margin == 0:
        return images
    inner = tf.image.resize(images[:, margin : side - margin, margin : side - margin], (side, side), method="bilinear")
    return np.clip(np.round(inner.numpy()), 0, 255).astype(np.uint8)


def views(images: np.ndarray, margin: int) -> dict[str, np.ndarray]:
    zoomed = zoom(images, margin)
    return {"face": images, "mirror": images[:, :, ::-1], "zoom": zoomed, "zoom_mirror": zoomed[:, :, ::-1]}


def score(task: str, raw: dict[str, np.ndarray], ages: np.ndarray, genders: np.ndarray) -> dict[str, float]:
    """Per view set: age MAE of the served estimate, or gender accuracy of the served label."""
    out = {}
    for name, combo in COMBOS.items():
        served = heads.flat(heads.summarize([raw[v] for v in combo], task))
        if task == "age":
            out[name] = float(np.mean(np.abs(served[spec.AGE_OUTPUT] - ages)))
        else:
            out[name] = float(np.mean(contract.is_female(served[spec.GENDER_OUTPUT]) == genders.astype(bool)))
    return out


@functools.lru_cache(maxsize=2)
def validation_faces(data: Path, size: int, seed: int, cache_dir: Path) -> utk.Dataset:
    """The validation faces at one input size, read once for all the members of that size (96 px age, 64 px gender)."""
    return utk.part(utk.load(data, size=size, cache_dir=cache_dir), "val", seed=seed)


def member_scores(source: Path, data: Path, margin_fraction: float, cache_dir: Path | None = None) -> dict:
    """One network's validation scores per view set (its task and size from its training record)."""
    config = runs.member_config(source)
    task = config["task"]
    size = int(config.get("image_size") or spec.image_size(task))
    net = runs.trained_network(task, source, config, size)
    val = validation_faces(data, size, runs.split_seed([config]), cache_dir or utk.default_cache_dir())
    margin = int(round(margin_fraction * size))
    raw = {name: net.predict(v, batch_size=256, verbose=0) for name, v in views(val.images, margin).items()}
    return {"task": task, "n": len(val.ages), "margin": margin, **score(task, raw, val.ages, val.genders)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--members", required=True, nargs="+", type=Path, help="exported versions or runs' .keras files")
    p.add_argument("--margin", type=float, default=0.02, help="zoom: fraction of the side cut from each edge")
    args = p.parse_args(argv)
    print(f"| validation | task | faces | zoom margin (px) | {' | '.join(COMBOS)} |")
    print("|---|---|---|---|" + "---|" * len(COMBOS))
    for source in args.members:
        s = member_scores(source, args.data, args.margin)
        cells = " | ".join(f"{s[name]:.4f}" for name in COMBOS)
        print(f"| {source} | {s['task']} | {s['n']} | {s['margin']} | {cells} |", flush=True)


if __name__ == "__main__":
    main()

"""One face on a random background: does the single-face path (``FaceCropper.detect``) keep a box on it?

    python -m research.single_subject --data ../shared/datasets/UTKFace.tar.gz [--n 600] [--seed 0]

Each scene pastes one held-out UTKFace face (the test split, as ``research.measure_faces`` draws them) at a size
log-uniform in 64-480 px on a 1280x960 smooth random background. The kept box is right when it overlaps the
pasted square with IoU >= 0.5. Printed per size band for the detector as served, and for the rule it replaced
(the short-range answer kept whenever there was one, the full-range detector only when it found nothing), from
the same detector runs. Chose ``serving.pipeline.detect.SURE_SCORE`` (2026-12-06, 600 scenes).
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from common import spec
from research.measure_faces import CANVAS, ROOT, background, held_out_faces, iou
from serving.pipeline.detect import DETECT_MAX_SIDE, FaceCropper, most_prominent

BANDS = ((64, 96), (96, 144), (144, 216), (216, 324), (324, 481))


def scenes(faces, n: int, seed: int):
    """(picture, pasted square) pairs."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        blob = faces[int(rng.integers(len(faces)))][0]
        size = int(round(math.exp(rng.uniform(math.log(64), math.log(480)))))
        canvas = background(rng)
        x, y = int(rng.integers(0, CANVAS[0] - size)), int(rng.integers(0, CANVAS[1] - size))
        face = Image.open(io.BytesIO(blob)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        canvas.paste(face, (x, y))
        yield canvas, (x, y, x + size, y + size)


def short_first(cropper: FaceCropper, picture: Image.Image):
    """The rule before SURE_SCORE, as a box in picture pixels (None: nothing found by the two passes)."""
    w, h = picture.size
    scale = DETECT_MAX_SIDE / max(w, h)
    small = picture.resize((round(w * scale), round(h * scale)), spec.RESIZE_METHOD, reducing_gap=3.0)
    found = cropper._run(cropper._short, small, pad=0.0) or cropper._run(cropper._full, small, pad=0.0)
    if not found:
        return None
    x0, y0, x1, y1 = most_prominent(found).box
    return (x0 * w, y0 * h, x1 * w, y1 * h)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "UTKFace.tar.gz")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cropper = FaceCropper()
    sizes, served, before = [], [], []
    for picture, truth in scenes(held_out_faces(args.data), args.n, args.seed):
        sizes.append(truth[2] - truth[0])
        detection = cropper.detect(picture)
        served.append(iou(detection.box, truth) if detection else 0.0)
        old = short_first(cropper, picture)
        before.append(iou(old, truth) if old else 0.0)
    sizes = np.array(sizes)
    print(f"{args.n} scenes; share with the kept box on the face (IoU >= 0.5), all and per face size:")
    print("rule".ljust(34), "all  ", " ".join(f"{a}-{b - 1}px" for a, b in BANDS))
    for name, values in (("as served (SURE_SCORE)", served), ("short-range kept when found", before)):
        right = np.array(values) >= 0.5
        shares = [right[(sizes >= a) & (sizes < b)].mean() for a, b in BANDS]
        widths = [len(f"{a}-{b - 1}px") for a, b in BANDS]
        bands = " ".join(f"{share:.2f}".rjust(width) for share, width in zip(shares, widths, strict=True))
        print(name.ljust(34), f"{right.mean():.3f}", bands)


if __name__ == "__main__":
    main()

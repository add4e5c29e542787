"""One face on a random background: does the single-face path (``FaceCropper.detect``) keep a box on it?

    python -m research.single_subject --data ../shared/datasets/UTKFace.tar.gz [--split val] [--n 400] [--seed 11]
        [--floors 3,0]

Four kinds of picture, with faces from one split of UTKFace (as ``training.data.split`` assigns it; choose on
``val``, confirm on ``test``):

- scenes: one face at a size log-uniform in 64-480 px on a 1280x960 smooth random background; the kept box is right
  when it overlaps the pasted square with IoU >= 0.5 (printed per size band);
- close crops: the 200x200 UTKFace pictures themselves, as someone uploads a cropped face; any face found counts;
- degraded close crops: the same, blurred (4 px radius), saved as JPEG quality 10, or shrunk to 32 px and blown up
  again, as poor uploads bring faces; any face found counts;
- faceless: the backgrounds alone (``--n`` / 2 of them); any face found is a false one.

Each is printed for the cascade with each of ``--floors`` as its detail floor (``detect.MIN_FACE_DETAIL``; by default
the served one and none), on the same pictures. The comparisons before the detail floor (the cascade before the tile
pass) are this file as of commit 9919efa.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from research.measure_faces import CANVAS, ROOT, background, held_out_faces, iou
from serving.pipeline import detect

BANDS = ((64, 96), (96, 144), (144, 216), (216, 324), (324, 481))


def scenes(faces: list[tuple[bytes, int, int]], n: int, seed: int):
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


def degraded(picture: Image.Image) -> dict[str, Image.Image]:
    """A close crop as a poor upload would bring it: out of focus, compressed to blocks, a thumbnail blown up."""
    jpeg = io.BytesIO()
    picture.save(jpeg, "JPEG", quality=10)
    w, h = picture.size
    return {
        "blur 4px": picture.filter(ImageFilter.GaussianBlur(4)),
        "JPEG q10": Image.open(io.BytesIO(jpeg.getvalue())).convert("RGB"),
        "from 32px": picture.resize((32, 32), Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BICUBIC),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "UTKFace.tar.gz")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument(
        "--floors",
        default=f"{detect.MIN_FACE_DETAIL:g},0",
        help="comma-separated detail floors to compare (detect.MIN_FACE_DETAIL; 0: none); default: served, none",
    )
    args = p.parse_args(argv)
    faces = held_out_faces(args.data, split=args.split)
    rules = {}
    for floor in (float(v) for v in args.floors.split(",")):
        served = " (served)" if floor == detect.MIN_FACE_DETAIL else ""
        name = f"detail floor {floor:g}{served}" if floor else "without the detail floor"
        rules[name] = detect.FaceCropper(min_detail=floor).detect
    sizes, right = [], {name: [] for name in rules}
    for picture, truth in scenes(faces, args.n, args.seed):
        sizes.append(truth[2] - truth[0])
        for name, rule in rules.items():
            found = rule(picture)
            right[name].append(found is not None and iou(found.box, truth) >= 0.5)
    rng = np.random.default_rng(args.seed + 1)
    close = [Image.open(io.BytesIO(faces[i][0])).convert("RGB") for i in rng.choice(len(faces), args.n, replace=False)]
    empty = [background(rng) for _ in range(args.n // 2)]
    sizes = np.array(sizes)
    print(f"{args.split} faces; {args.n} scenes, {len(close)} close crops, {len(empty)} faceless backgrounds")
    poor = [degraded(picture) for picture in close]
    kinds = list(poor[0])
    print(
        "cascade".ljust(32),
        "scenes",
        " ".join(f"{a}-{b - 1}px" for a, b in BANDS),
        "close crops",
        " ".join(kinds),
        "faceless: false",
    )
    for name, rule in rules.items():
        hits = np.array(right[name])
        shares = [hits[(sizes >= a) & (sizes < b)].mean() for a, b in BANDS]
        bands = " ".join(f"{v:.2f}".rjust(len(f"{a}-{b - 1}px")) for v, (a, b) in zip(shares, BANDS, strict=True))
        crops = np.mean([rule(picture) is not None for picture in close])
        false = np.mean([rule(picture) is not None for picture in empty])
        worse = " ".join(f"{np.mean([rule(p[kind]) is not None for p in poor]):.3f}".rjust(len(kind)) for kind in kinds)
        print(name.ljust(32), f"{hits.mean():.3f} ", bands, f"{crops:.3f}".rjust(11), worse, f"{false:.3f}".rjust(15))


if __name__ == "__main__":
    main()

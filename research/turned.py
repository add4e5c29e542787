"""Pictures turned round: is the face found, and cut the right way up?

    python -m research.turned --data ../shared/datasets/UTKFace.tar.gz [--split val] [--n 300] [--seed 5]

A picture whose pixels are turned a quarter or half way, with no EXIF orientation left to undo it (a scan, a photo
re-encoded or edited without its tag), shows BlazeFace, trained on upright faces, a face on its side or upside down.
This takes faces of one split of UTKFace (as ``training.data.split`` assigns it; choose on ``val``, confirm on
``test``), each as a close crop (the 200 px picture itself) and pasted at 64-400 px on a 1280x960 smooth random
background (``research.measure_faces.background``), turns each picture by 0, 90, 180 and 270 degrees, and counts the
pictures whose kept face covers the face (IoU >= 0.5) with its eye line within 45 degrees of the face's own, so the
square cut along it holds the face upright, and whose square is the one cut from the upright picture (its side
within 20%, its centre within a fifth of the side: the same crop). Both paths run, with the turned search
(``detect.TURNS``) and without: the single-face path's one face (``FaceCropper.detect``) and the every-face path's
most prominent face (``MultiFaceCropper.detect_all``). Faceless pictures (``--n`` / 2 smooth backgrounds and as many
"dead leaves") count the pictures given a face. Prints a Markdown table.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from research.measure_faces import CANVAS, background, dead_leaves, held_out_faces, iou, split_parser
from serving.pipeline.crops import CropCalibration, Detection, square_for
from serving.pipeline.detect import FaceCropper, MultiFaceCropper

TURNS = {0: None, 90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def moved(x: float, y: float, size: tuple[int, int], degrees: int) -> tuple[float, float]:
    """Where a point of a picture of ``size`` lies once the picture is turned anticlockwise by ``degrees``."""
    w, h = size
    return {0: (x, y), 90: (y, w - x), 180: (w - x, h - y), 270: (h - y, x)}[degrees]


def turned(picture: Image.Image, box: tuple[float, float, float, float], degrees: int):
    """The picture turned anticlockwise by ``degrees`` (PIL's sense), and the face's box in it."""
    (ax, ay), (bx, by) = (moved(x, y, picture.size, degrees) for x, y in (box[:2], box[2:]))
    box = (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
    return (picture.transpose(TURNS[degrees]) if degrees else picture), box


def upright(detection: Detection, degrees: int) -> bool:
    """Whether the eye line of a detection in a picture turned anticlockwise by ``degrees`` runs as the face's does:
    the face's level eye line turned with the picture, to within 45 degrees."""
    (ax, ay), (bx, by) = detection.eyes
    off = math.atan2(by - ay, bx - ax) + math.radians(degrees)  # image y points down: anticlockwise is negative
    return abs((off + math.pi) % (2 * math.pi) - math.pi) < math.radians(45)


def pictures(faces: list[tuple[bytes, int, int]], n: int, seed: int):
    """(kind, picture, face box) for ``n`` faces: the close crop and a scene of each."""
    rng = np.random.default_rng(seed)
    for k in rng.choice(len(faces), size=min(n, len(faces)), replace=False):
        face = Image.open(io.BytesIO(faces[int(k)][0])).convert("RGB")
        yield "close crop", face, (0, 0, *face.size)
        size = int(rng.integers(64, 401))
        canvas = background(rng)
        x, y = int(rng.integers(0, CANVAS[0] - size)), int(rng.integers(0, CANVAS[1] - size))
        canvas.paste(face.resize((size, size), Image.Resampling.BILINEAR), (x, y))
        yield "scene", canvas, (x, y, x + size, y + size)


def main(argv: list[str] | None = None) -> None:
    p = split_parser(__doc__, n=300, seed=5)
    args = p.parse_args(argv)
    if args.n < 2:
        p.error("--n must be at least 2")
    if not args.data.is_file():
        p.error(f"{args.data} is not a file: pass --data with the UTKFace archive")
    faces = held_out_faces(args.data, split=args.split)
    single = {"turned too": FaceCropper(), "upright only": FaceCropper(turns=False)}
    multi = {"turned too": MultiFaceCropper(), "upright only": MultiFaceCropper(turns=False)}
    rules = {
        **{f"single-face, {name}": cropper.detect for name, cropper in single.items()},
        **{
            f"every face, {name}": (lambda pic, c=cropper: next(iter(c.detect_all(pic)), None))
            for name, cropper in multi.items()
        },
    }
    calibration = CropCalibration.load()
    counts: dict[tuple[str, str], int] = {}
    totals: dict[str, int] = {}
    for kind, picture, box in pictures(faces, args.n, args.seed):
        # The crop of the upright picture, by each rule: what a turned picture's crop should be.
        reference = {name: rule(picture) for name, rule in rules.items()}
        for degrees in TURNS:
            column = f"{kind} {degrees}"
            totals[column] = totals.get(column, 0) + 1
            pic, truth = turned(picture, box, degrees)
            for name, rule in rules.items():
                found = rule(pic)
                right = found is not None and iou(found.box, truth) >= 0.5 and upright(found, degrees)
                if right and reference[name] is not None:
                    (cx, cy), side, _ = square_for(found, calibration)
                    (rx, ry), ref_side, _ = square_for(reference[name], calibration)
                    rx, ry = moved(rx, ry, picture.size, degrees)
                    right = abs(side / ref_side - 1) <= 0.2 and math.hypot(cx - rx, cy - ry) <= 0.2 * ref_side
                counts[name, column] = counts.get((name, column), 0) + right
    rng = np.random.default_rng(args.seed + 1)
    for _ in range(args.n // 2):
        for kind, picture in (("smooth", background(rng)), ("dead leaves", dead_leaves(rng))):
            column = f"{kind}: given a face"
            totals[column] = totals.get(column, 0) + 1
            for name, rule in rules.items():
                counts[name, column] = counts.get((name, column), 0) + (rule(picture) is not None)
    columns = list(totals)
    print(f"{args.split} split, {args.n} faces, seed {args.seed}: pictures whose face was found the right way up\n")
    print("| path | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name in rules:
        print(f"| {name} | " + " | ".join(f"{counts.get((name, c), 0)}" for c in columns) + " |")
    print("| of | " + " | ".join(str(totals[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()

"""One face on a random background: does the single-face path (``FaceCropper.detect``) keep a box on it?

    python -m research.single_subject --data ../shared/datasets/UTKFace.tar.gz [--split val] [--n 400] [--seed 11]
        [--floors 3,0] [--confirm 0.65,0] [--mesh 0.5,0] [--backgrounds /usr/share/backgrounds]

Four kinds of picture, with faces from one split of UTKFace (as ``training.data.split`` assigns it; choose on
``val``, confirm on ``test``):

- scenes: one face at a size log-uniform in 64-480 px on a 1280x960 smooth random background; the kept box is right
  when it overlaps the pasted square with IoU >= 0.5 (printed per size band);
- close crops: the 200x200 UTKFace pictures themselves, as someone uploads a cropped face; any face found counts;
- degraded close crops: the same, blurred (4 px radius), saved as JPEG quality 10, or shrunk to 32 px and blown up
  again, as poor uploads bring faces; any face found counts;
- faceless: the backgrounds alone (``--n`` / 2 of them); any face found is a false one;
- dead leaves: ``--n`` / 2 pictures of overlapping random discs (``research.measure_faces.dead_leaves``), textured
  where the backgrounds are smooth; any face found is a false one.

``--backgrounds DIR``: pictures (JPEG, PNG, WebP) under DIR, cut at random (20-100% of their area) and scaled to
1280x960, serve as the background of every second scene and of three faceless pictures in four: textured photos
and artwork, where the smooth random ones hold little that looks like a face. Debian's wallpaper packages are such a
folder (``apt-get install gnome-backgrounds mate-backgrounds sway-backgrounds ukui-wallpapers lomiri-wallpapers
plasma-workspace-wallpapers``, then ``/usr/share/backgrounds`` and ``/usr/share/wallpapers``, comma-separated; 94
pictures, none with a face; they are read, never copied into the repository).

Each is printed for the cascade with each of ``--floors`` as its detail floor (``detect.MIN_FACE_DETAIL``; by default
the served one and none) and each of ``--confirm`` as the score a doubtful detection must be found again with
(by default none, as served, and ``detect.CONFIRM_MIN_SCORE``) and each of ``--mesh`` as the face flag the face mesh
model must give it (by default ``detect.MESH_MIN_FLAG``, as served, and none), on the same pictures. The comparisons
before the detail floor (the cascade before the tile pass) are this file as of commit 9919efa.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from research.measure_faces import (
    CANVAS,
    background,
    dead_leaves,
    held_out_faces,
    iou,
    pictures_under,
    split_parser,
    textured,
)
from serving.pipeline import detect

BANDS = ((64, 96), (96, 144), (144, 216), (216, 324), (324, 481))


def scenes(faces: list[tuple[bytes, int, int]], n: int, seed: int, pictures: list[Path]):
    """(picture, pasted square) pairs; every second on a cut of ``pictures`` when there are any."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        blob = faces[int(rng.integers(len(faces)))][0]
        size = int(round(math.exp(rng.uniform(math.log(64), math.log(480)))))
        canvas = textured(rng, pictures) if pictures and i % 2 == 0 else background(rng)
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
    p = split_parser(__doc__, n=400, seed=11)
    p.add_argument(
        "--floors",
        default=f"{detect.MIN_FACE_DETAIL:g},0",
        help="comma-separated detail floors to compare (detect.MIN_FACE_DETAIL; 0: none); default: served, none",
    )
    p.add_argument(
        "--confirm",
        default=f"0,{detect.CONFIRM_MIN_SCORE:g}",
        help="comma-separated scores a doubtful detection must be found again with (0: not checked, as served; "
        "detect.CONFIRM_MIN_SCORE: the measured one); default: both",
    )
    p.add_argument(
        "--mesh",
        default=f"{detect.MESH_MIN_FLAG:g},0",
        help="comma-separated face flags the mesh model must give a doubtful detection (detect.MESH_MIN_FLAG; 0: not "
        "checked); default: served, none",
    )
    p.add_argument("--backgrounds", default="", help="comma-separated folders of faceless pictures (see above)")
    args = p.parse_args(argv)
    faces = held_out_faces(args.data, split=args.split)
    pictures = pictures_under(args.backgrounds)
    if args.backgrounds and not pictures:
        p.error(f"no pictures under {args.backgrounds}")
    rules = {}
    for floor in (float(v) for v in args.floors.split(",")):
        for confirm in (float(v) for v in args.confirm.split(",")):
            for mesh in (float(v) for v in args.mesh.split(",")):
                served = (floor, confirm, mesh) == (detect.MIN_FACE_DETAIL, 0.0, detect.MESH_MIN_FLAG)
                name = f"detail {floor:g}, confirm {confirm:g}, mesh {mesh:g}{' (served)' if served else ''}"
                rules[name] = detect.FaceCropper(min_detail=floor, confirm_score=confirm, mesh_flag=mesh).detect
    sizes, right = [], {name: [] for name in rules}
    for picture, truth in scenes(faces, args.n, args.seed, pictures):
        sizes.append(truth[2] - truth[0])
        for name, rule in rules.items():
            found = rule(picture)
            right[name].append(found is not None and iou(found.box, truth) >= 0.5)
    rng = np.random.default_rng(args.seed + 1)
    close = [Image.open(io.BytesIO(faces[i][0])).convert("RGB") for i in rng.choice(len(faces), args.n, replace=False)]
    empty = [textured(rng, pictures) if pictures and i % 4 else background(rng) for i in range(args.n // 2)]
    leaves = [dead_leaves(rng) for _ in range(args.n // 2)]
    sizes = np.array(sizes)
    textures = f" ({len(pictures)} textured pictures: half the scenes, 3/4 of the faceless)" if pictures else ""
    print(
        f"{args.split} faces; {args.n} scenes, {len(close)} close crops, {len(empty)} faceless backgrounds{textures}, "
        f"{len(leaves)} dead-leaves pictures"
    )
    poor = [degraded(picture) for picture in close]
    kinds = list(poor[0])
    print(
        "cascade".ljust(44),
        "scenes",
        " ".join(f"{a}-{b - 1}px" for a, b in BANDS),
        "close crops",
        " ".join(kinds),
        "faceless: false",
        "dead leaves: false",
    )
    for name, rule in rules.items():
        hits = np.array(right[name])
        shares = [hits[(sizes >= a) & (sizes < b)].mean() for a, b in BANDS]
        bands = " ".join(f"{v:.2f}".rjust(len(f"{a}-{b - 1}px")) for v, (a, b) in zip(shares, BANDS, strict=True))
        crops = np.mean([rule(picture) is not None for picture in close])
        false = np.mean([rule(picture) is not None for picture in empty])
        on_leaves = np.mean([rule(picture) is not None for picture in leaves])
        worse = " ".join(f"{np.mean([rule(p[kind]) is not None for p in poor]):.3f}".rjust(len(kind)) for kind in kinds)
        print(
            name.ljust(44),
            f"{hits.mean():.3f} ",
            bands,
            f"{crops:.3f}".rjust(11),
            worse,
            f"{false:.3f}".rjust(15),
            f"{on_leaves:.3f}".rjust(18),
        )


if __name__ == "__main__":
    main()

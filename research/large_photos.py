"""Small faces in large photos: what detecting them again in a cut of the photo (``detect.REFINE_BELOW``) gives.

    python -m research.large_photos --data ../shared/datasets/UTKFace.tar.gz [--split val] [--n 300] [--seed 31]

The single-face path finds a face in the photo shrunk to 640 px, where a face of a 12 MP photo is a few dozen pixels
across, and cuts the crop from the full photo along BlazeFace's box and eyes found there. This takes faces of one
split of UTKFace (as ``training.data.split`` assigns it to the served models; choose on ``val``, confirm on
``test``), pastes each at 120-400 px (log-uniform) on a 4000x3000 smooth random background
(``research.measure_faces.background``), crops it with the single-face path with the refinement and without
(``FaceCropper(refine=False)``), and runs the served CNNs in-process (as the CPU backend compiles them) on the crops
of the faces both found. Prints age MAE, the share of true ages inside the served 80% interval, gender accuracy and
the detection CPU time of each, as a Markdown table.
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from research.face_size import scores, served_answers, served_models
from research.measure_faces import ROOT, background, held_out_faces, split_parser
from serving.pipeline.detect import FaceCropper

PHOTO = (4000, 3000)
FACE_SIDES = (120, 400)


def main(argv: list[str] | None = None) -> None:
    p = split_parser(__doc__, n=300, seed=31)
    args = p.parse_args(argv)
    if not args.data.is_file():
        p.error(f"{args.data} is not a file: pass --data with the UTKFace archive")
    faces = held_out_faces(args.data, split=args.split)
    croppers = {"as found in the shrunk photo": FaceCropper(refine=False), "detected again in a cut": FaceCropper()}
    crops: dict[str, list] = {name: [] for name in croppers}
    cpu = dict.fromkeys(croppers, 0.0)
    labels = []
    rng = np.random.default_rng(args.seed)
    low, high = np.log(FACE_SIDES)
    for k in rng.choice(len(faces), size=min(args.n, len(faces)), replace=False):
        blob, age, gender = faces[int(k)]
        side = int(np.exp(rng.uniform(low, high)))
        photo = background(rng, PHOTO)
        x, y = int(rng.integers(0, PHOTO[0] - side)), int(rng.integers(0, PHOTO[1] - side))
        photo.paste(Image.open(io.BytesIO(blob)).convert("RGB").resize((side, side), Image.Resampling.BICUBIC), (x, y))
        found = {}
        for name, cropper in croppers.items():
            started = time.process_time()
            found[name] = cropper(photo)
            cpu[name] += time.process_time() - started
        if any(face is None for face in found.values()):
            continue
        labels.append((age, gender))
        for name, face in found.items():
            crops[name].append(face.crops)
    ages = np.array([a for a, _ in labels], np.float32)
    genders = np.array([g for _, g in labels])
    models = served_models(ROOT / "model_repository")
    where = f"{FACE_SIDES[0]}-{FACE_SIDES[1]} px in {PHOTO[0]}x{PHOTO[1]}"
    print(f"{args.split} split, seed {args.seed}: {len(labels)} of {args.n} faces found by both, {where}\n")
    print("| single-face path | age MAE | ages inside their 80% interval | gender accuracy | detection CPU s |")
    print("|---|---|---|---|---|")
    for name in croppers:
        mae, inside, accuracy = scores(served_answers(models, crops[name]), ages, genders)
        print(f"| {name} | {mae:.2f} | {inside:.3f} | {accuracy:.3f} | {cpu[name]:.1f} |")


if __name__ == "__main__":
    main()

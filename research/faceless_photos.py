"""Which real photos without a face get one: both detection paths, with each check of doubtful detections.

    python -m research.faceless_photos DIR [DIR ...]

Every picture (JPEG, PNG, WebP) under the folders goes whole through the single-face path (``FaceCropper.detect``)
and the every-face path (``MultiFaceCropper.detect_all``), each as served (the face mesh check,
``detect.MESH_MIN_FLAG``), as served before it (the confirmation, ``detect.CONFIRM_MIN_SCORE``) and with neither; a
line per picture that got any detection, and the totals. A check on photos no rule was chosen on, for folders the
caller knows to hold no face: nothing here tells a face from a false one. The pictures used in docs/serving.md
(2026-12-06), none of them in this repository:

    pip download scikit-image==0.26.0 --no-deps -d /tmp/sk && unzip -q /tmp/sk/*.whl 'skimage/data/*' -d /tmp/sk
    python -m research.faceless_photos /tmp/sk/skimage/data .venv/lib/python3.11/site-packages/gradio/test_data

(``astronaut.png`` and ``camera.png`` there show a face: their lines are the real faces, kept or not.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from serving.pipeline import detect
from serving.pipeline.detect import FaceCropper, MultiFaceCropper

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    args = p.parse_args(argv)
    pictures = sorted(path for folder in args.folders for path in folder.rglob("*") if path.suffix.lower() in SUFFIXES)
    # served: the face mesh check (detect.MESH_MIN_FLAG); confirmed: the check served before it, the short-range
    # detector finding a doubtful face again (detect.CONFIRM_MIN_SCORE; every-face floor 0.6 then); neither: no check.
    before = {"confirm_score": detect.CONFIRM_MIN_SCORE, "mesh_flag": 0}
    single = {
        "served": FaceCropper(),
        "confirmed": FaceCropper(**before),
        "neither": FaceCropper(confirm_score=0, mesh_flag=0),
    }
    every = {
        "served": MultiFaceCropper(),
        "confirmed": MultiFaceCropper(**before, min_score=0.6),
        "neither": MultiFaceCropper(confirm_score=0, mesh_flag=0, min_score=0.6),
    }
    given = dict.fromkeys(single, 0)
    detections = dict.fromkeys(every, 0)
    print(f"{len(pictures)} pictures; scores of the single-face path's face, then of every-face path's detections")
    for path in pictures:
        with Image.open(path) as picture:
            picture = picture.convert("RGB")
        found = {name: cropper.detect(picture) for name, cropper in single.items()}
        faces = {name: cropper.detect_all(picture) for name, cropper in every.items()}
        for name in single:
            given[name] += found[name] is not None
            detections[name] += len(faces[name])
        if any(found.values()) or any(faces.values()):
            parts = []
            for name in single:
                score = f"{found[name].score:.2f}" if found[name] else "-"
                parts.append(f"{name}: {score} {[round(d.score, 2) for d in faces[name]]}")
            print(f"{path.name:32s}", "  ".join(parts))
    print("given a face (single-face path):", ", ".join(f"{name} {n}" for name, n in given.items()))
    print("detections (every-face path):", ", ".join(f"{name} {n}" for name, n in detections.items()))


if __name__ == "__main__":
    main()

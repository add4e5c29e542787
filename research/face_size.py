"""How small a face may be before the served CNNs' answers stop meaning anything.

    python -m research.face_size --data ../shared/datasets/UTKFace.tar.gz [--sides 200,96,64,48,40,32,24,16]

The served path cuts a UTKFace-framed square around each face from the photo and resizes it to the CNNs' inputs
(96 px for age, 64 for gender: common/spec.py). A face that covers few pixels of the photo comes out as a blurred,
blown-up square. This takes the validation split's aligned 200 px faces (the split every choice is made on), shrinks
each to ``side`` px with an area filter (as a camera or a downscaled photo records a smaller face), and serves it
through the crop path's own steps in-process (``spec.model_inputs``, then both served CNNs on OpenVINO at the
served precision): age MAE, gender accuracy and the 80% interval's coverage per side. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from common import contract, spec
from loadtest.bench.openvino_reference import asked_precision
from research.runtimes import savedmodel_paths
from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime
from training import data as utk

ROOT = Path(__file__).resolve().parents[1]


def served_models(repository: Path) -> dict[str, object]:
    """Each task's served CNN, compiled as the CPU backend compiles it; called with a batch, returns its outputs."""
    ov = ov_runtime.import_openvino()
    core, models = ov.Core(), {}
    for task, savedmodel in savedmodel_paths(repository).items():
        model, _, precision = ir.load_served(savedmodel.parent, core, asked_precision(repository, task))
        compiled = ov_runtime.compile_model(core, model, ov_runtime.settings(2, precision))
        models[task] = compiled
    return models


def validation_faces(archive: Path, repository: Path) -> tuple[list[Image.Image], np.ndarray, np.ndarray]:
    """The validation split's faces at their stored 200 px, with ages and genders (0 male, 1 female): the split the
    served models in ``repository`` were trained on."""
    dataset = utk.load(archive, size=spec.image_size(contract.AGE_MODEL), cache_dir=utk.default_cache_dir())
    val = utk.part(dataset, "val", seed=utk.served_split_seed(repository))
    wanted = {str(name): k for k, name in enumerate(val.names)}
    faces: list[Image.Image | None] = [None] * len(wanted)
    for name, raw in utk.iter_source(archive):
        if (k := wanted.get(name)) is not None:
            faces[k] = Image.open(io.BytesIO(raw)).convert("RGB")
    missing = sum(face is None for face in faces)
    if missing:
        raise RuntimeError(f"{missing} validation faces not found in {archive}")
    return faces, val.ages.astype(np.float32), val.genders.astype(np.int64)


def answers(models: dict, faces: list[Image.Image], side: int) -> dict[str, np.ndarray]:
    """The served outputs for every face shrunk to ``side`` px and taken through the crop path's resizing."""
    shrunk = (face if side >= face.width else face.resize((side, side), Image.Resampling.BOX) for face in faces)
    return served_answers(models, [spec.model_inputs(face) for face in shrunk])


def served_answers(models: dict, inputs: list[dict[str, np.ndarray]], batch: int = 64) -> dict[str, np.ndarray]:
    """The served CNNs' outputs (:func:`served_models`) for each face's model inputs (``spec.model_inputs``), by
    output name."""
    out: dict[str, list] = {}
    for start in range(0, len(inputs), batch):
        part = inputs[start : start + batch]
        for task, compiled in models.items():
            for port, value in compiled(np.stack([x[task] for x in part])).items():
                out.setdefault(port.get_any_name(), []).append(np.asarray(value).reshape(len(part), -1)[:, 0])
    return {name: np.concatenate(parts) for name, parts in out.items()}


def scores(got: dict[str, np.ndarray], ages: np.ndarray, genders: np.ndarray) -> tuple[float, float, float]:
    """Age MAE, the share of true ages inside the served 80% interval and gender accuracy of served outputs."""
    mae = float(np.mean(np.abs(got[contract.AGE_OUTPUT] - ages)))
    inside = float(np.mean((got[contract.AGE_LOW_OUTPUT] <= ages) & (ages <= got[contract.AGE_HIGH_OUTPUT])))
    accuracy = float(np.mean(contract.is_female(got[contract.GENDER_OUTPUT]) == (genders == 1)))
    return mae, inside, accuracy


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="UTKFace.tar.gz or its folder")
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--sides", default="200,96,64,48,40,32,24,16", help="face square sides in px")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = served_models(args.repository)
    faces, ages, genders = validation_faces(args.data, args.repository)
    print(f"validation split, {len(faces)} faces; served models of {args.repository}")
    print("| face side, px | age MAE | age within its 80% interval | gender accuracy |")
    print("|---|---|---|---|")
    for side in (int(s) for s in args.sides.split(",")):
        mae, inside, accuracy = scores(answers(models, faces, side), ages, genders)
        print(f"| {side} | {mae:.2f} | {inside:.3f} | {accuracy:.4f} |", flush=True)


if __name__ == "__main__":
    main()

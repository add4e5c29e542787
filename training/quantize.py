"""Quantizes the served CNNs' convolutions to int8 and writes ``<version>/model.int8/`` beside each SavedModel.

    python -m training.quantize --data ../shared/datasets/UTKFace.tar.gz [--tasks age,gender] [--faces 512]

For the newest version of each task: NNCF's post-training quantization of the OpenVINO model converted from the
SavedModel (the IR beside it when valid), with activation ranges from ``--faces`` faces of the training split the
version was trained on (seeded), at the model's input size. Only the convolutions are quantized: the heads
(dense layers, the temperature, the age distribution's quantiles, the sigmoid) stay in float. NNCF's default,
which quantizes them too, put a quantizer on the gender probability and broke both models (test-split gender
accuracy 0.525, the age interval's coverage 0.61; docs/performance-log.md, twenty-sixth part). Each quantized
layer's bias is then corrected by NNCF's full bias correction (the layer's output mean over the calibration faces,
float against int8), not its fast one: on the validation split each age moved 0.09 years from f32's on average
instead of 0.47, 2.0 at most instead of 26, and 4 gender decisions flipped instead of 13 (twenty-seventh part);
it costs the quantization 29 s instead of about 10 on two cores, and the served model nothing.

The key (``key.json``) records the SavedModel's digest, so an int8 model never serves beside another SavedModel
(serving/pipeline/backends/openvino_savedmodel/ir.py), and how it was made. What it does to the answers:
``python -m training.precision`` (reports/precision.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common import spec
from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime
from training import cli
from training import data as utk
from training.evaluate import split_seed

TASKS = ("age", "gender")
#: Operations left in float: everything after the convolutions' features (the heads), and the flip TTA's
#: bookkeeping. Types absent from a model are skipped (``validate=False``).
FLOAT_TYPES = (
    "MatMul", "Add", "Multiply", "Subtract", "Divide", "Sigmoid", "Softmax", "Log", "Clamp", "Minimum", "Maximum",
    "CumSum", "ReduceSum", "ReduceMean", "Concat", "Gather", "Less", "GreaterEqual", "LogicalAnd", "StridedSlice",
    "Reshape", "Unsqueeze", "Broadcast",
)  # fmt: skip
#: Calibration faces drawn from the training split, and the draw's seed.
FACES, DRAW_SEED = 512, 0
#: The fewest faces an int8 model is calibrated on: activation ranges from a handful of faces clip the rest
#: (``--faces 4`` on synthetic images passed the key's check, which knows only the SavedModel's digest).
MIN_FACES = 200
#: Bumped when the way the int8 model is made changes (2: full bias correction).
FORMAT = 2


def calibration_faces(data: utk.Dataset, seed: int, faces: int) -> np.ndarray:
    """``faces`` training-split faces of split seed ``seed``, drawn with :data:`DRAW_SEED`: never a validation or
    test face, so nothing the models are scored on shapes the quantization."""
    train = np.flatnonzero(utk.split(data, seed=seed) == "train")
    if len(train) < min(faces, MIN_FACES):
        raise SystemExit(
            f"{len(train)} training faces in the data; the int8 model is calibrated on at least {MIN_FACES} of the "
            "training split (the full UTKFace)"
        )
    rows = np.random.default_rng(DRAW_SEED).choice(train, min(faces, len(train)), replace=False)
    return data.images[np.sort(rows)]


def quantize(version: Path, images: np.ndarray, seed: int) -> Path:
    """Writes ``version/model.int8/`` from the SavedModel there, calibrated on ``images``."""
    import nncf

    ov = ov_runtime.import_openvino()
    model, _ = ir.load(version, ov.Core())
    quantized = nncf.quantize(
        model,
        nncf.Dataset([images[i : i + 1] for i in range(len(images))]),
        subset_size=len(images),
        fast_bias_correction=False,
        ignored_scope=nncf.IgnoredScope(types=list(FLOAT_TYPES), validate=False),
    )
    key = {
        "format": FORMAT,
        "savedmodel_sha256": ir.savedmodel_digest(version / ir.SAVEDMODEL),
        "openvino": ov.get_version(),
        "nncf": nncf.__version__,
        "calibration": {"split": "train", "split_seed": seed, "faces": len(images), "draw_seed": DRAW_SEED},
        "float_types": list(FLOAT_TYPES),
        "bias_correction": "full",
    }
    return ir.write(version, ir.INT8_DIR, quantized, key)


def faces_count(text: str) -> int:
    """``--faces``: a whole number of at least :data:`MIN_FACES`."""
    value = cli.positive_int(text)
    if value < MIN_FACES:
        raise argparse.ArgumentTypeError(f"{value}: the activation ranges need at least {MIN_FACES} faces")
    return value


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=cli.data_source, help="UTKFace-format archive or folder")
    cli.add_repo(p)
    p.add_argument("--tasks", type=cli.tasks, default=",".join(TASKS))
    p.add_argument(
        "--faces",
        type=faces_count,
        default=FACES,
        help=f"training faces that set the activation ranges (at least {MIN_FACES})",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a valid model.int8 (by default refused: a version, int8 model included, does not change "
        "once published; export a new version instead)",
    )
    p.add_argument("--cache-dir", type=Path, default=utk.default_cache_dir())
    args = p.parse_args(argv)
    # Every task is checked, and its faces drawn, before any model is written.
    todo = []
    for task in args.tasks:
        version = cli.version_folder(args.repo, task, None)
        ok, _ = ir.int8_valid(version)
        if ok and not args.force:
            raise SystemExit(
                f"{version / ir.INT8_DIR} is valid already: a version does not change once made (Triton may serve "
                "it, a release may hold it). Export a new version to quantize, or pass --force to replace it"
            )
        seed = split_seed({task: version})
        data = cli.load(args.data, size=spec.image_size(task), cache_dir=args.cache_dir)
        todo.append((task, version, seed, calibration_faces(data, seed, args.faces)))
    written = []
    for task, version, seed, faces in todo:
        out = quantize(version, faces, seed)
        print(f"{task}: {out} ({json.loads((out / ir.KEY).read_text())['calibration']})")
        written.append(out)
    return written


if __name__ == "__main__":
    main()

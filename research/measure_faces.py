"""Measures multi-face detection on group-photo composites of held-out UTKFace faces.

    python -m research.measure_faces --data ../shared/datasets/UTKFace.tar.gz [--n 100] [--configs all]
        [--split val|test] [--backgrounds DIR[,DIR]] [--faceless N]

Each composite is a 1280x960 canvas with a smooth random background and 2-8 faces from the project's validation split
(``training.data.split``, under the seed the served models were trained on: 1337 today), pasted at sizes log-uniform in
40-200 px without overlap. A detection finds a face when its box overlaps the pasted square with IoU >= 0.3 (one
detection per face); every other detection is a false one. ``--backgrounds``: half the composites on a random cut of the
pictures under those folders instead (textured photos and artwork, e.g. Debian's wallpapers:
``research.single_subject``); ``--faceless N``: N dead-leaves pictures (:func:`dead_leaves`) and, with
``--backgrounds``, N cuts, whose detections are all false, counted apart. The first config is then checked end to end:
age and gender from the committed SavedModels on each found face's multi-face crop, against the single-face path on the
same face (the pasted face cut out as its own image and cropped by :class:`serving.pipeline.detect.FaceCropper`).

Offline tool: it reads the non-commercial UTKFace archive, so it never runs in tests and writes nothing into
the repository unless ``--out`` says so. Results: ``research/FACES.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from common import contract, spec
from serving.pipeline.detect import CONFIRM_MIN_SCORE, FaceCropper, MultiFaceCropper, _area, iou

ROOT = Path(__file__).resolve().parents[1]
CANVAS = (1280, 960)
SIZE_RANGE = (40, 200)
BUCKETS = (40, 48, 64, 96, 144, 201)
MATCH_IOU = 0.3
#: name -> MultiFaceCropper keyword arguments; the first of a run is the one checked end to end.
CONFIGS = {
    "short+full / short 320": {},
    "short whole": {"whole": ("short",), "tiled": ()},
    "full_sparse whole": {"whole": ("full_sparse",), "tiled": ()},
    "short+full whole": {"tiled": ()},
    "short+full / full 640": {"tiled": (("full_sparse", 640),)},
    "short+full / dense 480": {"tiled": (("full", 480),)},
    "short+full / full 480": {"tiled": (("full_sparse", 480),)},
    "short+full / short 320 overlap 0.25": {"overlap": 0.25},
    "short+full / short 384": {"tiled": (("short", 384),)},
    "short+full / short 320 min 0.5": {"min_score": 0.5},
    "short+full / short 320 min 0.55": {"min_score": 0.55},
    "short+full / short 320 min 0.65": {"min_score": 0.65},
    "short+full / short 320 no detail floor": {"min_detail": 0},
    # Doubtful detections: neither check, or the confirmation served before the face mesh check (floor 0.6 then).
    "short+full / short 320 unconfirmed": {"min_score": 0.6, "confirm_score": 0, "mesh_flag": 0},
    "short+full / short 320 min 0.5 unconfirmed": {"min_score": 0.5, "confirm_score": 0, "mesh_flag": 0},
    "short+full / short 320 confirmed (served before)": {
        "min_score": 0.6,
        "confirm_score": CONFIRM_MIN_SCORE,
        "mesh_flag": 0,
    },
    "short+full / short 320 min 0.6 meshed": {"min_score": 0.6},
    "short+full / short 320 min 0.55 meshed": {"min_score": 0.55},
    "full / short 320": {"whole": ("full_sparse",), "tiled": (("short", 320),)},
    "full / short 384": {"whole": ("full_sparse",), "tiled": (("short", 384),)},
    "full / full 480 + short 320": {"whole": ("full_sparse",), "tiled": (("full_sparse", 480), ("short", 320))},
    "short+full / full 480 + short 320": {"tiled": (("full_sparse", 480), ("short", 320))},
}


def held_out_faces(path: Path, *, seed: int | None = None, split: str = "val") -> list[tuple[bytes, int, int]]:
    """(JPEG bytes, age, gender) of every face in the validation split (or ``split``), as training assigns it
    (``training.data.split``, near copies of training faces left out), under ``seed``: by default the split the
    served models were trained on."""
    from training import data as utk

    data = utk.load(path, size=spec.image_size("gender"), cache_dir=utk.default_cache_dir())
    seed = utk.served_split_seed(ROOT / "model_repository") if seed is None else seed
    test = {
        str(h): (int(a), int(g))
        for h, a, g, s in zip(data.hashes, data.ages, data.genders, utk.split(data, seed=seed), strict=True)
        if s == split
    }
    faces = []
    for _, blob in utk.iter_source(path):
        label = test.pop(hashlib.sha256(blob).hexdigest(), None)  # pop: one entry per set of identical copies
        if label is not None:
            faces.append((blob, *label))
    return faces


def split_parser(doc: str, *, n: int, seed: int) -> argparse.ArgumentParser:
    """The options every held-out-faces study takes: the archive (``--data``), the split (choose on ``val``, confirm
    on ``test``), how many faces and the seed that draws them."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "UTKFace.tar.gz")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--n", type=int, default=n)
    p.add_argument("--seed", type=int, default=seed)
    return p


def background(rng: np.random.Generator, size: tuple[int, int] = CANVAS) -> Image.Image:
    """A smooth random colour field with some blurred blobs, ``size`` (width, height): no faces, but not a flat wall
    either."""
    w, h = size
    low = rng.integers(40, 220, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, size=(h, w, 3))
    arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.GaussianBlur(1))


def dead_leaves(rng: np.random.Generator, size: tuple[int, int] = CANVAS, discs: int = 600) -> Image.Image:
    """Overlapping discs of random colours and sizes (4-120 px radius, log-uniform), lightly blurred: the "dead
    leaves" model of natural images' edges and textures, made here, so tests and research need no photo. No faces,
    but far more face-like patches than :func:`background`'s smooth fields."""
    from PIL import ImageDraw

    w, h = size
    picture = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(picture)
    for _ in range(discs):
        r = float(np.exp(rng.uniform(np.log(4), np.log(120))))
        x, y = rng.uniform(-r, w + r), rng.uniform(-r, h + r)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return picture.filter(ImageFilter.GaussianBlur(1))


def textured(rng: np.random.Generator, pictures: list[Path], size: tuple[int, int] = CANVAS) -> Image.Image:
    """A random cut (20-100% of the area) of one of ``pictures``, scaled to ``size``."""
    with Image.open(pictures[int(rng.integers(len(pictures)))]) as picture:
        picture = picture.convert("RGB")
    width, height = picture.size
    share = math.sqrt(rng.uniform(0.2, 1.0))
    w, h = int(width * share), int(height * share)
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return picture.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BILINEAR)


def pictures_under(folders: str) -> list[Path]:
    """The JPEG, PNG and WebP files under the comma-separated ``folders``, each file once (wallpaper packages link
    one picture under several sizes' names)."""
    return sorted(
        {
            path.resolve()
            for folder in filter(None, folders.split(","))
            for path in Path(folder).rglob("*")
            if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") and path.is_file()
        }
    )


def composite(faces, rng: np.random.Generator, pictures: list[Path] = (), textured_share: float = 0.0):
    """Pastes 2-8 faces without overlap; returns the picture and [(box, face index, resized face)]. The background
    is smooth (:func:`background`), or with ``pictures`` a cut of one of them for ``textured_share`` of the calls."""
    canvas = textured(rng, pictures) if pictures and rng.random() < textured_share else background(rng)
    placed: list[tuple[tuple[float, float, float, float], int, Image.Image]] = []
    n = int(rng.integers(2, 9))
    lo, hi = SIZE_RANGE
    for _ in range(n):
        index = int(rng.integers(len(faces)))
        size = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        for _attempt in range(50):
            x, y = int(rng.integers(0, CANVAS[0] - size)), int(rng.integers(0, CANVAS[1] - size))
            box = (x, y, x + size, y + size)
            margin = 0.15 * size
            if all(
                _area(
                    (
                        max(b[0], x - margin),
                        max(b[1], y - margin),
                        min(b[2], box[2] + margin),
                        min(b[3], box[3] + margin),
                    )
                )
                == 0
                for b, _, _ in placed
            ):
                face = (
                    Image.open(io.BytesIO(faces[index][0]))
                    .convert("RGB")
                    .resize((size, size), Image.Resampling.BILINEAR)
                )
                canvas.paste(face, (x, y))
                placed.append((tuple(map(float, box)), index, face))
                break
    return canvas, placed


def match(truth: list, boxes: list) -> tuple[dict[int, int], int]:
    """Greedy one-to-one matching by IoU; returns {truth index: detection index} and the false detections."""
    pairs = sorted(((iou(t, d), i, j) for i, t in enumerate(truth) for j, d in enumerate(boxes)), reverse=True)
    matched: dict[int, int] = {}
    used: set[int] = set()
    for value, i, j in pairs:
        if value < MATCH_IOU:
            break
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    return matched, len(boxes) - len(used)


def bucket(size: float) -> str:
    for lo, hi in zip(BUCKETS, BUCKETS[1:], strict=False):
        if lo <= size < hi:
            return f"{lo}-{hi - 1}"
    return "other"


def measure(cropper: MultiFaceCropper, scenes) -> dict:
    by_size: dict[str, list[int]] = {}
    false = found48 = total48 = detections = 0
    start = time.perf_counter()
    for canvas, placed in scenes:
        boxes = [d.box for d in cropper.detect_all(canvas)]
        detections += len(boxes)
        matched, extra = match([p[0] for p in placed], boxes)
        false += extra
        for i, (box, _, _) in enumerate(placed):
            size = box[2] - box[0]
            stats = by_size.setdefault(bucket(size), [0, 0])
            stats[0] += i in matched
            stats[1] += 1
            if size >= 48:
                found48 += i in matched
                total48 += 1
    seconds = time.perf_counter() - start
    return {
        "recall_by_size": {
            k: f"{v[0]}/{v[1]}" for k, v in sorted(by_size.items(), key=lambda kv: int(kv[0].split("-")[0]))
        },
        "recall_ge48": found48 / max(total48, 1),
        "false_detections": false,
        "false_per_image": false / len(scenes),
        "false_fraction": false / max(detections, 1),
        "ms_per_image": 1000 * seconds / len(scenes),
    }


def age_gender(scenes, faces, cropper: MultiFaceCropper) -> dict:
    """Age MAE / gender accuracy per found face: multi-face crops vs the single-face path on the same faces."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from training.export import SAVEDMODEL, latest

    def model(task):
        fn = tf.saved_model.load(str(latest(ROOT / "model_repository", task) / SAVEDMODEL))
        return fn.signatures["serving_default"]

    age_fn, gender_fn = model("age"), model("gender")
    single = FaceCropper()
    multi_crops, single_crops, labels = [], [], []
    for canvas, placed in scenes:
        found = cropper.crop_all(canvas)
        matched, _ = match([p[0] for p in placed], [f.box for f in found])
        for i, j in matched.items():
            box, index, face_img = placed[i]
            if box[2] - box[0] < 48:
                continue
            alone = single(face_img)
            if alone is None:
                continue
            multi_crops.append(found[j].crops)
            single_crops.append(alone.crops)
            labels.append(faces[index][1:])

    def run(crops):  # each model reads its own crop size
        batch = {task: tf.constant(np.stack([c[task] for c in crops])) for task in ("age", "gender")}
        return (
            age_fn(image=batch["age"])["age"].numpy().ravel(),
            gender_fn(image=batch["gender"])["female_probability"].numpy().ravel(),
        )

    ages, genders = np.array([a for a, _ in labels], float), np.array([g for _, g in labels])
    out = {"faces": len(labels)}
    for name, crops in (("multi", multi_crops), ("single", single_crops)):
        age, female = run(crops)
        out[name] = {
            "age_mae": float(np.mean(np.abs(age - ages))),
            "gender_acc": float(np.mean(contract.is_female(female) == genders)),
        }
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "UTKFace.tar.gz")
    p.add_argument("--n", type=int, default=100, help="composites (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default=next(iter(CONFIGS)), help=f"comma-separated, or 'all': {', '.join(CONFIGS)}")
    p.add_argument(
        "--split",
        choices=("val", "test"),
        default="val",
        help="whose faces: choose a configuration on val (the default); test only confirms a choice already made",
    )
    p.add_argument(
        "--backgrounds",
        default="",
        help="comma-separated folders of faceless pictures (research.single_subject): half the composites on cuts of "
        "them, and --faceless more pictures without faces",
    )
    p.add_argument(
        "--faceless",
        type=int,
        default=0,
        help="pictures without a face, counted apart: this many dead leaves, and as many cuts of --backgrounds",
    )
    p.add_argument("--no-age-gender", action="store_true", help="detection only")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    names = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
    faces = held_out_faces(args.data, split=args.split)
    pictures = pictures_under(args.backgrounds)
    if args.backgrounds and not pictures:
        p.error(f"no pictures under {args.backgrounds}")
    rng = np.random.default_rng(args.seed)
    scenes = [composite(faces, rng, pictures, 0.5) for _ in range(args.n)]
    faceless = [dead_leaves(rng) for _ in range(args.faceless)]
    faceless += [textured(rng, pictures) for _ in range(args.faceless if pictures else 0)]
    print(
        f"{len(faces)} held-out {args.split} faces; {args.n} composites with {sum(len(s[1]) for s in scenes)} faces"
        f"{f', half on cuts of {len(pictures)} pictures' if pictures else ''}; {len(faceless)} faceless pictures",
        flush=True,
    )
    results = {}
    for name in names:
        cropper = MultiFaceCropper(**CONFIGS[name])
        results[name] = measure(cropper, scenes)
        if faceless:
            found = [len(cropper.detect_all(picture)) for picture in faceless]
            half = args.faceless
            results[name]["faceless_false"] = {"dead leaves": sum(found[:half]), "cuts": sum(found[half:])}
            results[name]["faceless_with_any"] = sum(n > 0 for n in found) / len(found)
        print(name, json.dumps(results[name]), flush=True)
    if not args.no_age_gender:
        results["age_gender"] = age_gender(scenes, faces, MultiFaceCropper(**CONFIGS[names[0]]))
        print("age/gender on", names[0], json.dumps(results["age_gender"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

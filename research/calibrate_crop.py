"""Fits the crop constants of :mod:`serving.pipeline.crops` on UTKFace's own aligned crops.

A UTKFace image *is* the crop the models expect, so re-detecting the face in it and
asking where the whole image lies relative to the eyes (and to the box) gives the
framing directly: crop side / eye distance, and the crop centre's offset from the
eye midpoint in the face's frame. The median over a random sample is robust to the
odd bad keypoint. The fit is scored by the mean IoU between the square
:mod:`serving.pipeline.crops` would cut with the fitted constants and the original image.

    python -m research.calibrate_crop --data ../shared/datasets/UTKFace.tar.gz --out /tmp/crop.json
    python -m research.calibrate_crop --data ../shared/datasets/UTKFace.tar.gz --n 300 --write-served

The served constants (``serving/pipeline/crop_calibration.json``) are replaced only with ``--write-served``, and
only from at least ``MIN_N`` sampled images: every served crop follows them. Without it ``--out`` names where the
fit goes, to compare first. Writes only numbers to the JSON: no image names or pixels from the data set.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image

from serving.pipeline.crops import CALIBRATION_PATH, CropCalibration, Detection, square_for
from serving.pipeline.detect import FaceCropper
from training import data as utk


def sample_images(path: Path, n: int, seed: int) -> list[Image.Image]:
    """Reservoir-samples ``n`` decodable images, so the sample is not biased by the age-sorted file order."""
    rng = random.Random(seed)
    reservoir: list[bytes] = []
    for seen, (_, raw) in enumerate(utk.iter_source(path)):
        if len(reservoir) < n:
            reservoir.append(raw)
        else:
            j = rng.randrange(seen + 1)
            if j < n:
                reservoir[j] = raw
    images = []
    for raw in reservoir:
        try:
            images.append(Image.open(io.BytesIO(raw)).convert("RGB"))
        except OSError:
            continue
    return images


def frame_of(image: Image.Image, det: Detection) -> dict[str, float]:
    """Where the whole image lies relative to one detection: the constants that would reproduce it."""
    width, height = image.size
    cx, cy, side = width / 2, height / 2, (width + height) / 2
    (ax, ay), (bx, by) = det.eyes
    eye_dist = math.hypot(bx - ax, by - ay)
    angle = math.atan2(by - ay, bx - ax)
    cos, sin = math.cos(angle), math.sin(angle)
    mx, my = cx - (ax + bx) / 2, cy - (ay + by) / 2
    x0, y0, x1, y1 = det.box
    box_size = ((x1 - x0) + (y1 - y0)) / 2
    return {
        "eye_scale": side / eye_dist,
        # Rotate the image-frame offset into the face frame (inverse of serving.pipeline.crops.square_for).
        "eye_offset_x": (cos * mx + sin * my) / eye_dist,
        "eye_offset_y": (-sin * mx + cos * my) / eye_dist,
        "box_scale": side / box_size,
        "box_offset_x": (cx - (x0 + x1) / 2) / box_size,
        "box_offset_y": (cy - (y0 + y1) / 2) / box_size,
    }


def square_iou(image: Image.Image, centre: tuple[float, float], side: float, angle: float) -> float:
    """IoU between a rotated square and the image rectangle (exact polygon clipping)."""
    cx, cy = centre
    cos, sin = math.cos(angle), math.sin(angle)
    h = side / 2
    square = [(cx + cos * u - sin * v, cy + sin * u + cos * v) for u, v in ((-h, -h), (h, -h), (h, h), (-h, h))]
    width, height = image.size
    inter = _polygon_area(_clip_to_rect(square, width, height))
    return inter / (side * side + width * height - inter)


def _clip_to_rect(poly: list[tuple[float, float]], width: float, height: float) -> list[tuple[float, float]]:
    # Sutherland-Hodgman against the four edges of [0, width] x [0, height].
    edges = [(0, 0.0, 1), (0, width, -1), (1, 0.0, 1), (1, height, -1)]  # (axis, limit, inside direction)
    for axis, limit, sign in edges:
        if not poly:
            break
        out = []
        for i, cur in enumerate(poly):
            prev = poly[i - 1]
            cur_in, prev_in = sign * (cur[axis] - limit) >= 0, sign * (prev[axis] - limit) >= 0
            if cur_in != prev_in:
                t = (limit - prev[axis]) / (cur[axis] - prev[axis])
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            if cur_in:
                out.append(cur)
        poly = out
    return poly


def _polygon_area(poly: list[tuple[float, float]]) -> float:
    if len(poly) < 3:
        return 0.0
    xs, ys = np.array(poly).T
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


#: The fewest sampled images a fit that replaces the served constants is made from (the medians of a handful move
#: the served crop by pixels).
MIN_N = 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="UTKFace archive (.tar.gz) or folder")
    parser.add_argument("--n", type=int, default=300, help=f"images to sample (at least {MIN_N})")
    parser.add_argument("--seed", type=int, default=0)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the fit here (not the served file)")
    where.add_argument(
        "--write-served",
        action="store_true",
        help=f"replace the served constants, {CALIBRATION_PATH}: every served crop follows them",
    )
    args = parser.parse_args(argv)
    if args.n < MIN_N:
        parser.error(f"--n {args.n}: the fit needs at least {MIN_N} images")
    if not args.data.exists():
        parser.error(f"--data {args.data}: no such archive or folder")
    out = CALIBRATION_PATH if args.write_served else args.out
    if not args.write_served and out.resolve() == Path(CALIBRATION_PATH).resolve():
        parser.error(f"--out {out} is the served file: say --write-served to replace it")

    started = time.perf_counter()
    images = sample_images(args.data, args.n, args.seed)
    cropper = FaceCropper(calibration=CropCalibration())
    frames, detections = [], []
    for image in images:
        det = cropper.detect(image)
        if det is not None:
            detections.append((image, det))
            frames.append(frame_of(image, det))
    if not frames:
        raise SystemExit("No face detected in any sampled image; is --data a UTKFace archive or folder?")
    fitted = {k: float(np.median([f[k] for f in frames])) for k in frames[0]}
    cal = CropCalibration(**fitted)

    ious = {"eyes": [], "box": []}
    for image, det in detections:
        ious["eyes"].append(square_iou(image, *square_for(det, cal)))
        # The box rule, forced by hiding the eyes (square_for falls back to the box when they coincide).
        centre, side, angle = square_for(det._replace(eyes=(det.eyes[0], det.eyes[0])), cal)
        ious["box"].append(square_iou(image, centre, side, angle))
    spread = {k: float(np.std([f[k] for f in frames]) / abs(fitted[k])) for k in ("eye_scale", "box_scale")}

    result = {
        **{k: round(v, 4) for k, v in fitted.items()},
        "fit": {
            "images": len(images),
            "detected": len(frames),
            "mean_iou_eyes": round(float(np.mean(ious["eyes"])), 4),
            "median_iou_eyes": round(float(np.median(ious["eyes"])), 4),
            "mean_iou_box": round(float(np.mean(ious["box"])), 4),
            "median_iou_box": round(float(np.median(ious["box"])), 4),
            "relative_std_eye_scale": round(spread["eye_scale"], 4),
            "relative_std_box_scale": round(spread["box_scale"], 4),
        },
    }
    print(f"{len(frames)}/{len(images)} sampled images had a detected face ({time.perf_counter() - started:.0f} s)")
    for key, value in fitted.items():
        print(f"  {key:>13} = {value:.4f}")
    fit = result["fit"]
    print(
        f"mean IoU of recrop vs full image: eyes {fit['mean_iou_eyes']:.3f} (median {fit['median_iou_eyes']:.3f}), "
        f"box fallback {fit['mean_iou_box']:.3f} (median {fit['median_iou_box']:.3f})"
    )
    print(f"relative spread of the scale: eyes {spread['eye_scale']:.3f}, box {spread['box_scale']:.3f}")
    # Atomically: the server reads this file at start, and must never find half of it.
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

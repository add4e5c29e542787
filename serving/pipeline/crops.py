"""Crop geometry: where the UTKFace-style square lies around a detected face, and how it is rendered.

The CNNs learned from UTKFace's "aligned & cropped" 200x200 faces, so a production face is cut out the
same way: the image is rotated so the eyes are level, a square is cut around the eyes with the side and
centre offset fitted on UTKFace itself (``python -m research.calibrate_crop``, constants in
``crop_calibration.json``), rendered at UTKFace's 200x200 with UTKFace's black fill outside the image, and
then resized by :func:`common.spec.to_model_input` exactly as training resized its images. Finding the face
is :mod:`serving.pipeline.detect`'s job; this module holds no detector.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from common import spec

log = logging.getLogger(__name__)

#: Side of UTKFace's aligned crops; faces are rendered at this size before the model resize, like training data.
UTK_SIDE = 200
#: Fitted crop constants; written by ``python -m research.calibrate_crop --write-served``.
CALIBRATION_PATH = Path(__file__).with_name("crop_calibration.json")
#: The smallest face square, in the uploaded file's pixels, that gets an estimate: a crop sent to the crop path, or
#: the square cut around a detected face. A smaller one is blown up from too few pixels for the CNNs. The
#: validation split's faces shrunk to a side and served in-process (``python -m research.face_size``, 2026-12-07):
#: age MAE 4.42 at 200 px, 4.70 at 48, 5.48 at 32, 7.27 at 24 and 11.3 at 16; the 80% interval held 80% of ages
#: down to 64 px, 76% at 32 and 72% at 24; gender accuracy 0.944, 0.933 at 32, 0.870 at 16.
MIN_FACE_SIDE = 32


@dataclass(frozen=True)
class Face:
    """One face, ready for the models."""

    crops: dict[str, np.ndarray]  # task -> (size, size, 3) uint8 RGB model input (common.spec.model_inputs)
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 detector box in original image pixels, clipped to it
    score: float  # detector confidence in [0, 1]; 1.0 where no detector ran
    side: float  # side of the square the crops were cut from, in the picture's pixels (crop path: its shorter side)


def too_small(side: float) -> str | None:
    """Why a face of ``side`` px (in the uploaded file) gets no estimate; None when it is large enough."""
    if side >= MIN_FACE_SIDE:
        return None
    return (
        f"The face is {side:.0f} px across in the photo; an estimate needs at least {MIN_FACE_SIDE} px "
        "(send a larger or closer photo of it)."
    )


@dataclass(frozen=True)
class CropCalibration:
    """Where the UTKFace square lies relative to the eyes (and to the box, for when the eyes are unusable).

    Offsets are in the face's own frame (x along the line from the image-left eye to the other eye, y
    perpendicular to it, pointing down the face), so they hold for rotated faces too.
    """

    # Defaults: the fit committed in crop_calibration.json (300 UTKFace images), so a lost file changes nothing.
    eye_scale: float = 2.4458  # crop side / eye distance
    eye_offset_x: float = 0.0127  # (crop centre - eye midpoint) / eye distance, along the eye line
    eye_offset_y: float = 0.5059  # same, towards the mouth
    box_scale: float = 1.0331  # crop side / mean of box width and height
    box_offset_x: float = -0.0003  # (crop centre - box centre) / box size
    box_offset_y: float = -0.0041

    @classmethod
    def load(cls, path: Path = CALIBRATION_PATH) -> CropCalibration:
        """Reads the fitted constants, falling back to the built-in defaults if the file is missing."""
        if not path.exists():
            log.warning("%s not found; using built-in crop constants", path)
            return cls()
        data = json.loads(path.read_text())
        return cls(**{k: float(data[k]) for k in cls.__dataclass_fields__ if k in data})


class Detection(NamedTuple):
    box: tuple[float, float, float, float]  # original image pixels
    eyes: tuple[tuple[float, float], tuple[float, float]]  # image-left eye first, pixels
    score: float


def crop_aligned(image: Image.Image) -> Face:
    """Uses the whole image as the face, for callers whose images are already UTKFace-style crops.

    Raises:
        ValueError: If the image has no pixels.
    """
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError("The image has no pixels.")
    box = (0.0, 0.0, float(width), float(height))
    return Face(crops=spec.model_inputs(image), box=box, score=1.0, side=float(min(width, height)))


def square_for(detection: Detection, cal: CropCalibration) -> tuple[tuple[float, float], float, float]:
    """Returns ``(centre, side, angle)`` of the UTKFace-style square for a detection, in image pixels/radians.

    ``angle`` is the roll of the eye line; the square is rotated by it so the eyes end up level.
    """
    (ax, ay), (bx, by) = detection.eyes
    dx, dy = bx - ax, by - ay
    eye_dist = math.hypot(dx, dy)
    x0, y0, x1, y1 = detection.box
    box_size = ((x1 - x0) + (y1 - y0)) / 2
    # Eyes closer than a tenth of the box are a keypoint failure (or a profile); the box is safer then.
    if eye_dist >= 0.1 * box_size and eye_dist > 1.0:
        angle = math.atan2(dy, dx)
        cos, sin = math.cos(angle), math.sin(angle)
        ox, oy = cal.eye_offset_x * eye_dist, cal.eye_offset_y * eye_dist
        centre = ((ax + bx) / 2 + cos * ox - sin * oy, (ay + by) / 2 + sin * ox + cos * oy)
        return centre, cal.eye_scale * eye_dist, angle
    size = max(box_size, 1.0)
    centre = ((x0 + x1) / 2 + cal.box_offset_x * size, (y0 + y1) / 2 + cal.box_offset_y * size)
    return centre, cal.box_scale * size, 0.0


def render_square(
    image: Image.Image, *, centre: tuple[float, float], side: float, angle: float, out: int = UTK_SIDE
) -> Image.Image:
    """Cuts a square rotated by ``angle`` (radians) out of ``image`` and renders it upright at ``out`` px.

    Parts outside the image are black, as in UTKFace's own crops of faces near the border.
    """
    cx, cy = centre
    cos, sin = math.cos(angle), math.sin(angle)
    half = side / 2
    # Work on the bounding box of the square only: the whole image may be far larger than the face.
    corners = [(cx + cos * u - sin * v, cy + sin * u + cos * v) for u in (-half, half) for v in (-half, half)]
    left = max(0, math.floor(min(x for x, _ in corners)) - 1)
    top = max(0, math.floor(min(y for _, y in corners)) - 1)
    right = min(image.width, math.ceil(max(x for x, _ in corners)) + 1)
    bottom = min(image.height, math.ceil(max(y for _, y in corners)) + 1)
    if right <= left or bottom <= top:
        return Image.new("RGB", (out, out))
    region = image.crop((left, top, right, bottom))
    cx, cy = cx - left, cy - top
    # The affine warp samples bilinearly without antialiasing; shrink by an integer box filter first so the
    # warp never shrinks more than 2x (PIL's antialiased resize is what training used for its 200 -> 64).
    factor = max(1, int(side // out))
    if factor > 1:
        region = region.reduce(factor)
        cx, cy, side = cx / factor, cy / factor, side / factor
        half = side / 2
    k = side / out
    # PIL maps each output point (x, y) to input (a x + b y + c, d x + e y + f).
    coeffs = (
        k * cos,
        -k * sin,
        cx - cos * half + sin * half,
        k * sin,
        k * cos,
        cy - sin * half - cos * half,
    )
    return region.transform((out, out), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)

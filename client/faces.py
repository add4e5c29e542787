"""Parses the ``faces`` model's output tensors (one image, N faces) into a :class:`FacesResult`."""

from __future__ import annotations

import numpy as np

from client.results import DetectedFace, FacesResult, finite_or_none
from client.utils import text
from common import contract as c


def parse_faces(outputs: dict[str, np.ndarray | None], file: str | None = None) -> FacesResult:
    """Builds the result for one image from the model's outputs (missing tensors count as no faces)."""
    error = outputs.get(c.FACES_ERROR)
    message = text(error.reshape(-1)[0]).strip() if error is not None and error.size else ""
    if message:
        return FacesResult.failed(message, file=file)
    more = outputs.get(c.FACES_MORE)
    more = bool(more is not None and more.size and more.reshape(-1)[0])
    box = outputs.get(c.FACES_BOX)
    if box is None or box.size == 0:
        return FacesResult(faces=(), file=file)
    box = box.reshape(-1, 4)
    n = len(box)

    def column(name: str) -> np.ndarray:
        array = outputs.get(name)
        return array.reshape(-1) if array is not None and array.size == n else np.full(n, np.nan, object)

    names = (c.FACES_AGE, c.FACES_AGE_LOW, c.FACES_AGE_HIGH, c.FACES_FEMALE, c.FACES_GENDER, c.FACES_SCORE)
    age, age_low, age_high, female, gender, score = (column(name) for name in names)
    faces = []
    for k in range(n):
        probability = finite_or_none(female[k])
        label = text(gender[k])
        if label not in (c.MALE, c.FEMALE):
            label = None if probability is None else c.gender_label(probability)
        faces.append(
            DetectedFace(
                age=finite_or_none(age[k]),
                gender=label,
                female_probability=probability,
                box=tuple(float(v) for v in box[k]),
                detection_score=float(score[k]) if np.isfinite(float(score[k])) else 0.0,
                age_low=finite_or_none(age_low[k]),
                age_high=finite_or_none(age_high[k]),
            )
        )
    return FacesResult(faces=tuple(faces), file=file, more_faces=more)

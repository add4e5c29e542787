"""Parses the ``age_gender`` ensembles' output tensors (a batch of images, one face each) into results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from client.results import FaceResult, finite_or_none
from client.utils import text
from common import contract


def _column(outputs: dict[str, np.ndarray | None], name: str, n: int) -> np.ndarray | None:
    array = outputs.get(name)
    return None if array is None else array.reshape(n, -1)


def parse_outputs(outputs: dict[str, np.ndarray | None], files: Sequence[str | None]) -> list[FaceResult]:
    """Turns the ensemble's output tensors for a batch into one :class:`FaceResult` per item."""
    n = len(files)
    # By name, so a new output in ENSEMBLE_OUTPUTS cannot shift the others onto the wrong fields.
    age, age_low, age_high, fprob, gender, box, score, found, error = (
        _column(outputs, name, n)
        for name in (
            contract.ENSEMBLE_AGE,
            contract.ENSEMBLE_AGE_LOW,
            contract.ENSEMBLE_AGE_HIGH,
            contract.ENSEMBLE_FEMALE,
            contract.ENSEMBLE_GENDER,
            contract.ENSEMBLE_BOX,
            contract.ENSEMBLE_SCORE,
            contract.ENSEMBLE_FOUND,
            contract.ENSEMBLE_ERROR,
        )
    )
    results = []
    for k, file in enumerate(files):
        message = text(error[k, 0]).strip() if error is not None else ""
        face_found = bool(found[k, 0]) if found is not None else True
        located = {  # where the face is, for a face found, estimated or not
            "box": tuple(float(v) for v in box[k, :4]) if box is not None else None,
            "detection_score": finite_or_none(score[k, 0]) if score is not None else None,
        }
        if message and face_found and found is not None:
            # Found, but not estimated (a face too small in the photo): its box and score, and why no numbers.
            results.append(FaceResult(None, None, None, True, **located, error=message, file=file))
            continue
        if message:
            results.append(FaceResult.failed(message, file=file))
            continue
        if not face_found:
            results.append(FaceResult(None, None, None, False, None, None, None, file))
            continue
        probability = finite_or_none(fprob[k, 0]) if fprob is not None else None
        label = text(gender[k, 0]) if gender is not None else ""
        if label not in (contract.MALE, contract.FEMALE):
            label = None if probability is None else contract.gender_label(probability)
        results.append(
            FaceResult(
                age=finite_or_none(age[k, 0]) if age is not None else None,
                gender=label,
                female_probability=probability,
                face_found=True,
                **located,
                error=None,
                file=file,
                age_low=finite_or_none(age_low[k, 0]) if age_low is not None else None,
                age_high=finite_or_none(age_high[k, 0]) if age_high is not None else None,
            )
        )
    return results

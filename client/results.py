"""Typed, immutable results returned by :class:`client.AgeGenderClient`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Gender = Literal["male", "female"]
Box = tuple[float, float, float, float]

#: Key order of :meth:`FaceResult.to_dict`, which is also the CLI's JSON schema.
RESULT_KEYS = (
    "file",
    "age",
    "age_low",
    "age_high",
    "gender",
    "female_probability",
    "face_found",
    "box",
    "detection_score",
    "error",
)


@dataclass(frozen=True, slots=True)
class FaceResult:
    """The estimate for one image.

    Attributes:
        age: Estimated age in years, or None when no face was found or the image failed.
        gender: ``"male"`` or ``"female"``, or None when no face was found or the image failed.
        female_probability: The gender model's probability that the face is female, in [0, 1].
        face_found: Whether a face was detected (always True for a successful ``detect=False`` request).
        box: ``(x0, y0, x1, y1)`` of the face in the original image's pixels, or None.
        detection_score: The face detector's confidence, or None.
        error: Why this image failed, or None on success.
        file: The path the image came from, when it came from a path.
        age_low: 10th percentile of the age model's distribution for this face, in years; None where ``age``
            is None or the model gives no interval (a model without a distributional head).
        age_high: 90th percentile, likewise: ``age_low``..``age_high`` is an 80% interval.
    """

    age: float | None
    gender: Gender | None
    female_probability: float | None
    face_found: bool
    box: Box | None
    detection_score: float | None
    error: str | None
    file: str | None = None
    # Keyword-only, after the rest: positional construction stays as it was before the interval existed.
    age_low: float | None = field(default=None, kw_only=True)
    age_high: float | None = field(default=None, kw_only=True)

    @property
    def ok(self) -> bool:
        """True when the image was processed (whether or not it contains a face)."""
        return self.error is None

    @property
    def age_interval(self) -> tuple[float, float] | None:
        """``(age_low, age_high)``, or None when there is no interval."""
        return _interval(self.age_low, self.age_high)

    @property
    def estimated(self) -> bool:
        """False for a face the server found and would not estimate (``face_found`` with an ``error``: too small in
        the photo), as for :attr:`DetectedFace.estimated`."""
        return not (self.face_found and self.error is not None)

    @classmethod
    def failed(cls, error: str, *, file: str | None = None) -> FaceResult:
        """Builds the result of an image that could not be processed."""
        return cls(
            age=None,
            gender=None,
            female_probability=None,
            face_found=False,
            box=None,
            detection_score=None,
            error=error,
            file=file,
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict with keys :data:`RESULT_KEYS` (box as a list or None)."""
        return {
            "file": self.file,
            "age": self.age,
            "age_low": self.age_low,
            "age_high": self.age_high,
            "gender": self.gender,
            "female_probability": self.female_probability,
            "face_found": self.face_found,
            "box": list(self.box) if self.box is not None else None,
            "detection_score": self.detection_score,
            "error": self.error,
        }

    def describe(self) -> str:
        """Returns one human-readable line, as the CLI prints it."""
        name = self.file or "<image>"
        if not self.estimated:
            where = f"box [{', '.join(f'{v:.0f}' for v in self.box)}], " if self.box is not None else ""
            score = f"score {self.detection_score:.2f}: " if self.detection_score is not None else ""
            return f"{name}: face too small to estimate, {where}{score}{self.error}"
        if self.error is not None:
            return f"{name}: error: {self.error}"
        if not self.face_found:
            return f"{name}: no face found"
        parts = [f"{name}: {age_text(self.age, self.age_interval)}"]
        if self.gender is not None and self.female_probability is not None:
            parts.append(f"{self.gender} (P(female)={self.female_probability:.2f})")
        if self.box is not None:
            parts.append("box [" + ", ".join(f"{v:.0f}" for v in self.box) + "]")
        if self.detection_score is not None:
            parts.append(f"score {self.detection_score:.2f}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Health:
    """What the server reports about itself.

    Attributes:
        url: The address that was asked.
        live: The server process answers.
        ready: The server reports itself ready (all models it was asked to load are loaded).
        models: Readiness of each ensemble this client uses, by name.
        error: Why the server could not be asked, when it could not.
    """

    url: str
    live: bool
    ready: bool
    models: dict[str, bool] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the server is live and every ensemble this client uses is ready."""
        return self.live and all(self.models.values())


def finite_or_none(value: float) -> float | None:
    """Converts a tensor scalar to a Python float, mapping NaN/inf (no meaningful value) to None."""
    value = float(value)
    return value if math.isfinite(value) else None


def _interval(low: float | None, high: float | None) -> tuple[float, float] | None:
    return (low, high) if low is not None and high is not None else None


def age_text(age: float | None, interval: tuple[float, float] | None) -> str:
    """``age 34.2 (27-41)``: the estimate and, when there is one, its 80% interval in whole years.

    An ASCII hyphen, not an en dash: this goes to terminals and logs of any encoding.
    """
    if age is None:
        return "age ?"
    if interval is None:
        return f"age {age:.1f}"
    return f"age {age:.1f} ({interval[0]:.0f}-{interval[1]:.0f})"


#: Key order of :meth:`DetectedFace.to_dict` and of :meth:`FacesResult.to_dict` (the ``--all-faces --json`` schema).
DETECTED_FACE_KEYS = ("age", "age_low", "age_high", "gender", "female_probability", "box", "detection_score")
FACES_RESULT_KEYS = ("file", "faces", "error", "more_faces")


@dataclass(frozen=True, slots=True)
class DetectedFace:
    """One face of a multi-face estimate (:meth:`client.AgeGenderClient.predict_faces`).

    Attributes:
        age: Estimated age in years; None where the face was found but is too small to estimate (under 32 px in
            the photo: docs/serving.md), or the server sent no finite value.
        gender: ``"male"`` or ``"female"``; None where there is no estimate.
        female_probability: The gender model's probability that the face is female, in [0, 1]; None likewise.
        box: ``(x0, y0, x1, y1)`` of the face in the original image's pixels.
        detection_score: The face detector's confidence.
        age_low: 10th percentile of the age model's distribution for this face, in years, or None when the
            model gives no interval.
        age_high: 90th percentile, likewise: ``age_low``..``age_high`` is an 80% interval.
    """

    age: float | None
    gender: Gender | None
    female_probability: float | None
    box: Box
    detection_score: float
    age_low: float | None = field(default=None, kw_only=True)
    age_high: float | None = field(default=None, kw_only=True)

    @property
    def age_interval(self) -> tuple[float, float] | None:
        """``(age_low, age_high)``, or None when there is no interval."""
        return _interval(self.age_low, self.age_high)

    @property
    def estimated(self) -> bool:
        """False for a face the server found and sent no numbers for: too small to estimate."""
        return self.age is not None or self.female_probability is not None

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict with keys :data:`DETECTED_FACE_KEYS`."""
        return {
            "age": self.age,
            "age_low": self.age_low,
            "age_high": self.age_high,
            "gender": self.gender,
            "female_probability": self.female_probability,
            "box": list(self.box),
            "detection_score": self.detection_score,
        }


@dataclass(frozen=True, slots=True)
class FacesResult:
    """Every face found in one image, most prominent first, or why the image failed.

    Attributes:
        faces: The faces (empty when there is none or the image failed).
        error: Why this image failed, or None on success.
        file: The path the image came from, when it came from a path.
        more_faces: Whether the picture holds more faces than these (the server returns at most
            its ``faces`` model's ``max_faces``, 32 by default, the most prominent).
    """

    faces: tuple[DetectedFace, ...]
    error: str | None = None
    file: str | None = None
    more_faces: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, error: str, *, file: str | None = None) -> FacesResult:
        return cls(faces=(), error=error, file=file)

    def to_dict(self) -> dict[str, Any]:
        """Returns ``{"file", "faces": [...], "error", "more_faces"}``."""
        faces = [f.to_dict() for f in self.faces]
        return {"file": self.file, "faces": faces, "error": self.error, "more_faces": self.more_faces}

    def describe(self) -> str:
        """Returns human-readable lines: a header, then one line per face."""
        name = self.file or "<image>"
        if self.error is not None:
            return f"{name}: error: {self.error}"
        if not self.faces:
            return f"{name}: no face found"
        more = ", the most prominent: the photo holds more" if self.more_faces else ""
        lines = [f"{name}: {len(self.faces)} face{'s' if len(self.faces) > 1 else ''}{more}"]
        for k, face in enumerate(self.faces, 1):
            box = ", ".join(f"{v:.0f}" for v in face.box)
            if not face.estimated:
                lines.append(f"  #{k}: too small to estimate, box [{box}], score {face.detection_score:.2f}")
                continue
            age = age_text(face.age, face.age_interval)
            gender = (
                f"{face.gender} (P(female)={face.female_probability:.2f})"
                if face.female_probability is not None
                else "?"
            )
            lines.append(f"  #{k}: {age}, {gender}, box [{box}], score {face.detection_score:.2f}")
        return "\n".join(lines)

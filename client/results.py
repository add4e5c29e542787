"""Typed, immutable results returned by :class:`client.AgeGenderClient`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Gender = Literal["male", "female"]
Box = tuple[float, float, float, float]

#: Key order of :meth:`FaceResult.to_dict`, which is also the CLI's JSON schema.
RESULT_KEYS = ("file", "age", "gender", "female_probability", "face_found", "box", "detection_score", "error")


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
    """

    age: float | None
    gender: Gender | None
    female_probability: float | None
    face_found: bool
    box: Box | None
    detection_score: float | None
    error: str | None
    file: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image was processed (whether or not it contains a face)."""
        return self.error is None

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
        if self.error is not None:
            return f"{name}: error: {self.error}"
        if not self.face_found:
            return f"{name}: no face found"
        parts = [f"{name}: age {self.age:.1f}" if self.age is not None else f"{name}: age ?"]
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

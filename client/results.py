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


#: Key order of :meth:`DetectedFace.to_dict` and of :meth:`FacesResult.to_dict` (the ``--all-faces --json`` schema).
DETECTED_FACE_KEYS = ("age", "gender", "female_probability", "box", "detection_score")
FACES_RESULT_KEYS = ("file", "faces", "error")


@dataclass(frozen=True, slots=True)
class DetectedFace:
    """One face of a multi-face estimate (:meth:`client.AgeGenderClient.predict_faces`).

    Attributes:
        age: Estimated age in years (None only if the server sent no finite value).
        gender: ``"male"`` or ``"female"``.
        female_probability: The gender model's probability that the face is female, in [0, 1].
        box: ``(x0, y0, x1, y1)`` of the face in the original image's pixels.
        detection_score: The face detector's confidence.
    """

    age: float | None
    gender: Gender | None
    female_probability: float | None
    box: Box
    detection_score: float

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict with keys :data:`DETECTED_FACE_KEYS`."""
        return {
            "age": self.age,
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
    """

    faces: tuple[DetectedFace, ...]
    error: str | None = None
    file: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, error: str, *, file: str | None = None) -> FacesResult:
        return cls(faces=(), error=error, file=file)

    def to_dict(self) -> dict[str, Any]:
        """Returns ``{"file", "faces": [...], "error"}``."""
        return {"file": self.file, "faces": [f.to_dict() for f in self.faces], "error": self.error}

    def describe(self) -> str:
        """Returns human-readable lines: a header, then one line per face."""
        name = self.file or "<image>"
        if self.error is not None:
            return f"{name}: error: {self.error}"
        if not self.faces:
            return f"{name}: no face found"
        lines = [f"{name}: {len(self.faces)} face{'s' if len(self.faces) > 1 else ''}"]
        for k, face in enumerate(self.faces, 1):
            age = f"age {face.age:.1f}" if face.age is not None else "age ?"
            gender = (
                f"{face.gender} (P(female)={face.female_probability:.2f})"
                if face.female_probability is not None
                else "?"
            )
            box = ", ".join(f"{v:.0f}" for v in face.box)
            lines.append(f"  #{k}: {age}, {gender}, box [{box}], score {face.detection_score:.2f}")
        return "\n".join(lines)

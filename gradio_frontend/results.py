"""How the page words an estimate: the one-line summary, the 80% interval, the gender's confidence, the faces table."""

from __future__ import annotations

from typing import Any

from client import DetectedFace, FaceResult

#: Columns of the faces table (all-faces mode); "#" is the number drawn on the face's box.
TABLE_HEADERS = ["#", "age", "80% interval", "gender", "confidence", "detector score", "box (x0, y0, x1, y1)"]
#: Wide enough for each header on one line in the table's bold font, with room to spare (fits a 1024 px page).
TABLE_WIDTHS = ["56px", "80px", "150px", "100px", "130px", "170px", "240px"]
#: Between the interval's ends on the page; the image labels use "-" (PIL's default font has no en dash glyph).
DASH = "\u2013"


def gender_confidence(result: FaceResult | DetectedFace) -> float | None:
    """Probability of the gender that is shown, so "male (90%)" reads naturally."""
    p = result.female_probability
    if p is None or result.gender is None:
        return None
    return p if result.gender == "female" else 1.0 - p


def interval_text(result: FaceResult | DetectedFace, *, dash: str = DASH) -> str | None:
    """The age model's 80% interval in whole years, e.g. ``27–41``; None when the model gives none."""
    interval = result.age_interval
    return None if interval is None else f"{round(interval[0])}{dash}{round(interval[1])}"


def summary(result: FaceResult | DetectedFace, *, dash: str = DASH) -> str:
    """The one-line label, e.g. ``age ~34 (27–41), female (87%)``: the interval only when the model gives one."""
    if not result.estimated:
        return "too small to estimate"  # the server found it and sent no numbers (docs/serving.md, face detection)
    parts = [f"age ~{round(result.age)}" if result.age is not None else "age ?"]
    if result.age is not None and (interval := interval_text(result, dash=dash)) is not None:
        parts[0] += f" ({interval})"
    conf = gender_confidence(result)
    if result.gender is not None:
        parts.append(f"{result.gender} ({conf:.0%})" if conf is not None else result.gender)
    return ", ".join(parts)


def faces_table(faces: list[DetectedFace] | tuple[DetectedFace, ...]) -> list[list[Any]]:
    """One row per face, numbered as on the image."""
    rows = []
    for k, face in enumerate(faces, 1):
        conf = gender_confidence(face)
        rows.append(
            [
                k,
                round(face.age, 1) if face.age is not None else None,
                interval_text(face),
                face.gender,
                f"{conf:.0%}" if conf is not None else None,
                round(face.detection_score, 2),
                ", ".join(f"{v:.0f}" for v in face.box),
            ]
        )
    return rows

"""The Gradio UI's text and table, without a browser or a server (the browser test is test_gradio_browser.py)."""

from __future__ import annotations

from PIL import Image

from client import DetectedFace, FaceResult
from gradio_frontend import app


def face_result(**interval: float) -> FaceResult:
    return FaceResult(34.4, "female", 0.87, True, (10.0, 10.0, 50.0, 60.0), 0.9, None, None, **interval)


def test_summary_shows_the_interval_only_when_there_is_one():
    assert app.summary(face_result(age_low=26.6, age_high=41.2)) == "age ~34 (27\u201341), female (87%)"
    assert app.summary(face_result()) == "age ~34, female (87%)"  # a model without a distributional head
    assert app.summary(FaceResult.failed("bad")) == "age ?"


def test_faces_table_has_an_interval_column():
    faces = [
        DetectedFace(34.4, "male", 0.2, (0.0, 0.0, 9.0, 9.0), 0.9, age_low=26.6, age_high=41.2),
        DetectedFace(8.0, "female", 0.6, (20.0, 0.0, 29.0, 9.0), 0.8),
    ]
    rows = app.faces_table(faces)
    column = app.TABLE_HEADERS.index("80% interval")
    assert column == app.TABLE_HEADERS.index("age") + 1 and all(len(row) == len(app.TABLE_HEADERS) for row in rows)
    assert [row[column] for row in rows] == ["27\u201341", None]


def test_image_labels_use_a_hyphen(monkeypatch):
    # PIL's default font draws no en dash, so the labels on the picture use "-".
    labels = []
    monkeypatch.setattr(app, "_draw_box", lambda out, box, label, **kw: labels.append(label))
    image = Image.new("RGB", (100, 100))
    app.annotate(image, face_result(age_low=26.6, age_high=41.2))
    app.annotate_faces(image, [DetectedFace(34.4, "male", 0.2, (0.0, 0.0, 9.0, 9.0), 0.9, age_low=26.6, age_high=41.2)])
    assert labels == ["age ~34 (27-41), female (87%)", "#1 age ~34 (27-41), male (80%)"]

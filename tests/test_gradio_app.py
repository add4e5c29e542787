"""The Gradio UI's text and table, without a browser or a server (the browser test is test_gradio_browser.py)."""

from __future__ import annotations

import os
import time

import pytest
from PIL import Image

from client import DetectedFace, FaceResult
from common import upload
from gradio_frontend import app, uploads
from gradio_frontend.labels import place_labels


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
    # PIL's default font draws no en dash, so the label on the picture uses "-".
    labels = []
    monkeypatch.setattr(app, "_draw_box", lambda out, box, label, **kw: labels.append(label))
    app.annotate(Image.new("RGB", (100, 100)), face_result(age_low=26.6, age_high=41.2))
    assert labels == ["age ~34 (27-41), female (87%)"]


def test_every_face_gets_its_number_on_its_box_without_overlaps():
    # The server's maximum of 32 faces, small and overlapping their neighbours: the worst case for labels.
    boxes = [(float(x), float(y), x + 30.0, y + 30.0) for y in range(0, 96, 24) for x in range(0, 192, 24)]
    sizes = [(14.0 + 4 * (k >= 9), 16.0) for k in range(len(boxes))]
    rects = place_labels(boxes, sizes, (200, 120))
    assert len(rects) == len(boxes)
    for k, (x0, y0, x1, y1) in enumerate(rects):
        assert 0 <= x0 and 0 <= y0 and x1 <= 200 and y1 <= 120
        assert (x1 - x0, y1 - y0) == sizes[k]
        for other in rects[k + 1 :]:
            assert not (x0 < other[2] and other[0] < x1 and y0 < other[3] and other[1] < y1), (k, rects)
    # A face alone keeps its preferred spot: the number on its box's top-left corner.
    assert place_labels([(50.0, 40.0, 90.0, 80.0)], [(12.0, 14.0)], (200, 120)) == [(50.0, 40.0, 62.0, 54.0)]


def test_numbers_are_drawn_on_the_image_in_the_box_colour():
    faces = [
        DetectedFace(30.0, "male", 0.2, (20.0, 20.0, 80.0, 80.0), 0.9),
        DetectedFace(9.0, "female", 0.7, (90.0, 20.0, 150.0, 80.0), 0.8),
    ]
    drawn = app.annotate_faces(Image.new("RGB", (200, 120), "black"), faces)
    # Each box's top-left corner carries a filled badge: the number in white on the box colour.
    for x0, y0, *_ in (face.box for face in faces):
        corner = [drawn.getpixel((round(x0) + dx, round(y0) + dy)) for dx in range(12) for dy in range(12)]
        assert corner.count(app.BOX_COLOUR) > 60 and sum(min(pixel) > 180 for pixel in corner) > 3
    assert drawn.getpixel((185, 100)) == (0, 0, 0)  # nothing drawn away from the faces


def test_an_unreadable_upload_gets_the_apps_message_and_is_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "_folder", tmp_path)
    fake = tmp_path / "abc123" / "notes.jpg"
    fake.parent.mkdir()
    fake.write_text("this is not a JPEG")
    photo = app.take_photo({"path": str(fake), "orig_name": "notes.jpg"}, None)
    assert not fake.exists() and not fake.parent.exists()  # Gradio's copy is gone once read
    image, status, raw, rows = app.analyse(app.TritonBackend("127.0.0.1:1", "grpc"), photo, True, True)
    assert image is None and rows == []
    assert status.startswith(
        "**The image was rejected**: notes.jpg could not be read as an image: The file is not a recognised image"
    )
    assert raw["error_kind"] == "invalid_image"
    # Estimate again on the same (deleted) upload: the session's copy answers; without one, a clear message.
    assert app.take_photo({"path": str(fake)}, photo) is photo
    with pytest.raises(FileNotFoundError):
        app.take_photo({"path": str(fake)}, None)


def test_sweep_deletes_what_is_older_than_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "_folder", tmp_path)
    old, new = tmp_path / "a" / "old.png", tmp_path / "b" / "new.png"
    for path in (old, new):
        path.parent.mkdir()
        path.write_bytes(b"x")
    example = tmp_path / "c" / "example.jpg"  # a cached copy of an example shipped with the app: not personal
    example.parent.mkdir()
    example.write_bytes(b"public")
    monkeypatch.setattr(uploads, "_public", {})
    uploads.mark_public(example)
    for path in (old, example):
        os.utime(path, (time.time() - 120, time.time() - 120))
    assert uploads.sweep(60) == 1
    assert not old.exists() and not old.parent.exists() and new.exists() and example.exists()


def test_the_page_refuses_what_the_server_refuses_before_decoding_it():
    """A 140 KB PNG of 144 megapixels took 0.85 s and 958 MB to decode in the page's process; the server refuses
    it from its header (common/upload.py), and now so does the page, in milliseconds."""
    import io

    buffer = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buffer, "PNG")
    started = time.process_time()
    with pytest.raises(upload.ImageDecodeError, match="144 megapixels"):
        app.load_display_image(buffer.getvalue())
    assert time.process_time() - started < 0.2
    photo = app.Photo(buffer.getvalue(), "bomb.png")
    image, status, raw, rows = app.analyse(app.TritonBackend("127.0.0.1:1", "grpc"), photo, True, True)
    assert image is None and rows == [] and raw["error_kind"] == "invalid_image"
    assert status.startswith("**The image was rejected**: bomb.png could not be read as an image: The image is 12000")


def test_a_large_photo_is_shown_smaller_and_its_boxes_follow():
    """A photo past DISPLAY_SIDE is shown smaller (a JPEG decoded at reduced scale, anything else resized), and the
    server's boxes, in the file's pixels, are drawn where the face is on the smaller picture."""
    import io

    side = app.DISPLAY_SIDE * 2 + 400
    picture = Image.new("RGB", (side, side // 2), "white")
    face_box = (side * 0.5, side * 0.125, side * 0.75, side * 0.375)  # in the file's pixels
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        picture.save(buffer, fmt)
        shown, scale = app.load_display_image(buffer.getvalue())
        assert max(shown.size) <= app.DISPLAY_SIDE and scale == pytest.approx(side / shown.width, rel=0.01)
        face = FaceResult(34.4, "female", 0.87, True, face_box, 0.9, None, None)
        corner = tuple(round(v / scale) - 1 for v in face_box[2:])  # the box's lower right corner, as shown
        assert app.annotate(shown, face, scale).getpixel(corner) == app.BOX_COLOUR
        # Drawn in the file's coordinates instead, the box would miss the face on the smaller picture.
        assert app.annotate(shown, face).getpixel(corner) != app.BOX_COLOUR
    small = io.BytesIO()
    picture.resize((400, 200)).save(small, "PNG")
    assert app.load_display_image(small.getvalue())[1] == 1.0


def test_the_ui_sends_no_analytics(monkeypatch, tmp_path):
    # Gradio turns its analytics on unless told otherwise; the environment must not be what turns them off here.
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    # Building the page caches copies of its examples: in this test's folder, not in the machine's /tmp/gradio.
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    assert app.build_app("127.0.0.1:1").analytics_enabled is False


def test_a_killed_uis_folder_goes_at_the_next_start_even_when_its_pid_lives_again(tmp_path):
    # A UI restarted in the same container is PID 1 again: the pid in a folder's name says nothing. The lock does.
    import signal
    import subprocess
    import sys

    reused = tmp_path / f"{uploads.PREFIX}{os.getpid()}-killed"  # a live pid, nobody holds its lock
    (reused / "abc").mkdir(parents=True)
    (reused / "abc" / "face.jpg").write_bytes(b"a photo")
    alive = tmp_path / f"{uploads.PREFIX}1-alive"
    alive.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(alive)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        uploads._remove_orphans(tmp_path)
        assert not reused.exists() and alive.exists()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        uploads._remove_orphans(tmp_path)
        assert not alive.exists()
    finally:
        holder.kill()
        holder.wait()


def test_closed_and_idle_sessions_leave_the_ui_process_memory():
    # Gradio keeps a session's page (file name, answer, raw JSON) until 10,000 others push it out, and a closed tab's
    # State for an hour: the app drops both (gradio's own StateHolder, as launch() attaches it).
    import datetime

    from gradio.state_holder import StateHolder

    demo = app.build_app("127.0.0.1:1", "grpc")
    holder = StateHolder()
    holder.set_blocks(demo)
    for session in ("idle", "closed", "active"):
        holder[session]  # noqa: B018 - creates the session as a request would
    holder.time_last_used["idle"] -= datetime.timedelta(seconds=uploads.MAX_AGE_S + 1)
    holder.session_data["closed"].is_closed = True
    assert app.forget_sessions(demo) == 2
    assert list(holder.session_data) == ["active"] and list(holder.time_last_used) == ["active"]

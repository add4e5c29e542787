"""The Gradio UI's text and table, without a browser or a server (the browser test is test_gradio_browser.py)."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from client import DetectedFace, FaceResult
from common import upload
from gradio_frontend import backend, drawing, handler, results, settings, uploads
from gradio_frontend.labels import place_labels


def face_result(**interval: float) -> FaceResult:
    return FaceResult(34.4, "female", 0.87, True, (10.0, 10.0, 50.0, 60.0), 0.9, None, None, **interval)


def test_summary_shows_the_interval_only_when_there_is_one():
    assert results.summary(face_result(age_low=26.6, age_high=41.2)) == "age ~34 (27\u201341), female (87%)"
    assert results.summary(face_result()) == "age ~34, female (87%)"  # a model without a distributional head
    assert results.summary(FaceResult.failed("bad")) == "age ?"
    # A face the server found and sent no numbers for: under MIN_FACE_SIDE px (serving/pipeline/crops.py).
    assert results.summary(DetectedFace(None, None, None, (0.0, 0.0, 9.0, 9.0), 0.9)) == "too small to estimate"


def test_faces_table_has_an_interval_column():
    faces = [
        DetectedFace(34.4, "male", 0.2, (0.0, 0.0, 9.0, 9.0), 0.9, age_low=26.6, age_high=41.2),
        DetectedFace(8.0, "female", 0.6, (20.0, 0.0, 29.0, 9.0), 0.8),
    ]
    rows = results.faces_table(faces)
    headers = results.TABLE_HEADERS
    column = headers.index("80% interval")
    assert column == headers.index("age") + 1 and all(len(row) == len(headers) for row in rows)
    assert [row[column] for row in rows] == ["27\u201341", None]


def test_image_labels_use_a_hyphen(monkeypatch):
    # PIL's default font draws no en dash, so the label on the picture uses "-".
    labels = []
    monkeypatch.setattr(drawing, "_draw_box", lambda out, box, label, **kw: labels.append(label))
    drawing.annotate(Image.new("RGB", (100, 100)), face_result(age_low=26.6, age_high=41.2))
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
    drawn = drawing.annotate_faces(Image.new("RGB", (200, 120), "black"), faces)
    # Each box's top-left corner carries a filled badge: the number in white on the box colour.
    for x0, y0, *_ in (face.box for face in faces):
        corner = [drawn.getpixel((round(x0) + dx, round(y0) + dy)) for dx in range(12) for dy in range(12)]
        assert corner.count(drawing.BOX_COLOUR) > 60 and sum(min(pixel) > 180 for pixel in corner) > 3
    assert drawn.getpixel((185, 100)) == (0, 0, 0)  # nothing drawn away from the faces


def test_an_unreadable_upload_gets_the_apps_message_and_is_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "_folder", tmp_path)
    monkeypatch.setattr(uploads, "_held", {})
    fake = tmp_path / "abc123" / "notes.jpg"
    fake.parent.mkdir()
    fake.write_text("this is not a JPEG")
    photo = handler.take_photo({"path": str(fake), "orig_name": "notes.jpg"}, None)
    assert not fake.exists() and not fake.parent.exists()  # Gradio's copy is gone once read
    image, status, raw, rows = handler.analyse(backend.TritonBackend("127.0.0.1:1", "grpc"), photo, True, True)
    assert image is None and rows == []
    assert status.startswith("**The image was rejected**: notes.jpg: The file is not a recognised image")
    assert raw["error_kind"] == "invalid_image"
    # Estimate again on the same (deleted) upload: the session's copy answers; without one, once the bytes held for
    # other sessions with the same upload are gone too, a clear message.
    assert handler.take_photo({"path": str(fake)}, photo) is photo
    uploads.sweep(0)
    with pytest.raises(FileNotFoundError):
        handler.take_photo({"path": str(fake)}, None)


def test_sweep_deletes_what_is_older_than_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "_folder", tmp_path)
    old, new = tmp_path / "a" / "old.png", tmp_path / "b" / "new.png"
    for path in (old, new):
        path.parent.mkdir()
        path.write_bytes(b"x")
    example = tmp_path / "c" / "example.jpg"  # a cached copy of an example shipped with the app: not personal
    example.parent.mkdir()
    example.write_bytes(b"public")
    monkeypatch.setattr(uploads, "_public", set())
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
        drawing.load_display_image(buffer.getvalue())
    assert time.process_time() - started < 0.2
    photo = handler.Photo(buffer.getvalue(), "bomb.png")
    image, status, raw, rows = handler.analyse(backend.TritonBackend("127.0.0.1:1", "grpc"), photo, True, True)
    assert image is None and rows == [] and raw["error_kind"] == "invalid_image"
    assert status.startswith("**The image was rejected**: bomb.png: The image is 12000")


def test_a_large_photo_is_shown_smaller_and_its_boxes_follow():
    """A photo past DISPLAY_SIDE is shown smaller (a JPEG decoded at reduced scale, anything else resized), and the
    server's boxes, in the file's pixels, are drawn where the face is on the smaller picture."""
    import io

    side = drawing.DISPLAY_SIDE * 2 + 400
    picture = Image.new("RGB", (side, side // 2), "white")
    face_box = (side * 0.5, side * 0.125, side * 0.75, side * 0.375)  # in the file's pixels
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        picture.save(buffer, fmt)
        shown, scale = drawing.load_display_image(buffer.getvalue())
        assert max(shown.size) <= drawing.DISPLAY_SIDE and scale == pytest.approx(side / shown.width, rel=0.01)
        face = FaceResult(34.4, "female", 0.87, True, face_box, 0.9, None, None)
        corner = tuple(round(v / scale) - 1 for v in face_box[2:])  # the box's lower right corner, as shown
        assert drawing.annotate(shown, face, scale).getpixel(corner) == drawing.BOX_COLOUR
        # Drawn in the file's coordinates instead, the box would miss the face on the smaller picture.
        assert drawing.annotate(shown, face).getpixel(corner) != drawing.BOX_COLOUR
    small = io.BytesIO()
    picture.resize((400, 200)).save(small, "PNG")
    assert drawing.load_display_image(small.getvalue())[1] == 1.0
    # A 4000x2000 JPEG is decoded at half scale, as the server drafts it, not in full and then resized (5x slower).
    photo = io.BytesIO()
    picture.resize((4000, 2000)).save(photo, "JPEG")
    shown, scale = drawing.load_display_image(photo.getvalue())
    assert shown.size == (2000, 1000) and scale == 2.0


def test_the_ui_sends_no_analytics(monkeypatch, tmp_path):
    # Gradio turns its analytics on unless told otherwise; the environment must not be what turns them off here.
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    # Building the page caches copies of its examples: in this test's folder, not in the machine's /tmp/gradio.
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    from gradio_frontend import app  # here, not at the top: importing gradio takes seconds

    assert app.build_app("127.0.0.1:1").analytics_enabled is False


def test_a_killed_uis_folder_goes_at_the_next_start_even_when_its_pid_lives_again(tmp_path):
    # A UI restarted in the same container is PID 1 again: the pid in a folder's name says nothing. The lock does.
    import signal
    import subprocess
    import sys

    reused = tmp_path / f"{uploads.PREFIX}{os.getpid()}-killed_1"  # a live pid, nobody holds its lock
    reused.mkdir(mode=0o700)  # as mkdtemp makes it
    (reused / "abc").mkdir()
    (reused / "abc" / "face.jpg").write_bytes(b"a photo")
    alive = tmp_path / f"{uploads.PREFIX}1-alive_12"
    alive.mkdir(mode=0o700)
    # Folders that only look like ours stay: the user's own (a name of theirs after the prefix), or one of our
    # names that is not private (no mkdtemp made it).
    users = [tmp_path / f"{uploads.PREFIX}screenshots", tmp_path / f"{uploads.PREFIX}7-notes_ab"]
    for folder, mode in zip(users, (0o700, 0o755), strict=True):
        folder.mkdir(mode=mode)
        folder.chmod(mode)
        (folder / "notes.txt").write_text("mine")
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
        assert all((folder / "notes.txt").read_text() == "mine" for folder in users)
    finally:
        holder.kill()
        holder.wait()


def test_closed_and_idle_sessions_leave_the_ui_process_memory():
    # Gradio keeps a session's page (file name, answer, raw JSON) until 10,000 others push it out, and a closed tab's
    # State for an hour: the app drops both (gradio's own StateHolder, as launch() attaches it).
    import datetime

    from gradio.state_holder import StateHolder

    from gradio_frontend import app

    demo = app.build_app("127.0.0.1:1", "grpc")
    holder = StateHolder()
    holder.set_blocks(demo)
    for session in ("idle", "closed", "active"):
        holder[session]  # noqa: B018 - creates the session as a request would
    holder.time_last_used["idle"] -= datetime.timedelta(seconds=uploads.MAX_AGE_S + 1)
    holder.session_data["closed"].is_closed = True
    assert app.forget_sessions(demo) == 2
    assert list(holder.session_data) == ["active"] and list(holder.time_last_used) == ["active"]


def jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, "grey").save(buffer, "JPEG")
    return buffer.getvalue()


def stored_upload(folder, monkeypatch) -> dict:
    """A photo as Gradio stores an upload (``<hash>/<name>`` in the UI's private folder), and its event payload."""
    monkeypatch.setattr(uploads, "_folder", folder)
    monkeypatch.setattr(uploads, "_held", {})
    path = folder / "3f2a" / "me.jpg"
    path.parent.mkdir()
    path.write_bytes(jpeg())
    return {"path": str(path), "orig_name": "me.jpg"}


def test_a_copy_of_an_examples_bytes_is_deleted_like_any_upload(tmp_path, monkeypatch):
    # Gradio names an upload's folder by its bytes: a copy of an example lands beside the example's cached copy,
    # under the uploader's own name. Only the cached copy is public; the examples were kept by content, and the
    # red-team probe's john_doe_private.jpg stayed on disk, served, until the UI stopped.
    monkeypatch.setattr(uploads, "_folder", tmp_path)
    monkeypatch.setattr(uploads, "_held", {})
    monkeypatch.setattr(uploads, "_public", copy.copy(uploads._public))  # restored after the test
    example = tmp_path / "4985e8" / "grace_hopper.jpg"
    example.parent.mkdir()
    example.write_bytes(jpeg())
    uploads.mark_public(example)
    twin = example.with_name("john_doe_private.jpg")
    twin.write_bytes(example.read_bytes())
    assert handler.take_photo({"path": str(twin), "orig_name": twin.name}, None).data == example.read_bytes()
    assert not twin.exists() and example.exists()  # the example stays for the next click
    twin.write_bytes(example.read_bytes())  # and the sweeper, which the answer's deletion does not need, agrees
    for path in (example, twin):
        os.utime(path, (time.time() - 120, time.time() - 120))
    assert uploads.sweep(60) == 1 and not twin.exists() and example.exists()


def test_two_sessions_that_upload_the_same_photo_are_both_answered(tmp_path, monkeypatch):
    # Gradio stores an upload at <hash of its bytes>/<name>: the same photo under the same name from two sessions is
    # one file, and the first session answered deleted it under the other ("The photo is no longer stored").
    payload = stored_upload(tmp_path, monkeypatch)
    shared = Path(payload["path"])
    first = handler.take_photo(payload, None)
    assert not shared.exists()  # off the disk at once, as before
    second = handler.take_photo(payload, None)
    assert second is not None and second.data == first.data
    # Held for a minute only: after that (the sweeper's turn) the page says the photo is gone.
    uploads.sweep(0)
    with pytest.raises(FileNotFoundError):
        handler.take_photo(payload, None)


def test_an_inline_photo_is_never_taken_for_the_one_the_session_kept():
    # Inline (webcam or pasted) photos have no path, and the kept one's key was None too: the session's previous
    # inline photo was analysed again instead of the new one.
    import base64

    first, second = jpeg((64, 48)), jpeg((48, 64))
    kept = handler.take_photo({"url": "data:image/jpeg;base64," + base64.b64encode(first).decode()}, None)
    new = handler.take_photo({"url": "data:image/jpeg;base64," + base64.b64encode(second).decode()}, kept)
    assert kept.data == first and new.data == second


def test_an_inline_photo_over_the_limit_is_refused_before_it_is_decoded(monkeypatch):
    # The red-team probe's 200 MB data URL took the UI to 1.25 GB: decoded first, refused after.
    import base64

    decoded, real = [], base64.b64decode
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: decoded.append(1) or real(*a, **k))
    for size in (upload.MAX_BYTES - 1, upload.MAX_BYTES):  # base64 ends in "=" and in none: the size is exact
        photo = handler.take_photo({"url": "data:image/jpeg;base64," + base64.b64encode(bytes(size)).decode()}, None)
        assert photo.refused is None and len(photo.data) == size
    over = handler.take_photo({"url": "data:image/png;base64," + "A" * (4 * (upload.MAX_BYTES // 3 + 1))}, None)
    assert over.refused is not None and over.data == b"" and len(decoded) == 2
    image, status, raw, rows = handler.analyse(backend.TritonBackend("127.0.0.1:1", "grpc"), over, True, True)
    assert image is None and rows == [] and raw["error_kind"] == "invalid_image"
    assert status == f"**The image was rejected**: image: {upload.too_large(upload.MAX_BYTES + 2)}"
    assert "the limit is 10 MiB" in status


def test_a_request_body_over_the_limit_gets_413_before_the_app_reads_it():
    # Declared or streamed (chunked); Gradio's upload route bounds its files itself (max_file_size).
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from gradio_frontend.body_limit import BodyLimit

    async def echo(request):
        return JSONResponse({"read": len(await request.body())})

    routes = [Route(path, echo, methods=["POST"]) for path in ("/gradio_api/queue/join", "/gradio_api/upload")]
    client = TestClient(Starlette(routes=routes, middleware=[Middleware(BodyLimit, max_bytes=1000)]))
    assert client.post("/gradio_api/queue/join", content=b"x" * 1000).json() == {"read": 1000}
    for body in (b"x" * 1001, iter([b"x" * 600] * 2)):  # with a content-length; chunked
        refused = client.post("/gradio_api/queue/join", content=body)
        assert refused.status_code == 413 and "larger than 0 MiB" in refused.json()["error"]
    assert client.post("/gradio_api/upload", content=b"x" * 5000).json() == {"read": 5000}


def test_a_truncated_upload_is_rejected_with_the_apps_message():
    # Cut in its header, PIL fails while opening it ("Truncated File Read"): the handler raised, the page showed a
    # bare "Error", and the next Estimate said the photo was no longer stored.
    photo = handler.Photo(jpeg()[:200], "cut.jpg")
    image, status, raw, rows = handler.analyse(backend.TritonBackend("127.0.0.1:1", "grpc"), photo, True, True)
    assert image is None and rows == [] and raw["error_kind"] == "invalid_image"
    assert status.startswith("**The image was rejected**: cut.jpg: The file is truncated")


def test_an_unforeseen_failure_shows_a_status_and_the_session_keeps_the_photo(tmp_path, monkeypatch):
    payload = stored_upload(tmp_path, monkeypatch)
    upload_path = Path(payload["path"])

    def broken(data):
        raise RuntimeError("a bug")

    monkeypatch.setattr(handler, "load_display_image", broken)  # as analyse looks it up
    triton = backend.TritonBackend("127.0.0.1:1", "grpc")
    image, status, raw, rows, kept = handler.handle(triton, payload, True, True, None)
    failed = {"error": "RuntimeError", "error_kind": "internal"}
    assert (image, status, raw, rows) == (None, handler.MSG_FAILED, failed, [])
    assert kept is not None and kept.name == "me.jpg" and not upload_path.exists()
    uploads.sweep(0)  # only the session's copy is left
    # Estimate again: the same photo from the session, the same status (not "no longer stored").
    assert handler.handle(triton, payload, True, True, kept)[1:] == (status, raw, rows, kept)


def test_a_socket_error_the_client_lets_through_still_reads_unreachable():
    class Dropped(backend.TritonBackend):
        """A connection that breaks under the client in a way it does not translate (a raw OSError)."""

        def predict(self, image, *, detect):
            raise ConnectionResetError(104, "Connection reset by peer")

    photo = handler.Photo(jpeg(), "me.jpg")
    image, status, raw, rows = handler.analyse(Dropped("127.0.0.1:1", "grpc"), photo, True, False)
    assert image is not None and rows == [] and raw["error_kind"] == "server_unavailable"
    assert status.startswith("**Triton server is unreachable** at `127.0.0.1:1` (grpc)")
    # The client's advice names the CLI's --url; the page's own setting is --triton-url.
    assert "--triton-url / TRITON_URL" in raw["error"] and "pass --url" not in raw["error"]
    assert "pass --url" not in backend.TritonBackend("127.0.0.1:1", "grpc", timeout=2).health_markdown()


def test_a_face_too_small_to_estimate_is_shown_found_with_its_box_not_rejected():
    # The single-face path answers such a face found, with its box and score and why there are no numbers.
    message = "The face is 31 px across in the photo; an estimate needs at least 32 px"
    tiny = FaceResult(None, None, None, True, (100.0, 100.0, 131.0, 131.0), 0.55, message, None)

    class Small(backend.TritonBackend):
        def predict(self, image, *, detect):
            return tiny

    photo = handler.Photo(jpeg((200, 200)), "me.jpg")
    image, status, raw, rows = handler.analyse(Small("127.0.0.1:1", "grpc"), photo, True, False)
    assert status == f"**Face found, too small to estimate**: {message}"
    assert raw["face_found"] and raw["box"] == [100.0, 100.0, 131.0, 131.0] and raw["error"] == message
    assert image.getpixel((130, 130)) == drawing.BOX_COLOUR and results.summary(tiny) == "too small to estimate"


def test_a_restart_of_triton_reads_as_a_restart_not_as_unreachable():
    from tritonclient.utils import InferenceServerException

    from client.errors import translate

    triton = backend.TritonBackend("127.0.0.1:1", "grpc")
    from common.contract import RESTARTING

    said = InferenceServerException(RESTARTING, status="503")
    status, raw = backend.request_failed(triton, translate(said, url="127.0.0.1:1", protocol="http"))
    assert status.startswith("**Triton is restarting** at `127.0.0.1:1` (grpc) after a crash")
    assert raw["error_kind"] == "server_unavailable" and "unreachable" not in status


def test_a_busy_gate_reads_as_busy_not_as_unreachable():
    from tritonclient.utils import InferenceServerException

    from client.errors import translate
    from common.contract import BUSY

    triton = backend.TritonBackend("127.0.0.1:1", "grpc")
    said = InferenceServerException(f"{BUSY} (520 MiB); retry in a second", status="StatusCode.UNAVAILABLE")
    status, raw = backend.request_failed(triton, translate(said, url="127.0.0.1:1", protocol="grpc"))
    assert status.startswith("**Triton is busy** at `127.0.0.1:1` (grpc)")
    assert raw["error_kind"] == "server_unavailable" and "unreachable" not in status


def test_a_timeout_setting_that_is_not_a_number_stops_the_start_with_one_line(monkeypatch):
    # Read when the settings module loads (TRITON_TIMEOUT, GRADIO_HEALTH_POLL): a traceback before.
    monkeypatch.setenv("TRITON_TIMEOUT", "abc")
    with pytest.raises(SystemExit) as stop:
        settings._seconds("TRITON_TIMEOUT", "15")
    assert str(stop.value) == "error: TRITON_TIMEOUT='abc' is not a number of seconds"
    monkeypatch.setenv("TRITON_TIMEOUT", "2.5")
    assert settings._seconds("TRITON_TIMEOUT", "15") == 2.5


def test_the_default_url_follows_the_protocol_and_port_settings():
    # It was localhost:8001 whatever TRITON_PROTOCOL and TRITON_*_PORT said; now as the client chooses it.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_")}
    # One child: the settings module is reloaded under each setting, then the command line is read with none set.
    # --protocol picks the port too (the flag, not only $TRITON_PROTOCOL).
    code = """if True:
        import importlib, os
        from gradio_frontend import settings
        for case in ({"TRITON_PROTOCOL": "http", "TRITON_HTTP_PORT": "18123"}, {"TRITON_GRPC_PORT": "18124"}, {}):
            for name in ("TRITON_PROTOCOL", "TRITON_HTTP_PORT", "TRITON_GRPC_PORT"):
                os.environ.pop(name, None)
            os.environ.update(case)
            importlib.reload(settings)
            print(settings.DEFAULT_PROTOCOL, settings.DEFAULT_TRITON_URL)
        from gradio_frontend.__main__ import parse_args, uploads
        uploads.remove()
        for argv in (["--protocol", "http"], [], ["--triton-url", "h:1"]):
            print(parse_args(argv).triton_url, end=" ")
    """
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines()[:3] == ["http localhost:18123", "grpc localhost:18124", "grpc localhost:8001"], (
        proc.stdout,
        proc.stderr[-2000:],
    )
    assert proc.stdout.splitlines()[3].split() == ["localhost:8000", "localhost:8001", "h:1"], proc.stderr[-2000:]

"""The Gradio UI in a real headless Chromium, against a real Triton (the shared ``triton_tiny`` server).

The UI runs as its own process through its CLI (``python -m gradio_frontend``), exactly as users start
it. Chromium comes from Debian's ``chromium`` package, installed by ``make setup`` (Playwright's own browser
download needs the internet); without it these tests are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from serving.runtime.launch import free_port
from serving.runtime.subproc import stop_process
from tests.conftest import selected

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "gradio_frontend" / "examples"
PORTRAIT = EXAMPLES / "grace_hopper.jpg"
NO_FACE = EXAMPLES / "no_face_landscape.jpg"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# "age ~34 (27–41), female (87%)": the 80% interval shows only when the age model gives one.
SUMMARY = re.compile(r"age ~(\d+)(?: \((\d+)\u2013(\d+)\))?, (female|male) \((\d+)%\)")
#: Where the tests leave screenshots of the page, to look at after a run (not committed).
SCREENSHOTS = Path(os.environ.get("UI_SCREENSHOTS", "/tmp/agegender-ui-screenshots"))
SCREENSHOTS.mkdir(parents=True, exist_ok=True)
# Generous: the CPU-only Triton shares the machine with the test run, and the first request warms TF up.
RESULT_TIMEOUT_MS = 90_000


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    # Setup belongs in `make setup`, not here: a test never installs system packages.
    path = _find_chromium()
    if path is None:
        pytest.skip("no chromium binary: `make setup` installs Debian's chromium and chromium-driver (needs root)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: make setup")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    yield pg
    context.close()


class UIProcess:
    """``python -m gradio_frontend`` on a free port, started now; :meth:`ready` waits until it answers.

    ``temp_dir``: the parent of the UI's private upload folder (``$GRADIO_TEMP_DIR``), to look into.
    """

    def __init__(self, triton_url: str, protocol: str = "grpc", timeout: float = 10.0, temp_dir: Path | None = None):
        port = free_port()
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT))
        env.pop("TRITON_URL", None)
        if temp_dir is not None:
            env["GRADIO_TEMP_DIR"] = str(temp_dir)
        cmd = [
            sys.executable,
            "-m",
            "gradio_frontend",
            "--triton-url",
            triton_url,
            "--protocol",
            protocol,
            "--port",
            str(port),
            "--timeout",
            str(timeout),
        ]
        # The UI's output goes to a file, not a pipe: nothing reads a pipe while the tests run, and a full one would
        # block the UI on its next log line. A failed expectation shows the file's end (status_text).
        self.log = Path(tempfile.mkstemp(prefix="agegender-ui-", suffix=".log")[1])
        self.url = f"http://127.0.0.1:{port}/"
        UI_LOGS[self.url] = self.log
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        self.deadline = time.monotonic() + 120

    def ready(self) -> str:
        """The base URL, once the UI answers there."""
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gradio_frontend exited with {self.proc.returncode}:\n{ui_log(self.url)}")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return self.url
            except OSError:
                if time.monotonic() > self.deadline:
                    raise RuntimeError("gradio_frontend did not answer within 120 s") from None
                time.sleep(0.5)

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)
        UI_LOGS.pop(self.url, None)
        self.log.unlink(missing_ok=True)

    close = stop  # contextlib.closing


#: The log file of each running UI, by its base URL.
UI_LOGS: dict[str, Path] = {}


def ui_log(url: str, chars: int = 3000) -> str:
    """The end of the log of the UI serving ``url`` (a page's URL under it will do)."""
    log = next((path for base, path in UI_LOGS.items() if url.startswith(base)), None)
    return log.read_text(errors="replace")[-chars:] if log is not None and log.exists() else "(no UI log)"


class TcpRelay:
    """Forwards a local port to Triton's; starting it later plays "Triton came back" without a second server."""

    def __init__(self, listen_port: int, target: tuple[str, int]) -> None:
        self.listen_port, self.target = listen_port, target
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.listen_port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        for s in [self._server, *self._sockets]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


def open_ui(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    page.locator("#input-image input[type=file]").wait_for(state="attached", timeout=60_000)
    # The page is live once its load event has been answered: the server line then says where Triton is. A click
    # before that could land on a page that has rendered but not yet wired its events.
    expect(page.locator("#server-status")).to_contain_text("Triton at", timeout=60_000)


def upload(page, path: Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))


def status_text(page, expected: str) -> str:
    from playwright.sync_api import expect

    status = page.locator("#status")
    try:
        expect(status).to_contain_text(expected, timeout=RESULT_TIMEOUT_MS)
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- the UI's log ---\n{ui_log(page.url)}") from None
    return status.inner_text()


class SharedUI:
    """The module's one UI on ``triton_tiny`` (a UI takes seconds to start), its upload folder's parent
    ``temp_dir``; :meth:`stop` ends it (test_no_copy_of_an_upload_remains), and :meth:`running` starts it
    (again)."""

    def __init__(self, triton_url: str, temp_dir: Path) -> None:
        self.triton_url, self.temp_dir = triton_url, temp_dir
        self._ui: UIProcess | None = None

    def running(self) -> str:
        if self._ui is None:
            self._ui = UIProcess(self.triton_url, temp_dir=self.temp_dir)
            try:
                self._ui.ready()
            except BaseException:
                self.stop()  # the next test starts another
                raise
        return self._ui.url

    def stop(self) -> None:
        if self._ui is not None:
            ui, self._ui = self._ui, None
            ui.stop()


@pytest.fixture(scope="module")
def shared_ui(triton_tiny, tmp_path_factory):
    ui = SharedUI(triton_tiny.grpc_url, tmp_path_factory.mktemp("ui-temp"))
    try:
        yield ui
    finally:
        ui.stop()


@pytest.fixture
def live_ui(shared_ui) -> str:
    return shared_ui.running()


def test_portrait_shows_age_gender_and_box(page, live_ui, triton_tiny):
    from client import AgeGenderClient

    open_ui(page, live_ui)
    page.locator("#all-faces input").uncheck()  # the single-face mode, as the ensemble computes it
    upload(page, PORTRAIT)
    text = status_text(page, "age ~")
    match = SUMMARY.search(text)
    assert match, f"no 'age ~N (low–high), gender (p%)' in {text!r}"
    age, gender, percent = int(match[1]), match[4], int(match[5])
    # The page must show what the server computed, not something of its own.
    with AgeGenderClient(triton_tiny.grpc_url, protocol="grpc", timeout=60) as client:
        expected = client.predict(PORTRAIT)
    assert expected.face_found
    assert age == round(expected.age)
    # The tiny age model has an interval: it is shown, in whole years, as the client got it.
    assert match[2] is not None, text
    assert (int(match[2]), int(match[3])) == (round(expected.age_low), round(expected.age_high))
    assert gender == expected.gender
    shown_p = expected.female_probability if gender == "female" else 1 - expected.female_probability
    assert abs(percent - 100 * shown_p) <= 1
    # The annotated copy is rendered and the raw JSON carries the box.
    page.locator("#annotated img").first.wait_for(state="visible", timeout=30_000)
    raw = page.locator("#raw-json").inner_text()
    assert "face_found" in raw and "box" in raw
    # Single-face mode has no table: nothing empty is left on the page.
    assert page.locator("#faces-table").is_hidden()


def test_a_text_file_named_jpg_gets_the_apps_message(page, live_ui, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a JPEG")
    open_ui(page, live_ui)
    upload(page, fake)
    text = status_text(page, "The image was rejected")
    assert "notes.jpg: The file is not a recognised image" in text
    # Gradio's own failure shows bare "Error" toasts and badges; the app's answer replaces them.
    assert page.get_by_text("Error", exact=True).count() == 0
    assert page.locator("#faces-table").is_hidden()
    page.screenshot(path=str(SCREENSHOTS / "ui_bad_file.png"), full_page=True)


def test_no_face_message(page, live_ui):
    open_ui(page, live_ui)
    upload(page, NO_FACE)
    text = status_text(page, "No face found")
    assert "age ~" not in text


def test_example_click_runs_inference(page, live_ui):
    open_ui(page, live_ui)
    # First row of Gradio's examples table is the portrait; clicking it fills the input and runs it.
    page.locator("[data-testid='dataset-cell-0-0']").click()
    assert SUMMARY.search(status_text(page, "age ~"))


@pytest.fixture(scope="module", autouse=True)
def down_ui(request):
    """The UI of test_server_down_then_recovers, on a port where nothing listens yet, and that port: started with
    the module's first test when that test is selected (a UI takes seconds to start), None otherwise."""
    if not selected(request, ("test_server_down_then_recovers",)):
        yield None
        return
    dead_port = free_port()
    ui = UIProcess(f"127.0.0.1:{dead_port}", timeout=5)
    try:
        yield ui, dead_port
    finally:
        ui.stop()


def test_server_down_then_recovers(page, triton_tiny, down_ui):
    grpc_port = int(triton_tiny.grpc_url.rsplit(":", 1)[1])
    ui, dead_port = down_ui
    relay = TcpRelay(dead_port, ("127.0.0.1", grpc_port))
    with contextlib.closing(ui):
        url = ui.ready()
        open_ui(page, url)
        upload(page, PORTRAIT)
        text = status_text(page, "unreachable")
        assert f"127.0.0.1:{dead_port}" in text
        # The page stays usable: the server status line reports the outage too.
        page.locator("#check-server").click()
        from playwright.sync_api import expect

        expect(page.locator("#server-status")).to_contain_text("unreachable", timeout=30_000)

        relay.start()  # "Triton is back": same address, now answering
        try:
            page.locator("#estimate").click()
            assert SUMMARY.search(status_text(page, "age ~"))
        finally:
            relay.stop()


def test_group_photo_shows_every_face(page, live_ui, triton_tiny, tmp_path):
    import io

    from PIL import Image

    from tests.composites import grid

    group = tmp_path / "group.png"
    grid(1, 3, cell=200).save(group)
    open_ui(page, live_ui)
    upload(page, group)
    text = status_text(page, "3 faces found")
    assert all(f"#{k}: age ~" in text for k in (1, 2, 3))
    assert len(SUMMARY.findall(text)) == 3 and all(m[1] for m in SUMMARY.findall(text))  # each with its interval
    from playwright.sync_api import expect

    # Gradio's grid: data rows carry role=row and a data-index (the header row has none).
    rows = page.locator("#faces-table [role=row][data-index]")
    expect(rows).to_have_count(3, timeout=30_000)
    assert [rows.nth(k).locator("[role=gridcell], td").first.inner_text().strip() for k in range(3)] == ["1", "2", "3"]
    # Every header on one line: a header cell no taller than a one-line cell of the same row.
    headers = page.locator("#faces-table thead th, #faces-table [role=columnheader]")
    heights = [headers.nth(k).bounding_box()["height"] for k in range(headers.count())]
    assert heights and max(heights) < 1.6 * min(heights), heights
    page.screenshot(path=str(SCREENSHOTS / "ui_group.png"), full_page=True)
    # The boxes are drawn where the server found the faces: each box's left edge is in the box colour.
    img = page.locator("#annotated img").first
    img.wait_for(state="visible", timeout=30_000)
    src = img.get_attribute("src")
    with urllib.request.urlopen(src if src.startswith("http") else live_ui.rstrip("/") + "/" + src.lstrip("/")) as r:
        shown = Image.open(io.BytesIO(r.read())).convert("RGB")
    from client import AgeGenderClient

    with AgeGenderClient(triton_tiny.grpc_url, timeout=60) as client:
        faces = client.predict_faces(group)
    assert len(faces) == 3
    original = Image.open(group).convert("RGB")

    def edge_drawn(image, box) -> bool:
        # Rows along the box's left side where a pixel near the edge has the box's red (the image may be
        # re-encoded lossily on its way to the page, so no exact colour match).
        x0, y0, _, y1 = (round(v) for v in box)
        red = [
            any(r > 180 and g < 100 and b < 100 for r, g, b in (image.getpixel((x, y)) for x in range(x0 - 2, x0 + 4)))
            for y in range(y0 + 5, y1 - 5, 4)
        ]
        return sum(red) > 0.7 * len(red)

    assert all(edge_drawn(shown, face.box) for face in faces)
    assert not any(edge_drawn(original, face.box) for face in faces)


def test_the_ui_refuses_a_body_over_its_limit_from_the_declared_length(live_ui):
    # Wired into the launched UI (gradio_frontend/__main__.py), not only the class: the head alone is answered.
    from urllib.parse import urlsplit

    from gradio_frontend.body_limit import MAX_BODY_BYTES

    where = urlsplit(live_ui)
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(
            f"POST /gradio_api/queue/join HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY_BYTES + 1}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"send a smaller photo" in answer


def test_no_copy_of_an_upload_remains(page, shared_ui, tmp_path):
    """Uploads go to the UI's private folder, are deleted once answered, and the folder goes with the UI.

    The module's UI (last in the file: it is stopped here), whose upload folder the other tests used too."""
    url = shared_ui.running()
    temp = shared_ui.temp_dir
    photo = tmp_path / "private_portrait.jpg"
    photo.write_bytes(PORTRAIT.read_bytes() + b"\0unique")  # bytes no other file has (a JPEG ignores the tail)
    (folder,) = temp.iterdir()  # one private folder, only its owner can enter
    assert folder.name.startswith("agegender-ui-") and folder.stat().st_mode & 0o777 == 0o700
    open_ui(page, url)
    page.locator("#all-faces input").uncheck()
    upload(page, photo)
    assert SUMMARY.search(status_text(page, "age ~"))
    copies = [p for p in folder.rglob("*") if p.is_file() and p.read_bytes() == photo.read_bytes()]
    assert copies == [], "the upload is still on disk after its answer"
    # Estimate again: answered from the session's copy in memory, not from the deleted file.
    page.locator("#all-faces input").check()
    page.locator("#estimate").click()
    status_text(page, "1 face found")
    shared_ui.stop()
    assert list(temp.iterdir()) == [], "the upload folder outlived the UI"

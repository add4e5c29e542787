"""The client library and CLI, against real tritonserver processes (``tests/conftest.py`` fixtures)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageOps
from tritonclient.utils import InferenceServerException

from client import (
    RESULT_KEYS,
    AgeGenderClient,
    FaceResult,
    InferenceTimeoutError,
    InvalidImageError,
    ModelNotReadyError,
    ProtocolMismatchError,
    RateLimitedError,
    RequestTooLargeError,
    ServerError,
    ServerUnavailableError,
)
from client.errors import UnknownModelError, translate
from client.utils import encode_image
from common import contract
from serving.runtime.launch import TritonServer, free_port

ROOT = Path(__file__).resolve().parents[1]
GRACE = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # public domain portrait
GRACE_SIZE = Image.open(GRACE).size
PROTOCOLS = ("grpc", "http")
#: Where the age interval can lie: the age head's bins 0..116, each read as a year wide.
AGE_RANGE = (0.0, 116.5)
integration = pytest.mark.integration


def url_of(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def no_face_png() -> bytes:
    """A smooth gradient: decodes fine, has no face."""
    x = np.linspace(0, 255, 320, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([np.tile(x, (240, 1))] * 3, -1)).save(buf, "PNG")
    return buf.getvalue()


def assert_same(a: FaceResult, b: FaceResult) -> None:
    """Equal estimates (ignoring ``file``); floats compared loosely since batch composition may differ."""
    da, db = a.to_dict(), b.to_dict()
    for key in ("file",):
        da.pop(key), db.pop(key)
    for key, value in da.items():
        if isinstance(value, float):
            assert db[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
        elif isinstance(value, list):
            assert db[key] == pytest.approx(value, rel=1e-4, abs=1e-3), key
        else:
            assert db[key] == value, key


def assert_face(result: FaceResult) -> None:
    assert result.error is None
    assert result.face_found is True
    assert isinstance(result.age, float) and 0.0 <= result.age < 150.0
    # The tiny model's age head is the distributional one. Only the ends are compared: the mean of a skewed
    # distribution can lie outside its 10-90% interval.
    assert isinstance(result.age_low, float) and isinstance(result.age_high, float)
    assert AGE_RANGE[0] <= result.age_low <= result.age_high <= AGE_RANGE[1]
    assert result.age_interval == (result.age_low, result.age_high)
    assert result.gender in ("male", "female")
    assert 0.0 <= result.female_probability <= 1.0
    assert result.gender == contract.gender_label(result.female_probability)
    x0, y0, x1, y1 = result.box
    width, height = GRACE_SIZE
    assert 0 <= x0 < x1 <= width + 1 and 0 <= y0 < y1 <= height + 1
    assert 0.0 < result.detection_score <= 1.0


@pytest.fixture(scope="module")
def reference(triton_tiny) -> FaceResult:
    with AgeGenderClient(triton_tiny.grpc_url) as client:
        return client.predict(GRACE)


# -- against a real server -------------------------------------------------------------------------------


@integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_path_bytes_and_pil_agree_across_protocols(triton_tiny, reference, protocol):
    assert_face(reference)
    with AgeGenderClient(url_of(triton_tiny, protocol), protocol=protocol) as client:
        from_path = client.predict(GRACE)
        from_str = client.predict(str(GRACE))
        from_bytes = client.predict(GRACE.read_bytes())
        with Image.open(GRACE) as img:
            from_pil = client.predict(img)
    assert from_path.file == from_str.file == str(GRACE)
    assert from_bytes.file is None and from_pil.file is None
    for result in (from_path, from_str, from_bytes, from_pil):
        assert_face(result)
        assert_same(reference, result)


@integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predict_many_keeps_order_and_isolates_failures(triton_tiny, reference, protocol, tmp_path):
    with Image.open(GRACE) as img:
        flipped = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        flipped.load()
    with AgeGenderClient(url_of(triton_tiny, protocol), protocol=protocol) as client:
        single_flipped = client.predict(flipped)
        single_no_face = client.predict(no_face_png())
    assert single_no_face.face_found is False and single_no_face.error is None

    missing = tmp_path / "missing.jpg"
    images = [GRACE, b"certainly not an image " * 10, flipped, missing, no_face_png(), GRACE.read_bytes(), flipped]
    # Batches of two over three threads: several requests, one of which mixes a bad item with good ones.
    with AgeGenderClient(url_of(triton_tiny, protocol), protocol=protocol, max_batch=2, concurrency=3) as client:
        results = client.predict_many(images)

    assert len(results) == len(images)
    assert results[0].file == str(GRACE) and results[3].file == str(missing)
    assert_same(reference, results[0])
    assert_same(reference, results[5])
    assert_same(single_flipped, results[2])
    assert_same(single_flipped, results[6])
    assert_same(single_no_face, results[4])
    assert "not a recognised image" in results[1].error and results[1].face_found is False
    assert results[1].age is None and results[1].gender is None
    assert results[1].age_low is None and results[1].age_high is None and results[1].age_interval is None
    assert results[4].age_low is None and results[4].age_high is None  # no face
    assert "no such file" in results[3].error
    assert [r.error is None for r in results] == [True, False, True, False, True, True, True]


@integration
def test_predict_many_larger_than_server_batch_limit(triton_tiny, reference):
    # The ensembles accept at most 32 per request; the client must clamp max_batch to that, not fail.
    with AgeGenderClient(triton_tiny.grpc_url, max_batch=64, concurrency=1) as client:
        results = client.predict_many([no_face_png()] * 33 + [GRACE])
    assert len(results) == 34
    assert not any(r.face_found or r.error for r in results[:33])
    assert_same(reference, results[33])


@integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_detect_uses_the_whole_image_as_the_face(triton_tiny, protocol):
    with AgeGenderClient(url_of(triton_tiny, protocol), protocol=protocol) as client:
        detected = client.predict(no_face_png())
        crop = client.predict(no_face_png(), detect=False)
        many = client.predict_many([no_face_png(), b"garbage"], detect=False)
    assert detected.face_found is False and detected.age is None and detected.box is None
    assert detected.age_low is None and detected.age_high is None
    assert crop.face_found is True and crop.error is None
    assert crop.box == (0.0, 0.0, 320.0, 240.0)
    assert crop.detection_score is None  # no detector ran (NaN on the wire)
    assert isinstance(crop.age, float) and crop.gender in ("male", "female")
    assert crop.age_low is not None and crop.age_low <= crop.age_high
    assert_same(crop, many[0])
    assert many[1].error and not many[1].face_found


@integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predict_raises_on_undecodable_bytes(triton_tiny, protocol):
    with AgeGenderClient(url_of(triton_tiny, protocol), protocol=protocol) as client:
        with pytest.raises(InvalidImageError, match="not a recognised image"):
            client.predict(b"certainly not an image")
        # The client still works after a per-image failure.
        assert client.predict(GRACE).face_found


@integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_health(triton_tiny, protocol):
    with AgeGenderClient(url_of(triton_tiny, protocol), protocol=protocol) as client:
        health = client.health()
        assert client.wait_until_ready(timeout=5).ok
    assert health.live and health.ready and health.ok and health.error is None
    assert health.models == {contract.DETECT_ENSEMBLE: True, contract.CROP_ENSEMBLE: True}


@integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_the_server_does_not_serve_fails_at_once(triton_tiny, protocol):
    # The gate's "not a public model" was read as "not loaded yet": retried for the whole budget (15 s in the web
    # UI, which then said "Triton is starting") for a name that can never work.
    url = url_of(triton_tiny, protocol)
    with AgeGenderClient(url, protocol=protocol, model="no_such_model", retries=3, backoff=2.0) as client:
        start = time.monotonic()
        with pytest.raises(UnknownModelError, match="no_such_model.*not a public model") as info:
            client.predict(GRACE)
        with pytest.raises(UnknownModelError):
            client.predict_many([GRACE, GRACE])  # the whole call fails, not each image
        assert time.monotonic() - start < 2.0  # the first retry alone would have slept 2 s
        health = client.health()
    assert not info.value.retryable and "attempts" not in str(info.value)
    assert health.live and not health.ok and health.models["no_such_model"] is False


@integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_timeouts_are_reported_not_retried_and_harmless_to_the_server(triton_tiny, reference, protocol):
    url = url_of(triton_tiny, protocol)
    with AgeGenderClient(url, protocol=protocol, timeout=0.001, retries=5, backoff=2.0) as client:
        for _ in range(5):
            start = time.monotonic()
            with pytest.raises(InferenceTimeoutError, match="timeout"):
                client.predict(GRACE)
            assert time.monotonic() - start < 1.5  # a retry would have slept 2 s
    # Triton 2.51 segfaulted when gRPC deadlines cancelled in-flight requests; the client must not trigger that.
    time.sleep(2)
    with AgeGenderClient(url, protocol=protocol) as client:
        assert client.health().live
        assert_same(reference, client.predict(GRACE))


@integration
def test_http_client_is_safe_across_threads(triton_tiny, reference):
    results: list[FaceResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)
    with AgeGenderClient(triton_tiny.http_url, protocol="http") as client:

        def work() -> None:
            start.wait()
            try:
                for _ in range(3):
                    results.append(client.predict(GRACE))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        # predict_many on the same client from the main thread while the per-thread clients exist.
        assert_same(reference, client.predict_many([GRACE, GRACE])[1])
    assert errors == []
    assert len(results) == 24
    for result in results:
        assert_same(reference, result)


@integration
def test_retries_until_a_starting_server_is_ready(tiny_repo, reference):
    """A request sent before Triton is up succeeds once it has started (connection refused, then model loading)."""
    # Ports chosen here, not at start (0): the client must know its address before the server starts.
    server = TritonServer(tiny_repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    outcome: dict[str, object] = {}
    # Generous budget: under load the tiny repository takes about a minute to load.
    client = AgeGenderClient(server.grpc_url, retries=40, backoff=0.25, timeout=30)
    assert not client.health().live

    def call() -> None:
        try:
            outcome["result"] = client.predict(GRACE)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    with client:
        caller.start()
        time.sleep(1.0)
        # Started here, not in a helper thread: Triton gets SIGTERM when the thread that spawned it exits.
        with server:
            caller.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    assert_same(reference, outcome["result"])


#: The console command `make setup` installs ([project.scripts]); the CLI tests run it as users do.
AGEGENDER = Path(sys.executable).with_name("agegender")


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    # Nothing activated, no PYTHONPATH, another working directory: the installed command must find its package.
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_URL", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"
    run = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL, "text": True}
    proc = subprocess.run([str(AGEGENDER), *args], capture_output=True, timeout=120, cwd="/", env=env, **run)
    if stdin is not None:  # bytes in, text out
        proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


@integration
def test_cli_reads_a_photo_from_standard_input(triton_tiny, reference, tmp_path):
    # `curl -s URL | agegender -`: the photo's bytes, named "-" on its line, between files as given.
    proc = run_cli(str(GRACE), "-", "--url", triton_tiny.grpc_url, "--json", stdin=GRACE.read_bytes())
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(GRACE), "-"]
    assert lines[1]["age"] == pytest.approx(reference.age, rel=1e-4) and lines[1]["error"] is None
    # Nothing piped in, or more than the server accepts: that line's error, unsent; the other files still answered.
    for piped, error in ((b"", "standard input is empty"), (b"\0" * (10 * 2**20 + 1), "larger than the server")):
        proc = run_cli("-", str(GRACE), "--url", triton_tiny.grpc_url, "--json", stdin=piped)
        assert proc.returncode == 1, proc.stderr
        first, second = (json.loads(line) for line in proc.stdout.splitlines())
        assert first["file"] == "-" and error in first["error"] and second["error"] is None
    proc = run_cli("-", "-", "--url", triton_tiny.grpc_url, stdin=b"x")
    assert proc.returncode == 2 and "give it once" in proc.stderr


def test_cli_with_standard_input_closed_or_unreadable_says_so(tmp_path):
    # Closed by the shell (<&-): sys.stdin is None, and `-` read it as a traceback. Opened for writing only (0>file):
    # reading it fails, which is that line's error. Neither needs a server: nothing is sent.
    closed = subprocess.run(
        f"exec {AGEGENDER} - --url 127.0.0.1:1 <&-", shell=True, capture_output=True, text=True, timeout=60
    )
    assert closed.returncode == 2 and "pipe one in" in closed.stderr, closed.stderr
    unreadable = subprocess.run(
        f"exec {AGEGENDER} - --url 127.0.0.1:1 --json 0>{tmp_path / 'out'}",
        shell=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unreadable.returncode == 1, unreadable.stderr
    assert "could not be read" in json.loads(unreadable.stdout)["error"]


@integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cli_json_lines_with_a_bad_file(triton_tiny, reference, protocol, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a JPEG")
    missing = tmp_path / "missing.png"
    url = url_of(triton_tiny, protocol)
    proc = run_cli(str(GRACE), str(bad), str(missing), "--url", url, "--protocol", protocol, "--json")
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(GRACE), str(bad), str(missing)]
    for line in lines:
        assert tuple(line) == RESULT_KEYS
    ok, bad_line, missing_line = lines
    assert ok["error"] is None and ok["face_found"] is True
    assert ok["age"] == pytest.approx(reference.age, rel=1e-4)
    assert ok["age_low"] == pytest.approx(reference.age_low, rel=1e-4)
    assert ok["age_high"] == pytest.approx(reference.age_high, rel=1e-4)
    assert ok["gender"] == reference.gender
    assert ok["female_probability"] == pytest.approx(reference.female_probability, rel=1e-4)
    assert ok["box"] == pytest.approx(list(reference.box), abs=1e-3)
    assert "not a recognised image" in bad_line["error"] and bad_line["age"] is None
    assert bad_line["age_low"] is None and bad_line["age_high"] is None
    assert "no such file" in missing_line["error"]


@integration
def test_cli_human_output_and_success_exit_code(triton_tiny, reference, tmp_path):
    face = tmp_path / "face.png"
    face.write_bytes(no_face_png())
    proc = run_cli(str(GRACE), str(face), "--url", triton_tiny.grpc_url, "--no-detect", "--timeout", "30")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    # The estimate, then its 80% interval in whole years.
    pattern = rf"{re.escape(str(GRACE))}: age \d+\.\d \((\d+)-(\d+)\), (male|female) \(P\(female\)=[01]\.\d\d\)"
    match = re.match(pattern, first)
    assert match, first
    assert int(match[1]) <= int(match[2])
    assert re.match(rf"{re.escape(str(face))}: age \d+\.\d \(\d+-\d+\), ", second), second
    assert "box [0, 0, 320, 240]" in second


@integration
def test_tls_asked_of_a_plain_text_port_is_named_not_reported_down(triton_tiny):
    # A TLS handshake with a plain-text port read "Connection refused", as if nothing ran there.
    for scheme, address, plain in (("grpcs", triton_tiny.grpc_url, "grpc"), ("https", triton_tiny.http_url, "http")):
        with AgeGenderClient(f"{scheme}://{address}", retries=0, timeout=5) as client:
            assert f"without TLS, and this client asked for TLS: use {plain}://" in client.health().error
            with pytest.raises(ProtocolMismatchError, match="without TLS"):
                client.predict(GRACE)


@integration
def test_cli_prints_a_file_name_that_is_not_utf8_under_a_strict_utf8_console(triton_tiny, tmp_path):
    # A name with the byte 0xff reaches Python as a surrogate; a strict UTF-8 stdout (a desktop locale) raised on its
    # line, and the lines of the images after it were lost.
    odd = os.fsdecode(bytes(tmp_path) + b"/bad\xffname.jpg")
    Path(odd).write_bytes(GRACE.read_bytes())
    missing = os.fsdecode(bytes(tmp_path) + b"/gone\xff.jpg")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    args = [str(AGEGENDER), odd, missing, str(GRACE), "--url", triton_tiny.grpc_url, "--no-detect"]
    proc = subprocess.run(args, capture_output=True, timeout=120, env=env)
    lines = proc.stdout.decode().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode(), proc.stderr
    assert len(lines) == 3 and lines[0].startswith(f"{tmp_path}/bad\\udcffname.jpg: age ") and "gone" in lines[1]
    assert lines[2].startswith(f"{GRACE}: age ")


@integration
@pytest.mark.parametrize(("protocol", "port_of"), [("grpc", "http"), ("http", "grpc")])
def test_the_other_protocols_port_is_named_not_reported_down(triton_tiny, protocol, port_of):
    """A running server on the wrong port: the message says which protocol answers, and no retry waits."""
    url = url_of(triton_tiny, port_of)
    args = ["--protocol", protocol] if protocol == "http" else []  # gRPC is the CLI's default
    start = time.monotonic()
    proc = run_cli(str(GRACE), "--url", url, "--retries", "5", *args)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    answered, asked = ("HTTP", "gRPC") if protocol == "grpc" else ("gRPC", "HTTP")
    expected_port = 8001 if protocol == "grpc" else 8000
    expected = (
        f"{url} answers {answered}, not {asked}: use --protocol {port_of} (protocol='{port_of}'), or the server's "
        f"{asked} port ({expected_port} unless it was started on others)"
    )
    assert f"error: {expected}" in proc.stderr
    assert "is tritonserver running" not in proc.stderr and "attempts" not in proc.stderr
    assert took < 30  # five retries with the default backoff would sleep 15.5 s on top of start-up
    with AgeGenderClient(url, protocol=protocol, retries=0) as client:
        assert client.health().error.startswith(f"{url} answers {answered}")
        with pytest.raises(ProtocolMismatchError):
            client.wait_until_ready(timeout=5)
        with pytest.raises(ProtocolMismatchError):
            client.predict(GRACE)


# -- no server needed ------------------------------------------------------------------------------------


def test_python_m_client_without_its_dependencies_says_what_to_run():
    # -S: no site-packages, as with a system python that never had `make setup`.
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "client", str(GRACE)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert ".venv/bin/agegender" in line and "make setup" in line


def test_installed_command_needs_nothing_activated():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: agegender ")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreachable_server_fails_fast_with_a_useful_message(protocol):
    url = f"127.0.0.1:{free_port()}"
    with AgeGenderClient(url, protocol=protocol, retries=2, backoff=0.05, timeout=2) as client:
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError) as info:
            client.predict(GRACE)
        assert time.monotonic() - start < 5
        with pytest.raises(ServerUnavailableError):
            client.predict_many([GRACE, GRACE])
        health = client.health()
    message = str(info.value)
    assert url in message and "make serve" in message and "after 3 attempts" in message
    assert not health.live and not health.ok and "make serve" in health.error


def test_cli_exit_code_2_when_server_unreachable():
    url = f"127.0.0.1:{free_port()}"
    proc = run_cli(str(GRACE), "--url", url, "--json", "--retries", "0")
    assert proc.returncode == 2
    assert url in proc.stderr and "make serve" in proc.stderr
    (line,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert line["file"] == str(GRACE) and "make serve" in line["error"]


def test_invalid_images_are_rejected_before_any_request(tmp_path):
    # Nothing listens here: an InvalidImageError (not ServerUnavailableError) proves no request was sent.
    client = AgeGenderClient(f"127.0.0.1:{free_port()}", retries=0)
    empty = tmp_path / "empty.jpg"
    empty.touch()
    with client:
        with pytest.raises(InvalidImageError, match="no such file"):
            client.predict(tmp_path / "missing.jpg")
        with pytest.raises(InvalidImageError, match="empty"):
            client.predict(empty)
        with pytest.raises(InvalidImageError, match="is a directory"):
            client.predict(tmp_path)
        with pytest.raises(InvalidImageError, match="an empty file name"):  # it said ".: is a directory"
            client.predict("")
        # Neither read to its end (that never comes) nor opened (a pipe's open waits for a writer).
        pipe = tmp_path / "pipe.jpg"
        os.mkfifo(pipe)
        for special in ("/dev/zero", pipe):
            with pytest.raises(InvalidImageError, match="not a regular file"):
                client.predict(special)
        with pytest.raises(InvalidImageError, match="empty"):
            client.predict(b"")
        with pytest.raises(InvalidImageError, match="unsupported image type"):
            client.predict(12345)  # type: ignore[arg-type]


def server_sees(image, **kwargs) -> Image.Image:
    """The upright picture the server's decoder makes of what the client sends for ``image``."""
    from serving.pipeline.decode import decode_upload

    return decode_upload(encode_image(image, **kwargs)).image


def test_a_pil_images_exif_orientation_is_applied_once(tmp_path):
    # A 40x20 picture stored sideways (EXIF orientation 6: viewers turn it to 20x40), with its own size in the EXIF
    # as cameras write it.
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769).update({0xA002: 40, 0xA003: 20})
    path = tmp_path / "sideways.jpg"
    Image.new("RGB", (40, 20), "blue").save(path, exif=exif)
    with Image.open(path) as opened:
        assert server_sees(opened).size == (20, 40)  # as the file itself: the server turns it
        assert server_sees(opened, image_format="JPEG").size == (20, 40)
        # Converted or resized, the pixels are still as stored: the tag still applies (the common case).
        assert server_sees(opened.convert("RGB")).size == (20, 40)
        assert server_sees(opened.resize((80, 40))).size == (40, 80)
        # Turned by the caller already: PIL copies the file's EXIF along, and with it the server turned it again.
        assert server_sees(opened.transpose(Image.Transpose.ROTATE_270)).size == (20, 40)
        assert server_sees(opened.rotate(-90, expand=True)).size == (20, 40)
        assert server_sees(ImageOps.exif_transpose(opened)).size == (20, 40)


def test_arrays_must_be_uint8_grey_rgb_or_rgba():
    for array in (
        np.full((30, 40), 0.5, np.float32),  # PIL made it a black picture: no face, no error
        np.full((30, 40), 200, np.int32),  # a 16-bit picture
        np.zeros(40, np.uint8),  # a picture one pixel high
        np.zeros((30, 40, 2), np.uint8),
        np.zeros((0, 40, 3), np.uint8),
    ):
        with pytest.raises(InvalidImageError, match=r"uint8 array of shape HxW .*RGB order|no pixels"):
            encode_image(array)
    assert server_sees(np.full((30, 40, 1), 7, np.uint8)).getpixel((0, 0)) == (7, 7, 7)
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[..., 0] = 255
    assert server_sees(rgb).getpixel((0, 0)) == (255, 0, 0)  # the first channel is red
    # Transparent pixels are white in a JPEG too, as the server shows a transparent PNG (not black).
    rgba = np.zeros((30, 40, 4), np.uint8)
    for image_format in ("PNG", "JPEG"):
        assert min(server_sees(rgba, image_format=image_format).getpixel((5, 5))) > 250, image_format


def test_default_url_and_scheme(monkeypatch):
    monkeypatch.delenv("TRITON_URL", raising=False)
    monkeypatch.delenv("TRITON_GRPC_PORT", raising=False)
    monkeypatch.setenv("TRITON_HTTP_PORT", "18123")
    with AgeGenderClient() as grpc_client, AgeGenderClient(protocol="http") as http_client:
        assert (grpc_client.url, grpc_client.protocol) == ("localhost:8001", "grpc")
        assert (http_client.url, http_client.protocol) == ("localhost:18123", "http")
    monkeypatch.setenv("TRITON_URL", "http://example.invalid:9000/")
    with AgeGenderClient() as client:
        assert (client.url, client.protocol) == ("example.invalid:9000", "http")
    # A path goes with or without a scheme; IPv6 in brackets. The red-team probe's misreadings are refused: ftp://
    # was taken for gRPC, and ::1:8001 became [::0.1.128.1]:443.
    with AgeGenderClient("localhost:8001/v2") as a, AgeGenderClient("grpc://[::1]:8001/") as b:
        assert (a.url, b.url) == ("localhost:8001", "[::1]:8001")
    refused = (
        ("ftp://host:8001", "the scheme must be one of"),
        ("::1:8001", "IPv6 address in brackets"),
        ("http://[::1", "one pair of brackets"),  # a traceback from tritonclient at the first call
        ("[::1]]:8001", "one pair of brackets"),
        # gRPC took :83537 as port 18001 and answered from it; :99999 and :abc were tracebacks over HTTP.
        ("localhost:83537", "port must be a number from 1 to 65535"),
        ("http://localhost:99999", "port must be a number from 1 to 65535"),
        ("http://localhost:abc", "port must be a number from 1 to 65535"),
        ("localhost:0", "port must be a number from 1 to 65535"),
        ("localhost", "give the port"),  # gRPC went to 443, HTTP to 80
        (":8001", "no host"),
    )
    for url, message in refused:
        with pytest.raises(ValueError, match=message):
            AgeGenderClient(url)
    # TLS has its own port: https://host and grpcs://host mean 443.
    with AgeGenderClient("https://example.invalid") as tls, AgeGenderClient("grpcs://[::1]") as tls6:
        assert (tls.url, tls6.url) == ("example.invalid", "[::1]")
    monkeypatch.delenv("TRITON_URL")
    monkeypatch.setenv("TRITON_GRPC_PORT", "abc")
    with pytest.raises(ValueError, match="TRITON_GRPC_PORT='abc' is not a port number"):
        AgeGenderClient()


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf"), 1e12])
def test_a_timeout_is_a_number_of_seconds_up_to_a_day(timeout):
    # NaN and inf timed out at once ("within nan s", "Deadline Exceeded"); 1e12 overflowed gRPC's deadline.
    with pytest.raises(ValueError, match="timeout must be a number of seconds from 0 to 86400"):
        AgeGenderClient("localhost:1", timeout=timeout)


def test_waiting_for_a_server_that_is_not_there_says_so_once():
    # The message read "cannot reach Triton at ... (cannot reach Triton at ... (...))".
    with AgeGenderClient(f"127.0.0.1:{free_port()}", retries=0) as client:
        with pytest.raises(ServerUnavailableError) as raised:
            client.wait_until_ready(timeout=0.5, poll=0.1)
    assert str(raised.value).count("cannot reach Triton") == 1, raised.value


def test_health_after_close_says_so_and_does_not_raise():
    client = AgeGenderClient(f"127.0.0.1:{free_port()}")
    client.close()
    health = client.health()
    assert not health.ok and health.error == "the client is closed"


def test_results_serialise_to_the_documented_keys():
    result = FaceResult(
        31.5, "female", 0.9, True, (1.0, 2.0, 3.0, 4.0), 0.8, None, "a.jpg", age_low=26.4, age_high=38.6
    )
    as_json = json.loads(json.dumps(result.to_dict()))
    assert tuple(as_json) == RESULT_KEYS
    assert as_json["box"] == [1.0, 2.0, 3.0, 4.0] and as_json["gender"] == "female"
    assert (as_json["age_low"], as_json["age_high"]) == (26.4, 38.6)
    assert result.describe().startswith("a.jpg: age 31.5 (26-39), female")
    with pytest.raises(AttributeError):
        result.age = 3.0  # type: ignore[misc]
    # Without an interval (an age model with no distributional head): null in JSON, left out of the line.
    plain = FaceResult(31.5, "female", 0.9, True, None, None, None, "a.jpg")
    assert plain.to_dict()["age_low"] is None and plain.to_dict()["age_high"] is None
    assert plain.describe().startswith("a.jpg: age 31.5, female")


def test_parse_outputs_maps_nan_interval_to_none():
    from client.outputs import parse_outputs

    def batch(values, dtype=np.float32):
        return np.array(values, dtype=dtype).reshape(len(values), -1)

    nan = float("nan")
    outputs = {
        contract.ENSEMBLE_AGE: batch([40.0, 52.0, nan]),
        contract.ENSEMBLE_AGE_LOW: batch([31.0, nan, nan]),  # row 1: a model without an interval
        contract.ENSEMBLE_AGE_HIGH: batch([49.5, nan, nan]),
        contract.ENSEMBLE_FEMALE: batch([0.8, 0.3, nan]),
        contract.ENSEMBLE_GENDER: batch([b"female", b"male", b""], object),
        contract.ENSEMBLE_BOX: np.zeros((3, 4), np.float32),
        contract.ENSEMBLE_SCORE: batch([0.9, 0.9, nan]),
        contract.ENSEMBLE_FOUND: batch([True, True, False], bool),
        contract.ENSEMBLE_ERROR: batch([b"", b"", b""], object),
    }
    with_interval, without, no_face = parse_outputs(outputs, ["a", "b", "c"])
    assert (with_interval.age, with_interval.age_low, with_interval.age_high) == (40.0, 31.0, 49.5)
    assert without.age == 52.0 and without.age_low is None and without.age_high is None
    assert no_face.age is None and no_face.age_low is None and no_face.age_high is None


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServerUnavailableError),
        (
            "StatusCode.UNAVAILABLE",
            "Request for unknown model: 'age_gender' has no available versions",
            ModelNotReadyError,
        ),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", InferenceTimeoutError),
        # The door's own deadline: not retried, since the overloaded server would get the same work again.
        ("504", "no answer within 60 s: the server is overloaded", InferenceTimeoutError),
        ("408", "the request body did not arrive within 12 s", InferenceTimeoutError),  # the gate's upload deadline
        # The door's per-address limits: a pause helps, sending fewer images does not.
        ("429", "too many requests from your address (at most 128 at once)", RateLimitedError),
        ("StatusCode.RESOURCE_EXHAUSTED", "too many requests from your address", RateLimitedError),
        ("StatusCode.RESOURCE_EXHAUSTED", "Received message larger than max", RequestTooLargeError),
        ("400", "inference request batch-size must be <= 32 for 'age_gender'", RequestTooLargeError),
        ("400", "Request for unknown model: 'age_gender' is not found", ModelNotReadyError),
        # Triton's own while it loads: retried. The gate's and the door's for a model that is not public: not.
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'age_gender' is not found", ModelNotReadyError),
        ("StatusCode.NOT_FOUND", "model 'agegender' is not a public model (public: age_gender)", UnknownModelError),
        ("404", "not a public model, or not a public API of one (public models: age_gender)", UnknownModelError),
        ("503", "Server not ready", ServerUnavailableError),
        ("502", "Bad Gateway", ServerUnavailableError),  # the door lost Triton mid-request (a restart)
        # The door's while the launcher restarts a crashed Triton, and while it stops: retried, not "unreachable".
        ("StatusCode.UNAVAILABLE", contract.RESTARTING, ServerUnavailableError),
        ("503", contract.SHUTTING_DOWN, ServerUnavailableError),
        ("StatusCode.UNAVAILABLE", contract.BUSY, ServerUnavailableError),  # the gate's bytes held at once: busy
        ("400", "unexpected shape for input 'image'", ServerError),
        ("StatusCode.INTERNAL", "stub crashed", ServerError),
    ],
)
def test_triton_statuses_map_onto_the_hierarchy(status, message, expected):
    error = translate(InferenceServerException(message, status=status), url="h:1", protocol="grpc", model="m")
    assert type(error) is expected
    assert message in str(error)
    # "Cannot reach" only where nothing answered for the server: not for the door saying why it does not serve now.
    door_says_why = message in (contract.RESTARTING, contract.SHUTTING_DOWN, contract.BUSY)
    assert ("cannot reach" in str(error)) is (expected is ServerUnavailableError and not door_says_why)
    assert getattr(error, "restarting", False) is (message == contract.RESTARTING)
    assert getattr(error, "busy", False) is (message == contract.BUSY)
    assert error.retryable is (expected in (ServerUnavailableError, ModelNotReadyError, RateLimitedError))


def test_the_cli_refuses_every_face_of_an_image_that_is_one_face():
    # --all-faces ran detection anyway, so --no-detect was silently ignored.
    proc = run_cli(str(GRACE), "--all-faces", "--no-detect", "--url", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 2 and "--all-faces finds the faces" in proc.stderr and not proc.stdout


def test_a_too_large_request_gives_its_advice_once():
    door = InferenceServerException("request body larger than 68 MB; send fewer or smaller images", status="413")
    triton = InferenceServerException("Received message larger than max", status="StatusCode.RESOURCE_EXHAUSTED")
    for raised in (door, triton):
        message = str(translate(raised, url="h:1", protocol="http", model="m"))
        assert message.count("send fewer or smaller images") == 1, message


def test_grpc_timeout_counts_from_the_call_not_from_when_the_thread_runs_again():
    # On a busy machine the caller's thread may be descheduled while the answer arrives: an answer later than the
    # timeout is a timeout, even when it is already there by the time the thread waits for it.
    from client.transports import GrpcTransport

    class Late:
        def __init__(self, delay: float) -> None:
            self.delay = delay

        def async_infer(self, model, inputs, callback, outputs, client_timeout):
            time.sleep(self.delay)  # the answer comes in this thread, before infer() starts waiting

            class Result:
                def as_numpy(self, name):
                    return np.zeros((1, 1), np.float32)

            callback(Result(), None)

    # 0.5 s, and an answer a whole second late: wide margins, so a descheduled test thread cannot flip either case.
    transport = GrpcTransport("127.0.0.1:1", timeout=0.5, ssl=False, root_certificates=None)
    real = transport._client
    try:
        transport._client = Late(1.0)
        with pytest.raises(TimeoutError, match="no answer within 0.5 s"):
            transport.infer("m", "image", np.array([[b"x"]], dtype=np.object_), ["age"])
        transport._client = Late(0.0)
        assert transport.infer("m", "image", np.array([[b"x"]], dtype=np.object_), ["age"])["age"].shape == (1, 1)
    finally:
        transport._client = real
        transport.close()


def test_http_timeout_is_for_the_whole_call_not_each_socket_wait():
    # geventhttpclient's network_timeout bounds each wait on the socket; a descheduled caller finds the late answer
    # already there and never waits. The call as a whole must still count as timed out.
    from client.transports import HttpTransport

    class Late:
        def __init__(self, delay: float) -> None:
            self.delay = delay

        def infer(self, model, inputs, outputs):
            time.sleep(self.delay)

            class Result:
                def as_numpy(self, name):
                    return np.zeros((1, 1), np.float32)

            return Result()

    # 0.5 s, and an answer a whole second late: wide margins, so a descheduled test thread cannot flip either case.
    transport = HttpTransport("127.0.0.1:1", timeout=0.5, ssl=False, root_certificates=None)
    try:
        transport._new_client = lambda: Late(1.0)
        with pytest.raises(TimeoutError, match="no answer within 0.5 s"):
            transport.infer("m", "image", np.array([[b"x"]], dtype=np.object_), ["age"])
        transport.close()  # the lane's client was made already: new lanes, new clients
        transport._new_client = lambda: Late(0.0)
        assert transport.infer("m", "image", np.array([[b"x"]], dtype=np.object_), ["age"])["age"].shape == (1, 1)
    finally:
        transport.close()


@integration
def test_http_calls_from_many_threads_hold_a_bounded_number_of_files_and_close_frees_them(triton_tiny):
    # tritonclient.http gives every thread that calls it a gevent hub whose descriptors outlive the thread: a
    # thread per request once added 4 descriptors a thread for good (SIGABRT, or a CLI spinning at `ulimit -n`).
    from client import transports

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_files()
    with AgeGenderClient(triton_tiny.http_url, protocol="http") as client:
        for _ in range(4):  # 4 x 40 short-lived threads, 40 at a time
            threads = [threading.Thread(target=client.health) for _ in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
        assert client.health().live
        assert open_files() - before <= transports._FDS_PER_LANE * transports.HTTP_LANES // 2
    assert open_files() <= before + 2  # close() ended the lanes, their connections and their event loops


# -- splitting a rejected batch, with a fake transport (no server) ---------------------------------------------


class FakeTransport:
    """Answers ``infer`` with an age per image from ``ages`` (keyed by the image's bytes), or raises what
    ``reject(blobs)`` returns for the whole request; records each request's images."""

    errors = (InferenceServerException, OSError)

    def __init__(self, ages: dict[bytes, float], reject) -> None:
        self.ages, self.reject, self.calls = ages, reject, []

    def max_batch_size(self, model: str) -> int:
        return 0  # config not readable: the client relies on max_batch and splits on rejection

    def infer(self, model, input_name, batch, outputs):
        blobs = [row[0] for row in batch]
        self.calls.append(blobs)
        if (error := self.reject(blobs)) is not None:
            raise error
        n = len(blobs)
        return {
            contract.ENSEMBLE_AGE: np.array([[self.ages[b]] for b in blobs], np.float32),
            contract.ENSEMBLE_FEMALE: np.full((n, 1), 0.8, np.float32),
            contract.ENSEMBLE_GENDER: np.full((n, 1), b"female", np.object_),
            contract.ENSEMBLE_FOUND: np.ones((n, 1), bool),
            contract.ENSEMBLE_ERROR: np.full((n, 1), b"", np.object_),
        }

    def close(self) -> None:
        pass


AGES = {b"a": 11.0, b"b": 22.0, b"c": 33.0, b"d": 44.0, b"e": 55.0}


def fake_client(monkeypatch, reject, **kwargs) -> tuple[AgeGenderClient, FakeTransport]:
    from client import transports

    fake = FakeTransport(AGES, reject)
    monkeypatch.setitem(transports.TRANSPORTS, "http", lambda *args, **kw: fake)
    return AgeGenderClient("127.0.0.1:1", protocol="http", **kwargs), fake


@pytest.mark.parametrize(
    "error",
    [
        InferenceServerException("unexpected shape for input 'image'", status="400"),  # ServerError
        # RequestTooLargeError: one image too big for the message limit.
        InferenceServerException("Received message larger than max", status="StatusCode.RESOURCE_EXHAUSTED"),
        InvalidImageError("the server cannot decode this image"),  # raised as is: the client's own error type
    ],
)
def test_a_batch_rejected_for_one_image_is_halved_until_that_image_alone_fails(monkeypatch, error):
    client, fake = fake_client(monkeypatch, lambda blobs: error if b"c" in blobs else None, retries=0)
    with client:
        results = client.predict_many(list(AGES))
    assert [r.age for r in results] == [11.0, 22.0, None, 44.0, 55.0]
    assert [r.error is None for r in results] == [True, True, False, True, True]
    assert results[2].face_found is False
    detail = error.message() if isinstance(error, InferenceServerException) else str(error)
    assert detail in results[2].error
    # abcde rejected -> ab | cde; cde rejected -> c | de: c alone carries the error.
    assert fake.calls == [list(AGES), [b"a", b"b"], [b"c", b"d", b"e"], [b"c"], [b"d", b"e"]]


def test_a_batch_over_the_servers_limit_is_split_until_it_fits(monkeypatch):
    too_large = InferenceServerException("inference request batch-size must be <= 2 for 'age_gender'", status="400")
    client, fake = fake_client(monkeypatch, lambda blobs: too_large if len(blobs) > 2 else None, retries=0)
    with client:
        results = client.predict_many(list(AGES))
    assert [r.age for r in results] == list(AGES.values()) and all(r.error is None for r in results)
    assert [len(call) for call in fake.calls] == [5, 2, 3, 1, 2]  # 5 -> 2 + 3, 3 -> 1 + 2


@pytest.mark.parametrize(
    ("error", "message", "attempts"),
    [
        (TimeoutError("no answer within 10 s"), "timed out", 1),  # a timeout is never sent again
        (InferenceServerException("too many requests", status="429"), "limiting requests", 3),  # retried whole
    ],
)
def test_a_timeout_or_rate_limit_fails_its_whole_chunk_without_splitting(monkeypatch, error, message, attempts):
    monkeypatch.setattr("client.client.RETRY_AFTER_S", 0.0)  # the rate limit's pause, not what is tested here
    # Two images a request: chunks ab, cd and e, each its own request; only the one with c fails.
    client, fake = fake_client(
        monkeypatch, lambda blobs: error if b"c" in blobs else None, retries=2, backoff=0.0, max_batch=2
    )
    with client:
        results = client.predict_many(list(AGES))
    assert [r.age for r in results] == [11.0, 22.0, None, None, 55.0]
    assert [r.error is None for r in results] == [True, True, False, False, True]
    assert message in results[2].error and message in results[3].error
    assert [call for call in fake.calls if b"c" in call] == [[b"c", b"d"]] * attempts


def test_a_rate_limited_or_slow_batch_size_question_fails_no_image_and_is_asked_again(monkeypatch):
    # predict_many first asks the server how many images a request may carry; a 429 there raised out of
    # predict_many (every image lost) and a timeout was kept as "unknown" for the client's life.
    monkeypatch.setattr("client.client.RETRY_AFTER_S", 0.0)
    client, fake = fake_client(monkeypatch, lambda blobs: None, retries=0, max_batch=5)
    answers = iter([InferenceServerException("too many requests", status="429"), TimeoutError("slow"), 2])

    def max_batch_size(model):
        answer = next(answers)  # a fourth question would raise StopIteration
        if isinstance(answer, BaseException):
            raise answer
        return answer

    fake.max_batch_size = max_batch_size
    with client:
        for _ in range(4):
            assert [r.age for r in client.predict_many(list(AGES))] == list(AGES.values())
    # The client's own 5 while the server does not say; its 2 once it did, kept without asking again.
    assert [len(call) for call in fake.calls] == [5, 5, 2, 2, 1, 2, 2, 1]


@pytest.mark.parametrize(("protocol", "signals"), [("http", 1), ("http", 2), ("grpc", 2)])
def test_ctrl_c_prints_one_line_however_often_it_is_pressed(protocol, signals):
    """Against a server that accepts and never answers: over HTTP gevent's hub printed "KeyboardInterrupt" and a
    timestamp above the CLI's line, and a second Ctrl-C while the client closed printed a traceback."""
    import signal
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    cmd = [sys.executable, "-m", "client", str(GRACE), "--url", f"127.0.0.1:{port}", "--protocol", protocol]
    # A test run started as a shell's background job ignores SIGINT, and a child inherits that (Python then keeps
    # ignoring it): the default restored, as in a terminal.
    default = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen([*cmd, "--timeout", "60"], cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=default)
    try:
        listener.settimeout(60)
        held, _ = listener.accept()  # the request is on its way and waits for an answer that never comes
        time.sleep(0.3)
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
        held.close()
    finally:
        proc.kill()
        listener.close()
    assert proc.returncode == 130 and err == "interrupted\n", (proc.returncode, err[-2000:])


def test_a_32_bit_grey_image_of_8_bit_values_reaches_the_server_as_it_looks():
    # convert("I") of a grey picture: saved as is, a 16-bit PNG whose values the server read out of 65535, near black
    # (then "no face", no error). A true 16-bit picture keeps its depth.
    grey = Image.new("L", (8, 8), 200)
    assert server_sees(grey.convert("I")).getpixel((3, 3)) == server_sees(grey).getpixel((3, 3))
    deep = Image.new("I", (8, 8), 50000)
    assert server_sees(deep).getpixel((3, 3))[0] == round(50000 / 257)

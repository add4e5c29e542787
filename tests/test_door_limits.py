"""Issue 18 item 3: fair sharing at the door. One address's slow uploads or slow gRPC streams leave everyone else
served, and a client over its per-address limits gets a clear 429 / RESOURCE_EXHAUSTED. Also the door's answer
when nothing behind it answers in time.

The attacker binds 127.0.0.2, the victims 127.0.0.3 and up (loadtest/abuse/slow.py; the 60 s version is its CLI).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import select
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from client.errors import InferenceTimeoutError, translate
from common import contract
from loadtest import procs
from loadtest.abuse import cases, slow
from serving.pipeline.decode import MAX_BYTES
from serving.runtime import children, door, gate, gate_http, launch
from serving.runtime.launch import free_port

#: Seconds the victims call while attacked, after the attack's 2 s ramp has taken every slot it can: short for make
#: test (the abuse CLI runs 60 s). The victims keep both cores busy, so each second costs about two CPU-seconds.
DURATION_S = 3.0


def test_limits_come_from_env_then_options():
    env = {"DOOR_CLIENT_CONNECTIONS": "64", "DOOR_CLIENT_RATE": "50"}
    limits = door.ClientLimits.from_env(env, rate=70, burst=None)
    assert (limits.connections, limits.rate, limits.burst) == (64, 70, door.ClientLimits().burst)
    with pytest.raises(ValueError, match="DOOR_CLIENT_BURST"):
        door.ClientLimits.from_env({"DOOR_CLIENT_BURST": "many"})
    with pytest.raises(ValueError, match="connections"):
        door.ClientLimits(connections=0)
    assert launch.parse_args(["--door-client-connections", "200"]).door_limits.connections == 200


def test_config_has_the_limits_and_room_for_the_target_concurrency():
    where = {"prefix": "/p", "listen_host": "h", "http_port": 1, "grpc_port": 2, "triton_http": "t:3"}
    where["triton_grpc"] = "t:4"
    conf = door.nginx_config(**where, limits=door.ClientLimits(connections=96, rate=300, burst=40))
    assert "limit_conn per_client 96;" in conf and "rate=300r/s" in conf and "burst=40 nodelay" in conf
    # c=64 from one address passes the defaults; 1,100 hostile connections fit in the table beside everyone else.
    assert door.ClientLimits().connections >= 64 + 32
    assert door.WORKER_CONNECTIONS >= 2 * (slow.CONNECTIONS + 2 * door.ClientLimits().connections)
    # A connection is closed after this many requests (per-connection memory); the native benchmark knows it.
    assert f"keepalive_requests {door.KEEPALIVE_REQUESTS};" in conf
    # The internal key only where given (the compose config is committed without one).
    assert "internal-key" not in conf and "#omit#" not in conf
    keyed = door.nginx_config(**where, internal_key="k")
    assert 'proxy_set_header internal-key "k";' in keyed
    assert 'grpc_set_header triton-grpc-protocol-internal-key "k";' in keyed


@pytest.fixture
def strict_door(tmp_path):
    """The door alone (nginx, nothing behind it: allowed requests get 503) with one request per second."""
    if door.find_nginx() is None:
        pytest.skip("nginx not installed (make setup)")
    gate = door.Door(
        Path(tmp_path) / "nginx",
        listen_host="127.0.0.1",
        http_port=free_port(),
        grpc_port=free_port(),
        triton_http=f"127.0.0.1:{free_port()}",
        triton_grpc=f"127.0.0.1:{free_port()}",
        limits=door.ClientLimits(connections=1, rate=1, burst=1),
    )
    gate.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{gate.config['http_port']}/", timeout=1)
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.1)
    yield gate
    gate.stop(timeout=5)


def test_a_door_leads_its_own_process_group(strict_door):
    # Door.stop ends the workers of a killed or dead master by their group, which is the master's only when it leads
    # one: a door started by default does (this fixture's, as every test's and the launcher's).
    assert os.getpgid(strict_door.proc.pid) == os.getsid(strict_door.proc.pid) == strict_door.proc.pid


def test_over_the_limits_is_a_clear_429_and_resource_exhausted(strict_door):
    port = strict_door.config["http_port"]
    answers = []
    for _ in range(4):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v2/health/live")
        response = conn.getresponse()
        answers.append((response.status, response.getheader("Retry-After"), response.read()))
        conn.close()
    refused = [a for a in answers if a[0] == 429]
    assert refused and all(a[1] == "1" and b"too many requests from your address" in a[2] for a in refused), answers
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{strict_door.config['grpc_port']}")
    try:
        errors = []
        for _ in range(4):
            try:
                client.is_server_live()
            except InferenceServerException as err:
                errors.append(err)
        assert any(e.status() == "StatusCode.RESOURCE_EXHAUSTED" and "too many requests" in e.message() for e in errors)
    finally:
        client.close()


def _assert_fair(report: dict, refused_at_least: int) -> None:
    victims = report["victims"]
    assert victims["requests"] >= 20, report  # they really ran during the attack
    assert report["victim_success"] >= 0.99, report
    # The per-address limit did the work: the attacker's streams / uploads beyond it were refused.
    assert report["attacker"]["refused"] >= refused_at_least, report


@pytest.mark.integration
def test_slow_uploads_from_one_address_leave_the_others_served(triton_tiny):
    report = slow.run(triton_tiny.http_url, triton_tiny.grpc_url, "uploads", DURATION_S)
    _assert_fair(report, slow.CONNECTIONS - triton_tiny.door_limits.connections)


@pytest.mark.integration
def test_slow_grpc_streams_from_one_address_leave_the_others_served(triton_tiny):
    report = slow.run(triton_tiny.http_url, triton_tiny.grpc_url, "streams", DURATION_S)
    _assert_fair(report, slow.CONNECTIONS - triton_tiny.door_limits.connections)


def _infer_body(image: bytes) -> tuple[bytes, dict[str, str]]:
    """A crop-path request for one image, in the binary data extension."""
    import numpy as np
    import tritonclient.http as httpclient

    inp = httpclient.InferInput(contract.CROP_INPUT, [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[image]], dtype=object), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp])
    return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)}


def _post(http_url: str, body: bytes, headers: dict[str, str], source: str) -> tuple[int, bytes]:
    host, port = http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60, source_address=(source, 0))
    try:
        conn.request("POST", slow.CROP_PATH, body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _paced_victim(http_url: str, stop: threading.Event, outcomes: list[str]) -> None:
    """A crop-path caller from a victim address, one call every 0.1 s until ``stop``: served or not, all along the
    trickle (slow._victim calls back to back, which kept a core busy for the 10 s and proved nothing more)."""
    body, headers = slow.crop_request()
    while not stop.wait(0.1):
        try:
            status, answer = _post(http_url, body, headers, slow.VICTIMS[0])
            outcomes.append("ok" if status == 200 and b"outputs" in answer else f"HTTP {status}")
        except (OSError, http.client.HTTPException) as err:
            outcomes.append(type(err).__name__)


def _trickle(http_url: str, length: int, limit_s: float) -> tuple[float, bytes]:
    """Declares ``length`` bytes and sends 64 every second (inside nginx's 10 s gap limit) from the attacker's address;
    returns when the answer came (s after the headers) and the answer."""
    host, port = http_url.rsplit(":", 1)
    head = (
        f"POST {slow.CROP_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
        "Inference-Header-Content-Length: 100\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=5, source_address=(slow.ATTACKER, 0)) as sock:
        sock.sendall(head.encode())
        start, answer = time.monotonic(), b""
        while time.monotonic() - start < limit_s:
            if select.select([sock], [], [], 1.0)[0]:
                answer = sock.recv(65536)
                return time.monotonic() - start, answer
            sock.sendall(b"x" * 64)
    return time.monotonic() - start, answer


@pytest.mark.integration
def test_a_trickled_body_is_cut_at_its_deadline_while_others_are_served(triton_tiny):
    length = 4096  # the deadline is then just over the 10 s base (gate_http.body_deadline_s)
    deadline = gate_http.body_deadline_s(length)
    stop, outcomes = threading.Event(), []
    victim = threading.Thread(target=_paced_victim, args=(triton_tiny.http_url, stop, outcomes))
    victim.start()
    try:
        took, answer = _trickle(triton_tiny.http_url, length, deadline + 10)
    finally:
        stop.set()
        victim.join(60)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive within 10 s" in answer and b"256 KiB/s" in answer, answer
    assert deadline - 0.5 <= took <= deadline + 3, (took, deadline)
    assert len(outcomes) >= 5 and outcomes.count("ok") / len(outcomes) >= 0.99, outcomes


@pytest.mark.integration
def test_a_large_photo_passes_and_the_door_still_caps_length_and_json(triton_tiny):
    # A 10 MB photo (a small JPEG padded with comment segments up to decode.MAX_BYTES), unbuffered through the door.
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 70)).save(jpeg, "JPEG")
    segment = b"\xff\xfe" + struct.pack(">H", 65535) + b"p" * 65533
    image = jpeg.getvalue()[:2] + segment * (MAX_BYTES // len(segment) - 1) + jpeg.getvalue()[2:]
    body, headers = _infer_body(image)
    start = time.monotonic()
    status, answer = _post(triton_tiny.http_url, body, headers, slow.VICTIMS[1])
    assert status == 200 and b"outputs" in answer, (status, answer[:300])
    assert len(body) > 9 * 2**20 and time.monotonic() - start < gate_http.body_deadline_s(len(body))
    # nginx's own 413s, before any byte of the body: the declared length, and the JSON part (see door.MAX_JSON_BYTES).
    too_long = {**headers, "Content-Length": str(door.MAX_BODY + 1)}
    status, answer = _post(triton_tiny.http_url, b"", too_long, slow.VICTIMS[1])
    assert status == 413 and b"request body larger than" in answer, (status, answer)
    big_json = {**headers, "Inference-Header-Content-Length": str(door.MAX_JSON_BYTES + 1)}
    status, answer = _post(triton_tiny.http_url, body[:20000], big_json, slow.VICTIMS[1])
    assert status == 413 and b"the JSON part of the request is over" in answer, (status, answer)


def test_a_grpc_body_that_never_completes_is_bounded_by_the_gate_connection_age():
    # Measured with 3 s + 2 s (docs/security.md): a trickled stream ends at 5.0 s, normal calls see no failure.
    options = dict(gate._SERVER_OPTIONS)
    assert options["grpc.max_connection_age_ms"] == gate.GRPC_CONNECTION_AGE_S * 1000
    # A request that starts just before a GOAWAY still has time for an upload and the door's answer timeout.
    assert options["grpc.max_connection_age_grace_ms"] >= 2 * door.REQUEST_TIMEOUT_S * 1000


def test_no_answer_in_time_is_a_timeout_not_a_retryable_unavailable(tmp_path):
    # Behind the door, something that takes the connection and never answers (an overloaded gate or Triton): the
    # caller gets 504 / DEADLINE_EXCEEDED, which our client does not retry; only a refused connection (nothing
    # listening, a restart) is the retryable 503 / UNAVAILABLE.
    if door.find_nginx() is None:
        pytest.skip("nginx not installed (make setup)")
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)  # the kernel accepts; nobody ever reads or answers
    silent_at = f"127.0.0.1:{silent.getsockname()[1]}"
    closed_at = f"127.0.0.1:{free_port()}"
    front = door.Door(
        Path(tmp_path) / "nginx", listen_host="127.0.0.1", http_port=free_port(), grpc_port=free_port(),
        triton_http=silent_at, triton_grpc=closed_at, gate_http=silent_at, gate_grpc=silent_at, request_timeout_s=1,
        repository_timeout_s=3,
    )  # fmt: skip
    front.start()
    try:
        http_at, grpc_at = (f"127.0.0.1:{front.config[k]}" for k in ("http_port", "grpc_port"))
        wait_until = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", front.config["grpc_port"]), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < wait_until, "the door did not start"
                time.sleep(0.1)
        conn = http.client.HTTPConnection(*http_at.split(":"), timeout=20)
        started = time.monotonic()
        conn.request("GET", "/v2/health/live")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 504 and b"no answer within 1 s" in body, (response.status, body)
        assert time.monotonic() - started < 10
        conn.close()
        client = grpcclient.InferenceServerClient(grpc_at)
        try:
            with pytest.raises(InferenceServerException) as caught:
                client.is_server_live()
            assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED", caught.value
            assert "no answer within 1 s" in caught.value.message()
            error = translate(caught.value, url=grpc_at, protocol="grpc")
            assert isinstance(error, InferenceTimeoutError) and not error.retryable
        finally:
            client.close()
        # A public model's inference goes to the gate: the same answer from there.
        conn = http.client.HTTPConnection(*http_at.split(":"), timeout=20)
        conn.request("POST", f"/v2/models/{contract.CROP_ENSEMBLE}/infer", body=b"{}")
        response = conn.getresponse()
        assert response.status == 504 and b"no answer within 1 s" in response.read()
        conn.close()
        # The repository API waits longer (a model load answers when the model is loaded), over HTTP and gRPC.
        conn = http.client.HTTPConnection(*http_at.split(":"), timeout=20)
        started = time.monotonic()
        conn.request("POST", "/v2/repository/index", body=b"{}")
        assert conn.getresponse().status == 504
        assert 2.5 <= time.monotonic() - started < 10
        conn.close()
        client = grpcclient.InferenceServerClient(grpc_at)
        try:
            started = time.monotonic()
            with pytest.raises(InferenceServerException) as caught:
                client.get_model_repository_index()
            assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED", caught.value
            assert 2.5 <= time.monotonic() - started < 10
        finally:
            client.close()
    finally:
        front.stop(timeout=5)
        silent.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_client_waits_out_the_doors_rate_limit_instead_of_halving_or_giving_up(strict_door, protocol):
    # The door allows 1 request per second (burst 1) and has nothing behind it (503 once past the limit). Our client
    # must read its 429 / RESOURCE_EXHAUSTED as "pause, then retry" (not "send fewer images", not a server error).
    from client import AgeGenderClient, RateLimitedError, ServerUnavailableError

    url = f"127.0.0.1:{strict_door.config[f'{protocol}_port']}"
    crop = cases.face_crop()
    seen = []
    with AgeGenderClient(url, protocol=protocol, retries=0, timeout=5) as client:
        for _ in range(4):
            try:
                client.predict(crop, detect=False)
            except (RateLimitedError, ServerUnavailableError) as err:
                seen.append(err)
    limited = [e for e in seen if isinstance(e, RateLimitedError)]
    assert limited and all(e.retryable and "too many requests" in str(e) for e in limited), seen
    # Right after that burst the limit is spent: with one retry, even a tiny backoff waits the door's Retry-After
    # (1 s), so the retry gets past the limit and meets the 503 behind it; a retry 10 ms later would only have met
    # the limit again.
    with AgeGenderClient(url, protocol=protocol, retries=1, backoff=0.01, timeout=5) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError):
            client.predict(crop, detect=False)
        assert time.monotonic() - started >= 0.9


def test_a_stop_in_time_leaves_nothing_of_the_group_either():
    """A group leader that exits at once on the stop signal, leaving a child in its group: a test run once left a
    door worker listening on its ports after its master had exited in time, so nothing killed the group."""
    import signal
    import subprocess
    import sys

    from serving.runtime.subproc import stop_process

    # The leader unblocks SIGQUIT itself: a signal mask is inherited, and it must not depend on this process's.
    code = (
        "import os, signal, subprocess; signal.signal(signal.SIGQUIT, lambda *_: os._exit(0)); "
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGQUIT]); "
        "print(subprocess.Popen(['sleep', '60']).pid, flush=True); signal.pause()"
    )
    leader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    child = int(leader.stdout.readline())
    started = time.monotonic()
    stop_process(leader, timeout=30, sig=signal.SIGQUIT, group=True)
    assert leader.returncode == 0, (leader.returncode, time.monotonic() - started)  # exited by itself, in time
    deadline = time.monotonic() + 5  # the orphan is reaped by init a moment after its SIGKILL
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child), f"the leader's child {child} outlived the stop"


def test_a_stop_past_its_drain_timeout_leaves_no_nginx_worker(tmp_path):
    # A client trickling a body keeps a worker busy after the graceful stop signal (up to the 10 s body read timeout);
    # when the drain times out, the master is killed, and its workers must go with it, not linger as orphans.
    front, master = _bare_door(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                held = socket.create_connection(("127.0.0.1", front.config["http_port"]), timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the door did not start"
                time.sleep(0.1)
        held.sendall(b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        time.sleep(0.3)
        workers = [p.pid for p in procs.all_processes() if p.ppid == master.pid]
        assert workers
        started = time.monotonic()
        front.stop(timeout=1)
        # The drain really ran out (the held request kept a worker busy), and the stop did not wait beyond it.
        assert 0.9 <= time.monotonic() - started < 5
        deadline = time.monotonic() + 3  # SIGKILLed workers are gone once the kernel has reaped them
        while (alive := [pid for pid in workers if _running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive, alive
    finally:
        if front.proc is not None:
            front.stop(timeout=1)
        with contextlib.suppress(NameError):
            held.close()


def test_a_master_that_died_before_its_stop_leaves_no_worker(tmp_path):
    """Test runs twice left a door worker listening after its server stopped, its master gone: a master that dies
    first orphans its workers, and a stop that reaped the dead master (poll()) before stopping could no longer name
    their group. Checking and stopping must leave it unreaped and end the group."""
    import signal

    front, master = _bare_door(tmp_path)
    try:
        workers = _workers(master)
        os.kill(master.pid, signal.SIGKILL)  # the master alone: its workers stay, in its group
        deadline = time.monotonic() + 5
        while front.running():
            assert time.monotonic() < deadline, "the killed master still runs"
            time.sleep(0.02)
        assert master.returncode is None  # running() did not reap it
        assert all(_running(pid) for pid in workers)
        front.stop(timeout=1)
        deadline = time.monotonic() + 3
        while (alive := [pid for pid in workers if _running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive, f"workers {alive} outlived their dead master's stop"
    finally:
        if front.proc is not None:
            front.stop(timeout=1)


@pytest.mark.parametrize("fails", ["before its backoff", "after its backoff"])
def test_a_failed_restart_of_the_door_waits_one_backoff_and_starts_again(tmp_path, monkeypatch, fails):
    """The door's watcher (Door.keep_running) starts a dead master again after a backoff. A start that fails is
    reported and tried again after the next, doubled backoff: waited once, whether the round failed before its own
    backoff (which must then be waited, or a failure that repeats would spin) or after it (which must not be waited
    twice)."""
    import signal

    monkeypatch.setattr(children, "RESTART_BACKOFF_S", (0.2, 1.0))
    front, master = _bare_door(tmp_path)
    waits: list[float] = []
    real_wait = front._stopping.wait
    monkeypatch.setattr(front._stopping, "wait", lambda timeout=None: waits.append(timeout) or real_wait(timeout))
    step = "_hold_public_ports" if fails == "before its backoff" else "start"
    real_step, tries = getattr(front, step), []

    def fail_once(*args, **kwargs):
        tries.append(step)
        if len(tries) == 1:
            raise OSError(f"{step} failed on purpose (test)")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(front, step, fail_once)
    reports: list[str] = []
    started = threading.Event()
    try:
        front.keep_running(reports.append, lambda proc: started.set())
        os.kill(master.pid, signal.SIGKILL)
        assert started.wait(15), reports
        assert waits == [0.2, 0.4], (waits, reports)
        assert sum("did not start again" in r and "failed on purpose" in r for r in reports) == 1, reports
        assert front.running()
    finally:
        front.stop(timeout=1)


def _bare_door(tmp_path: Path) -> tuple[door.Door, subprocess.Popen]:
    """A door (nginx in its own session, as every door starts it) with nothing behind it, started."""
    if door.find_nginx() is None:
        pytest.skip("nginx not installed (make setup)")
    front = door.Door(
        tmp_path / "nginx", listen_host="127.0.0.1", http_port=free_port(), grpc_port=free_port(),
        triton_http=f"127.0.0.1:{free_port()}", triton_grpc=f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    return front, front.start()


def _workers(master: subprocess.Popen) -> list[int]:
    """The worker processes of a door's nginx ``master``, once it has started them."""
    deadline = time.monotonic() + 10
    while not (workers := [p.pid for p in procs.all_processes() if p.ppid == master.pid]):
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.05)
    return workers


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    fields = procs.stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _raw_grpc_answered(grpc_url: str, headers: list[tuple[str, str]], message: bytes, compressed: bool) -> bool:
    """Sends one ModelInfer over a hand-made HTTP/2 connection (any headers, repeated ones too); True when the answer
    carries a message (a DATA frame), as only a served request's does: a refusal is trailers only."""
    host, port = grpc_url.rsplit(":", 1)
    fields = [(":method", "POST"), (":scheme", "http"), (":path", slow.GRPC_INFER), (":authority", grpc_url)]
    fields += [("content-type", "application/grpc"), ("te", "trailers"), *headers]
    block = b"".join(slow._literal(k, v) for k, v in fields)
    body = bytes([1 if compressed else 0]) + struct.pack(">I", len(message)) + message
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(slow._PREFACE + slow._frame(slow._SETTINGS, 0, 0))
        sock.sendall(slow._frame(slow._HEADERS, slow._END_HEADERS, 1, block))
        sock.sendall(slow._frame(slow._DATA, slow._END_STREAM, 1, body))
        reader = sock.makefile("rb")
        while True:
            head = reader.read(9)
            if len(head) < 9:
                return False
            length, kind, flags, stream = int.from_bytes(head[:3], "big"), head[3], head[4], int.from_bytes(head[5:])
            payload = reader.read(length)
            if kind == slow._SETTINGS and not flags & slow._ACK:
                sock.sendall(slow._frame(slow._SETTINGS, slow._ACK, 0))
            elif stream == 1 and kind == slow._DATA and payload:
                return True
            elif stream == 1 and (kind == slow._RST or flags & slow._END_STREAM) or kind == slow._GOAWAY:
                return False


@pytest.mark.integration
def test_a_second_encoding_header_does_not_get_a_compressed_body_inflated(triton_tiny):
    # nginx 1.22 checks the first Content-Encoding / grpc-encoding only: "identity" then "gzip" passed, and the gate
    # inflated 58 KB into 60 MB (audit). Now no encoding header passes the door, so such a body is refused as garbage.
    import gzip

    from loadtest.abuse.victims import grpc_request

    body, headers = _infer_body(cases.face_crop())
    host, port = triton_tiny.http_url.rsplit(":", 1)
    for encodings, compressed in ((["identity"], False), (["identity", "gzip"], True)):
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        data = gzip.compress(body) if compressed else body
        conn.putrequest("POST", slow.CROP_PATH)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            conn.putheader(name, value)
        for encoding in encodings:
            conn.putheader("Content-Encoding", encoding)
        conn.endheaders(data)
        status = conn.getresponse().status
        conn.close()
        assert (status == 200) is (not compressed), (encodings, status)
    message = grpc_request(contract.CROP_ENSEMBLE, [1, 1], [cases.face_crop()]).SerializeToString()
    assert _raw_grpc_answered(triton_tiny.grpc_url, [("grpc-encoding", "identity")], message, False)
    doubled = [("grpc-encoding", "identity"), ("grpc-encoding", "gzip")]
    assert not _raw_grpc_answered(triton_tiny.grpc_url, doubled, gzip.compress(message), True)


@pytest.mark.integration
def test_only_inference_may_name_its_json_length(triton_tiny):
    # Triton reads every other body whole, whatever Inference-Header-Content-Length says: the header let a 1 MB
    # nested JSON body reach it (an admin's trace setting then crashed it, audit).
    nested = b"[" * 10000 + b"]" * 10000
    for path in ("/v2/repository/index", "/v2/trace/setting", "/v2/models/age_gender/config"):
        host, port = triton_tiny.http_url.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", path, nested, {"Inference-Header-Content-Length": "2"})
        response = conn.getresponse()
        assert response.status == 413 and b"the JSON part of the request is over" in response.read(), path
        conn.close()


def test_a_restart_backoff_doubles_to_its_cap_and_starts_over_after_a_stable_run(monkeypatch):
    # The one rule of both supervised children's restarts (Triton's in server.py, the door's master here).
    monkeypatch.setattr(children, "RESTART_BACKOFF_S", (1.0, 5.0))
    backoff, waits = children.Backoff(), []
    for ran in (0.5, 2.0, 3.0, 4.0, children.STABLE_S + 1, 1.0):
        backoff.died(ran)
        waits.append(backoff.wait)
        backoff.waited()
    assert waits == [1.0, 2.0, 4.0, 5.0, 1.0, 2.0]


@pytest.mark.skipif(os.geteuid() != 0, reason="nginx drops to a worker account only when started as root")
def test_under_root_the_workers_run_as_an_account_of_their_own(tmp_path):
    """Under the shared ``nobody``, any other process of that account could read a worker's memory through
    /proc/PID/mem: every request passing the door, admins' keys among them, and the internal key (red team,
    2026-12-07). The workers now run as door.WORKER_USER, which nothing else uses; ``nobody`` cannot read them."""
    import pwd

    front, master = _bare_door(tmp_path)
    try:
        workers = _workers(master)
        account = pwd.getpwnam(door.WORKER_USER)
        for pid in workers:
            assert os.stat(f"/proc/{pid}").st_uid == account.pw_uid
        nobody = pwd.getpwnam("nobody")
        read = subprocess.run(
            ["python3", "-c", f"open('/proc/{workers[0]}/mem', 'rb')"],
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
        )
        assert read.returncode != 0 and "PermissionError" in read.stderr, read.stderr
    finally:
        front.stop(timeout=1)

"""The KServe pod's entry point (serving/runtime/edge.py): Triton on loopback, the gate (``--edge``) on the public
ports with no nginx in front, against a real Triton started as the ServingRuntime starts it."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from common import contract
from loadtest import procs
from loadtest.abuse import cases
from loadtest.abuse.attacks import http_call, http_infer
from loadtest.abuse.victims import grpc_request
from loadtest.bench.wire import serialize_bytes
from serving.runtime import binary, command, edge, ports, security

ROOT = Path(__file__).resolve().parents[1]
KEY = "edge-test-" + uuid.uuid4().hex
CROP = contract.CROP_ENSEMBLE
LOCAL = "127.0.0.1"


def _edge_cmd(http: str, grpc_: str, triton_http: str, triton_grpc: str, *rest: str) -> list[str]:
    return [
        sys.executable, "-m", "serving.runtime.edge", "--http", http, "--grpc", grpc_,
        "--triton-http", triton_http, "--triton-grpc", triton_grpc, *rest,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env[security.ADMIN_KEY_ENV] = KEY
    return env


def _pod_cmd(run: Path, repo: Path, model: str, prefix: str) -> tuple[list[str], dict[str, str], str, str]:
    """The pod's command as the ServingRuntime runs it (edge.py, then the pip wheel's tritonserver loading ``model``
    from ``repo``), its environment, and the gate's HTTP and gRPC addresses, on free loopback ports."""
    env = _env()
    executable, backends = binary.pip_triton(run, env)
    hidden = security.hide_in_env(env, {security.ADMIN_KEY_ENV: KEY})
    preload = env.pop("LD_PRELOAD")  # the pod sets no LD_PRELOAD: edge.py gives it to Triton only
    t_http, t_grpc, metrics = (ports.free_port() for _ in range(3))
    triton = [executable] + command.triton_args(
        model_repository=repo, backend_directory=backends, inner_host=LOCAL, http_port=t_http,
        grpc_port=t_grpc, metrics_host=LOCAL, metrics_port=metrics, config_name="cpu", shm_prefix=prefix,
        admin_key=hidden[security.ADMIN_KEY_ENV], extra_args=("--model-control-mode=explicit", f"--load-model={model}"),
    ) + [hidden[security.PRELOAD_CHECK_ENV]]  # fmt: skip
    http, grpc_ = f"{LOCAL}:{ports.free_port()}", f"{LOCAL}:{ports.free_port()}"
    cmd = _edge_cmd(http, grpc_, f"{LOCAL}:{t_http}", f"{LOCAL}:{t_grpc}", "--triton-preload", preload, "--", *triton)
    return cmd, env, http, grpc_


@pytest.fixture(scope="module")
def pod(tiny_repo, tmp_path_factory):
    """``python -m serving.runtime.edge`` as the ServingRuntime runs it, on free loopback ports."""
    run = tmp_path_factory.mktemp("edge")
    prefix = f"edge{uuid.uuid4().hex[:6]}"
    # A copy: a test adds a broken version to it. The crop path only (no face detectors to build): a quicker start,
    # and all these tests need.
    repo = run / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    cmd, env, http, grpc_ = _pod_cmd(run, repo, CROP, prefix)
    log = open(run / "edge.log", "w+")  # noqa: SIM115 - read at the end
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, f"edge exited {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}"
        try:
            if http_call(f"http://{http}", "GET", "/v2/health/ready", source=LOCAL)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
        time.sleep(0.5)
    pod = type(
        "Pod", (), {"proc": proc, "http": f"http://{http}", "grpc": grpc_, "prefix": prefix, "log": log, "repo": repo}
    )
    yield pod
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def _children(pod) -> list[procs.Proc]:
    return [p for p in procs.all_processes() if p.ppid == pod.proc.pid]


def _triton_pid(pod) -> int:
    (triton,) = [p.pid for p in _children(pod) if p.name == "tritonserver"]
    return triton


@pytest.mark.integration
def test_the_gate_is_the_only_way_in_and_answers_the_probes(pod):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", f"/v2/models/{CROP}", f"/v2/models/{CROP}/config"):
        status, body = http_call(pod.http, "GET", path, source=LOCAL)
        assert status == 200, (path, body)
    assert json.loads(http_call(pod.http, "GET", "/v2", source=LOCAL)[1])["name"] == "triton"
    status, body = http_infer(pod.http, CROP, [1, 1], serialize_bytes([cases.face_crop()]))
    assert status == 200, body
    with grpc.insecure_channel(pod.grpc) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request(CROP, [1, 1], [cases.face_crop()]))
        # The gRPC probe (grpc.health.v1 Check, service ""): relayed to Triton's, SERVING is field 1 = 1.
        assert channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10) == b"\x08\x01"
    assert contract.ENSEMBLE_AGE in [o.name for o in answer.outputs]
    # Triton's own ports are on loopback, and its command line shows the placeholder, not the key.
    cmdline = Path(f"/proc/{_triton_pid(pod)}/cmdline").read_bytes()
    assert KEY.encode() not in cmdline and b"--http-address=127.0.0.1" in cmdline


@pytest.mark.integration
def test_what_the_door_refused_the_edge_gate_refuses(pod):
    # Internal models: neither inference nor (without the admin key) metadata.
    status, body = http_infer(pod.http, contract.AGE_MODEL, [1, 1], serialize_bytes([cases.face_crop()]))
    assert status == 404 and b"not a public model" in body
    status, body = http_call(pod.http, "GET", f"/v2/models/{contract.AGE_MODEL}/config", source=LOCAL)
    assert status == 404 and b"not a public model" in body  # as the door answers: no internal name confirmed
    wrong = {"admin-key": "not-the-key"}
    assert http_call(pod.http, "GET", f"/v2/models/{contract.AGE_MODEL}/config", None, wrong, LOCAL)[0] == 403
    admin = {"admin-key": KEY}
    assert http_call(pod.http, "GET", f"/v2/models/{contract.AGE_MODEL}/config", None, admin, LOCAL)[0] == 200
    # The overflowing shape that mixes callers' rows in Triton.
    status, body = http_infer(pod.http, CROP, [2**62, 1], serialize_bytes([cases.face_crop()]))
    assert status == 400, body
    # Admin APIs: 404 without the key, relayed with it (Triton checks it too).
    assert http_call(pod.http, "POST", "/v2/repository/index", b"{}", source=LOCAL)[0] == 404
    assert http_call(pod.http, "POST", "/v2/repository/index", b"{}", {"admin-key": "wrong"}, LOCAL)[0] == 404
    status, body = http_call(pod.http, "POST", "/v2/repository/index", b"{}", admin, LOCAL)
    assert status == 200 and CROP in {m["name"] for m in json.loads(body)}
    assert http_call(pod.http, "GET", "/v2/models/stats", source=LOCAL)[0] == 404
    status, body = http_call(pod.http, "GET", f"/v2/models/{CROP}/stats", None, admin, LOCAL)
    assert status == 200 and json.loads(body)["model_stats"], body
    # A compressed body: refused before aiohttp inflates it.
    header = json.dumps({"inputs": []}).encode()
    status, body = http_call(
        pod.http, "POST", f"/v2/models/{CROP}/infer", gzip.compress(header), {"Content-Encoding": "gzip"}, LOCAL
    )
    assert status == 415 and b"compressed" in body
    # A compressed gRPC message: never inflated, and refused for what it is (it read "not a valid protobuf message").
    with grpc.insecure_channel(pod.grpc) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        with pytest.raises(grpc.RpcError) as refused:
            infer(grpc_request(CROP, [1, 1], [cases.face_crop()]), compression=grpc.Compression.Gzip, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "compressed gRPC messages are refused" in refused.value.details()
    # A body declared larger than the gate reads: 413 from the head alone, as the door answers (it was read first).
    host, port = pod.http.removeprefix("http://").rsplit(":", 1)
    head = f"POST /v2/models/{CROP}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n\r\n".encode()
    assert _raw_http(host, int(port), head).startswith(b"HTTP/1.1 413")
    # Requests aiohttp cannot parse (the red-team probe's: a header too long, HTTP/2's preface on the HTTP/1 port, a
    # length and chunks at once): a short log line a kind at most every 10 s, not a traceback with the caller's
    # bytes for each.
    malformed = (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Probe: " + b"PROBEBYTES" * 2000 + b"\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nPROBEBYTES",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPROBEBYTES",
    )
    for data in malformed * 10:
        _raw_http(host, int(port), data)
    time.sleep(0.5)
    log = Path(pod.log.name).read_text()
    assert "PROBEBYTES" not in log and "Traceback" not in log and "Error handling request" not in log, log[-3000:]
    assert log.count("refused a malformed HTTP request") <= len(malformed), log[-3000:]
    assert pod.proc.poll() is None


def _raw_http(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
    return answer


@pytest.mark.integration
def test_a_killed_gate_is_started_again_and_triton_keeps_running(pod):
    triton = _triton_pid(pod)
    (gate,) = [p.pid for p in _children(pod) if b"serving.runtime.gate" in Path(f"/proc/{p.pid}/cmdline").read_bytes()]
    os.kill(gate, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            if http_infer(pod.http, CROP, [1, 1], serialize_bytes([cases.face_crop()]))[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the gate did not come back"
        time.sleep(0.2)
    assert _triton_pid(pod) == triton and pod.proc.poll() is None


@pytest.mark.integration
def test_a_rollout_that_fails_to_load_leaves_the_pod_ready(pod):
    # A release whose new version cannot load: Triton keeps serving the version before, but its own readiness says
    # "not ready" from then on. The probes must not take the pod out of routing for good (their liveness would never
    # restart it either): the gate answers readiness model by model, as behind the door.
    broken = pod.repo / contract.AGE_MODEL / "2" / "model.savedmodel"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    env = {**_env(), security.ADMIN_KEY_ENV: KEY}
    rollout = [sys.executable, "-m", "serving.ops.rollout", "--url", pod.http, "--model", contract.AGE_MODEL]
    done = subprocess.run(rollout, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "serves on" in done.stderr, done.stderr
    assert http_call(pod.http, "GET", "/v2/health/ready", source=LOCAL)[0] == 200
    with grpc.insecure_channel(pod.grpc) as channel:
        assert channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10) == b"\x08\x01"  # SERVING
    status, body = http_infer(pod.http, CROP, [1, 1], serialize_bytes([cases.face_crop()]))
    assert status == 200, body


def test_the_pod_serves_what_tritons_command_loads(tmp_path):
    for name, config in (("a", "config.pbtxt"), ("b", "configs/cpu.pbtxt"), ("c", "configs/other.pbtxt")):
        (tmp_path / name / config).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name / config).write_text("")
    (tmp_path / "not_a_model").mkdir()
    triton = ["tritonserver", f"--model-repository={tmp_path}", "--model-control-mode=explicit"]
    assert edge.served_models([*triton, "--load-model=*"]) == ("a",)
    assert edge.served_models([*triton, "--load-model=*", "--model-config-name=cpu"]) == ("a", "b")
    assert edge.served_models([*triton, "--load-model", "b", "--load-model=c"]) == ("b", "c")
    assert edge.served_models(["tritonserver", "--model-repository=s3://bucket/models"]) == ()


@pytest.mark.integration
def test_sigterm_stops_the_gate_then_triton_and_leaves_nothing(pod):
    triton = _triton_pid(pod)
    os.kill(pod.proc.pid, signal.SIGTERM)
    assert pod.proc.wait(timeout=edge.GATE_STOP_S + edge.TRITON_STOP_S) == 0
    assert not Path(f"/proc/{triton}").exists() or "Z" in Path(f"/proc/{triton}/stat").read_text().split()[2]
    with pytest.raises(OSError):
        http_call(pod.http, "GET", "/v2/health/live", source=LOCAL)
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(pod.prefix)]


@pytest.mark.integration
def test_a_stub_that_dies_under_a_served_model_ends_the_pod(tiny_repo, tmp_path):
    # Triton fails every request of a model whose stub died, and calls itself ready: the pod ends, so the kubelet
    # restarts it (serving/runtime/stubs.py).
    from serving.runtime import stubs

    prefix = f"edge{uuid.uuid4().hex[:6]}"
    cmd, env, http, _ = _pod_cmd(tmp_path, tiny_repo, CROP, prefix)
    log = tmp_path / "edge.log"  # a file, not a pipe: Triton's log would fill a pipe nobody reads while waiting
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(OSError):
                if http_call(f"http://{http}", "GET", "/v2/health/ready", source=LOCAL)[0] == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # The watch compares two looks a second apart: a stub it has not seen yet cannot be missed (it is killed
        # here at once after readiness; in service a stub dies long after its start).
        time.sleep(2.5 * stubs.CHECK_S)
        (triton,) = [p.pid for p in procs.all_processes() if p.ppid == proc.pid and p.name == "tritonserver"]
        (stub,) = [pid for pid, s in stubs.stubs_of(triton).items() if s.model == "gender"]
        os.kill(stub, signal.SIGKILL)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the pod did not end:\n{log.read_text()[-3000:]}") from None
        assert proc.returncode != 0
        assert "the Python stub of gender version" in log.read_text()
        # The killed stubs' shared memory goes with them: the pod's /dev/shm outlives the container.
        assert not [p for p in os.listdir("/dev/shm") if p.startswith(prefix)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_triton_that_exits_ends_the_pod_with_its_code(tmp_path):
    # The real Triton, as the ServingRuntime starts it, on a repository whose one model cannot load: with
    # --exit-on-error (what the placeholder check turns into) it exits, and the pod goes with its code.
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "no_such_backend"\n')
    cmd, env, http, _ = _pod_cmd(tmp_path, repo, "broken", f"edge{uuid.uuid4().hex[:6]}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    code = re.search(r"Triton exited with code (-?\d+); stopping", proc.stderr)
    assert code and proc.returncode == int(code.group(1)) != 0, proc.stderr[-3000:]
    assert "no_such_backend" in proc.stderr  # Triton's own reason: it did start, and refused the model
    with pytest.raises(OSError):  # the gate went with it
        http_call(f"http://{http}", "GET", "/v2/health/live", source=LOCAL)


def test_a_gate_that_cannot_start_ends_the_pod_after_its_restarts():
    t_http, t_grpc = f"{LOCAL}:{ports.free_port()}", f"{LOCAL}:{ports.free_port()}"
    fake = ["/bin/sh", "-c", "sleep 120", "sh", f"--http-address={LOCAL}", f"--http-port={t_http.split(':')[1]}"]
    fake += [f"--grpc-address={LOCAL}", f"--grpc-port={t_grpc.split(':')[1]}"]
    # Another Triton's region under the backend's default prefix, which this command names none of: the pod's
    # clean-up removed every such region on the machine (a test server beside it lost its regions).
    other = Path("/dev/shm") / f"{command.SHM_PREFIX}{uuid.uuid4()}"
    other.write_bytes(b"")
    try:
        with socket.socket() as taken:  # the gate's HTTP port is held by someone else
            taken.bind((LOCAL, 0))
            taken.listen()
            http = f"{LOCAL}:{taken.getsockname()[1]}"
            cmd = _edge_cmd(http, f"{LOCAL}:{ports.free_port()}", t_http, t_grpc, "--", *fake)
            proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=90)
        assert other.exists()
    finally:
        other.unlink(missing_ok=True)
    assert proc.returncode != 0, proc.stderr
    assert proc.stderr.count("starting it again") == edge.GATE_RESTARTS
    assert f"for the {edge.GATE_RESTARTS + 1}th time in a minute" in proc.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--http-address=0.0.0.0", "--http-port=1", "--grpc-address=127.0.0.1", "--grpc-port=2"], "loopback|only"),
        (["--http-port=1", "--grpc-address=127.0.0.1", "--grpc-port=2"], "only"),
        (["--http-address=127.0.0.1", "--http-port=3", "--grpc-address=127.0.0.1", "--grpc-port=2"], "not the gate"),
        (["--http-address=127.0.0.1", "--http-port=1", "--grpc-address=127.0.0.1", "--grpc-port=2", "@K@"], "preload"),
    ],
)
def test_a_command_that_would_expose_triton_starts_nothing(flags, message, capsys):
    argv = ["--http", "127.0.0.1:8080", "--grpc", "127.0.0.1:9000", "--triton-http", "127.0.0.1:1"]
    assert edge.main([*argv, "--triton-grpc", "127.0.0.1:2", "--", "tritonserver", *flags]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("key", ["REPLACE_WITH_RANDOM_SECRET", "short", ""])
def test_a_guessable_or_missing_admin_key_starts_nothing(key, monkeypatch, capsys):
    """The pod gets its key from a Secret as it is: the example Secret's placeholder, left in a copy, would be the
    first key a caller tries (security red team, 2026-12-07). The gate, which compose starts, refuses it too."""
    monkeypatch.setenv(security.ADMIN_KEY_ENV, key)
    flags = ["--http-address=127.0.0.1", "--http-port=1", "--grpc-address=127.0.0.1", "--grpc-port=2"]
    argv = ["--http", "127.0.0.1:8080", "--grpc", "127.0.0.1:9000", "--triton-http", "127.0.0.1:1"]
    assert edge.main([*argv, "--triton-grpc", "127.0.0.1:2", "--", "tritonserver", *flags]) == 2
    said = "placeholder" if key.startswith("REPLACE_WITH_") else "at least 16 characters"
    assert said in capsys.readouterr().err
    from serving.runtime import gate

    assert (
        gate.main(["--grpc", "127.0.0.1:1", "--http", "127.0.0.1:2", "--triton-grpc", "x:1", "--triton-http", "x:2"])
        == 2
    )
    assert security.ADMIN_KEY_ENV in capsys.readouterr().err

"""Zero-downtime rollout and rollback on a real Triton under continuous load.

The ``age`` model is served alone (explicit model control, CPU config) as tiny Keras
models whose output is their version number: kernel zero, bias = version. Four
threads send requests for about 12 s. Meanwhile version 2 is exported into the live
repository and rolled out with ``serving.ops.rollout.switch``, then rolled back with the
one-line command ``python -m serving.ops.rollout --model age --version 1``. No request may
fail, and every request sent after a switch returned must be answered by the new version.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from common import spec
from serving.ops.rollout import RolloutError, switch
from serving.runtime.command import CONTROL_ARGS
from serving.runtime.launch import TritonServer, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
LOAD_SECONDS = 12
THREADS = 4


def export_constant(repo: Path, value: float) -> Path:
    """Exports the next ``age`` version: a tiny CNN whose answer is always ``value``."""
    from training.export import export_model
    from training.model import OUTPUT_NAMES, build

    # The regression head: one bias is the answer, whatever the face (the bins head would need a distribution).
    model = build("age", widths=(4, 8), age_head="regression")
    head = model.get_layer(OUTPUT_NAMES["age"])
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.full_like(bias, value)])
    return export_model(model, "age", repo)


def age_repository(tmp_path: Path, *values: float) -> Path:
    """A repository of ``age`` alone, with the served config, one constant version per value (1, 2, ...)."""
    repo = tmp_path / "model_repository"
    (repo / "age").mkdir(parents=True)
    shutil.copy(ROOT / "model_repository" / "age" / "config.pbtxt", repo / "age")
    shutil.copytree(ROOT / "model_repository" / "age" / "configs", repo / "age" / "configs")
    for value in values:
        export_constant(repo, value)
    return repo


def load(url: str, headers: dict, stop: threading.Event, log: list, errors: list) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=30)
    side = spec.image_size("age")
    image = np.random.default_rng(0).integers(0, 255, (1, side, side, 3), dtype=np.uint8)
    inp = httpclient.InferInput(spec.INPUT_NAME, list(image.shape), "UINT8")
    inp.set_data_from_numpy(image)
    try:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                value = float(client.infer("age", [inp], headers=headers).as_numpy(spec.AGE_OUTPUT)[0, 0])
            except Exception as err:  # noqa: BLE001 - every failure counts, whatever its type
                errors.append((sent, repr(err)))
                continue
            log.append((sent, value))
    finally:
        client.close()


def _queue_delay(server: TritonServer) -> int:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.internal_http_url)
    try:
        headers = {**server.internal_headers(), "admin-key": server.admin_key}
        return int(client.get_model_config("age", headers=headers)["dynamic_batching"]["max_queue_delay_microseconds"])
    finally:
        client.close()


def _status(url: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "serving.ops.rollout", "--url", url, "--model", "age", "--status"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)


def test_rollout_and_rollback_under_load_without_a_failed_request(tmp_path, monkeypatch):
    # The repository API is an admin API: the launcher restricts it behind this secret (issue #7) and
    # serving.ops.rollout presents it as header `admin-key`, in this process and in the CLI run below.
    monkeypatch.setenv("TRITON_ADMIN_KEY", secrets.token_urlsafe(16))
    repo = age_repository(tmp_path, 1.0)

    server = TritonServer(
        repo,
        http_port=0,  # free ports, chosen at start
        grpc_port=0,
        metrics_port=0,
        extra_args=CONTROL_ARGS["explicit"],
    )
    with server:
        stop, log, errors = threading.Event(), [], []
        # `age` is internal (not callable through the door): the load goes to Triton's own port, with its key.
        target = (server.internal_http_url, server.internal_headers())
        threads = [threading.Thread(target=load, args=(*target, stop, log, errors)) for _ in range(THREADS)]
        # Readiness, asked through the door as a load balancer asks, stays yes through both switches (the gate asks
        # each model; Triton's own readiness said no while a version was loading).
        unready: list[float] = []

        def probe() -> None:
            while not stop.wait(0.05):
                if not server.is_ready():
                    unready.append(time.monotonic())

        threads.append(threading.Thread(target=probe))
        if getattr(server, "admin_key", None):  # a launcher that restricts the admin APIs: no key, no switch
            with monkeypatch.context() as m:
                m.delenv("TRITON_ADMIN_KEY")
                with pytest.raises(RolloutError, match="restricted|admin"):
                    switch(server.http_url, "age")
        start = time.monotonic()
        for t in threads:
            t.start()
        try:
            time.sleep(1.5)
            rollout_start = time.monotonic()
            assert export_constant(repo, 2.0).name == "2"  # written while traffic runs
            # Published with the new version, a changed config takes effect with the rollout: it loads the model
            # from the repository as it stands (it used to send the config already loaded, and the change waited
            # for the next restart).
            config = repo / "age" / "configs" / "cpu.pbtxt"
            config.write_text(
                config.read_text().replace("max_queue_delay_microseconds: 200", "max_queue_delay_microseconds: 300")
            )
            assert switch(server.http_url, "age") == [2]
            assert _queue_delay(server) == 300
            rollout_done = time.monotonic()
            # At least 2 s of traffic on the new version, however long the export took on a busy machine (a slow
            # export left no request between rollout and rollback: an empty phase, not a wrong answer).
            time.sleep(max(2.0, 6 - (rollout_done - start)))
            rollback_start = time.monotonic()
            cli = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "serving.ops.rollout",
                    "--url",
                    server.http_url,
                    "--model",
                    "age",
                    "--version",
                    "1",
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=120,
            )
            rollback_done = time.monotonic()
            assert cli.returncode == 0, cli.stderr
            assert "now serving version(s) [1]" in cli.stdout
            status = _status(server.http_url)
            assert status.returncode == 0 and "age: ready versions [1]" in status.stdout, status.stderr
            assert "a new start serves the repository's newest again" in cli.stderr  # what a pin does not survive
            status = _status(server.http_url, env={k: v for k, v in os.environ.items() if k != "TRITON_ADMIN_KEY"})
            assert status.returncode == 1 and "Traceback" not in status.stderr, status.stderr
            assert "needs the admin key: set TRITON_ADMIN_KEY" in status.stderr
            time.sleep(max(2.0, LOAD_SECONDS - (time.monotonic() - start)))
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        duration = time.monotonic() - start

    assert not errors, f"{len(errors)} failed requests, first: {errors[:3]}"
    assert not unready, f"readiness said no {len(unready)} times during the switches"
    by_phase = {
        "before": {v for s, v in log if s < rollout_start},
        "after rollout": {v for s, v in log if rollout_done < s < rollback_start},
        "after rollback": {v for s, v in log if s > rollback_done},
    }
    assert by_phase == {"before": {1.0}, "after rollout": {2.0}, "after rollback": {1.0}}, by_phase
    # Both switches happened under load: requests were answered while each was in progress.
    during = [v for s, v in log if rollout_start <= s <= rollout_done]
    assert during, "no request was answered while the rollout was in progress"
    assert any(rollback_start <= s <= rollback_done for s, _ in log), "no request during the rollback"
    print(f"\n{len(log)} requests in {duration:.1f} s, 0 failed; {len(during)} sent during the rollout")
    assert len(log) > 100


def _age_answer(server: TritonServer) -> float:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.internal_http_url)
    side = spec.image_size("age")
    inp = httpclient.InferInput(spec.INPUT_NAME, [1, side, side, 3], "UINT8")
    inp.set_data_from_numpy(np.zeros((1, side, side, 3), np.uint8))
    try:
        return float(client.infer("age", [inp], headers=server.internal_headers()).as_numpy(spec.AGE_OUTPUT)[0, 0])
    finally:
        client.close()


def test_a_rollback_outlives_a_crash_of_triton(tmp_path, monkeypatch):
    """The launcher restarts a crashed Triton; it must serve the version rolled back to, not the repository's
    newest, and the door must refuse requests (saying why) until it does (serving/runtime/pins.py)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from serving.runtime import door, pins

    monkeypatch.setenv("TRITON_ADMIN_KEY", secrets.token_urlsafe(16))
    # No timed read of what it serves during the test: the switch is recorded because Triton's log says it happened
    # (pins.ServedVersions.notice). It used to be read every 2 s only, and a switch in the 2 s before a crash was lost.
    monkeypatch.setattr(pins, "POLL_S", 600.0)
    repo = age_repository(tmp_path, 1.0, 2.0)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, extra_args=CONTROL_ARGS["explicit"])
    with server:
        assert _age_answer(server) == 2.0
        assert switch(server.http_url, "age", 1) == [1]
        deadline = time.monotonic() + 5
        while server._served.served.get("age") != (1,):
            assert time.monotonic() < deadline, server._served.served
            time.sleep(0.02)
        os.kill(server._proc.pid, 11)
        deadline = time.monotonic() + 20
        while not any(e.startswith("tritonserver") for e in server.events):  # the supervisor's, after the flag
            assert time.monotonic() < deadline + 60, "the crash was not noticed"
            time.sleep(0.01)
        # Restarting: readiness and every call say so, over HTTP and gRPC, until version 1 serves again.
        request = urllib.request.Request(f"http://{server.http_url}/v2/health/ready")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 503 and door.RESTARTING in refused.value.read().decode()
        with pytest.raises(InferenceServerException, match="restarting after a crash") as unavailable:
            grpcclient.InferenceServerClient(server.grpc_url).is_server_ready()
        assert unavailable.value.status() == "StatusCode.UNAVAILABLE"
        # The repository API is not refused for it (an admin can act on a restart that does not settle): it reaches
        # Triton, or says Triton is not reachable yet.
        index = urllib.request.Request(
            f"http://{server.http_url}/v2/repository/index", data=b"{}", headers={"admin-key": server.admin_key}
        )
        try:
            answer = urllib.request.urlopen(index, timeout=10).read().decode()
        except urllib.error.HTTPError as err:
            answer = err.read().decode()
        assert door.RESTARTING not in answer, answer
        while not (server.restarts and server.is_ready()):
            assert time.monotonic() < deadline + 120, server.logs(30)
            time.sleep(0.1)
        assert _age_answer(server) == 1.0
        assert any("age: version 1 served again after the restart" in e for e in server.events), server.events
        status = _status(server.http_url)
        assert status.returncode == 0 and "age: ready versions [1]" in status.stdout, status.stderr


@pytest.mark.parametrize("extra", [[], ["--status"], ["--version", "1"]])
def test_no_server_is_one_clear_line(extra):
    port = free_port()  # nothing listens there
    cmd = [sys.executable, "-m", "serving.ops.rollout", "--url", f"127.0.0.1:{port}", "--model", "age", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: no Triton answering HTTP at 127.0.0.1:{port} ([Errno 111] Connection refused); is it running? "
        "(--url / TRITON_HTTP_URL)"
    ]


def test_a_crash_with_a_broken_newest_version_on_disk_serves_what_it_served(tiny_repo, tmp_path, monkeypatch):
    """A version that fails to load sits in the repository (a rollout that failed leaves it there). A Triton that
    crashed then loaded it on its restart, exited on it, and was restarted again and again, serving nothing. Now the
    restart runs on past it, and the version served before, with the ensembles that step through it, serves again
    (serving/runtime/pins.py); the whole server as `make serve` runs it: both ensembles loaded first, door, gate.
    Readiness stays yes after the failed rollout, where Triton's own says no for as long as it runs."""
    import tritonclient.grpc as grpcclient

    from client import AgeGenderClient
    from serving.runtime import pins

    monkeypatch.setenv("TRITON_ADMIN_KEY", secrets.token_urlsafe(16))
    repo = tmp_path / "model_repository"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)
    with server:
        server.wait_ready()
        photo = (ROOT / "gradio_frontend" / "examples" / "grace_hopper.jpg").read_bytes()
        with AgeGenderClient(server.grpc_url) as client:
            before = client.predict(photo, detect=False)
        broken = repo / "age" / "2"
        shutil.copytree(repo / "age" / "1", broken)
        for name in ("saved_model.pb", "model.xml"):
            for path in broken.rglob(name):
                path.write_bytes(b"not a model")
        with pytest.raises(RolloutError, match="(?s)load failed.*what served before serves on"):
            switch(server.http_url, "age")  # the rollout of version 2 fails; version 1 serves on
        # Triton's own readiness says no from here on, for as long as it runs; the server's asks each model.
        assert server._triton_http("/v2/health/ready")[0] != 200
        assert server.is_ready() and grpcclient.InferenceServerClient(server.grpc_url).is_server_ready()
        deadline = time.monotonic() + 2 * pins.POLL_S + 10
        while server._served.served.get("age") != (1,) or "age_gender_crop" not in server._served.configs:
            assert time.monotonic() < deadline, (server._served.served, list(server._served.configs))
            time.sleep(0.1)
        os.kill(server._proc.pid, 11)
        deadline = time.monotonic() + 120
        while not (any("age_gender_crop: version 1 served again" in e for e in server.events) and server.is_ready()):
            assert time.monotonic() < deadline, "\n".join(server.events) + server.logs(30)
            assert server.restarts <= 1, "\n".join(server.events)  # restarted once, not in a loop
            time.sleep(0.2)
        with AgeGenderClient(server.grpc_url) as client:
            after = client.predict(photo, detect=False)
        assert after.age == pytest.approx(before.age, abs=1e-3) and after.gender == before.gender
        time.sleep(2)
        assert server.restarts == 1 and server.poll() is None, "\n".join(server.events)
        assert any("age: version 1 served again" in e for e in server.events), server.events
        status = _status(server.http_url)
        assert status.returncode == 0 and "age: ready versions [1]" in status.stdout, status.stderr
        # A model an admin unloads is left out, as Triton's strict readiness leaves it out; a served model that
        # failed to load makes the server not ready, and says which.
        admin = {"admin-key": server.admin_key}
        faces = f"http://{server.http_url}/v2/repository/models/faces"
        urllib.request.urlopen(urllib.request.Request(f"{faces}/unload", data=b"{}", headers=admin), timeout=60)
        assert server.is_ready()
        broken = json.dumps({"parameters": {"config": json.dumps({"name": "faces", "backend": "nonexistent"})}})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(urllib.request.Request(f"{faces}/load", broken.encode(), admin), timeout=60)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=10)
        assert refused.value.code == 503 and "not ready: faces" in refused.value.read().decode()
        assert not grpcclient.InferenceServerClient(server.grpc_url).is_server_ready()


def test_a_restart_pins_an_ensemble_again_once_the_model_it_steps_through_is_back():
    """pins.ServedVersions.restore without a Triton: what did not load is pinned again at the versions served before,
    with the config it was served with; an ensemble whose step is not back yet fails its first try and is tried
    again after the rest; what still fails is reported, and the server is marked settled whatever happens."""
    from serving.runtime import pins

    ready: dict[str, tuple[int, ...]] = {"age": (20,)}  # what the restarted Triton loaded by itself
    pinned, reports = [], []

    def index(path, **kwargs):
        entries = [{"name": m, "version": str(v), "state": "READY"} for m, vs in ready.items() for v in vs]
        return 200, json.dumps(entries).encode()

    def pin(model, versions, config):
        pinned.append((model, versions, config))
        if model == "age_gender" and "gender" not in ready:  # sorted first, so its first try comes too early
            raise RuntimeError("ensemble 'age_gender' depends on 'gender' which has no loaded version")
        if model == "broken":
            raise RuntimeError("still broken")
        ready[model] = versions

    served = pins.ServedVersions(
        triton_http=index,
        config=lambda model: {"name": model},
        pin=pin,
        report=reports.append,
    )
    served.served = {"age_gender": (1,), "age": (20,), "gender": (6,), "broken": (2,)}
    served.configs = {name: {"name": name, "version_policy": {"latest": {"num_versions": 1}}} for name in served.served}
    served.restore()
    assert ready == {"age": (20,), "gender": (6,), "age_gender": (1,)}
    assert [model for model, *_ in pinned] == ["age_gender", "broken", "gender", "age_gender", "broken"]
    assert all(config == served.configs[model] for model, _, config in pinned)
    assert any("could not serve broken version 2 again" in r for r in reports), reports
    assert sum("could not serve" in r for r in reports) == 1 and served.settled.is_set()


def test_a_crash_in_the_middle_of_a_switch_brings_back_the_version_switched_to():
    """For a second or so of a switch the old and the new version are both READY, and that is what a read then
    records; brought back as it is, the ensembles would step through the newer one, after a rollback the one rolled
    back from. The config read with it says which version is meant (pins.ServedVersions.meant)."""
    from serving.runtime import pins

    pinned = []
    served = pins.ServedVersions(
        triton_http=lambda path, **kwargs: (200, json.dumps([{"name": "age", "version": "2", "state": "READY"}])),
        config=lambda model: {},
        pin=lambda model, versions, config: pinned.append((model, versions)),
        report=lambda message: None,
    )
    served.served = {"age": (1, 2)}
    served.configs = {"age": {"version_policy": {"latest": {"num_versions": 1}}}}  # a rollout to the newest
    assert served.meant("age") == (2,)
    served.configs = {}  # no config read: every READY version
    assert served.meant("age") == (1, 2)
    served.configs = {"age": {"version_policy": {"specific": {"versions": [1]}}}}  # a rollback to 1
    assert served.meant("age") == (1,)
    served.restore()  # the restarted Triton loaded the repository's newest, 2
    assert pinned == [("age", (1,))]

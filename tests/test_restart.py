"""A crashed Triton, restarted by the launcher, serves what it served (serving/runtime/pins.py): a rollback outlives
the crash, a broken version left in the repository by a failed rollout does not stop the restart, and readiness says
what callers can use throughout (serving/runtime/gate.py). Real servers, as `make serve` runs them; the restart's
choice of versions also without one."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from common import spec
from serving.ops.rollout import RolloutError, switch
from serving.runtime.command import CONTROL_ARGS
from serving.runtime.launch import TritonServer
from tests.test_rollout import ROOT, _status, age_repository, export_constant

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def constants(tmp_path_factory):
    """``repository(tmp_path, *values)``: what ``age_repository`` makes (``age`` alone, one version per value, each
    answering its value), from versions exported once for the module and copied in: an export is a TensorFlow
    trace, a SavedModel and an OpenVINO conversion, seconds of CPU, and every test here serves the same one or two.
    A version's files do not depend on its number (``export_constant`` writes no record)."""
    store = tmp_path_factory.mktemp("age-constants")
    exported: dict[float, Path] = {}

    def repository(tmp_path: Path, *values: float) -> Path:
        repo = age_repository(tmp_path)  # the served config, no version yet
        for number, value in enumerate(values, 1):
            if value not in exported:
                exported[value] = export_constant(store / str(value), value)
            shutil.copytree(exported[value], repo / "age" / str(number))
        return repo

    return repository


@pytest.fixture
def quick_restarts(monkeypatch):
    """The supervisor's first wait before a restart (children.RESTART_BACKOFF_S, 1 s) shortened: these tests look at
    what a restart brings back, not at how long it waits first; it still doubles up to the same cap."""
    from serving.runtime import children

    monkeypatch.setattr(children, "RESTART_BACKOFF_S", (0.2, children.RESTART_BACKOFF_S[1]))


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


def test_a_rollback_outlives_a_crash_of_triton(constants, tmp_path, monkeypatch):
    """The launcher restarts a crashed Triton; it must serve the version rolled back to, not the repository's
    newest, and the door must refuse requests (saying why) until it does (serving/runtime/pins.py)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from serving.runtime import door, pins

    monkeypatch.setenv("TRITON_ADMIN_KEY", secrets.token_urlsafe(16))
    # No timed read of what it serves during the test: the switch is recorded because Triton's log says it happened
    # (pins.ServedVersions.notice). It used to be read every 2 s only, and a switch in the 2 s before a crash was lost.
    monkeypatch.setattr(pins, "POLL_S", 600.0)
    repo = constants(tmp_path, 1.0, 2.0)
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


def test_a_crash_with_a_broken_newest_version_on_disk_serves_what_it_served(
    tiny_repo, tmp_path, monkeypatch, quick_restarts
):
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


def test_a_dead_stub_restarts_triton_and_an_unloaded_one_does_not(constants, tmp_path, monkeypatch, quick_restarts):
    """A stub killed under a served model (the OOM killer, a native crash) left every request for it failing "Stub
    process is not healthy" while readiness said READY, for as long as Triton ran (serving/runtime/stubs.py). The
    launcher now restarts Triton, serving what it served; a stub that ends because its version was unloaded (a
    rollback) is no death."""
    from serving.runtime import stubs

    monkeypatch.setenv("TRITON_ADMIN_KEY", secrets.token_urlsafe(16))
    repo = constants(tmp_path, 1.0, 2.0)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, extra_args=CONTROL_ARGS["explicit"])
    with server:
        assert _age_answer(server) == 2.0
        assert switch(server.http_url, "age", 1) == [1]
        deadline = time.monotonic() + 30
        while any(stub[:2] == ("age", "2") for stub in stubs.stubs_of(server._proc.pid).values()):
            assert time.monotonic() < deadline, "the version 2 stub did not end"
            time.sleep(0.1)
        time.sleep(3 * stubs.CHECK_S)  # the version 2 stub is gone, unloaded, not dead: looked at since, no restart
        assert server.restarts == 0 and not any("stub" in e for e in server.events), server.events
        (pid,) = [pid for pid, stub in stubs.stubs_of(server._proc.pid).items() if stub[:2] == ("age", "1")]
        os.kill(pid, 9)
        deadline = time.monotonic() + 120
        while not (server.restarts and server.is_ready() and server._served.settled.is_set()):
            assert time.monotonic() < deadline, (server.events, server.logs(30))
            time.sleep(0.1)
        assert any("the Python stub of age version 1" in e and "died" in e for e in server.events), server.events
        assert _age_answer(server) == 1.0  # the version served before, again


def test_a_restart_that_cannot_read_its_repository_is_restarted_until_it_can(
    constants, tmp_path, monkeypatch, quick_restarts
):
    """A Triton restarted while its repository cannot be read (an s3:// store down for a moment: red-team finding,
    2026-12-07; here the folder moved away) answers /v2/health/live with 400 for as long as it runs. It was left so,
    serving nothing, with the door open on it; now it is restarted again until it serves."""
    from serving.runtime import server as server_module

    monkeypatch.setattr(server_module, "NOT_LIVE_S", 2.0)
    repo = constants(tmp_path, 2.0)
    away = tmp_path / "away"
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)
    with server:
        assert _age_answer(server) == 2.0
        repo.rename(away)
        os.kill(server._proc.pid, 9)
        deadline = time.monotonic() + 90
        while not any("has not been live" in e for e in server.events):
            assert time.monotonic() < deadline, (server.events, server.logs(20))
            time.sleep(0.1)
        away.rename(repo)
        while not (server.restarts >= 2 and server.is_ready()):
            assert time.monotonic() < deadline, (server.events, server.logs(20))
            time.sleep(0.1)
        assert _age_answer(server) == 2.0


def test_a_hung_triton_is_restarted(constants, tmp_path, monkeypatch, quick_restarts):
    """A Triton that runs but no longer answers (here stopped with SIGSTOP; a deadlock looks the same from outside)
    had every request wait out the door's deadline and readiness fail, for as long as it hung: nothing restarted it.
    Now the liveness watch kills it after HUNG_S without an answer, and it is restarted as after a crash."""
    import signal

    from serving.runtime import liveness

    monkeypatch.setattr(liveness, "CHECK_S", 0.5)
    monkeypatch.setattr(liveness, "HUNG_S", 2.0)
    monkeypatch.setattr(liveness, "ANSWER_S", 0.5)  # a stopped Triton's port accepts and never answers
    repo = constants(tmp_path, 2.0)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)
    with server:
        assert _age_answer(server) == 2.0
        time.sleep(liveness.HUNG_S + 1)  # answering all along: no restart
        assert server.restarts == 0, server.events
        hung = server._proc.pid
        os.kill(hung, signal.SIGSTOP)
        deadline = time.monotonic() + 90
        while not (server.restarts and server.is_ready()):
            assert time.monotonic() < deadline, (server.events, server.logs(20))
            time.sleep(0.1)
        assert any("has not answered its liveness" in e for e in server.events), server.events
        assert liveness.state(hung) is None  # killed, not left stopped
        assert _age_answer(server) == 2.0


def test_a_stopped_stub_restarts_triton(constants, tmp_path, monkeypatch, quick_restarts):
    """A stub stopped with SIGSTOP under a served model had every request for it fail ("is not healthy"), while
    readiness and Triton's liveness said all was well, for as long as it stayed stopped. Now the stub watch
    restarts Triton after STOPPED_S, as for a dead stub."""
    import signal

    from serving.runtime import liveness, stubs

    monkeypatch.setattr(stubs, "STOPPED_S", 2.0)
    repo = constants(tmp_path, 2.0)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)
    with server:
        assert _age_answer(server) == 2.0
        time.sleep(2.5 * stubs.CHECK_S)  # seen running first, as a stub in service is
        (pid,) = [pid for pid, stub in stubs.stubs_of(server._proc.pid).items() if stub.model == "age"]
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 90
        while not (server.restarts and server.is_ready()):
            assert time.monotonic() < deadline, (server.events, server.logs(20))
            time.sleep(0.1)
        assert any("the Python stub of age version 1" in e and "stopped (SIGSTOP)" in e for e in server.events)
        # Killed with Triton, not left stopped (a zombie until the process that adopted it reaps it).
        assert liveness.state(pid) in (None, "Z")
        assert _age_answer(server) == 2.0

"""A start loads both ensembles first and every other model (`faces`) right after the first answer
(serving/runtime/command.py ``loads_first``), and a request for a model that is still loading waits at the gate
(gate_relay.Loading) instead of failing."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from client import AgeGenderClient
from common import contract
from serving.runtime import command, narrow_start, stubs
from serving.runtime.command import CONTROL_ARGS
from serving.runtime.launch import TritonServer

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "gradio_frontend" / "examples" / "grace_hopper.jpg"
#: Seconds the test holds the later loads back, so that requests surely come before them.
HOLD_S = 3.0


def test_only_a_default_start_from_a_folder_loads_the_ensembles_first(tiny_repo, tmp_path):
    assert command.loads_first(tiny_repo, ())
    for mode, args in CONTROL_ARGS.items():
        # explicit and poll: the operator's control mode decides, and rollouts see every model from the start
        assert command.loads_first(tiny_repo, args) == (mode == "none"), mode
    assert not command.loads_first(tmp_path, ())  # no ensembles in the folder: everything loads as before


def _states(server: TritonServer) -> dict[str, str | None]:
    # Triton opens its gRPC port before its HTTP port: the first answer (over gRPC) can come before this one listens.
    deadline = time.monotonic() + 30
    while True:
        try:
            status, body = server._triton_http("/v2/repository/index", post=True, admin=True)
            break
        except OSError:
            assert time.monotonic() < deadline, "Triton's HTTP port never opened"
            time.sleep(0.05)
    assert status == 200, body
    return {m["name"]: m.get("state") for m in json.loads(body)}


def test_ensembles_first_and_early_requests_wait_for_their_model(tiny_repo):
    server = TritonServer(tiny_repo, http_port=0, grpc_port=0, metrics_port=0)
    server.later_load_delay_s = HOLD_S
    server.start()
    try:
        args = server.command()[0]
        assert "--model-control-mode=explicit" in args
        assert {f"--load-model={m}" for m in (contract.CROP_ENSEMBLE, contract.DETECT_ENSEMBLE)} <= set(args)
        # retries=0: the client's own retries on "model not ready" would hide a request that failed at the gate.
        grpc_client = AgeGenderClient(server.grpc_url, protocol="grpc", retries=0, timeout=60)
        http_client = AgeGenderClient(server.http_url, protocol="http", retries=0, timeout=60)
        deadline = time.monotonic() + 120
        while True:
            try:
                crop = grpc_client.predict(PORTRAIT, detect=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, server.logs(40)
                time.sleep(0.05)
        assert crop.error is None and crop.age is not None
        states = _states(server)
        assert states[contract.CROP_ENSEMBLE] == states[contract.DETECT_ENSEMBLE] == "READY", states
        assert states[contract.FACES_MODEL] is None, states  # not loaded yet: the ensembles came first
        assert server.later_models() == (contract.FACES_MODEL,)
        # One instance of each decoding model so far (narrow_start.py): their configs give two.
        first_stubs = _decoding_stubs(server)
        assert sorted(_models(first_stubs)) == sorted(narrow_start.MODELS), first_stubs

        # Sent now, while `faces` is not loaded: its requests wait at the gate, over gRPC and HTTP, then succeed.
        answers: dict[str, object] = {}

        def ask(name, call):
            try:
                answers[name] = call()
            except Exception as err:  # noqa: BLE001 - reported by the assertion below
                answers[name] = err

        calls = {
            "grpc faces": lambda: grpc_client.predict_faces(PORTRAIT),
            "http faces": lambda: http_client.predict_faces(PORTRAIT),
            "grpc detect": lambda: grpc_client.predict(PORTRAIT, detect=True),
        }
        threads = [threading.Thread(target=ask, args=item) for item in calls.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        for name in ("grpc faces", "http faces"):
            assert isinstance(answers[name], list) and answers[name], (name, answers[name])
        assert getattr(answers["grpc detect"], "error", "no answer") is None, answers["grpc detect"]
        assert _states(server)[contract.FACES_MODEL] == "READY"

        server.wait_ready(timeout=120)  # ready means every model, the later ones included
        assert all(state == "READY" for state in _states(server).values())
        # And now two of each: Triton added one beside the one serving, or (a model whose files changed since it
        # loaded, as a first start's __pycache__ does) loaded it anew beside it and then unloaded the old one.
        deadline = time.monotonic() + 60
        while sorted(_models(now := _decoding_stubs(server))) != sorted(narrow_start.MODELS * 2):
            assert time.monotonic() < deadline, (first_stubs, now)
            time.sleep(0.1)
        for model in narrow_start.MODELS:
            config = json.loads(server._triton_http(f"/v2/models/{model}/config", internal=True)[1])
            assert config["instance_group"][0]["count"] == 2, config["instance_group"]
        assert not server._later.failures and not any("failed" in e for e in server.events), server.events
    finally:
        server.stop()


def _models(found: dict[int, stubs.Stub]) -> list[str]:
    return [stub.model for stub in found.values()]


def _decoding_stubs(server: TritonServer) -> dict[int, stubs.Stub]:
    return {pid: s for pid, s in stubs.stubs_of(server._proc.pid).items() if s.model in narrow_start.MODELS}

"""Issue 18 item 5: no key on any command line, and Triton's own loopback ports refuse inference without the
internal key that only the front door presents (serving/runtime/security.py, serving/runtime/argv_secret.c)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from common import contract
from serving.runtime import binary, security
from tests.test_hardening import http


def _cmdlines() -> dict[int, bytes]:
    """Every process's command line on this machine (any of them could be one we started)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                pass  # gone meanwhile
    return found


ROOT = Path(__file__).resolve().parents[1]
#: The KServe example Secret's value, left in place by whoever applies the template as it is.
EXAMPLE_SECRET = ROOT / "deploy" / "kserve" / "secrets" / "admin-key.example.yaml"
HOW_TO_MAKE_ONE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _example_placeholder() -> str:
    import yaml

    return yaml.safe_load(EXAMPLE_SECRET.read_text())["stringData"]["admin-key"]


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("a", "at least 16 characters"),
        ("x" * 15, "at least 16 characters"),
        (_example_placeholder(), "not a REPLACE_WITH_... placeholder"),
        ("replace_with_" + secrets.token_urlsafe(32), "not a REPLACE_WITH_... placeholder"),  # long is not enough
    ],
    ids=["one-character", "15-characters", "kserve-example", "placeholder-prefix"],
)
def test_a_short_or_placeholder_admin_key_is_refused_with_how_to_make_one(key, why):
    with pytest.raises(ValueError) as refused:
        security.admin_key({security.ADMIN_KEY_ENV: key})
    message = str(refused.value)
    assert message.startswith(f"{security.ADMIN_KEY_ENV} must") and why in message and HOW_TO_MAKE_ONE in message
    assert len(key) < 3 or key not in message  # never the key itself (the launcher prints the message)


def test_a_random_admin_key_is_taken_as_it_is():
    for key in (secrets.token_urlsafe(12), secrets.token_urlsafe(16), secrets.token_urlsafe(32)):  # 16, 22, 43
        assert security.admin_key({security.ADMIN_KEY_ENV: f" {key}\n"}) == (key, False)
    generated, fresh = security.admin_key({})
    assert fresh and security.admin_key({security.ADMIN_KEY_ENV: generated}) == (generated, False)


@pytest.mark.parametrize("key", ["a", _example_placeholder()], ids=["short", "kserve-example"])
def test_the_launcher_refuses_a_weak_admin_key_in_one_line_and_starts_nothing(key):
    from serving.runtime.launch import free_port

    ports = [str(free_port()) for _ in range(3)]
    argv = ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    env = {**os.environ, security.ADMIN_KEY_ENV: key, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "serving.runtime.launch", *argv], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: {security.ADMIN_KEY_ENV} must") and done.stderr.count("\n") == 1
    assert HOW_TO_MAKE_ONE in done.stderr and "Traceback" not in done.stderr
    for port in ports:  # nothing listens: nothing was started
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()


@pytest.mark.parametrize("wrapped", [False, True], ids=["direct", "through-a-wrapper-script"])
def test_preload_swaps_the_placeholder_and_leaves_no_trace(wrapped):
    secret = secrets.token_urlsafe(24)
    env = dict(os.environ)
    hidden = security.hide_in_env(env, {"A2_TEST_SECRET": secret})
    env["ARGV_SECRET_EXE"] = Path(os.path.realpath(sys.executable)).name  # the program meant (tritonserver's stand-in)
    code = (
        "import os, sys, time; print(sys.argv[1], os.environ.get('A2_TEST_SECRET'), os.environ.get('LD_PRELOAD'),"
        " flush=True); time.sleep(30)"
    )
    # The NVIDIA image starts Triton through a shell entrypoint (`exec "$@"`) that LD_PRELOAD loads the library into
    # too: swapped there, the shell would exec the program with the key in its arguments.
    wrapper = ["bash", "-c", 'exec "$@"', "entrypoint"] if wrapped else []
    child = subprocess.Popen(
        [*wrapper, sys.executable, "-c", code, f"key={hidden['A2_TEST_SECRET']}"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().split() == [f"key={secret}", "None", "None"]  # parsed; children inherit none
        proc = Path(f"/proc/{child.pid}")
        assert b"key=@A2_TEST_SECRET@" in (proc / "cmdline").read_bytes()
        assert secret.encode() not in (proc / "cmdline").read_bytes()
        assert secret.encode() not in (proc / "environ").read_bytes()  # wiped from the initial block too
    finally:
        child.kill()
        child.wait()


def test_a_listed_secret_that_is_not_set_stops_the_program():
    # The check argument is swapped like any other: with the key's variable missing, the program would have run
    # with the public placeholder as its key and the check passed.
    env = dict(os.environ)
    hidden = security.hide_in_env(env, {"A2_TEST_SECRET": "x"})
    del env["A2_TEST_SECRET"]
    env["ARGV_SECRET_EXE"] = Path(os.path.realpath(sys.executable)).name
    done = subprocess.run(
        [sys.executable, "-c", "print('ran')", hidden["A2_TEST_SECRET"]], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0 and "ran" not in done.stdout
    assert "A2_TEST_SECRET is listed in ARGV_SECRETS but not set" in done.stderr


def test_without_the_preload_triton_refuses_to_start(tmp_path):
    # Fail closed: were argv_secret.so not loaded, Triton must not run with the (public) placeholder as its key.
    env = dict(os.environ)
    hidden = security.hide_in_env(env, {security.ADMIN_KEY_ENV: secrets.token_urlsafe(24)})
    del env["LD_PRELOAD"]
    executable = binary.container_binary() or binary.pip_triton(tmp_path, env)[0]
    args = [executable, f"--model-repository={tmp_path}", *security.restricted_args(hidden[security.ADMIN_KEY_ENV])]
    done = subprocess.run(
        [*args, hidden[security.PRELOAD_CHECK_ENV]], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "Unexpected argument: @ARGV_SECRET_CHECK@" in done.stdout + done.stderr


@pytest.mark.integration
def test_no_process_has_a_key_on_its_command_line(triton_tiny):
    keys = [triton_tiny.admin_key.encode(), security.internal_key().encode()]
    leaks = {pid: line[:200] for pid, line in _cmdlines().items() if any(k in line for k in keys)}
    assert not leaks
    # The keys really are in use, as placeholders: Triton's line names them, its environment no longer holds them.
    triton = Path(f"/proc/{triton_tiny._proc.pid}")
    line = (triton / "cmdline").read_bytes()
    assert security.placeholder(security.ADMIN_KEY_ENV).encode() in line
    assert security.placeholder(security.INTERNAL_KEY_ENV).encode() in line
    assert line.endswith(security.placeholder(security.PRELOAD_CHECK_ENV).encode() + b"\0")  # became a flag
    assert not any(k in (triton / "environ").read_bytes() for k in keys)
    assert triton_tiny.admin_key not in triton_tiny.logs()
    # nginx.conf holds the internal key: owner-only.
    assert triton_tiny._door.config_path.stat().st_mode & 0o077 == 0


def _crop_body() -> bytes:
    tensor = {"name": contract.CROP_INPUT, "datatype": "BYTES", "shape": [1, 1], "data": ["not an image"]}
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.mark.integration
def test_triton_own_ports_refuse_inference_without_the_internal_key(triton_tiny):
    inner_http = f"127.0.0.1:{triton_tiny.triton_http_port}"
    infer = f"/v2/models/{contract.CROP_ENSEMBLE}/infer"
    status, text = http(inner_http, infer, _crop_body())
    assert status == 403 and security.INTERNAL_HEADER.encode() in text
    assert http(inner_http, f"/v2/models/{contract.CROP_ENSEMBLE}/config")[0] == 403
    assert http(inner_http, "/v2/health/ready")[0] == 200  # probes stay open
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton_tiny.triton_grpc_port}")
    inp = grpcclient.InferInput(contract.CROP_INPUT, [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"not an image"]], dtype=object))
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.infer(contract.CROP_ENSEMBLE, [inp])
    finally:
        client.close()
    # Through the door the same call is answered (the item's own error: it is not an image).
    status, text = http(triton_tiny.http_url, infer, _crop_body())
    assert status == 200, text
    door_client = grpcclient.InferenceServerClient(triton_tiny.grpc_url)
    try:
        assert door_client.infer(contract.CROP_ENSEMBLE, [inp]).as_numpy(contract.ENSEMBLE_ERROR)[0, 0]
    finally:
        door_client.close()


@pytest.mark.integration
def test_admin_key_is_the_real_one_not_the_placeholder(triton_tiny):
    # Were the preload not loaded, Triton would take the placeholder itself as the key: it must be refused.
    for key, expected in ((security.placeholder(security.ADMIN_KEY_ENV), 403), (triton_tiny.admin_key, 200)):
        assert http(triton_tiny.http_url, "/v2/logging", headers={security.ADMIN_HEADER: key})[0] == expected
    inner_http = f"127.0.0.1:{triton_tiny.triton_http_port}"
    placeholder = security.placeholder(security.INTERNAL_KEY_ENV)
    status, _ = http(inner_http, f"/v2/models/{contract.CROP_ENSEMBLE}/config", headers={"internal-key": placeholder})
    assert status == 403


def test_children_that_need_no_key_start_without_the_operators_keys(tmp_path, monkeypatch):
    # An operator's TRITON_ADMIN_KEY / TRITON_INTERNAL_KEY stay with the launcher, Triton (hidden) and the gate:
    # nginx (and the reaper, started the same way) get an environment without them.
    from serving.runtime import door
    from serving.runtime.launch import free_port

    nginx = door.find_nginx()
    if nginx is None:
        pytest.skip("nginx not installed (make setup)")
    keys = {name: f"leak-test-{name.lower()}-" + secrets.token_hex(8) for name in security.KEY_ENVS}
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    assert security.without_keys() == {k: v for k, v in os.environ.items() if k not in keys}
    # The real nginx, behind a wrapper that records the environment it is started with (its own /proc/PID/environ
    # is no witness: nginx reuses that memory for its process title).
    seen = tmp_path / "environ"
    wrapper = tmp_path / "nginx-wrapper"
    wrapper.write_text(f'#!/bin/sh\nenv > "{seen}"\nexec "{nginx}" "$@"\n')
    wrapper.chmod(0o700)
    monkeypatch.setattr(door, "find_nginx", lambda: str(wrapper))
    front = door.Door(
        tmp_path / "nginx", listen_host="127.0.0.1", http_port=free_port(), grpc_port=free_port(),
        triton_http=f"127.0.0.1:{free_port()}", triton_grpc=f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    front.start()
    try:
        deadline = time.monotonic() + 10
        while not (seen.exists() and seen.read_text().endswith("\n")):
            assert time.monotonic() < deadline, "the wrapper did not run"
            time.sleep(0.05)
        environ = seen.read_text()
        assert not any(value in environ for value in keys.values())
        assert "PATH=" in environ  # the rest of the environment is still there
    finally:
        front.stop(timeout=5)

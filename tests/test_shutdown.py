"""Graceful stop of `make serve` whatever gets the signal (issue 18, item 4).

The launcher runs in a process group of its own, as a shell runs `make serve`, and the whole group gets the
signal (``kill -TERM -PGID``, or SIGINT as Ctrl-C sends it) while four clients send crop-path requests, two over
HTTP and two over gRPC. Every request sent before the signal must be answered successfully; later ones may
succeed, or be refused cleanly (HTTP 503, gRPC UNAVAILABLE, connection refused), never cut. Afterwards no
process the launcher started may be left. (Signalling the launcher alone: tests/test_hardening.py, row 7.)
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.conftest import start_launcher
from tests.test_launch import group_alive

CROP_MODELS = ("preprocess_crop", "age", "gender", "postprocess", "age_gender_crop")
MODEL = "age_gender_crop"
CLEAN_REFUSALS = {"503", "UNAVAILABLE", "refused"}


@pytest.fixture(scope="module")
def crop_repo(tiny_repo, tmp_path_factory) -> Path:
    """The crop path of ``tiny_repo`` only: no detector to load, so the launcher is ready sooner."""
    repo = tmp_path_factory.mktemp("crop") / "model_repository"
    for name in CROP_MODELS:  # links resolved: preprocess_crop's model.py points into preprocess/
        shutil.copytree(tiny_repo / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def crop_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def http_request(url: str, image: bytes) -> str:
    """One crop request with the binary data extension, as tritonclient sends it; returns the outcome."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": 4 + len(image)},
                }
            ]
        }
    ).encode()
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(
            "POST",
            f"/v2/models/{MODEL}/infer",
            header + struct.pack("<I", len(image)) + image,
            {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        )
        response = conn.getresponse()
        body = response.read()
        if response.status == 200:
            return "ok" if any(o["name"] == "age" for o in json.loads(body)["outputs"]) else "bad answer"
        return str(response.status)
    except ConnectionRefusedError:
        return "refused"
    except (OSError, http.client.HTTPException) as err:  # "Remote end closed connection", resets
        return f"cut: {type(err).__name__}: {err}"
    finally:
        conn.close()


def grpc_request(client: grpcclient.InferenceServerClient, image: bytes) -> str:
    tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image]], dtype=object))
    try:
        result = client.infer(MODEL, [tensor], client_timeout=60)
    except InferenceServerException as err:
        status = str(err.status())
        # A closed listener reads as UNAVAILABLE too (connection refused): a clean refusal either way.
        return "UNAVAILABLE" if status.endswith("UNAVAILABLE") else f"cut: {status}: {err.message()}"
    return "ok" if result.as_numpy("age") is not None else "bad answer"


def owned_groups(launcher_pid: int) -> set[int]:
    """Process groups of the launcher's children (each runs in a session of its own)."""
    kids = subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True).stdout.split()
    return {os.getpgid(int(k)) for k in kids}


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_group_answers_everything_accepted(crop_repo, sig):
    proc, http_url, grpc_url = start_launcher(crop_repo, "--drain-grace", "1", start_new_session=True)
    try:
        errors = []
        threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
        groups = owned_groups(proc.pid)
        assert proc.pid not in groups and len(groups) >= 3, groups  # nginx, tritonserver, the reaper: their own groups
        image = crop_jpeg()
        signalled = threading.Event()
        outcomes: list[tuple[bool, str]] = []  # (sent before the signal, outcome)

        def client(protocol: str) -> None:
            grpc = grpcclient.InferenceServerClient(grpc_url) if protocol == "grpc" else None
            try:
                while True:
                    before = not signalled.is_set()
                    outcome = grpc_request(grpc, image) if grpc else http_request(http_url, image)
                    outcomes.append((before, outcome))
                    if not before and outcome in CLEAN_REFUSALS:
                        return  # refused cleanly after the signal: this client is done
                    if proc.poll() is not None:
                        return
            finally:
                if grpc is not None:
                    grpc.close()

        threads = [threading.Thread(target=client, args=(p,)) for p in ("http", "http", "grpc", "grpc")]
        for t in threads:
            t.start()
        time.sleep(3)
        signalled.set()
        os.killpg(proc.pid, sig)  # the launcher's whole group, as `kill -TERM -PGID` or Ctrl-C sends it
        proc.wait(timeout=120)
        for t in threads:
            t.join(timeout=120)
        assert proc.returncode == 0, "".join(errors[-30:])
        before = [o for sent_before, o in outcomes if sent_before]
        after = [o for sent_before, o in outcomes if not sent_before]
        assert before.count("ok") >= 4 and set(before) == {"ok"}, before
        assert set(after) <= {"ok"} | CLEAN_REFUSALS, after
        assert set(after) & CLEAN_REFUSALS, after  # the drain refused new requests before the door closed
        deadline = time.monotonic() + 15  # Triton's orphaned stubs are reaped by init a moment after it exits
        while any(map(group_alive, groups)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [g for g in groups if group_alive(g)], "left running after the stop"
    finally:
        if proc.poll() is None:  # failed before its signal: stop it all the same, nothing may outlive the test
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=120)

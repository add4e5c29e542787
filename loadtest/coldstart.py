"""Cold start: from `python -m serving.launch` to the first successful inference, and a clean stop.

    python -m loadtest.coldstart [--runs 3] [--model-repository model_repository]

Each run starts the launcher as a user would, sends the example portrait
through the `age_gender` ensemble until an answer comes back, then stops the
launcher with Ctrl-C (SIGINT) and checks that no Triton process or shared-memory
segment outlives it.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from client import AgeGenderClient, AgeGenderError
from serving.launch import DEFAULT_REPOSITORY, SHM_DIR, SHM_PREFIX, free_port

PORTRAIT = Path(__file__).resolve().parents[1] / "gradio_frontend" / "examples" / "grace_hopper.jpg"


def leftovers(grpc_port: str | None = None, shm_before: frozenset[str] = frozenset()) -> list[str]:
    """Processes of this run (they inherit its unique TRITON_GRPC_PORT) and shm segments it left; with no port,
    any Triton process on the machine. Other people's servers on a shared machine are not this run's leftovers."""
    found = []
    marker = f"TRITON_GRPC_PORT={grpc_port}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            if b"tritonserver" not in cmd and b"triton_python_backend_stub" not in cmd:
                continue
            if grpc_port is None or marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(proc.name)
        except OSError:
            continue
    return found + sorted({p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}*")} - shm_before)


def one_run(repository: Path, timeout: float, *, check_shm: bool = True) -> dict:
    """One cold start; ``check_shm=False`` where other servers create and remove segments meanwhile."""
    ports = {k: str(free_port()) for k in ("HTTP", "GRPC", "METRICS")}
    env = {**os.environ, **{f"TRITON_{k}_PORT": v for k, v in ports.items()}}
    shm_before = frozenset(p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}*"))
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.launch", "--model-repository", str(repository)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = AgeGenderClient(f"127.0.0.1:{ports['GRPC']}", protocol="grpc", retries=0, timeout=30)
    try:
        while True:
            if proc.poll() is not None or time.monotonic() - start > timeout:
                raise RuntimeError("the launcher exited or timed out before the first inference")
            try:
                result = client.predict(PORTRAIT)
                break
            except AgeGenderError:
                time.sleep(0.2)
        first = time.monotonic() - start
    finally:
        client.close()
        stop_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    return {
        "first_inference_s": first,
        "stop_s": time.monotonic() - stop_at,
        "exit_code": code,
        "face_found": result.face_found,
        "leftovers": leftovers(ports["GRPC"], shm_before)
        if check_shm
        else [p for p in leftovers(ports["GRPC"]) if not p.startswith(SHM_PREFIX)],
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args(argv)
    shared = bool(leftovers())
    if shared:
        print("note: other Triton processes are running: timings share the CPU, and shm segments are not checked")
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args.model_repository, args.timeout, check_shm=not shared))
        print(
            f"run {i + 1}: "
            + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in runs[-1].items()),
            flush=True,
        )
    median = statistics.median(r["first_inference_s"] for r in runs)
    print(f"cold start (command -> first inference), median of {len(runs)}: {median:.1f} s")
    return runs


if __name__ == "__main__":
    main()

"""Cold start: from `python -m serving.runtime.launch` to the first successful inference, and a clean stop.

    python -m loadtest.bench.coldstart [--runs 3] [--model-repository model_repository] [--s3]

Each run starts the launcher as a user would, sends the example portrait
through the `age_gender` ensemble until an answer comes back, then stops the
launcher with Ctrl-C (SIGINT) and checks that no Triton process or shared-memory
segment outlives it. Each run also records when the HTTP endpoint went live
(process start) and ready (all models loaded), which splits the cost.

``--s3`` publishes the repository to a local S3 server (moto, loadtest/local_s3.py)
and serves it from there: the same launcher, the ``s3://`` URI, the download included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client import AgeGenderClient, AgeGenderError
from serving.runtime.launch import DEFAULT_REPOSITORY, SHM_DIR, SHM_PREFIX, free_port

PORTRAIT = Path(__file__).resolve().parents[2] / "gradio_frontend" / "examples" / "grace_hopper.jpg"


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


# Triton's log prefix, e.g. `I1128 08:14:37.615268 15036 model_lifecycle.cc:...] "successfully loaded 'age'..."`.
LOG_TIME = re.compile(r"^[IWE]\d{4} (\d\d):(\d\d):(\d\d\.\d+) ")


def _phases(log: str, wall_start: float) -> dict:
    """Seconds from the command to Triton's first log line, and to its last model loaded (log in local time)."""
    midnight = (
        datetime.datetime.fromtimestamp(wall_start).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    )
    stamps = []
    for line in log.splitlines():
        if m := LOG_TIME.match(line):
            t = midnight + int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
            stamps.append((t - wall_start, "successfully loaded" in line))
    loaded = [t for t, ok in stamps if ok]
    return {"triton_start_s": stamps[0][0] if stamps else None, "models_loaded_s": max(loaded) if loaded else None}


def one_run(repository: Path | str, timeout: float, *, check_shm: bool = True) -> dict:
    """One cold start; ``check_shm=False`` where other servers create and remove segments meanwhile."""
    ports = {k: str(free_port()) for k in ("HTTP", "GRPC", "METRICS")}
    env = {**os.environ, **{f"TRITON_{k}_PORT": v for k, v in ports.items()}}
    shm_before = frozenset(p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}*"))
    log = tempfile.TemporaryFile("w+")
    start, wall_start = time.monotonic(), time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.runtime.launch", "--model-repository", str(repository)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,  # the launcher echoes Triton's log there: its timestamps split the cold start
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
    log.seek(0)
    phases = _phases(log.read(), wall_start)
    log.close()
    return {
        **phases,
        "first_inference_s": first,
        "stop_s": time.monotonic() - stop_at,
        "exit_code": code,
        "face_found": result.face_found,
        "leftovers": leftovers(ports["GRPC"], shm_before)
        if check_shm
        else [p for p in leftovers(ports["GRPC"]) if not p.startswith(SHM_PREFIX)],
    }


def _local_s3(stack: contextlib.ExitStack, folder: str) -> str:
    """Starts moto, publishes ``folder`` to it, sets the credentials in this process's environment."""
    import io

    from loadtest.local_s3 import LocalS3
    from serving.ops.publish import publish

    s3 = stack.enter_context(LocalS3())
    os.environ.update(s3.credentials)  # the launcher subprocesses inherit them
    started = time.monotonic()
    publish(Path(folder), s3.uri("coldstart"), out=io.StringIO())
    print(f"published {folder} to {s3.uri('coldstart')} in {time.monotonic() - started:.1f} s", flush=True)
    return s3.uri("coldstart")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", default=str(DEFAULT_REPOSITORY), help="a folder or an s3:// URI")
    p.add_argument("--s3", action="store_true", help="publish the folder to a local moto S3 server, serve from there")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args(argv)
    shared = bool(leftovers())
    if shared:
        print("note: other Triton processes are running: timings share the CPU, and shm segments are not checked")
    runs = []
    with contextlib.ExitStack() as stack:
        repository = _local_s3(stack, args.model_repository) if args.s3 else args.model_repository
        for i in range(args.runs):
            runs.append(one_run(repository, args.timeout, check_shm=not shared))
            print(
                f"run {i + 1}: "
                + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in runs[-1].items()),
                flush=True,
            )
    keys = ("triton_start_s", "models_loaded_s", "first_inference_s")
    med = {k: statistics.median(r[k] for r in runs if r[k] is not None) for k in keys}
    print(
        f"cold start from {'S3 (moto)' if args.s3 else 'local disk'} (command -> first inference), median of "
        f"{len(runs)}: {med['first_inference_s']:.1f} s = launcher to Triton {med['triton_start_s']:.1f} s "
        f"+ loading (and downloading) models {med['models_loaded_s'] - med['triton_start_s']:.1f} s "
        f"+ endpoints up and first answer {med['first_inference_s'] - med['models_loaded_s']:.1f} s"
    )
    return runs


if __name__ == "__main__":
    main()

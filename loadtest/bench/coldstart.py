"""Cold start: from `python -m serving.runtime.launch` to the first successful inference, and a clean stop.

    python -m loadtest.bench.coldstart [--runs 3] [--model-repository model_repository] [--s3 [--s3-read stage|triton]]
                                       [--path crop|detect]

Each run starts the launcher as a user would, sends a face crop through `age_gender_crop` (``--path detect``:
the example portrait through `age_gender`) until an answer comes back, then stops the
launcher with Ctrl-C (SIGINT) and checks that no Triton process or shared-memory
segment outlives it. Each run also records when the HTTP endpoint went live
(process start) and ready (all models loaded), which splits the cost.

``--s3`` publishes the repository to a local S3 server (moto, loadtest/local_s3.py)
and serves it from there: the same launcher, the ``s3://`` URI, the download included (``--s3-read``: the
launcher stages a local copy first, or Triton reads the bucket itself; ``auto`` as the launcher decides).

``--breakdown`` adds a table per model, medians over the runs, in seconds: when Triton asked for the model,
when its first stub process started (/proc), the stub's imports, reading the IR or converting the SavedModel,
compiling (all three from the line the openvino_savedmodel backend prints after initialize()), warm-up
(initialize() done to Triton's "successfully loaded"), and with ``--s3`` when the model's files landed in
Triton's download folder (or the launcher's staging folder). Python models without such a line show stub start
to loaded as one span.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
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
from common import contract
from loadtest import cli, procs
from serving.runtime.launch import DEFAULT_REPOSITORY, SHM_DIR, SHM_PREFIX, free_port
from serving.runtime.server import STAGE_FOLDER

PORTRAIT = Path(__file__).resolve().parents[2] / "gradio_frontend" / "examples" / "grace_hopper.jpg"
#: What the first request is: ``crop``, an aligned 200x200 face crop through ``age_gender_crop`` (what issue 15
#: times), or ``detect``, the whole portrait through ``age_gender``. Models load together either way.
PATHS = ("crop", "detect")


def _first_image(path: str) -> bytes:
    """The first request's image: the portrait, or its face cut to UTKFace's 200x200 framing."""
    import io

    from PIL import Image

    if path == "detect":
        return PORTRAIT.read_bytes()
    buf = io.BytesIO()
    Image.open(PORTRAIT).convert("RGB").crop((120, 80, 320, 280)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


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


LOADING = re.compile(r'"loading: ([\w.-]+):(\d+)"')
LOADED = re.compile(r"successfully loaded '([\w.-]+)'")
#: The line serving/pipeline/backends/openvino_savedmodel/model.py prints after initialize() (epoch seconds).
TIMING = re.compile(r"\[coldstart\] (\{.*\})\s*$")


def _stamped(log: str, wall_start: float) -> list[tuple[float, str]]:
    """(seconds since the command, line) for each of Triton's timestamped log lines (local time)."""
    midnight = (
        datetime.datetime.fromtimestamp(wall_start).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    )
    return [
        (midnight + int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) - wall_start, line)
        for line in log.splitlines()
        if (m := LOG_TIME.match(line))
    ]


def _phases(log: str, wall_start: float, path: str = "crop") -> dict:
    """Seconds from the command to Triton's first log line, to the first request's ensemble loaded (the launcher
    loads the ensembles first and `faces` after them: serving/runtime/command.py), and to the last model loaded."""
    stamps = _stamped(log, wall_start)
    loaded = {m[1]: t for t, line in stamps if (m := LOADED.search(line))}
    ensemble = contract.CROP_ENSEMBLE if path == "crop" else contract.DETECT_ENSEMBLE
    return {
        "triton_start_s": stamps[0][0] if stamps else None,
        "models_loaded_s": loaded.get(ensemble, max(loaded.values(), default=None)),
        "all_models_loaded_s": max(loaded.values(), default=None),
    }


def _snapshot(grpc_port: str) -> dict:
    """While this run's server is up: each stub's model folder and start time, and Triton's S3 download folder."""
    stubs, mount = [], None
    for pid in leftovers(grpc_port):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError, StopIteration):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if "triton_python_backend_stub" in argv[0]:
                # argv[1] is the model file: <repo>/<model>/<version>/model.py, or <backend>/model.py with the
                # instance name later on the line (Python-based backends); either way a token names the model.
                stubs.append({"argv": argv[1:], "start": procs.started_at(pid)})
            else:
                # Staged by the launcher (storage.stage): Triton serves the local copy it was given.
                staged = [
                    a.split("=", 1)[1] for a in argv if a.startswith("--model-repository=") and f"/{STAGE_FOLDER}" in a
                ]
                mount = staged[0] if staged else mount
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                mount = next(
                    (e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"TRITON_AWS_MOUNT_DIR")), mount
                )
    files = []  # (model, mtime): Triton names each downloaded model folder at random; its config names the model
    for folder in Path(mount).iterdir() if mount and Path(mount).is_dir() else ():
        with contextlib.suppress(OSError):
            named = re.search(r'^\s*name:\s*"([^"]+)"', (folder / "config.pbtxt").read_text(), re.M)
            model = named[1] if named else folder.name
            fetched = [f for f in folder.rglob("*") if f.is_file() and "__pycache__" not in f.parts]  # not stubs' own
            files += [(model, f.stat().st_mtime) for f in fetched]
    return {"stubs": stubs, "files": files}


def breakdown(log: str, wall_start: float, snapshot: dict) -> dict[str, dict[str, float | str | None]]:
    """Per model, seconds since the command (``*_at``) or spans (the rest); see the module docstring."""
    stamps = _stamped(log, wall_start)
    rows: dict[str, dict] = {}
    for t, line in stamps:
        if m := LOADING.search(line):
            rows.setdefault(m[1], {"version": m[2], "requested_at": t})
        elif (m := LOADED.search(line)) and m[1] in rows:
            rows[m[1]]["ready_at"] = t
    timings: dict[str, list[dict]] = {}
    for line in log.splitlines():
        if m := TIMING.search(line):
            with contextlib.suppress(ValueError):
                record = json.loads(m[1])
                timings.setdefault(record["model"], []).append(record)
    for name, row in rows.items():
        starts = [
            s["start"] - wall_start
            for s in snapshot.get("stubs", [])
            if any(
                a == name or f"/{name}/" in a or re.fullmatch(rf"{re.escape(name)}_\d+(_\d+)?", a) for a in s["argv"]
            )
        ]
        row["stub_start_at"] = min(starts) if starts else None
        row["instances"] = len(starts)
        own = timings.get(name, [])
        if own:
            # Instances load side by side: the slowest one decides when the model is ready.
            row["imports"] = max(r["imports"][1] - r["imports"][0] for r in own)
            row["load_ir_or_convert"] = max(r["load_model"][1] - r["load_model"][0] for r in own)
            row["compile"] = max(r["compile"][1] - r["compile"][0] for r in own)
            row["initialize_done_at"] = max(r["initialize"][1] for r in own) - wall_start
            row["source"] = ", ".join(sorted({r["source"] for r in own}))
            if "ready_at" in row:
                row["warmup"] = row["ready_at"] - row["initialize_done_at"]
        elif row["stub_start_at"] is not None and "ready_at" in row:
            row["stub_to_ready"] = row["ready_at"] - row["stub_start_at"]  # imports + initialize(), not split
        landed = [t - wall_start for model, t in snapshot.get("files", []) if model == name]
        if landed:
            row["downloaded_at"] = max(landed)
            row["files_downloaded"] = len(landed)
    return rows


def one_run(
    repository: Path | str,
    timeout: float,
    *,
    check_shm: bool = True,
    detail: bool = False,
    path: str = "crop",
    s3_read: str = "auto",
) -> dict:
    """One cold start; ``check_shm=False`` where other servers create and remove segments meanwhile.
    ``detail`` adds the per-model ``breakdown``."""
    ports = {k: str(free_port()) for k in ("HTTP", "GRPC", "METRICS")}
    env = {**os.environ, **{f"TRITON_{k}_PORT": v for k, v in ports.items()}}
    shm_before = frozenset(p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}*"))
    log = tempfile.TemporaryFile("w+")
    start, wall_start = time.monotonic(), time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.runtime.launch", "--model-repository", str(repository), "--s3-read", s3_read],
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
                result = client.predict(_first_image(path), detect=path == "detect")
                break
            except AgeGenderError:
                time.sleep(0.05)  # fine enough that the poll adds little to what is measured
        first = time.monotonic() - start
        snapshot = _snapshot(ports["GRPC"]) if detail else {}
    finally:
        client.close()
        stop_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    log.seek(0)
    text = log.read()
    phases = _phases(text, wall_start, path)
    log.close()
    return {
        **({"breakdown": breakdown(text, wall_start, snapshot)} if detail else {}),
        **phases,
        "first_inference_s": first,
        "stop_s": time.monotonic() - stop_at,
        "exit_code": code,
        "face_found": result.face_found,
        "leftovers": leftovers(ports["GRPC"], shm_before)
        if check_shm
        else [p for p in leftovers(ports["GRPC"]) if not p.startswith(SHM_PREFIX)],
    }


def s3_requests(requests: list[tuple[str, str]]) -> dict[str, int]:
    """S3 calls by kind, from moto's access log: object reads, listings, HEADs (Triton checks the bucket per file)."""
    kinds = {"get": 0, "list": 0, "head": 0, "other": 0}
    for method, path in requests:
        kind = "list" if method == "GET" and "prefix=" in path else method.lower()
        kinds[kind if kind in kinds else "other"] += 1
    return {"total": len(requests), **kinds}


def _local_s3(stack: contextlib.ExitStack, folder: str) -> tuple[str, object]:
    """Starts moto, publishes ``folder`` to it, sets the credentials in this process's environment."""
    import io

    from loadtest.local_s3 import LocalS3
    from serving.ops.publish import publish

    s3 = stack.enter_context(LocalS3())
    os.environ.update(s3.credentials)  # the launcher subprocesses inherit them
    started = time.monotonic()
    publish(Path(folder), s3.uri("coldstart"), out=io.StringIO())
    print(f"published {folder} to {s3.uri('coldstart')} in {time.monotonic() - started:.1f} s", flush=True)
    return s3.uri("coldstart"), s3


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", default=str(DEFAULT_REPOSITORY), help="a folder or an s3:// URI")
    p.add_argument("--s3", action="store_true", help="publish the folder to a local moto S3 server, serve from there")
    p.add_argument(
        "--s3-read", choices=("auto", "stage", "triton"), default="auto", help="with --s3: the launcher's --s3-read"
    )
    p.add_argument("--runs", type=cli.positive_int, default=3, help="cold starts to take the median of")
    p.add_argument("--timeout", type=cli.positive_float, default=300)
    p.add_argument("--breakdown", action="store_true", help="per model: stub start, imports, IR/convert, compile...")
    p.add_argument("--path", choices=PATHS, default="crop", help="the first request: a face crop, or the portrait")
    p.add_argument("--json", type=Path, help="also write every run (breakdown included) to this file")
    args = p.parse_args(argv)
    shared = bool(leftovers())
    if shared:
        print("note: other Triton processes are running: timings share the CPU, and shm segments are not checked")
    runs = []
    with contextlib.ExitStack() as stack:
        repository, s3 = _local_s3(stack, args.model_repository) if args.s3 else (args.model_repository, None)
        for i in range(args.runs):
            before = len(s3.requests()) if s3 else 0
            runs.append(
                one_run(
                    repository,
                    args.timeout,
                    check_shm=not shared,
                    detail=args.breakdown,
                    path=args.path,
                    s3_read=args.s3_read,
                )
            )
            if s3:
                runs[-1]["s3_requests"] = s3_requests(s3.requests()[before:])
            print(
                f"run {i + 1}: "
                + ", ".join(
                    f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in runs[-1].items()
                    if k != "breakdown"
                ),
                flush=True,
            )
    keys = ("triton_start_s", "models_loaded_s", "first_inference_s")
    origin = f"S3 (moto, --s3-read {args.s3_read})" if args.s3 else "local disk"
    med = {k: statistics.median(r[k] for r in runs if r[k] is not None) for k in keys}
    print(
        f"cold start from {origin} (command -> first {args.path} answer), median of "
        f"{len(runs)}: {med['first_inference_s']:.1f} s = launcher to Triton {med['triton_start_s']:.1f} s "
        f"+ loading (and downloading) the path's models {med['models_loaded_s'] - med['triton_start_s']:.1f} s "
        f"+ endpoints up and first answer {med['first_inference_s'] - med['models_loaded_s']:.1f} s"
    )
    if args.breakdown:
        print(breakdown_table([r["breakdown"] for r in runs]))
    if args.json:
        args.json.write_text(json.dumps({"s3": args.s3, "shared_machine": shared, "runs": runs}, indent=1))
    for problem in problems(runs):
        print(f"FAILED: {problem}")
    return runs


def problems(runs: list[dict]) -> list[str]:
    """What went wrong in the runs: a start is only measured if it answered, stopped cleanly and left nothing."""
    found = []
    for i, run in enumerate(runs, 1):
        if run["exit_code"] != 0:
            found.append(f"run {i}: the launcher exited with {run['exit_code']} after Ctrl-C")
        if run["leftovers"]:
            found.append(f"run {i}: left behind {', '.join(map(str, run['leftovers']))}")
        if not run["face_found"]:
            found.append(f"run {i}: the first answer found no face")
    return found


#: Columns of the breakdown table: (key, heading); ``*_at`` are seconds since the command, the rest spans.
COLUMNS = (
    ("requested_at", "asked@"),
    ("downloaded_at", "files@"),
    ("stub_start_at", "stub@"),
    ("imports", "imports"),
    ("load_ir_or_convert", "IR/conv"),
    ("compile", "compile"),
    ("stub_to_ready", "stub->rdy"),
    ("warmup", "warm-up"),
    ("ready_at", "ready@"),
)


def breakdown_table(runs: list[dict[str, dict]]) -> str:
    """Medians over runs per model and column, as a Markdown table, models in the order they became ready."""
    models = sorted(
        {m for run in runs for m in run},
        key=lambda m: statistics.median(run[m].get("ready_at", float("inf")) for run in runs if m in run),
    )
    lines = [
        f"per-model cold start, median of {len(runs)} (seconds; @ = since the command)",
        "| model | v | inst | " + " | ".join(h for _, h in COLUMNS) + " | source |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    for model in models:
        rows = [run[model] for run in runs if model in run]
        cells = []
        for key, _ in COLUMNS:
            values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
            cells.append(f"{statistics.median(values):.2f}" if values else "")
        first = rows[0]
        lines.append(
            f"| {model} | {first.get('version', '')} | {first.get('instances', '')} | "
            + " | ".join(cells)
            + f" | {first.get('source') or ('python: imports + init' if first.get('instances') else 'ensemble')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(1 if problems(main()) else 0)

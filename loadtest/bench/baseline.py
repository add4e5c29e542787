"""The served path beside the code issue 15 was measured on, in one run, on one machine (issue 15's "2x today").

    python -m loadtest.bench.baseline [--commit 9fc7b59] [--rounds 2] [--duration 10] [--out DIR]

Issue 15 sets the detection path's target as twice what its main served ("today"), and the development VMs
differed by up to 3.5x between sessions: a baseline measured on another machine, or another day, says little
(docs/performance-log.md, twenty-fifth part). So this runs both here, alternately, each as ``make serve`` runs it:

1. ``git archive --commit`` (the issue's main by default) into a scratch folder, and this checkout as it is;
2. per round, each in turn: ``python -m serving.runtime.launch`` in its own tree, on free ports, with this
   checkout's Python environment (the old code runs on it: its dependencies are a subset); ready means warm;
3. the seconds from the command to readiness and to the first crop-path answer (issue 15's cold start), and the
   RSS of Triton and its stubs once every model has loaded, before any load (its memory target);
4. one request per body checked to be an estimate, then h2load (gRPC, through the public port, as
   :mod:`loadtest.bench.native` does) on the detection path (the 512x512 PNG portrait, c=8) and the crop path
   (c=16): ``--warmup`` seconds unmeasured, ``--duration`` measured, every answer checked by its size (a gRPC
   error is an HTTP 200 to h2load), and the CPU seconds of the launcher and everything under it;
5. the launcher stopped with SIGINT, as Ctrl-C stops ``make serve``.

The ratio is the median of this checkout's rounds over the baseline's. The served models may differ from the
baseline's (they did: issue 16's cost 2-2.5x the CNN work), which the ratio includes, as the issue's target does.
Writes ``baseline.md`` and ``baseline.json`` to ``--out`` when given. Needs h2load, which ``make bench-baseline``
installs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from common import contract
from loadtest import cli, procs
from loadtest.bench import loadgen, memory, native, wire
from serving.runtime.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
#: The main branch issue 15 was filed against (its numbers: docs/performance-log.md, first part).
ISSUE_15_MAIN = "9fc7b59"
#: (name, ensemble, body, concurrency): the issue's detection target, and the crop path at its c=16.
SCENARIOS = (
    ("detection", contract.DETECT_ENSEMBLE, native.portrait_png, native.DETECT_CONCURRENCY),
    ("crop", contract.CROP_ENSEMBLE, native.crop_jpeg, 16),
)
READY_TIMEOUT_S = 180


@dataclass
class Start:
    tree: str
    round: int
    ready_s: float  # the launcher's command to readiness 200 through the door
    first_answer_s: float  # the command to the first crop-path answer (issue 15's cold start)
    rss_mb: float  # Triton and its stubs once every model has loaded, before any load (issue 15's memory)


@dataclass
class Reading:
    tree: str  # "baseline" or "current"
    round: int
    scenario: str
    req_per_s: float
    mean_ms: float
    cpu_ms_per_request: float


def archive(commit: str, into: Path) -> Path:
    """``commit``'s files (no .git) in ``into``; raises with git's message when the commit is not in this clone."""
    ref = subprocess.run(
        ["git", "rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True, text=True
    )
    if ref.returncode:
        raise SystemExit(f"{commit} is not a commit of this clone ({ref.stderr.strip()}); a shallow clone lacks it")
    tree = into / commit
    tree.mkdir(parents=True)
    data = subprocess.run(
        ["git", "archive", "--format=tar", ref.stdout.strip()], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=data.stdout, check=True)
    return tree


class Launched:
    """``python -m serving.runtime.launch`` of one tree on free ports, until :meth:`stop`; ``first``: a framed crop
    request sent from the start until it is answered (``first_answer_s``), as loadtest.bench.coldstart times a cold
    start, before readiness (``ready_s``) is waited for."""

    def __init__(self, tree: Path, log: Path, first: bytes | None = None):
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        cmd = [sys.executable, "-m", "serving.runtime.launch", "--config-name", "cpu"]
        cmd += [arg for name, port in self.ports.items() for arg in (f"--{name}-port", str(port))]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.log = log.open("wb")
        self.started = time.monotonic()
        # Its own session: SIGINT reaches the launcher alone, which stops its children as Ctrl-C would.
        self.proc = subprocess.Popen(
            cmd, cwd=tree, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.first_answer_s: float | None = None
        try:
            self._wait_ready(log, first)
        except BaseException:  # a wrong first answer, a timeout, Ctrl-C: nothing is left running
            self.stop()
            raise

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def _wait_ready(self, log: Path, first: bytes | None) -> None:
        import grpc

        deadline = time.monotonic() + READY_TIMEOUT_S
        url = f"http://127.0.0.1:{self.ports['http']}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the launcher exited ({self.proc.returncode}):\n{log.read_text()[-3000:]}")
            if first is not None and self.first_answer_s is None:
                try:  # the gate holds a request for a model still loading: refused only while nothing listens
                    native.check_estimate(native.grpc_answer(self.grpc_url, first), "the first crop request")
                    self.first_answer_s = time.monotonic() - self.started
                except grpc.RpcError:
                    time.sleep(0.05)
                continue
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        self.ready_s = time.monotonic() - self.started
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")

    def cpu_seconds(self) -> float:
        """utime + stime of the launcher and every live process under it (door, gate, Triton, stubs)."""
        return procs.cpu_seconds(p.pid for p in procs.descendants(self.proc.pid))

    def settled_rss_mb(self, quiet_s: float = 2.0, timeout_s: float = 30.0) -> float:
        """RSS of Triton and its stubs (loadtest.bench.memory's sum) once no stub has started for ``quiet_s``: the
        models loaded after readiness included."""
        deadline, seen, since = time.monotonic() + timeout_s, None, time.monotonic()
        while time.monotonic() < deadline:
            stubs = {p.pid for p in procs.descendants(self.proc.pid) if p.name == "triton_python_backend_stub"}
            if stubs != seen:
                seen, since = stubs, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
            time.sleep(0.25)
        return sum(memory.group_rss_mb(pid)["total_mb"] for pid in procs.triton_pids(self.proc.pid))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def measure(server: Launched, frame: Path, concurrency: int, duration: int, warmup: int) -> tuple[float, float, float]:
    """req/s, mean ms and CPU-ms per request of ``duration`` seconds of h2load, every answer checked."""
    answer_bytes = loadgen.h2load_answer_bytes(server.grpc_url, frame)
    if warmup:
        loadgen.h2load(server.grpc_url, frame, concurrency, warmup)
    cpu = server.cpu_seconds()
    run = loadgen.h2load(server.grpc_url, frame, concurrency, duration)
    cpu = server.cpu_seconds() - cpu
    loadgen.check_grpc_answers(run, answer_bytes)
    return run.req_per_s, run.mean_ms, 1000 * cpu / run.requests


def run_tree(
    name: str, tree: Path, rnd: int, frames: dict, args: argparse.Namespace, logs: Path
) -> tuple[Start, list[Reading]]:
    server = Launched(tree, logs / f"{name}-{rnd}.log", first=frames["crop"].read_bytes())
    try:
        first = server.first_answer_s
        start = Start(name, rnd, round(server.ready_s, 2), round(first, 2), round(server.settled_rss_mb()))
        print(f"round {rnd} {name:8s} first crop answer {first:.2f} s after the command; {start.rss_mb} MB", flush=True)
        readings = []
        for scenario, model, _, concurrency in SCENARIOS:
            native.check_estimate(native.grpc_answer(server.grpc_url, frames[scenario].read_bytes()), f"{name} {model}")
            rate, mean, cpu = measure(server, frames[scenario], concurrency, args.duration, args.warmup)
            readings.append(Reading(name, rnd, scenario, round(rate, 1), round(mean, 1), round(cpu, 1)))
            print(
                f"round {rnd} {name:8s} {scenario:9s} c={concurrency}: {rate:.1f} req/s, {cpu:.1f} CPU-ms a request",
                flush=True,
            )
        return start, readings
    finally:
        server.stop()


def summary(starts: list[Start], readings: list[Reading], commit: str) -> dict:
    """Per scenario, the medians of each tree's rounds and their ratio (current / baseline); per tree, the medians
    of its starts."""
    start = {
        tree: {
            key: statistics.median(getattr(s, key) for s in starts if s.tree == tree)
            for key in ("ready_s", "first_answer_s", "rss_mb")
        }
        for tree in ("baseline", "current")
    }
    out = {}
    for scenario, *_ in SCENARIOS:
        rates = {
            tree: [r.req_per_s for r in readings if r.tree == tree and r.scenario == scenario]
            for tree in ("baseline", "current")
        }
        base, now = statistics.median(rates["baseline"]), statistics.median(rates["current"])
        out[scenario] = {"baseline": base, "current": now, "ratio": round(now / base, 2), "rounds": rates}
    return {"commit": commit, "scenarios": out, "start": start}


def write(
    out: Path, meta: dict, starts: list[Start], readings: list[Reading], result: dict, args: argparse.Namespace
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = {"starts": [asdict(s) for s in starts], "readings": [asdict(r) for r in readings]}
    (out / "baseline.json").write_text(json.dumps({"machine": meta, **result, **rows}, indent=1))
    medians = result["start"]
    lines = [
        f"# The served path beside {result['commit']} (`python -m loadtest.bench.baseline`)",
        "",
        f"Run {meta['date']} on {meta['cpus']} CPUs ({meta['cpu_model']}{native.machine_note(meta)}), "
        f"this checkout at {meta['commit']}{' with uncommitted changes' if meta['uncommitted_changes'] else ''}; "
        f"{args.rounds} alternating rounds, {args.duration} s of h2load each after {args.warmup} s unmeasured, gRPC "
        "through the public port; this checkout's Python environment for both trees.",
        "",
        "| round | tree | command to ready | to the first crop answer | RSS of Triton and stubs, models loaded |",
        "|---:|---|---:|---:|---:|",
        *(f"| {s.round} | {s.tree} | {s.ready_s} s | {s.first_answer_s} s | {s.rss_mb} MB |" for s in starts),
        *(
            f"| median | {tree} | {m['ready_s']} s | {m['first_answer_s']} s | {m['rss_mb']} MB |"
            for tree, m in medians.items()
        ),
        "",
        "| round | tree | scenario | req/s | mean ms | CPU-ms a request |",
        "|---:|---|---|---:|---:|---:|",
        *(
            f"| {r.round} | {r.tree} | {r.scenario} | {r.req_per_s} | {r.mean_ms} | {r.cpu_ms_per_request} |"
            for r in readings
        ),
        "",
        "| scenario | baseline (median) | current (median) | current / baseline |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {s['baseline']} req/s | {s['current']} req/s | **{s['ratio']}x** |"
            for name, s in result["scenarios"].items()
        ),
    ]
    (out / "baseline.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", default=ISSUE_15_MAIN, help="the baseline (default: issue 15's main)")
    parser.add_argument("--rounds", type=cli.positive_int, default=2, help="alternating rounds, baseline first")
    parser.add_argument("--duration", type=cli.positive_int, default=10, help="seconds measured per scenario")
    parser.add_argument(
        "--warmup", type=cli.non_negative_int, default=3, help="seconds of the same load first, unmeasured"
    )
    parser.add_argument("--out", type=Path, help="writes baseline.md and baseline.json here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "h2load" in loadgen.missing():
        raise SystemExit("h2load not found: `make bench-baseline` installs it (Debian nghttp2-client)")
    meta = native.machine()
    with tempfile.TemporaryDirectory(prefix="baseline-") as tmp:
        scratch = Path(tmp)
        trees = {"baseline": archive(args.commit, scratch), "current": ROOT}
        frames = {}
        for scenario, model, body, _ in SCENARIOS:
            frames[scenario] = scratch / f"{scenario}.grpc"
            frames[scenario].write_bytes(wire.grpc_frame(model, body()))
        starts, readings = [], []
        for rnd in range(1, args.rounds + 1):
            for name, tree in trees.items():
                start, read = run_tree(name, tree, rnd, frames, args, scratch)
                starts.append(start)
                readings += read
    result = summary(starts, readings, args.commit)
    for tree, m in result["start"].items():
        print(f"{tree}: first crop answer {m['first_answer_s']} s after the command, {m['rss_mb']} MB (medians)")
    for name, s in result["scenarios"].items():
        print(f"{name}: {s['current']} req/s against {s['baseline']} (medians): {s['ratio']}x")
    if args.out:
        write(args.out, meta, starts, readings, result, args)
        cli.report_written([args.out / "baseline.json", args.out / "baseline.md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

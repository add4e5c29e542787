"""Issue 18's probes, each for a fixed time against a live server, with 4 victims checking their own answers.

    python -m loadtest.abuse.probes --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 \\
        [--probes cancel,shape,slow] [--duration 60] [--pid LAUNCHER_PID] [--out loadtest/results/probes.json]

Start the server with ``python -m serving.runtime.launch`` (``make serve``). Victims: 4 threads on 127.0.0.3-6
calling the crop path over HTTP in a loop, each comparing its answer with a reference computed before the first
probe (loadtest/abuse/victims.py). Attacker: 127.0.0.2 (loadtest/abuse/attacks.py).

* ``cancel``: every 0.2 s (5/s) a call to ``age_gender`` the caller gives up on, alternately a gRPC call with a
  5 ms deadline and a complete ModelInfer on a raw HTTP/2 stream reset 2-40 ms later;
* ``shape``: ``--shape-calls`` (400) calls spread over the probe (all of them, late on a slow machine), cycling
  over ``age`` with ``[2**62,64,64,3]`` and the crop ensemble with ``[2**62,1]``, ``[2**62+1,1]``, ``[2**32+1,1]``,
  over gRPC and HTTP. An answer counts as *foreign* unless it is exactly the attacker's own one-row crop answer
  (``age`` must not answer at all);
* ``slow``: loadtest/abuse/slow.py's 1,100 slow uploads from 127.0.0.2 (its own victims on 127.0.0.3-6 check that
  an answer came, not whose it is: ``wrong_answers`` is null there).

Triton deaths: the server's ``tritonserver`` pids (found from ``--pid`` or the HTTP port's listener,
loadtest/procs.py) are read every 0.5 s; every pid that disappears is a death (a supervisor restart brings a new
one). PASS per probe: victim success >= 99%, 0 deaths, 0 wrong victim answers, 0 foreign attacker answers
(issue 18's targets). Prints a Markdown table, writes JSON, exits 1 unless every probe passes.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from common import contract, spec
from common.ports import default_address
from loadtest import cli, procs
from loadtest.abuse import attacks, cases, slow
from loadtest.abuse.victims import ATOL, CROP, Victims, grpc_answer, grpc_request, references

PROBES = ("cancel", "shape", "slow")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "probes.json"
VICTIMS = 4
MIN_SUCCESS = 0.99
CANCEL_EVERY_S = 0.2
SHAPE_CALLS = 400


class DeathWatch:
    """Samples the server's Triton pids in the background; a pid that vanishes is one death."""

    def __init__(self, root: int | None, every_s: float = 0.5):
        self.root, self.every_s = root, every_s
        self.deaths = 0
        self._seen = procs.triton_pids(root) if root else set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        now = procs.triton_pids(self.root)
        self.deaths += len(self._seen - now)
        self._seen = now

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> DeathWatch:
        if self.root:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.root:
            self._thread.join()
            self._sample()


def _until(duration: float, every_s: float):
    """Yields 0, 1, 2, ... every ``every_s`` seconds until ``duration`` has passed."""
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < duration:
        yield k
        k += 1
        time.sleep(max(0.0, start + k * every_s - time.monotonic()))


def _paced(count: int, every_s: float):
    """Yields 0 .. ``count - 1``, one every ``every_s`` seconds: all of them, late if the machine is slow (a probe
    that promises N calls makes N, however busy the two cores are)."""
    start = time.monotonic()
    for k in range(count):
        yield k
        time.sleep(max(0.0, start + (k + 1) * every_s - time.monotonic()))


def probe_cancel(http_url: str, grpc_url: str, duration: float, refs) -> dict:
    photo = cases.face_images()[0]
    request = attacks.cancel_request(photo)
    outcomes: dict[str, int] = {}
    with grpc.insecure_channel(grpc_url) as channel, Victims(refs, http_url=http_url, count=VICTIMS) as victims:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for k in _until(duration, CANCEL_EVERY_S):
            if k % 2 == 0:
                status = "deadline " + attacks.deadline_call(stub, request)
            else:
                try:
                    attacks.raw_reset(grpc_url, request, 0.002 + 0.038 * (k // 2 % 7) / 6)
                    status = "reset sent"
                except OSError as err:
                    status = f"reset {type(err).__name__}"
            outcomes[status] = outcomes.get(status, 0) + 1
    return {"attacks": sum(outcomes.values()), "attack_outcomes": outcomes, "foreign_answers": 0}, victims


def probe_shape(http_url: str, grpc_url: str, duration: float, refs, calls: int = SHAPE_CALLS) -> dict:
    crop, own = refs[-1]  # the attacker's crop (victims use the first VICTIMS ones) and its own answer
    side = spec.image_size(contract.AGE_MODEL)
    image = np.zeros((side, side, 3), np.uint8)
    outcomes: dict[str, int] = {}
    foreign = 0
    samples: list[str] = []
    with grpc.insecure_channel(grpc_url) as channel, Victims(refs, http_url=http_url, count=VICTIMS) as victims:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        sent = 0
        for k in _paced(calls, duration / calls):
            model, shape = attacks.OVERFLOW_TARGETS[k // 2 % len(attacks.OVERFLOW_TARGETS)]
            protocol = ("grpc", "http")[k % 2]
            rows = None
            if protocol == "grpc":
                request = attacks.age_request(shape, image) if model != CROP else grpc_request(CROP, shape, [crop])
                try:
                    response = stub.ModelInfer(request, timeout=attacks.TIMEOUT_S)
                    rows = grpc_answer(response) if model == CROP else np.array([np.nan] * 2)
                    status = "200"
                except grpc.RpcError as err:
                    status = err.code().name
            else:
                datatype, raw = attacks.overflow_raw(model, image, crop)
                name = contract.CROP_INPUT
                code, body = attacks.http_infer(http_url, model, shape, raw, datatype, name)
                status = str(code)
                if code == 200:
                    rows = _http_rows(body) if model == CROP else np.array([np.nan] * 2)
            sent += 1
            key = f"{protocol} {model} {status}"
            outcomes[key] = outcomes.get(key, 0) + 1
            if rows is not None and not is_own(rows, own):
                foreign += 1
                if len(samples) < 10:
                    samples.append(f"{key} {shape}: {rows.tolist()[:4]}")
    return {
        "attacks": sent,
        "attack_outcomes": outcomes,
        "foreign_answers": foreign,
        "foreign_samples": samples,
    }, victims


def is_own(rows: np.ndarray, own: np.ndarray) -> bool:
    """Whether an answer is exactly the caller's own: its rows, no more, no fewer, no one else's."""
    return rows.shape == own.shape and bool(np.allclose(rows, own, atol=ATOL))


def _http_rows(body: bytes) -> np.ndarray:
    """The age rows of an HTTP 200 answer; NaN rows (foreign: not the attacker's answer) if it has none."""
    try:
        result = httpclient.InferenceServerClient.parse_response_body(body)
        rows = result.as_numpy(contract.ENSEMBLE_AGE)
    except Exception:  # noqa: BLE001 - any unreadable 200 is an answer the attacker cannot call its own
        rows = None
    return np.array([np.nan] * 2) if rows is None else rows.astype(np.float32).reshape(-1)


def probe_slow(http_url: str, grpc_url: str, duration: float, refs) -> dict:
    report = slow.run(http_url, grpc_url, "uploads", duration)
    victims = report["victims"]
    summary = {
        "requests": victims["requests"],
        "ok": victims["ok"],
        "failed": victims["requests"] - victims["ok"],
        "wrong": None,
        "errors": [f"{k}: {n}" for k, n in victims["failures"].items()],
    }
    attacker = report["attacker"]
    return {"attacks": attacker["opened"], "attack_outcomes": attacker, "foreign_answers": 0}, summary


def _victim_summary(victims) -> dict:
    if isinstance(victims, dict):
        return victims
    return {
        "requests": victims.requests,
        "ok": victims.ok,
        "failed": victims.failed,
        "wrong": victims.wrong,
        "errors": victims.errors[:5],
    }


RUNNERS = {"cancel": probe_cancel, "shape": probe_shape, "slow": probe_slow}


def run(
    http_url: str,
    grpc_url: str,
    probes=PROBES,
    *,
    duration: float = 60.0,
    pid: int | None = None,
    shape_calls: int = SHAPE_CALLS,
    log=print,
) -> dict:
    host, port = http_url.removeprefix("http://").rsplit(":", 1)
    root = procs.server_root(pid=pid, port=int(port))
    if root is None:
        log("warning: the server's processes were not found (give --pid): Triton deaths cannot be counted")
    refs = references(grpc_url)
    results = {}
    for name in probes:
        log(f"probe {name}: {duration:.0f} s, {VICTIMS} victims on 127.0.0.3-6, attacker {attacks.ATTACKER}")
        started = time.monotonic()
        kwargs = {"calls": shape_calls} if name == "shape" else {}
        with DeathWatch(root) as watch:
            attack, victims = RUNNERS[name](http_url, grpc_url, duration, refs, **kwargs)
        v = _victim_summary(victims)
        success = v["ok"] / v["requests"] if v["requests"] else 0.0
        passed = (
            success >= MIN_SUCCESS
            and watch.deaths == 0
            and not v["wrong"]
            and attack["foreign_answers"] == 0
            and root is not None
        )
        results[name] = {
            "duration_s": round(time.monotonic() - started, 1),
            "victims": v,
            "victim_success": round(success, 4),
            "triton_deaths": watch.deaths if root else None,
            "attack": attack,
            "pass": passed,
        }
        log(f"  {'PASS' if passed else 'FAIL'}: {v['ok']}/{v['requests']} victim requests ok, {watch.deaths} deaths")
    return {
        "server": {"http_url": http_url, "grpc_url": grpc_url, "root_pid": root},
        "targets": {"victim_success": MIN_SUCCESS, "triton_deaths": 0, "wrong_answers": 0, "foreign_answers": 0},
        "config": {"duration_s": duration, "victims": VICTIMS, "shape_calls": shape_calls},
        "probes": results,
        # all() of nothing is True: a run that probed nothing proved nothing.
        "pass": bool(results) and all(r["pass"] for r in results.values()),
    }


def markdown(report: dict) -> str:
    lines = [
        "| probe | attacks | victim requests | successes | success | wrong answers | foreign answers "
        "| Triton deaths | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in report["probes"].items():
        v = r["victims"]
        wrong = "n/c" if v["wrong"] is None else v["wrong"]
        deaths = "?" if r["triton_deaths"] is None else r["triton_deaths"]
        lines.append(
            f"| {name} | {r['attack']['attacks']} | {v['requests']} | {v['ok']} | {100 * r['victim_success']:.1f}% "
            f"| {wrong} | {r['attack']['foreign_answers']} | {deaths} | {'PASS' if r['pass'] else 'FAIL'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http-url", default=default_address("http"), help="host:port of the HTTP endpoint (the door)")
    p.add_argument("--grpc-url", default=default_address("grpc"), help="host:port of the gRPC endpoint")
    p.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated subset of {','.join(PROBES)}")
    p.add_argument("--duration", type=cli.positive_float, default=60.0, help="seconds per probe")
    p.add_argument("--pid", type=cli.positive_int, help="the launcher's pid (else found from the HTTP port's listener)")
    p.add_argument(
        "--shape-calls", type=cli.positive_int, default=SHAPE_CALLS, help="overflow calls in the shape probe"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    args = p.parse_args(argv)
    chosen = [n.strip() for n in args.probes.split(",") if n.strip()]
    if unknown := [n for n in chosen if n not in PROBES]:
        p.error(f"unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")
    if not chosen:
        p.error(f"--probes {args.probes!r} names no probe; give one or more of {','.join(PROBES)}")
    report = run(
        args.http_url, args.grpc_url, chosen, duration=args.duration, pid=args.pid, shape_calls=args.shape_calls
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    cli.report_written([args.out], file=sys.stdout)
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())

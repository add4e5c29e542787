"""The autoscaling signal: Triton's queue time per request and pending requests, scraped during a Locust ramp.

    python -m loadtest.bench.scaling_signal --serve [--users 16 --spawn-rate 0.5 --duration 40 --path crop]
    python -m loadtest.bench.scaling_signal --grpc-url HOST:8001 --metrics-url http://HOST:8002/metrics ...

Locust ramps closed-loop users (each one request in flight) from 0 to ``--users`` while this
scrapes Triton's Prometheus endpoint every ``--interval`` seconds and computes, per model, what
the Prometheus queries in deploy/kserve/README.md compute in a cluster:

- queue time per request = rate(nv_inference_queue_duration_us) / rate(nv_inference_request_success)
- pending requests       = nv_inference_pending_request_count (queued in Triton, not yet executing)
- throughput             = rate(nv_inference_request_success) of the ensemble

Writes ``<out>.png`` (three panels against time and users) and ``<out>.json`` (the series); by default the committed
loadtest/results/scaling_signal, which it says it replaces.
``--serve`` starts its own Triton on model_repository/ (CPU configs here) on free ports.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from common import contract
from common.ports import default_address
from loadtest import cli

ROOT = Path(__file__).resolve().parents[2]
ENSEMBLES = {"detect": contract.DETECT_ENSEMBLE, "crop": contract.CROP_ENSEMBLE}
SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+([-+0-9.eE]+|NaN)$")
WANTED = ("nv_inference_queue_duration_us", "nv_inference_request_success", "nv_inference_pending_request_count")


def parse(text: str) -> dict[tuple[str, str], float]:
    """{(metric, model): value} for the metrics above, summed over versions."""
    out: dict[tuple[str, str], float] = collections.defaultdict(float)
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m or m[1] not in WANTED:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[2]))
        out[(m[1], labels.get("model", ""))] += float(m[3])
    return out


def scrape(url: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse(response.read().decode())


def series(samples: list[tuple[float, dict]]) -> dict:
    """Per-interval queue ms/request and pending per model, and requests/s per model."""
    models = sorted({model for _, s in samples for (_, model) in s})
    result = {"t": [], "queue_ms": {m: [] for m in models}, "pending": {m: [] for m in models}}
    result["rps"] = {m: [] for m in models}
    for (t0, a), (t1, b) in zip(samples, samples[1:], strict=False):
        result["t"].append(t1)
        for m in models:
            done = b.get(("nv_inference_request_success", m), 0) - a.get(("nv_inference_request_success", m), 0)
            queued = b.get(("nv_inference_queue_duration_us", m), 0) - a.get(("nv_inference_queue_duration_us", m), 0)
            result["queue_ms"][m].append(queued / done / 1000 if done > 0 else 0.0)
            result["pending"][m].append(b.get(("nv_inference_pending_request_count", m), 0))
            result["rps"][m].append(done / (t1 - t0))
    return result


def plot(data: dict, out: Path, *, users: int, spawn_rate: float, ensemble: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = data["t"]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    busy = [m for m in data["queue_ms"] if m != ensemble and any(data["rps"][m])]
    for m in busy:
        axes[0].plot(t, data["queue_ms"][m], label=m)
        axes[1].plot(t, data["pending"][m], label=m)
    axes[0].set_ylabel("queue time per request (ms)")
    axes[1].set_ylabel("pending requests")
    axes[2].plot(t, data["rps"].get(ensemble, [0] * len(t)), color="black", label=f"{ensemble} req/s")
    axes[2].set_ylabel("requests/s")
    users_axis = axes[2].twinx()
    users_axis.plot(t, [min(users, spawn_rate * x) for x in t], color="grey", linestyle="--", label="Locust users")
    users_axis.set_ylabel("users (requests in flight)")
    axes[2].set_xlabel("seconds since the load started")
    for ax in axes[:2]:
        ax.legend(loc="upper left", fontsize=8)
    axes[2].legend(loc="upper left", fontsize=8)
    fig.suptitle("Autoscaling signal: Triton queue time and pending requests under a Locust ramp")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def run(args, grpc_url: str, metrics_url: str) -> dict:
    samples: list[tuple[float, dict]] = []
    stop = threading.Event()
    start = time.monotonic()

    def scraper() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                samples.append((time.monotonic() - start, scrape(metrics_url)))
            stop.wait(args.interval)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    cmd = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locust" / "locustfile.py"), "--headless",
        "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.duration}s", "--only-summary",
        "--triton-grpc-url", grpc_url, "--path", args.path, "--max-fail-ratio", "0.01", "TritonGrpcUser",
    ]  # fmt: skip
    locust = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    stop.set()
    thread.join()
    data = series(samples)
    # Exit code 1 is Locust's "some requests failed", which a ramp past capacity may cause; but a run that served
    # nothing (a wrong locustfile path, a server that was never reached) is a failure, not a flat signal.
    served = sum(sum(rps) for rps in data["rps"].values())
    if locust.returncode not in (0, 1) or not served:
        raise RuntimeError(f"locust failed ({locust.returncode}, {served:.0f} requests seen):\n{locust.stderr[-3000:]}")
    data["locust_exit_code"] = locust.returncode
    data["locust_summary"] = locust.stderr[-2500:]
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", action="store_true", help="start a Triton on model_repository/ for the run")
    p.add_argument("--grpc-url", default=default_address("grpc"))
    p.add_argument("--metrics-url", default=f"http://{default_address('metrics')}/metrics")
    p.add_argument("--users", type=cli.positive_int, default=16)
    p.add_argument("--spawn-rate", type=cli.positive_float, default=0.5, help="users added per second (the ramp)")
    p.add_argument("--duration", type=cli.positive_int, default=40, help="seconds of load")
    p.add_argument("--interval", type=cli.positive_float, default=1.0, help="seconds between scrapes")
    p.add_argument("--path", choices=sorted(ENSEMBLES), default="crop")
    p.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results" / "scaling_signal")
    args = p.parse_args(argv)
    paths = [args.out.with_suffix(".png"), args.out.with_suffix(".json")]
    cli.warn_if_replacing(paths)

    with contextlib.ExitStack() as stack:
        grpc_url, metrics_url = args.grpc_url, args.metrics_url
        if args.serve:
            from serving.runtime.launch import TritonServer

            server = stack.enter_context(TritonServer(http_port=0, grpc_port=0, metrics_port=0))
            grpc_url, metrics_url = server.grpc_url, server.metrics_url
        data = run(args, grpc_url, metrics_url)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ensemble = ENSEMBLES[args.path]
    plot(data, args.out, users=args.users, spawn_rate=args.spawn_rate, ensemble=ensemble)
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    print(data["locust_summary"][-1200:])
    for m, q in data["queue_ms"].items():
        if any(data["rps"][m]) and m != ensemble:
            third = max(1, len(q) // 3)
            print(
                f"{m:16s} queue ms/request: first third {sum(q[:third]) / third:7.1f}, last third "
                f"{sum(q[-third:]) / third:7.1f}; max pending {max(data['pending'][m]):.0f}"
            )
    cli.report_written(paths, file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving benchmark: the measurements issue 8 targets, side by side in one run.

    python -m loadtest.bench.benchmark [--duration 15] [--repository model_repository] [--out loadtest/results]

With a closed-loop gRPC client (:mod:`loadtest.bench.driver`), ``--duration`` seconds per scenario after
``--warmup``, on Triton started here (:class:`serving.runtime.launch.TritonServer`, free ports):

1. ready means warm (:mod:`loadtest.bench.warmup`), first thing after start-up;
2. crop path (``age_gender_crop``) at concurrency 1, 4, 16;
3. detection path (``age_gender``) on the 512x600 portrait and on a 12-megapixel phone-style JPEG
   (:mod:`loadtest.bench.corpus`), concurrency 16;
4. resident memory of Triton plus all stubs after those (:mod:`loadtest.bench.memory`);
5. dynamic batching off in every model (:mod:`loadtest.bench.variants`), crop path at concurrency 16;
6. the reference: both SavedModels in-process in TensorFlow at batch 64 (``loadtest.bench.keras_baseline inprocess``);
7. cold start, launcher command to first inference, median of ``--coldstart-runs`` (:mod:`loadtest.bench.coldstart`).

Writes ``benchmark.md`` (tables, targets) and ``benchmark.json`` to ``--out`` (by default the committed
loadtest/results/: it says so, at the start and the end, when it replaces them). All processes share the
machine's CPUs: run it on an otherwise idle host. ``--triton-grpc-url`` measures a server started
elsewhere (scenarios 2-3 only: its configuration and processes are not ours).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from common import contract
from loadtest import cli
from loadtest.bench import corpus, memory, warmup
from loadtest.bench.driver import Result, closed_loop, triton_call_factory
from loadtest.bench.report import headline, write_markdown
from loadtest.bench.variants import repository_without_dynamic_batching, strip_dynamic_batching  # noqa: F401 - re-exported
from serving.runtime.launch import TritonServer

ROOT = Path(__file__).resolve().parents[2]
SWEEP = (1, 4, 16)
TARGET_CONCURRENCY = 16


def inprocess_throughput(repository: Path, batch: int, duration: float) -> dict:
    """Both SavedModels in TensorFlow, in a child process (TF stays out of this one)."""
    cmd = [sys.executable, "-m", "loadtest.bench.keras_baseline", "inprocess", "--repository", str(repository)]
    cmd += ["--batch", str(batch), "--duration", str(duration)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600 + duration)
    if out.returncode != 0:
        raise RuntimeError(f"in-process measurement failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def scenarios(url: str, *, dynamic: bool, args: argparse.Namespace, inputs: dict, log) -> list[Result]:
    """(scenario, model, inputs key, concurrency) plans on one server."""
    if dynamic:
        plans = [("crop path", contract.CROP_ENSEMBLE, "crops", c) for c in args.concurrency]
        plans += [
            ("detection path, portrait", contract.DETECT_ENSEMBLE, "portrait", TARGET_CONCURRENCY),
            ("detection path, 12 MP JPEG", contract.DETECT_ENSEMBLE, "12mp", TARGET_CONCURRENCY),
        ]
    else:
        plans = [("dynamic batching off", contract.CROP_ENSEMBLE, "crops", TARGET_CONCURRENCY)]
    results = []
    for scenario, model, key, concurrency in plans:
        log(f"  {scenario}: {model} c={concurrency} b={args.batch_size} ...")
        factory = triton_call_factory(url, model, inputs[key][0], args.batch_size)
        measured = closed_loop(factory, concurrency, args.duration, args.warmup)
        results.append(Result(scenario, model, inputs[key][1], dynamic, concurrency, args.batch_size, **measured))
        log(f"    {measured['img_per_s']:.1f} img/s, p50 {measured['p50_ms']:.1f} ms, {measured['errors']} errors")
    return results


def _batches(model_dir: Path) -> bool:
    return any("dynamic_batching" in c.read_text() for c in [model_dir / "config.pbtxt", *model_dir.glob("configs/*")])


def coldstart(repository: Path, runs: int, log) -> dict:
    from loadtest.bench.coldstart import leftovers, one_run, problems

    seconds, shared, done = [], bool(leftovers()), []
    for i in range(runs):
        done.append(one_run(repository, timeout=300, check_shm=not shared))
        seconds.append(done[-1]["first_inference_s"])
        log(f"  cold start {i + 1}: {seconds[-1]:.2f} s")
    return {"runs_s": seconds, "median_s": statistics.median(seconds), "problems": problems(done)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--utkface", type=Path, default=corpus.DEFAULT_UTKFACE, help="crop corpus source, if present")
    p.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    p.add_argument("--duration", type=cli.positive_float, default=15.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=cli.non_negative_float, default=3.0, help="unmeasured seconds before each scenario")
    p.add_argument("--concurrency", type=cli.positive_ints, default=SWEEP)
    p.add_argument("--batch-size", type=cli.positive_int, default=1, help="images per request")
    p.add_argument("--config-name", choices=("auto", "cpu", "default"), default="auto")
    p.add_argument(
        "--inprocess-batch", type=cli.non_negative_int, default=64, help="0 skips the in-process TF reference"
    )
    p.add_argument("--coldstart-runs", type=cli.non_negative_int, default=3, help="0 skips the cold-start measurement")
    p.add_argument("--rss-baseline-mb", type=float, default=0.0, help="RSS to compare with (e.g. main's TF stubs)")
    p.add_argument("--pss-baseline-mb", type=float, default=0.0, help="PSS to compare with (same baseline)")
    p.add_argument("--no-dynamic-off", action="store_true", help="skip the dynamic-batching-off server")
    p.add_argument("--triton-grpc-url", default="", help="measure this running server instead (host:port)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    cli.warn_if_replacing([args.out / "benchmark.json", args.out / "benchmark.md"])
    crops, crop_desc = corpus.crop_corpus(args.utkface)
    inputs = {
        "crops": (crops, "crops"),
        "portrait": ([corpus.jpeg(corpus.portrait())], "portrait 512x600"),
        "12mp": ([corpus.phone_photo()], "12 MP JPEG 4000x3000"),
    }
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "duration": args.duration,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "crop_corpus": crop_desc,
        "12mp_jpeg_bytes": len(inputs["12mp"][0][0]),
    }
    extra: dict = {}
    results: list[Result] = []

    def server(repository: Path) -> TritonServer:
        ports = {f"{k}_port": 0 for k in ("http", "grpc", "metrics")}  # free ones, chosen at start
        return TritonServer(repository, config_name=args.config_name, **ports)

    if args.triton_grpc_url:
        log(f"Triton already running at {args.triton_grpc_url} ...")
        meta["config_name"] = "external server"
        results += scenarios(args.triton_grpc_url, dynamic=True, args=args, inputs=inputs, log=log)
    else:
        log(f"Triton on {args.repository} ...")
        with server(args.repository) as triton:
            meta["config_name"] = triton.config_name
            meta["triton_startup_s"] = triton.startup_seconds
            extra["warmup"] = warmup.first_vs_steady(triton.internal_grpc_url, headers=triton.internal_headers())
            results += scenarios(triton.grpc_url, dynamic=True, args=args, inputs=inputs, log=log)
            extra["memory"] = memory.group_rss_mb(triton._proc.pid)
            extra["memory"]["baseline_mb"] = args.rss_baseline_mb or None
            extra["memory"]["pss_baseline_mb"] = args.pss_baseline_mb or None
            log(f"  RSS Triton + stubs: {extra['memory']['total_mb']:.0f} MB")
        if not args.no_dynamic_off:
            with tempfile.TemporaryDirectory(prefix="repo-nodynbatch-") as tmp:
                # Off for every model that batches (preprocess and postprocess too): the feature as deployed, not
                # just the CNNs, which on OpenVINO are no longer the crop path's bottleneck.
                batched = tuple(
                    sorted(p.parent.name for p in args.repository.glob("*/config.pbtxt") if _batches(p.parent))
                )
                meta["dynamic_batching_off_for"] = list(batched)
                repo = repository_without_dynamic_batching(args.repository, Path(tmp) / "model_repository", batched)
                log(f"Triton with dynamic batching off ({', '.join(batched)}) ...")
                with server(repo) as triton:
                    results += scenarios(triton.grpc_url, dynamic=False, args=args, inputs=inputs, log=log)
        if args.coldstart_runs:
            log("Cold start ...")
            extra["coldstart"] = coldstart(args.repository, args.coldstart_runs, log)
    if args.inprocess_batch:
        log(f"In-process SavedModels (TensorFlow), batch {args.inprocess_batch} ...")
        extra["inprocess"] = inprocess_throughput(args.repository, args.inprocess_batch, args.duration)

    extra["targets"] = headline(results, extra.get("inprocess"))
    report = {"meta": meta, "results": [asdict(r) for r in results], **extra}
    (args.out / "benchmark.json").write_text(json.dumps(report, indent=2))
    write_markdown(args.out / "benchmark.md", results, meta, extra)
    log((args.out / "benchmark.md").read_text())
    cli.report_written([args.out / "benchmark.json", args.out / "benchmark.md"])
    failed = [f"{r.scenario} c={r.concurrency}: {r.errors} errors" for r in results if r.errors]
    if extra.get("coldstart", {}).get("problems"):
        failed += extra["coldstart"]["problems"]
    for problem in failed:
        log(f"FAILED: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

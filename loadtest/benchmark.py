"""Fixed serving benchmark: Triton scenarios against the seed-style Keras web process, in one run.

    python -m loadtest.benchmark [--duration 15] [--repository model_repository] [--out loadtest/results]

Starts an embedded Triton (:class:`serving.launch.TritonServer`) on free ports and measures, with a
closed-loop threaded client (each thread sends its next request as soon as the last one returns),
for ``--duration`` seconds per scenario after ``--warmup``:

- a concurrency sweep (1, 4, 16) on the crop path (``age_gender_crop``) over gRPC;
- the detection path (``age_gender``) against the crop path;
- HTTP against gRPC;
- dynamic batching off (a temporary copy of the repository whose age/gender configs lose their
  ``dynamic_batching`` block) against on;
- the baseline: :mod:`loadtest.keras_baseline` ``serve``, one Keras ``model.predict`` per upload;
- in-process batched throughput of the two SavedModels (batch 64), for the ensemble/in-process ratio.

Writes ``benchmark.md`` (table and ratios), ``benchmark.json`` and ``benchmark.png`` to ``--out``.
The ratio the project targets is Triton crop-path gRPC at concurrency 16 over the baseline at
concurrency 16: >= 10x. All processes share this machine's CPUs, so run it on an otherwise idle host.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from serving.launch import TritonServer, free_port, gpu_visible

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "gradio_frontend" / "examples"
DEFAULT_UTKFACE = ROOT.parent / "shared" / "datasets" / "UTKFace.tar.gz"
ENSEMBLES = {"crop": "age_gender_crop", "detect": "age_gender"}
OUTPUTS = ("age", "female_probability", "gender", "face_found", "error")
SWEEP = (1, 4, 16)
TARGET_CONCURRENCY = 16
TARGET_RATIO = 10.0


@dataclass
class Result:
    """One scenario's measurement; latencies in milliseconds over the requests completed in the window."""

    scenario: str
    server: str  # "triton" or "keras-baseline"
    protocol: str
    path: str
    dynamic_batching: bool | None
    concurrency: int
    batch_size: int
    duration_s: float = 0.0
    requests: int = 0
    images: int = 0
    errors: int = 0
    img_per_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    first_error: str | None = None
    notes: dict = field(default_factory=dict)


# -- corpora ------------------------------------------------------------------------------------------------


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def photo_corpus() -> list[bytes]:
    """Full photos for the detection path: the shipped portrait at a few scales and mirrored."""
    base = Image.open(EXAMPLES / "grace_hopper.jpg").convert("RGB")
    out = []
    for scale in (0.75, 1.0, 1.25):
        img = base.resize((round(base.width * scale), round(base.height * scale)), Image.Resampling.BILINEAR)
        out += [_jpeg(img), _jpeg(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    return out


def crop_corpus(utkface: Path | None, n: int = 64) -> tuple[list[bytes], str]:
    """Aligned 200x200 crops: the first ``n`` UTKFace JPEGs when the archive is here (read, never shipped),
    else crops around the shipped portrait's face."""
    if utkface is not None and utkface.is_file():
        blobs = []
        with tarfile.open(utkface) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(".jpg"):
                    blobs.append(tar.extractfile(member).read())
                    if len(blobs) == n:
                        break
        if blobs:
            return blobs, f"first {len(blobs)} UTKFace crops ({utkface.name})"
    base = Image.open(EXAMPLES / "grace_hopper.jpg").convert("RGB")
    blobs = []
    for dx in (-20, 0, 20):
        for dy in (-20, 0, 20):
            box = (106 + dx, 70 + dy, 406 + dx, 370 + dy)  # around the face in the 512x600 portrait
            blobs.append(_jpeg(base.crop(box).resize((200, 200), Image.Resampling.BILINEAR)))
    return blobs, "9 crops of gradio_frontend/examples/grace_hopper.jpg"


# -- repository variants ------------------------------------------------------------------------------------


def strip_dynamic_batching(text: str) -> str:
    """Removes the ``dynamic_batching { ... }`` block (nested braces included) from a model config."""
    match = re.search(r"^[ \t]*dynamic_batching\s*\{", text, re.M)
    if match is None:
        return text
    depth, i = 0, match.end() - 1
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
        if depth == 0:
            break
    if depth:
        raise ValueError("unbalanced braces in dynamic_batching block")
    end = i + 1 if text[i : i + 1] == "\n" else i
    return text[: match.start()] + text[end:]


def repository_without_dynamic_batching(
    repository: Path, dest: Path, models: tuple[str, ...] = ("age", "gender")
) -> Path:
    """Copies ``repository`` to ``dest`` with dynamic batching removed from every config of ``models``."""
    shutil.copytree(repository, dest, ignore=shutil.ignore_patterns(".tmp-*", "__pycache__"))
    for model in models:
        configs = [dest / model / "config.pbtxt", *sorted((dest / model / "configs").glob("*.pbtxt"))]
        for config in configs:
            if config.is_file():
                config.write_text(strip_dynamic_batching(config.read_text()))
    return dest


# -- the closed-loop driver ---------------------------------------------------------------------------------


def closed_loop(make_call: Callable[[], Callable[[], int]], concurrency: int, duration: float, warmup: float) -> dict:
    """Runs ``concurrency`` threads, each calling its own ``make_call()`` result back to back.

    A call returns the number of images it processed or raises. Only requests that complete within
    the ``duration`` seconds after ``warmup`` are counted, for throughput and latency alike.
    """
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    images = [0] * concurrency
    errors = [0] * concurrency
    first_error: list[str] = []
    barrier = threading.Barrier(concurrency + 1)
    times: dict[str, float] = {}

    def worker(k: int) -> None:
        try:
            call = make_call()
        except Exception as exc:  # noqa: BLE001 - reported as this thread's error instead of killing the run
            first_error.append(f"setup: {type(exc).__name__}: {exc}")
            barrier.wait()
            return
        barrier.wait()
        measure_from, stop_at = times["from"], times["stop"]
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            try:
                n = call()
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted as an error of this scenario
                ok = False
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}"[:300])
                time.sleep(0.01)  # a dead server would otherwise turn this loop into a busy spin
            t1 = time.perf_counter()
            # Counted by completion time: a slow server's requests span the window's edges, and
            # dropping those that started in warm-up would undercount it.
            if not measure_from <= t1 <= stop_at:
                continue
            if ok:
                latencies[k].append((t1 - t0) * 1000.0)
                images[k] += n
            else:
                errors[k] += 1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    times["from"], times["stop"] = now + warmup, now + warmup + duration
    barrier.wait()
    for t in threads:
        t.join(timeout=warmup + duration + 120)
    all_lat = np.concatenate([np.asarray(x) for x in latencies]) if any(latencies) else np.array([])
    return {
        "duration_s": duration,
        "requests": int(all_lat.size),
        "images": int(sum(images)),
        "errors": int(sum(errors)),
        "img_per_s": sum(images) / duration,
        "p50_ms": float(np.percentile(all_lat, 50)) if all_lat.size else float("nan"),
        "p99_ms": float(np.percentile(all_lat, 99)) if all_lat.size else float("nan"),
        "first_error": first_error[0] if first_error else None,
    }


def _bytes_batch(corpus: list[bytes], start: int, size: int) -> np.ndarray:
    batch = np.empty((size, 1), dtype=np.object_)
    for k in range(size):
        batch[k, 0] = corpus[(start + k) % len(corpus)]
    return batch


def triton_call_factory(
    protocol: str, url: str, model: str, corpus: list[bytes], batch_size: int, timeout: float
) -> Callable[[], Callable[[], int]]:
    """One tritonclient per thread (the HTTP client is not thread-safe; separate gRPC channels avoid
    measuring one connection's head-of-line blocking)."""
    counter = iter(range(10**9))
    lock = threading.Lock()

    def make() -> Callable[[], int]:
        with lock:
            cursor = next(counter) * 7
        if protocol == "grpc":
            import tritonclient.grpc as mod

            client = mod.InferenceServerClient(url)
            # No gRPC deadline: the pip tritonserver 2.51 crashes when a deadline cancels an in-flight
            # ensemble request (triton-inference-server/server#7368); the scenario's duration bounds the run.
            kwargs = {}
        else:
            import tritonclient.http as mod

            client = mod.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
            kwargs = {}
        outputs = [mod.InferRequestedOutput(name) for name in OUTPUTS]
        state = {"i": cursor}

        def call() -> int:
            batch = _bytes_batch(corpus, state["i"], batch_size)
            state["i"] += batch_size
            inp = mod.InferInput("image", list(batch.shape), "BYTES")
            inp.set_data_from_numpy(batch)
            result = client.infer(model, [inp], outputs=outputs, **kwargs)
            errors = [e for e in result.as_numpy("error").ravel() if e]
            if errors:
                raise RuntimeError(f"{len(errors)} item errors, e.g. {errors[0]!r}")
            return batch_size

        return call

    return make


def baseline_call_factory(port: int, corpus: list[bytes], timeout: float) -> Callable[[], Callable[[], int]]:
    counter = iter(range(10**9))
    lock = threading.Lock()

    def make() -> Callable[[], int]:
        with lock:
            state = {"i": next(counter) * 7}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

        def call() -> int:
            body = corpus[state["i"] % len(corpus)]
            state["i"] += 1
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/jpeg"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
            return 1

        return call

    return make


# -- processes ----------------------------------------------------------------------------------------------


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@contextlib.contextmanager
def keras_baseline(repository: Path, runs: Path | None, timeout: float) -> Iterator[tuple[int, dict]]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "loadtest.keras_baseline",
        "serve",
        "--port",
        str(port),
        "--repository",
        str(repository),
    ]
    if runs is not None:
        cmd += ["--runs", str(runs)]
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        cmd, env=_python_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"keras baseline exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    info = json.loads(r.read())
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"keras baseline not ready after {timeout:.0f} s") from None
                time.sleep(0.5)
        yield port, info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def inprocess_throughput(repository: Path, batch: int, duration: float) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "loadtest.keras_baseline",
        "inprocess",
        "--repository",
        str(repository),
        "--batch",
        str(batch),
        "--duration",
        str(duration),
    ]
    out = subprocess.run(cmd, env=_python_env(), cwd=ROOT, capture_output=True, text=True, timeout=600 + duration)
    if out.returncode != 0:
        raise RuntimeError(f"in-process measurement failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- scenarios ----------------------------------------------------------------------------------------------


@dataclass
class ExternalTriton:
    """A server someone else started; quacks like :class:`TritonServer` for the scenarios."""

    grpc_url: str
    http_url: str


def run_triton_scenarios(
    server: TritonServer | ExternalTriton,
    *,
    dynamic: bool,
    crops: list[bytes],
    photos: list[bytes],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> list[Result]:
    plans: list[tuple[str, str, str, int]] = []  # (scenario, protocol, path, concurrency)
    if dynamic:
        plans += [("concurrency sweep", "grpc", "crop", c) for c in args.concurrency]
        plans += [
            ("detection path", "grpc", "detect", TARGET_CONCURRENCY),
            ("HTTP", "http", "crop", TARGET_CONCURRENCY),
        ]
    else:
        plans += [("dynamic batching off", "grpc", "crop", TARGET_CONCURRENCY)]
    results = []
    for scenario, protocol, path, concurrency in plans:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        corpus = crops if path == "crop" else photos
        log(f"  {scenario}: {protocol} {ENSEMBLES[path]} c={concurrency} b={args.batch_size} ...")
        factory = triton_call_factory(protocol, url, ENSEMBLES[path], corpus, args.batch_size, args.timeout)
        measured = closed_loop(factory, concurrency, args.duration, args.warmup)
        results.append(Result(scenario, "triton", protocol, path, dynamic, concurrency, args.batch_size, **measured))
        log(
            f"    {measured['img_per_s']:.1f} img/s, p50 {measured['p50_ms']:.1f} ms, p99 {measured['p99_ms']:.1f} ms,"
            f" {measured['errors']} errors"
        )
    return results


def find(results: list[Result], **where) -> Result | None:
    for r in results:
        if all(getattr(r, k) == v for k, v in where.items()):
            return r
    return None


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def write_markdown(path: Path, results: list[Result], meta: dict, inproc: dict | None) -> None:
    base16 = find(results, server="keras-baseline", concurrency=TARGET_CONCURRENCY)
    lines = [
        "# Serving benchmark",
        "",
        f"Run {meta['date']} on {meta['host']} ({meta['cpus']} CPUs, GPU visible: {meta['gpu']}); Triton configs: "
        f"`{meta['config_name']}`; {meta['duration']:g} s per scenario after {meta['warmup']:g} s warm-up; "
        f"closed-loop threaded client, {meta['batch_size']} image(s) per request.",
        f"Crop corpus: {meta['crop_corpus']}. Detection corpus: {meta['photo_corpus']}.",
        f"Baseline models: {meta.get('baseline_models', 'not run')}.",
        "",
        "| scenario | server | protocol | path | dyn. batching | concurrency | img/s | p50 ms | p99 ms | errors "
        "| x baseline (c=16) |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = r.img_per_s / base16.img_per_s if base16 and base16.img_per_s else float("nan")
        dyn = {True: "on", False: "off", None: "-"}[r.dynamic_batching]
        lines.append(
            f"| {r.scenario} | {r.server} | {r.protocol} | {r.path} | {dyn} | {r.concurrency} | "
            f"{_fmt(r.img_per_s)} | {_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | {r.errors} | {_fmt(ratio)} |"
        )
    lines.append("")
    ours = find(
        results, server="triton", protocol="grpc", path="crop", dynamic_batching=True, concurrency=TARGET_CONCURRENCY
    )
    if ours and base16 and base16.img_per_s:
        ratio = ours.img_per_s / base16.img_per_s
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        lines.append(
            f"**Triton crop path, gRPC, concurrency {TARGET_CONCURRENCY}: {ours.img_per_s:.1f} img/s = "
            f"{ratio:.1f}x the Keras baseline ({base16.img_per_s:.1f} img/s); {verdict} the "
            f"{TARGET_RATIO:g}x target.**"
        )
    off = find(results, dynamic_batching=False)
    if ours and off and off.img_per_s:
        gain = ours.img_per_s / off.img_per_s
        lines.append(f"Dynamic batching on/off at concurrency {TARGET_CONCURRENCY}: {gain:.2f}x throughput.")
    det = find(results, path="detect")
    if ours and det and det.img_per_s:
        lines.append(f"Detection path costs {ours.img_per_s / det.img_per_s:.2f}x the crop path's time per image.")
    http_r = find(results, protocol="http")
    if ours and http_r and http_r.img_per_s:
        lines.append(f"gRPC/HTTP throughput: {ours.img_per_s / http_r.img_per_s:.2f}x.")
    if inproc:
        lines += [
            "",
            f"In-process SavedModels (`tf.saved_model.load`, batch {inproc['batch']}, TF {inproc['tf_version']}): "
            f"age {inproc['age_img_s']:.0f} img/s, gender {inproc['gender_img_s']:.0f} img/s, both in sequence "
            f"{inproc['both_img_s']:.0f} img/s.",
        ]
        if ours:
            lines.append(
                f"Ensemble (crop, gRPC, c={TARGET_CONCURRENCY}) / in-process (both models): "
                f"{ours.img_per_s / inproc['both_img_s']:.3f}."
            )
    errors = [r for r in results if r.first_error]
    if errors:
        lines += ["", "Errors seen:"]
        lines += [f"- {r.scenario} ({r.protocol}, c={r.concurrency}): {r.first_error}" for r in errors]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, results: list[Result]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        ("Keras web" if r.server != "triton" else "Triton")
        + f"\n{r.protocol} {r.path}\nc={r.concurrency}"
        + ("" if r.dynamic_batching is None else f", dyn {'on' if r.dynamic_batching else 'off'}")
        for r in results
    ]
    x = np.arange(len(results))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.2 * len(results)), 8), sharex=True)
    colours = ["tab:grey" if r.server != "triton" else "tab:blue" for r in results]
    bars = ax1.bar(x, [r.img_per_s for r in results], color=colours)
    ax1.bar_label(bars, fmt="%.1f", fontsize=8)
    ax1.set_ylabel("throughput (img/s, log)")
    # Log scale: the baseline is expected to be an order of magnitude below, and must stay visible.
    ax1.set_yscale("log")
    ax1.set_title("Triton scenarios vs the seed-style Keras web process")
    ax2.bar(x - 0.2, [r.p50_ms for r in results], width=0.4, label="p50")
    ax2.bar(x + 0.2, [r.p99_ms for r in results], width=0.4, label="p99")
    ax2.set_ylabel("latency (ms, log)")
    ax2.set_yscale("log")
    ax2.legend()
    ax2.set_xticks(x, labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--runs", type=Path, default=ROOT / "runs", help="baseline prefers runs/<task>/model.keras")
    p.add_argument("--utkface", type=Path, default=DEFAULT_UTKFACE, help="crop corpus source, if present")
    p.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each scenario")
    p.add_argument("--concurrency", type=lambda s: tuple(int(v) for v in s.split(",")), default=SWEEP)
    p.add_argument("--batch-size", type=int, default=1, help="images per Triton request")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--config-name", choices=("auto", "cpu", "default"), default="auto")
    p.add_argument("--inprocess-batch", type=int, default=64)
    p.add_argument("--no-baseline", action="store_true", help="skip the Keras web process")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process SavedModel measurement")
    p.add_argument("--no-dynamic-off", action="store_true", help="skip the dynamic-batching-off server")
    p.add_argument(
        "--triton-grpc-url",
        default="",
        help="measure this running server (host:port) instead of starting one; skips the dynamic-batching-off scenario",
    )
    p.add_argument("--triton-http-url", default="", help="its HTTP endpoint (host:port)")
    args = p.parse_args(argv)
    if bool(args.triton_grpc_url) != bool(args.triton_http_url):
        p.error("--triton-grpc-url and --triton-http-url go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    crops, crop_desc = crop_corpus(args.utkface)
    photos = photo_corpus()
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "gpu": gpu_visible(),
        "duration": args.duration,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "crop_corpus": crop_desc,
        "photo_corpus": f"{len(photos)} scaled/mirrored copies of grace_hopper.jpg",
    }
    results: list[Result] = []

    def server(repository: Path) -> TritonServer:
        return TritonServer(
            repository,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            config_name=args.config_name,
        )

    if args.triton_grpc_url:
        log(f"Triton already running at {args.triton_grpc_url} / {args.triton_http_url} ...")
        external = ExternalTriton(args.triton_grpc_url, args.triton_http_url)
        meta["config_name"] = "external server"
        results += run_triton_scenarios(external, dynamic=True, crops=crops, photos=photos, args=args, log=log)
    else:
        log(f"Triton on {args.repository} ...")
        with server(args.repository) as triton:
            meta["config_name"] = triton.config_name
            meta["triton_startup_s"] = triton.startup_seconds
            results += run_triton_scenarios(triton, dynamic=True, crops=crops, photos=photos, args=args, log=log)

    # An external server's configuration is not ours to change, so the batching comparison needs our own.
    if not args.no_dynamic_off and not args.triton_grpc_url:
        with tempfile.TemporaryDirectory(prefix="repo-nodynbatch-") as tmp:
            repo = repository_without_dynamic_batching(args.repository, Path(tmp) / "model_repository")
            log("Triton with dynamic batching off ...")
            with server(repo) as triton:
                results += run_triton_scenarios(triton, dynamic=False, crops=crops, photos=photos, args=args, log=log)

    if not args.no_baseline:
        log("Keras baseline web process ...")
        runs = args.runs if args.runs and args.runs.is_dir() else None
        with keras_baseline(args.repository, runs, timeout=600) as (port, info):
            meta["baseline_models"] = ", ".join(f"{k}: {v}" for k, v in info["models"].items())
            for concurrency in sorted({1, TARGET_CONCURRENCY}):
                log(f"  baseline c={concurrency} ...")
                measured = closed_loop(
                    baseline_call_factory(port, crops, args.timeout), concurrency, args.duration, args.warmup
                )
                results.append(Result("baseline", "keras-baseline", "http", "crop", None, concurrency, 1, **measured))
                log(
                    f"    {measured['img_per_s']:.1f} img/s, p50 {measured['p50_ms']:.1f} ms, "
                    f"{measured['errors']} errors"
                )

    inproc = None
    if not args.no_inprocess:
        log(f"In-process SavedModels, batch {args.inprocess_batch} ...")
        inproc = inprocess_throughput(args.repository, args.inprocess_batch, args.duration)
        meta["inprocess"] = inproc

    (args.out / "benchmark.json").write_text(
        json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2)
    )
    write_markdown(args.out / "benchmark.md", results, meta, inproc)
    write_plot(args.out / "benchmark.png", results)
    log((args.out / "benchmark.md").read_text())
    log(f"wrote {args.out}/benchmark.md, benchmark.json, benchmark.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which CPU runtime serves the SavedModels: TensorFlow, OpenVINO and ONNX Runtime side by side.

    .venv/bin/pip install -e '.[research]'   # ONNX Runtime and tf2onnx, beside make setup's
    python -m research.runtimes [--repository model_repository] [--duration 3] [--threads 1] [--out loadtest/results]

Each runtime runs in its own fresh process (so load time and memory are its own) and reports, for
the two exported SavedModels (age and gender, run one after the other as the ensemble does):

- ``load_s``: import of the runtime plus loading/converting/compiling both models;
- throughput in images/s at batch 1, 16 and 64 on ``--threads`` threads (1 = what each served model
  instance gets in the CPU configs);
- ``per_model_b64``: each model alone at batch 64, the per-model speed budget;
- ``rss_mb``: resident memory of that process after the measurements;
- ``max_abs_diff``: largest difference from TensorFlow's outputs on the fixed crop set
  (:func:`loadtest.bench.corpus.model_crops`).

ONNX Runtime needs an ONNX file: ``tf2onnx`` converts the SavedModel first (needs TensorFlow, so it is
an export-time step; its time is reported as ``convert_s`` and not counted in ``load_s``).
Writes ``runtimes.md`` and ``runtimes.json`` to ``--out``. The CPU is shared here: the numbers are
indicative; rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import contract
from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("tensorflow", "openvino", "onnxruntime")
BATCHES = (1, 16, 64)


def savedmodel_paths(repository: Path) -> dict[str, Path]:
    """The newest version's SavedModel of each task (what Triton serves). Not training.export.latest:
    importing training loads TensorFlow, which would spoil the other runtimes' load time and memory."""
    paths = {}
    for task in contract.TASK_MODELS:
        versions = sorted((p for p in (repository / task).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        if not versions:
            raise FileNotFoundError(f"no exported {task} model under {repository / task}")
        paths[task] = versions[-1] / ir.SAVEDMODEL
    return paths


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(runtime: str, savedmodels: dict[str, Path], threads: int, workdir: Path) -> tuple[dict, dict]:
    """Returns ``{task: fn(batch) -> outputs}`` and extra facts, for one runtime."""
    extra: dict = {}
    if runtime == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        fns, keep = {}, []
        for task, path in savedmodels.items():
            loaded = tf.saved_model.load(str(path))
            keep.append(loaded)
            sig = loaded.signatures["serving_default"]
            fns[task] = lambda x, sig=sig, t=task: sig(**{contract.CROP_INPUT: tf.constant(x)})[
                contract.TASK_OUTPUTS[t]
            ].numpy()
        extra["version"] = tf.__version__
        extra["_keep"] = keep
        return fns, extra
    if runtime == "openvino":
        import openvino as ov

        core, fns = ov.Core(), {}
        for task, path in savedmodels.items():
            compiled = core.compile_model(
                ov.convert_model(str(path)),
                "CPU",
                ov_runtime.settings(threads, "f32"),  # f32: the runtimes are compared on one arithmetic
            )
            request = compiled.create_infer_request()
            out = compiled.output(contract.TASK_OUTPUTS[task])
            fns[task] = lambda x, r=request, o=out: np.array(r.infer({contract.CROP_INPUT: x})[o])
        extra["version"] = ov.__version__
        return fns, extra
    if runtime == "onnxruntime":
        import onnxruntime as ort

        fns = {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        for task in savedmodels:
            session = ort.InferenceSession(str(workdir / f"{task}.onnx"), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            fns[task] = lambda x, s=session, n=name: s.run(None, {n: x})[0]
        extra["version"] = ort.__version__
        return fns, extra
    raise ValueError(runtime)


def convert_to_onnx(savedmodels: dict[str, Path], workdir: Path) -> float:
    """tf2onnx, in a child process (it imports TensorFlow); returns the seconds it took for both models."""
    start = time.perf_counter()
    for task, path in savedmodels.items():
        cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(path), "--output"]
        done = subprocess.run(
            [*cmd, str(workdir / f"{task}.onnx"), "--opset", "17"], capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"tf2onnx failed for {task}:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def measure(runtime: str, repository: Path, threads: int, duration: float, workdir: Path) -> dict:
    """Runs in the child process: load, exactness outputs, throughput, memory."""
    from loadtest.bench.corpus import model_crops

    savedmodels = savedmodel_paths(repository)
    start = time.perf_counter()
    fns, extra = _load(runtime, savedmodels, threads, workdir)
    load_s = time.perf_counter() - start
    crops = model_crops()
    outputs = {task: fn(crops).ravel().tolist() for task, fn in fns.items()}
    assert "tensorflow" not in sys.modules or runtime == "tensorflow", "TensorFlow leaked into another runtime"
    rng = np.random.default_rng(0)
    rates = {}
    for batch in BATCHES:
        x = rng.integers(0, 256, (batch, *crops.shape[1:]), dtype=np.uint8)
        for fn in fns.values():  # unmeasured first call: shape-specific compilation
            fn(x)
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < duration:
            for fn in fns.values():
                fn(x)
            n += batch
        rates[batch] = n / elapsed
    # Each model alone at batch 64: the per-model speed budget (issue 10: >= 300 img/s in the serving runtime).
    x = rng.integers(0, 256, (64, *crops.shape[1:]), dtype=np.uint8)
    alone = {}
    for task, fn in fns.items():
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < duration:
            fn(x)
            n += 64
        alone[task] = n / elapsed
    return {
        "per_model_b64": alone,
        "runtime": runtime,
        "version": extra.get("version"),
        "load_s": load_s,
        "img_per_s": rates,
        "rss_mb": _rss_mb(),
        "outputs": outputs,
    }


def run_child(runtime: str, args: argparse.Namespace, workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "research.runtimes", "--child", runtime, "--workdir", str(workdir)]
    cmd += ["--repository", str(args.repository), "--threads", str(args.threads), "--duration", str(args.duration)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{runtime} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_markdown(path: Path, results: list[dict], meta: dict) -> None:
    lines = [
        "# CPU runtime comparison (`python -m research.runtimes`)",
        "",
        f"{meta['date']}, {meta['cpus']} CPUs (shared; indicative), {meta['threads']} thread(s) per runtime, "
        f"{meta['duration']} s per batch size; both models in sequence (age then gender).",
        "",
        "| runtime | version | load s | img/s b=1 | img/s b=16 | img/s b=64 | each model alone, b=64 | RSS MB | "
        "max abs diff vs TF |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['runtime']} | - | - | - | - | - | - | - | failed: {r['error'][:200]} |")
            continue
        rate = r["img_per_s"]
        alone = ", ".join(f"{task} {v:.0f}" for task, v in r.get("per_model_b64", {}).items())
        lines.append(
            f"| {r['runtime']} | {r['version']} | {r['load_s']:.2f} | {rate['1']:.0f} | {rate['16']:.0f} | "
            f"{rate['64']:.0f} | {alone} | {r['rss_mb']:.0f} | {r['max_abs_diff']:.2e} |"
        )
    if meta.get("onnx_convert_s") is not None:
        lines += ["", f"ONNX Runtime's model came from tf2onnx ({meta['onnx_convert_s']:.1f} s for both, with TF)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per batch size and runtime")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    p.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.repository, args.threads, args.duration, args.workdir)))
        return 0

    from datetime import UTC, datetime

    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "duration": args.duration,
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="runtimes-") as tmp:
        workdir = Path(tmp)
        for runtime in args.runtimes.split(","):
            try:
                if runtime == "onnxruntime":
                    missing = [m for m in ("onnxruntime", "tf2onnx") if importlib.util.find_spec(m) is None]
                    if missing:
                        raise RuntimeError(f"{', '.join(missing)} not installed: pip install -e '.[research]'")
                    meta["onnx_convert_s"] = convert_to_onnx(savedmodel_paths(args.repository), workdir)
                print(f"{runtime} ...", file=sys.stderr, flush=True)
                results.append(run_child(runtime, args, workdir))
            except Exception as err:  # noqa: BLE001 - a runtime that cannot run is a result, not a crash
                results.append({"runtime": runtime, "error": f"{type(err).__name__}: {err}"})
    reference = next((r["outputs"] for r in results if r["runtime"] == "tensorflow" and "outputs" in r), None)
    for r in results:
        if "outputs" in r:
            outputs = r.pop("outputs")
            diffs = [np.max(np.abs(np.subtract(outputs[t], reference[t]))) for t in outputs] if reference else []
            r["max_abs_diff"] = float(max(diffs)) if diffs else float("nan")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtimes.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    write_markdown(args.out / "runtimes.md", results, meta)
    print((args.out / "runtimes.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

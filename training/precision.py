"""What serving the CNNs in bf16 or int8 changes: the served versions scored at each precision on the same faces.

    python -m training.precision --data ../shared/datasets/UTKFace.tar.gz [--split test] [--out reports] [--name N]
                                 [--precisions f32,int8]

The CPU configs (``model_repository/{age,gender}/configs/cpu.pbtxt``) ask for ``inference_precision: auto``: bf16
where the CPU runs it natively (AMX, or AVX512_BF16 without AMX), else int8 (the convolutions quantized by
``training.quantize``) where it has AVX2, else f32 (serving/pipeline/backends/openvino_savedmodel/ov_runtime.py).
bf16 keeps 8 bits of mantissa, so the served answers move; int8 moves them more. This scores the newest ``age``
and ``gender`` versions as the backend runs them (the IR or the int8 model beside the SavedModel, the backend's
compile settings), once per precision (int8 where both versions have a valid one), on the split the models never
trained on, and writes
``<name>.json`` and ``<name>.md`` (``--name``, default ``precision``: another name keeps another machine's report
beside it; ``--precisions`` names the ones to score, f32 always among them: under an ``ONEDNN_MAX_CPU_ISA`` cap below
AVX-512, which stands in for a CPU without it, OpenVINO cannot compile the models in bf16):

- per precision: age MAE and RMSE, the 10-90% interval's coverage and width, gender accuracy and ECE;
- per output: how far each precision moved it from f32 (mean, 99th percentile, largest), and how many gender
  decisions flipped;
- per model: CPU-ms per image at each precision on this machine (one thread, batch 8).

The scores are the report; the speed is this machine's (another CPU differs, which is why ``auto`` exists).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from common import contract, spec
from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime
from training import cli
from training import data as utk
from training.evaluate import age_metrics, calibration, gender_metrics, scoring_parser, split_seed

TASKS = ("age", "gender")
#: Scored always; ``int8`` too where both versions have a valid ``model.int8`` (training.quantize).
PRECISIONS = ("f32", "bf16")
#: Images per OpenVINO call: the backend's max_infer_batch in the CPU configs.
BATCH = 8


def compile_version(version: Path, precision: str, threads: int):
    """``version``'s model compiled as the backend compiles it, at ``precision`` (int8: its ``model.int8``, which
    must be valid, with the float parts in f32)."""
    ov = ov_runtime.import_openvino()
    core = ov.Core()
    model, source, served = ir.load_served(version, core, precision)
    if served != precision:
        raise SystemExit(f"{version}: no {precision} model to score ({source}); run python -m training.quantize")
    return ov_runtime.compile_model(core, model, ov_runtime.settings(threads, precision))


def run(compiled, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of ``compiled`` over ``images``, as ``(N,)`` arrays, in batches of :data:`BATCH`."""
    request, parts = compiled.create_infer_request(), []
    for i in range(0, len(images), BATCH):
        result = request.infer([images[i : i + BATCH]])
        parts.append({port.get_any_name(): np.array(result[port])[:, 0] for port in compiled.outputs})
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def cpu_ms_per_image(compiled, images: np.ndarray, seconds: float) -> float:
    """CPU-milliseconds per image of one-thread batches of :data:`BATCH`, after an unmeasured first call."""
    request, x = compiled.create_infer_request(), images[:BATCH]
    request.infer([x])
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds or calls < 3:
        request.infer([x])
        calls += 1
    return (time.process_time() - cpu) * 1000 / (calls * len(x))


def scores(ages: np.ndarray, genders: np.ndarray, pred: dict[str, np.ndarray]) -> dict:
    age = age_metrics(ages, pred[spec.AGE_OUTPUT], pred.get(spec.AGE_LOW_OUTPUT), pred.get(spec.AGE_HIGH_OUTPUT))
    prob = pred[spec.GENDER_OUTPUT]
    return {
        "age": age,
        "gender_accuracy": gender_metrics(genders, prob)["accuracy"],
        "gender_ece": calibration(genders, prob)["ece"],
    }


def moved(f32: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per output, how far ``other`` is from f32's answer on the same faces."""
    out = {}
    for name in f32:
        d = np.abs(other[name] - f32[name])
        out[name] = {"mean": float(d.mean()), "p99": float(np.quantile(d, 0.99)), "max": float(d.max())}
    flips = contract.is_female(f32[spec.GENDER_OUTPUT]) != contract.is_female(other[spec.GENDER_OUTPUT])
    out[spec.GENDER_OUTPUT]["decisions_flipped"] = int(flips.sum())
    return out


def evaluate(
    repo: Path,
    data_path: Path,
    split: str,
    seed: int | None,
    cache_dir: Path | None,
    speed_s: float,
    only: list[str] | None = None,
):
    models = {task: cli.version_folder(repo, task, None) for task in TASKS}
    seed = split_seed(models, seed)
    by_task = {task: cli.load(data_path, size=spec.image_size(task), cache_dir=cache_dir) for task in TASKS}
    data = by_task["age"]
    if not np.array_equal(data.names, by_task["gender"].names):
        raise SystemExit("the decode caches of the two input sizes list different faces; delete them and rerun")
    rows = np.flatnonzero(utk.split(data, seed=seed) == split) if split != "all" else np.arange(len(data))
    if not len(rows):
        raise SystemExit(f"no faces in split {split!r}")
    faces = {task: by_task[task].images[rows] for task in TASKS}
    ages, genders = data.ages[rows], data.genders[rows]

    precisions = [*PRECISIONS, *(["int8"] if all(ir.int8_valid(v)[0] for v in models.values()) else [])]
    if only:  # f32 first: every other precision is compared with it
        precisions = ["f32", *(p for p in dict.fromkeys(only) if p != "f32")]
    pred: dict[str, dict[str, np.ndarray]] = {}
    speed: dict[str, dict[str, float]] = {task: {} for task in TASKS}
    compiled_as: dict[str, dict[str, str]] = {task: {} for task in TASKS}
    for precision in precisions:
        pred[precision] = {}
        for task in TASKS:
            compiled = compile_version(models[task], precision, threads=os.cpu_count() or 1)
            compiled_as[task][precision] = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
            if precision == "int8":  # the convolutions in int8, the rest in the compiled float precision
                compiled_as[task][precision] = f"int8 + {compiled_as[task][precision]}"
            pred[precision].update(run(compiled, faces[task]))
            one = compile_version(models[task], precision, threads=1)
            speed[task][precision] = cpu_ms_per_image(one, faces[task], speed_s)
    native = ov_runtime.native()
    return {
        "data": str(data_path),
        "split": split,
        "seed": seed,
        "n": int(len(rows)),
        "models": {task: str(v) for task, v in models.items()},
        "machine": {
            "cpu": _cpu_name(),
            "native_bf16": native["bf16"] or "none",
            "native_int8": native["int8"] or "none",
            # A cap (how the benchmarks stand in for another CPU) changes the kernels, so the answers and the speed.
            "isa_cap": os.environ.get(ov_runtime.ISA_CAP, ""),
            "auto_resolves_to": ov_runtime.resolve_precision("auto", bool(native["bf16"]), bool(native["int8"])),
            "openvino": ov_runtime.import_openvino().get_version(),
            "python": platform.python_version(),
        },
        "compiled_as": compiled_as,
        "precisions": precisions,
        "scores": {p: scores(ages, genders, pred[p]) for p in precisions},
        "moved_from_f32": {p: moved(pred["f32"], pred[p]) for p in precisions if p != "f32"},
        "cpu_ms_per_image": speed,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Served precision: f32 against {' and '.join(p for p in report['precisions'] if p != 'f32')}",
        "",
        f"`python -m training.precision`, split `{report['split']}` of seed {report['seed']} ({report['n']} faces), "
        f"models {', '.join(report['models'].values())}. OpenVINO {m['openvino']} on {m['cpu']}"
        + (
            f", oneDNN held to {m['isa_cap']} (`{ov_runtime.ISA_CAP}`, a stand-in for a CPU without more)"
            if m.get("isa_cap")
            else ""
        )
        + "; native bf16 here: "
        f"{m['native_bf16']}, native int8: {m.get('native_int8', 'not recorded')}, so `inference_precision: auto` "
        f"serves {m['auto_resolves_to']} on this machine.",
        "",
        "| precision | age MAE | age RMSE | interval coverage | interval width | gender accuracy | gender ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for p, s in report["scores"].items():
        a = s["age"]
        cover = f"{a['coverage']:.4f} | {a['width']:.2f}" if "coverage" in a else "- | -"
        lines.append(
            f"| {p} | {a['mae']:.3f} | {a['rmse']:.3f} | {cover} | {s['gender_accuracy']:.4f} | {s['gender_ece']:.4f} |"
        )
    lines += ["", "How far each output moved from f32 on the same faces:", ""]
    lines += ["| precision | output | mean | 99th percentile | largest |", "|---|---|---|---|---|"]
    for p, outputs in report["moved_from_f32"].items():
        for name, d in outputs.items():
            lines.append(f"| {p} | `{name}` | {d['mean']:.4f} | {d['p99']:.4f} | {d['max']:.4f} |")
        flipped = outputs[spec.GENDER_OUTPUT]["decisions_flipped"]
        lines.append(f"| {p} | gender decisions flipped | {flipped} of {report['n']} | | |")
    lines += [
        "",
        "CPU-ms per image on this machine (one thread, batch 8; OpenVINO's compiled precision in brackets):",
        "",
    ]
    precisions = report["precisions"]
    lines += ["| model | " + " | ".join(precisions) + " |", "|---|" + "---|" * len(precisions)]
    for task, by_p in report["cpu_ms_per_image"].items():
        cells = [f"{by_p[p]:.2f} ({report['compiled_as'][task][p]})" for p in precisions]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = scoring_parser(__doc__, "test")
    p.add_argument(
        "--speed-seconds", type=cli.positive_float, default=3.0, help="measured seconds per model and precision"
    )
    p.add_argument("--name", default="precision", help="the report's file name, without .md and .json")
    p.add_argument(
        "--precisions",
        default="",
        help="comma-separated, from f32, bf16 and int8 (default: f32 and bf16, and int8 where both versions have one)",
    )
    args = p.parse_args(argv)
    only = [x.strip().lower() for x in args.precisions.split(",") if x.strip()]
    if unknown := [x for x in only if x not in ("f32", "bf16", "int8")]:
        p.error(f"--precisions: unknown {', '.join(unknown)}")
    report = evaluate(args.repo, args.data, args.split, args.seed, args.cache_dir, args.speed_seconds, only)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(report))
    line = " | ".join(
        f"{p}: age MAE {s['age']['mae']:.3f}, gender accuracy {s['gender_accuracy']:.4f}"
        for p, s in report["scores"].items()
    )
    print(f"{args.split}: {line} -> {args.out / f'{args.name}.md'}")
    return report


if __name__ == "__main__":
    main()

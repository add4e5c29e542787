"""Writes the benchmark's results as Markdown, with each target of issue 8 checked against its run."""

from __future__ import annotations

from pathlib import Path

from loadtest.bench.driver import Result
from loadtest.bench.warmup import TARGET as WARM_TARGET

#: (label, value key, threshold, unit); every ratio is taken inside one run.
TARGETS = (
    ("crop path, gRPC, c=16", "crop_c16", 400.0, "img/s"),
    ("crop path c=16 / in-process TF batch 64 (both models)", "crop_vs_inprocess", 1.0, "x"),
    ("dynamic batching on / off, c=16", "batching_gain", 1.5, "x"),
    ("detection path, portrait", "detect_portrait", 60.0, "img/s"),
    ("detection path, 12 MP JPEG", "detect_12mp", 10.0, "img/s"),
)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def find(results: list[Result], **where) -> Result | None:
    return next((r for r in results if all(getattr(r, k) == v for k, v in where.items())), None)


def headline(results: list[Result], inproc: dict | None) -> dict:
    """The numbers the targets are about, from one run."""
    crop16 = find(results, scenario="crop path", concurrency=16)
    off = find(results, scenario="dynamic batching off")
    portrait = find(results, scenario="detection path, portrait")
    phone = find(results, scenario="detection path, 12 MP JPEG")
    both = inproc.get("both_img_s") if inproc else None
    return {
        "crop_c16": crop16.img_per_s if crop16 else None,
        "crop_vs_inprocess": crop16.img_per_s / both if crop16 and both else None,
        "batching_gain": crop16.img_per_s / off.img_per_s if crop16 and off and off.img_per_s else None,
        "detect_portrait": portrait.img_per_s if portrait else None,
        "detect_12mp": phone.img_per_s if phone else None,
    }


def write_markdown(path: Path, results: list[Result], meta: dict, extra: dict) -> None:
    lines = [
        "# Serving benchmark (`python -m loadtest.bench.benchmark`)",
        "",
        f"Run {meta['date']} on {meta['host']} ({meta['cpus']} CPUs); Triton configs `{meta['config_name']}`; "
        f"{meta['duration']:g} s per scenario after {meta['warmup']:g} s warm-up; closed-loop gRPC client, "
        f"{meta['batch_size']} image(s) per request. Crops: {meta['crop_corpus']}.",
        "",
        "| scenario | model | inputs | dyn. batching | concurrency | img/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.model} | {r.inputs} | {'on' if r.dynamic_batching else 'off'} | {r.concurrency} | "
            f"{_fmt(r.img_per_s)} | {_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | {r.errors} |"
        )
    if meta.get("dynamic_batching_off_for"):
        lines += ["", f"Dynamic batching off: removed from {', '.join(meta['dynamic_batching_off_for'])}."]
    inproc = extra.get("inprocess")
    if inproc:
        lines += [
            "",
            f"In-process TensorFlow reference (`tf.saved_model.load`, batch {inproc['batch']}, TF "
            f"{inproc['tf_version']}): age {inproc['age_img_s']:.0f}, gender {inproc['gender_img_s']:.0f}, "
            f"both in sequence {inproc['both_img_s']:.0f} img/s.",
        ]
    values = headline(results, inproc)
    lines += ["", "## Targets (this run)", "", "| target | value | threshold | met |", "|---|---:|---:|---|"]
    for label, key, threshold, unit in TARGETS:
        value = values[key]
        met = "-" if value is None else ("yes" if value >= threshold else "**no**")
        lines.append(f"| {label} | {_fmt(value, 2)} {unit} | {threshold:g} {unit} | {met} |")
    cold = extra.get("coldstart")
    if cold:
        met = "yes" if cold["median_s"] <= 5.0 else "**no**"
        runs = ", ".join(f"{s:.1f}" for s in cold["runs_s"])
        lines.append(
            f"| cold start, launcher to first inference (median of {len(cold['runs_s'])}) | "
            f"{cold['median_s']:.2f} s | 5 s | {met} |"
        )
        lines += ["", f"Cold-start runs: {runs} s."]
    memory = extra.get("memory")
    if memory:
        lines += [
            "",
            f"Resident memory after the scenarios, Triton plus all stubs (sum of VmRSS over the process group): "
            f"**{memory['total_mb']:.0f} MB** "
            + (
                f"({memory['baseline_mb'] / memory['total_mb']:.1f}x less than the {memory['baseline_mb']:.0f} MB "
                f"baseline)"
                if memory.get("baseline_mb")
                else ""
            )
            + f"; sum of PSS (each shared page counted once): **{memory.get('pss_mb', 0):.0f} MB**"
            + (
                f" ({memory['pss_baseline_mb'] / memory['pss_mb']:.1f}x less than the "
                f"{memory['pss_baseline_mb']:.0f} MB baseline)"
                if memory.get("pss_baseline_mb") and memory.get("pss_mb")
                else ""
            )
            + ".",
            "",
            "| process | RSS MB |",
            "|---|---:|",
            *[f"| {name} | {mb:.0f} |" for name, mb in sorted(memory["processes"].items())],
        ]
    warm = extra.get("warmup")
    if warm:
        lines += [
            "",
            "Ready means warm (first request of each size right after ready, vs the steady p50; "
            f"target <= {WARM_TARGET:g}x):",
            "",
            "| model | batch | first ms | p50 ms | ratio |",
            "|---|---:|---:|---:|---:|",
            *[
                f"| {w['model']} | {w['batch']} | {w['first_ms']:.1f} | {w['p50_ms']:.1f} | {w['ratio']:.2f} |"
                for w in warm
            ],
        ]
    errors = [r for r in results if r.first_error]
    if errors:
        lines += ["", "Errors seen:", *[f"- {r.scenario} (c={r.concurrency}): {r.first_error}" for r in errors]]
    path.write_text("\n".join(lines) + "\n")

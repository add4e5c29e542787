"""Reporting an abuse suite run: the pass/fail rule and the Markdown and JSON reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "abuse"


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    ms = np.array(seconds) * 1000
    return {k: round(float(np.percentile(ms, q)), 1) for k, q in (("p50", 50), ("p95", 95), ("max", 100))}


def failures(report: dict) -> list[str]:
    """Why the run failed, empty when it passed: the rule ``make test``'s abuse test holds the server to.

    A server that stays up but answers well-formed requests with 5xx, 503 or nothing fails too: the suite's point
    is that bad input gets a clear error while every other caller keeps being served.
    """
    t, well_formed = report["totals"], report["categories"].get("well_formed", {})
    reasons = [f"{t[key]} {what}" for key, what in FAILING.items() if t[key]]
    if well_formed.get("answered", 0) != well_formed.get("sent", 0):
        reasons.append(f"{well_formed['sent'] - well_formed['answered']} of {well_formed['sent']} well-formed unserved")
    if report["aborted"]:
        reasons.append("aborted: the server did not come back")
    # A run passes on what it sent: one that sent nothing, or stopped before its plan, has not shown the server
    # survives the documented count (a --time-limit of 0 or a slow machine once passed that way).
    sent, planned = report["abuse_requests"], report["planned_abuse_requests"]
    if report["stopped_early"]:
        reasons.append(
            f"stopped early at --time-limit after {report['duration_s']} s: {sent} of {planned} malformed requests "
            "sent (raise --time-limit, or lower --count)"
        )
    elif sent < planned and not report["aborted"]:
        reasons.append(f"only {sent} of {planned} malformed requests sent")
    if sent == 0:
        reasons.append("no malformed request was sent")
    return reasons


#: Outcomes that fail a run whatever the request was (a clean error or a 4xx is the right answer to abuse).
FAILING = {
    "deaths": "server deaths",
    "wrong_answer": "wrong answers",
    "server_error": "server errors (5xx / INTERNAL)",
    "no_answer": "requests without an answer",
}


def markdown(report: dict) -> str:
    t = report["totals"]
    mib = 2**20
    lines = [
        "# Abuse suite report",
        "",
        f"`python -m loadtest.abuse --count {report['config']['count']} --seed {report['config']['seed']} "
        f"--concurrency {report['config']['concurrency']}` against {report['server']['http_url']} (HTTP) / "
        f"{report['server']['grpc_url']} (gRPC); {report['duration_s']} s.",
        "",
        f"**{report['abuse_requests']} malformed requests** of {report['planned_abuse_requests']} planned "
        f"({report['items']} items, well-formed ones included) "
        f"and {report['categories'].get('well_formed', {}).get('sent', 0)} interleaved well-formed ones: "
        f"**{t['deaths']} server deaths, {t['wrong_answer']} wrong answers**, {t['server_error']} server errors "
        f"(5xx / INTERNAL), {t['unavailable']} unavailable (503), {t['no_answer']} without an answer."
        + (" Stopped early at the time limit: FAILED." if report["stopped_early"] else "")
        + (" ABORTED: the server did not come back." if report["aborted"] else ""),
        "",
        "| category | requests | items | clean errors | right answers | wrong answers | 5xx/INTERNAL | 503 | "
        "no answer | deaths |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cat, c in report["categories"].items():
        lines.append(
            f"| {cat} | {c['sent']} | {c['items']} | {c['clean_error']} | {c['answered']} | {c['wrong_answer']} | "
            f"{c['server_error']} | {c['unavailable']} | {c['no_answer']} | {c['deaths']} |"
        )
    lines.append(
        f"| **total** | {t['sent']} | {report['items']} | {t['clean_error']} | {t['answered']} | {t['wrong_answer']} "
        f"| {t['server_error']} | {t['unavailable']} | {t['no_answer']} | {t['deaths']} |"
    )
    lat = report["well_formed_latency_ms"]
    if lat:
        lines += [
            "",
            f"Well-formed requests during the run: p50 {lat['p50']} ms, p95 {lat['p95']} ms, max {lat['max']} ms.",
        ]
    rss = report["rss_bytes"]
    if rss["before"]:
        lines += ["", "| RSS (MiB) | before | after |", "|---|---:|---:|"]
        for name in rss["before"]:
            lines.append(f"| {name} | {rss['before'][name] / mib:.0f} | {rss['after'][name] / mib:.0f} |")
        before, after = sum(rss["before"].values()), sum(rss["after"].values())
        lines.append(f"| total | {before / mib:.0f} | {after / mib:.0f} |")
    else:
        lines += ["", "RSS not measured: the server's processes were not found (pass --pid on the serving host)."]
    for outcome, rows in report["samples"].items():
        lines += ["", f"Examples of `{outcome}`:", ""]
        lines += [f"- {r['category']} ({r['protocol']}): {r['detail']}" for r in rows[:8]]
    lines += [
        "",
        "Known bugs of the pinned Triton these inputs include"
        + (" (left out: --skip-known)" if report["config"]["skip_known"] else "")
        + ":",
        "",
    ]
    lines += [f"- {name}: {why}" for name, why in report["known_triton_bugs"].items()]
    for d in report["deaths"]:
        lines.append(f"- death after batch {d['batch']} ({d['category']}): {d['detail']}")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path

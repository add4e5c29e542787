"""Abuse suite: sends >= 1,000 malformed requests over HTTP and gRPC to a live server and checks it survives.

    python -m loadtest.abuse --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 \\
        [--count 1200] [--seed 0] [--concurrency 2] [--pid LAUNCHER_PID] [--out loadtest/results/abuse]

The inputs (loadtest/abuse/cases.py): admin calls without the key (shared-memory register included), compressed
and oversized bodies, batches of 32 40-MP 16-bit PNG bombs, tiny images and landscapes on the crop path, no-face
images, undecodable and random bytes, mutated and truncated real images, decompression bombs (PNG, GIF, WebP,
JPEG, BMP declaring huge sizes), wrong dtypes, shapes and batch sizes, unknown models and inputs, malformed JSON
and binary-extension framing, truncated and broken HTTP, gRPC messages with wrong tensor contents, declared
shapes that overflow Triton's size arithmetic, and requests cancelled mid-inference (5 ms deadlines, stream
resets). Well-formed requests are interleaved and their answers checked: a face gets a finite age and a gender, no
face gets NaN and ``face_found`` false.

Every request is classified: ``clean_error`` (4xx or gRPC status with a message, or a per-item ``error``),
``answered`` (a right answer), ``wrong_answer`` (numbers for garbage, numbers without a face, a refused
well-formed request, an admin call that worked without the key), ``server_error`` (HTTP 5xx other than the door's
503, gRPC INTERNAL/UNKNOWN/DATA_LOSS), ``unavailable`` (503 / UNAVAILABLE), ``no_answer`` (connection dropped,
timeout). After every batch of requests the server's health is checked over both protocols and the Triton pid
compared (a restart by the launcher's supervisor counts as a death). RSS of Triton, its stubs and nginx is read
from /proc before and after (the server is found from ``--pid`` or from the process listening on the HTTP port).
Writes ``<out>.json`` and ``<out>.md`` (by default the committed loadtest/results/abuse: it says so when it replaces
them); exits 1 on any death or wrong answer, and on a run that did not send every planned request (stopped by
``--time-limit``, or the server gone).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.ports import default_address
from loadtest import cli, procs
from loadtest.abuse import cases
from loadtest.abuse.judge import OUTCOMES, Result, run_case
from loadtest.abuse.report import DEFAULT_OUT, failures, markdown, percentiles, write_report
from loadtest.abuse.send import Sender


def well_formed(rng: random.Random, k: int) -> cases.Case:
    proto = ("http", "grpc")[k % 2]
    choice = k % 4
    if choice == 0:
        return cases.Case(
            "well_formed",
            proto,
            "infer",
            cases.DETECT,
            [rng.choice(cases.face_images())],
            cases.Expect("items", ("face",)),
        )
    if choice == 1:
        return cases.Case(
            "well_formed", proto, "infer", cases.DETECT, [cases.no_face_photo()], cases.Expect("items", ("noface",))
        )
    if choice == 2:
        blobs = [rng.choice(cases.face_images()), cases.no_face_image(rng)]
        return cases.Case("well_formed", proto, "infer", cases.DETECT, blobs, cases.Expect("items", ("face", "noface")))
    return cases.Case("well_formed", proto, "infer", cases.CROP, [cases.face_crop()], cases.Expect("items", ("face",)))


def build(count: int, seed: int, chunk: int, skip_known: bool = False) -> list[list[cases.Case]]:
    """Chunks of cases (one category each, plus two well-formed requests), in a shuffled order."""
    rng = random.Random(seed)
    chunks = []
    for category, n in cases.plan(count).items():
        made = [cases.make_case(category, i, rng) for i in range(n)]
        if skip_known:
            made = [c for c in made if c.note not in cases.KNOWN_TRITON_BUGS]
        for case in made:
            case.spec.setdefault("seed", rng.randrange(2**32))
        chunks += [made[i : i + chunk] for i in range(0, n, chunk)]
    rng.shuffle(chunks)
    for k, group in enumerate(chunks):
        group.insert(len(group) // 2, well_formed(rng, 2 * k))
        group.append(well_formed(rng, 2 * k + 1))
    return chunks


def wait_healthy(sender: Sender, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sender.healthy():
            return True
        time.sleep(0.5)
    return False


def run(
    http_url: str,
    grpc_url: str,
    *,
    count: int = 1200,
    seed: int = 0,
    concurrency: int = 2,
    chunk: int = 20,
    pid: int | None = None,
    time_limit: float = 900.0,
    recover_s: float = 180.0,
    skip_known: bool = False,
    log=print,
) -> dict:
    """Runs the suite and returns the report (see :func:`write_report`)."""
    sender = Sender(http_url, grpc_url)
    if not wait_healthy(sender, 60):
        raise SystemExit(f"server at {http_url} / {grpc_url} is not ready")
    root = procs.server_root(pid=pid, port=sender.http_port)
    tritons = procs.triton_pids(root) if root else set()
    rss_before = procs.rss_by_name(root) if root else None
    chunks = build(count, seed, chunk, skip_known)
    # What the run must send to pass (report.failures): every malformed case built, less the known-bug ones that
    # --skip-known leaves out, so a run cut short by --time-limit cannot pass on what it happened to send.
    planned = sum(1 for group in chunks for case in group if case.category != "well_formed")
    counts: dict[str, Counter] = defaultdict(Counter)
    items: Counter = Counter()
    samples: dict[str, list[dict]] = defaultdict(list)
    deaths: list[dict] = []
    latencies: list[float] = []
    started = time.monotonic()
    stopped_early = aborted = False
    lock = threading.Lock()

    def record(result: Result, case: cases.Case) -> None:
        with lock:
            counts[result.category][result.outcome] += 1
            counts[result.category]["sent"] += 1
            items[result.category] += max(1, len(case.blobs))
            if result.category == "well_formed" and result.outcome == "answered":
                latencies.append(result.seconds)
            if result.outcome in ("wrong_answer", "server_error", "no_answer", "unavailable"):
                if len(samples[result.outcome]) < 25:
                    samples[result.outcome].append(
                        {"category": result.category, "protocol": result.protocol, "detail": result.detail[:400]}
                    )

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for n, group in enumerate(chunks):
            if time.monotonic() - started > time_limit:
                stopped_early = True
                break
            for case, result in zip(group, pool.map(lambda c: run_case(sender, c), group), strict=True):
                record(result, case)
            category = group[0].category
            now = procs.triton_pids(root) if root else tritons
            if not sender.healthy() or now != tritons:
                detail = "Triton restarted (pid changed)" if now != tritons else "health check failed"
                deaths.append({"category": category, "batch": n, "detail": detail})
                counts[category]["deaths"] += 1
                log(f"  DEATH after a batch of {category}: {detail}; waiting for the server")
                if not wait_healthy(sender, recover_s):
                    aborted = True
                    log("  the server did not come back; stopping")
                    break
                tritons = procs.triton_pids(root) if root else tritons
            if n % 10 == 0:
                log(f"  batch {n + 1}/{len(chunks)} ({category}), {time.monotonic() - started:.0f} s")
    time.sleep(1)  # let freed memory settle before the second reading
    rss_after = procs.rss_by_name(root) if root else None
    sender.close()
    totals = Counter()
    for c in counts.values():
        totals.update(c)
    abuse_sent = sum(c["sent"] for cat, c in counts.items() if cat != "well_formed")
    return {
        "server": {"http_url": http_url, "grpc_url": grpc_url, "root_pid": root},
        "config": {"count": count, "seed": seed, "concurrency": concurrency, "batch": chunk, "skip_known": skip_known},
        "known_triton_bugs": cases.KNOWN_TRITON_BUGS,
        "duration_s": round(time.monotonic() - started, 1),
        "stopped_early": stopped_early,
        "aborted": aborted,
        "abuse_requests": abuse_sent,
        "planned_abuse_requests": planned,
        "items": sum(items.values()),
        "totals": {k: totals.get(k, 0) for k in ("sent", *OUTCOMES, "deaths")},
        "categories": {
            cat: {k: c.get(k, 0) for k in ("sent", *OUTCOMES, "deaths")} | {"items": items[cat]}
            for cat, c in sorted(counts.items())
        },
        "deaths": deaths,
        "samples": dict(samples),
        "well_formed_latency_ms": percentiles(latencies),
        "rss_bytes": {"before": rss_before, "after": rss_after},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http-url", default=default_address("http"), help="host:port of the HTTP endpoint (the door)")
    p.add_argument("--grpc-url", default=default_address("grpc"), help="host:port of the gRPC endpoint")
    p.add_argument(
        "--count", type=cli.positive_int, default=1200, help="malformed requests to send (>= 1,000 by default)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--concurrency", type=cli.positive_int, default=2, help="requests in flight (the machine may be shared)"
    )
    p.add_argument("--batch", type=cli.positive_int, default=20, help="requests between two health checks")
    p.add_argument("--pid", type=cli.positive_int, help="the launcher's pid (else found from the HTTP port's listener)")
    p.add_argument(
        "--time-limit",
        type=cli.positive_float,
        default=900,
        help="stop sending after this many seconds (a run stopped early fails: raise it, or lower --count)",
    )
    p.add_argument("--skip-known", action="store_true", help="leave out inputs that trigger known Triton bugs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report path without suffix (.json and .md)")
    args = p.parse_args(argv)
    cli.warn_if_replacing([args.out.with_suffix(".json"), args.out.with_suffix(".md")])
    report = run(
        args.http_url,
        args.grpc_url,
        count=args.count,
        seed=args.seed,
        concurrency=args.concurrency,
        chunk=args.batch,
        pid=args.pid,
        time_limit=args.time_limit,
        skip_known=args.skip_known,
    )
    paths = write_report(report, args.out)
    print(markdown(report))
    cli.report_written(list(paths), file=sys.stdout)
    reasons = failures(report)
    print("FAILED: " + "; ".join(reasons) if reasons else "passed")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())

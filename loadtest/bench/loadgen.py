"""The native load generators: h2load for gRPC, wrk for HTTP. Command lines, runs, and their output parsed.

Both are C programs on one thread each, sending one fixed body (:mod:`loadtest.bench.wire`) back to back over
``concurrency`` connections, so the server's capacity is measured with little of the two cores going to the
client. Neither knows Triton: h2load counts every HTTP 200 as a success, although a gRPC error travels in the
``grpc-status`` trailer of an HTTP 200, so :mod:`loadtest.bench.native` checks each run against Triton's own
count of successful inferences. The parsers raise :class:`LoadError` on any failure the tool itself reports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.bench import wire

#: Debian packages and the make target that installs them (Makefile ``bench-native``).
PACKAGES = {"h2load": "nghttp2-client", "wrk": "wrk"}
MAKE_TARGET = "make bench-native"
#: wrk gives up on a request after 2 s by default; a loaded 2-core server at c=64 can take longer, and a
#: timeout would be counted as an error of the server rather than a slow answer.
WRK_TIMEOUT = "60s"


#: A run whose requests spanned less than this share of its window stopped early (:attr:`Run.open_s`); at the end of
#: a full window the last requests in flight are cut, so a full run spans nearly all of it.
OPEN_FRACTION = 0.9


class LoadError(RuntimeError):
    """The load generator saw failed requests, or no successful one."""


@dataclass
class Run:
    """One measured run; latencies in milliseconds, over the requests completed in the window."""

    tool: str
    concurrency: int
    duration_s: float
    requests: int  # succeeded (2xx)
    req_per_s: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    #: Bytes of DATA received (h2load): a served gRPC answer carries its message there, a refusal none.
    data_bytes: int = 0
    #: Seconds the connections were open, where the door closed them well before the window ended (h2load): nginx
    #: closes a connection after its ``keepalive_requests`` (serving/runtime/door.py KEEPALIVE_REQUESTS) and h2load
    #: does not reconnect, so at c=1 a path faster than 1,000 requests per window stopped early and h2load's req/s,
    #: over the whole window, read low (exactly 100.0 over 10 s). ``req_per_s`` is then over this span.
    open_s: float | None = None


def missing() -> list[str]:
    return [tool for tool in PACKAGES if shutil.which(tool) is None]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(value: str) -> float:
    """``'24.00ms'``, ``'631us'``, ``'1.02s'`` (h2load and wrk alike) in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value.strip())
    if match is None:
        raise ValueError(f"not a duration: {value!r}")
    return float(match[1]) * _UNITS[match[2]]


def _field(pattern: str, text: str, tool: str) -> re.Match:
    match = re.search(pattern, text, re.M)
    if match is None:
        raise LoadError(f"{tool}: no line matching {pattern!r} in its output:\n{text[-2000:]}")
    return match


# --- h2load -------------------------------------------------------------------------------------------------


def _grpc_target(url: str, body: Path) -> list[str]:
    """h2load's arguments for a gRPC ModelInfer: the headers, the framed body and the URL."""
    headers = [arg for header in wire.GRPC_HEADERS for arg in ("-H", header)]
    return [*headers, "-d", str(body), f"http://{url}{wire.GRPC_PATH}"]


def h2load_command(url: str, body: Path, concurrency: int, duration_s: int, log_file: Path) -> list[str]:
    """``concurrency`` connections with one stream each: independent callers, as the Python benchmark's one
    channel per thread (one connection with many streams would measure HTTP/2 multiplexing through nginx)."""
    cmd = ["h2load", "-t", "1", "-c", str(concurrency), "-m", "1", "-D", f"{duration_s}s", "--log-file", str(log_file)]
    return [*cmd, *_grpc_target(url, body)]


def parse_h2load(text: str, log: str = "", concurrency: int = 0) -> Run:
    """h2load's summary, and p50/p99 from its ``--log-file`` (start us, HTTP status, duration us per request)."""
    finished = _field(r"^finished in ([\d.]+\w+), ([\d.]+) req/s", text, "h2load")
    counts = _field(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
        r"(\d+) timeout",
        text,
        "h2load",
    )
    total, _, done, succeeded, failed, errored, timeout = (int(v) for v in counts.groups())
    status = _field(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, "h2load")
    non_2xx = sum(int(v) for v in status.groups()[1:])
    if failed or errored or timeout or non_2xx:
        raise LoadError(
            f"h2load: {failed} failed, {errored} errored, {timeout} timed out, {non_2xx} non-2xx of {total} requests"
        )
    if not succeeded:
        raise LoadError(f"h2load: no request succeeded ({total} sent, {done} done)")
    mean = _field(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text, "h2load")[3]
    data = int(_field(r"^traffic: .*\((\d+)\) data$", text, "h2load")[1])
    rows = [line.split("\t") for line in log.splitlines() if line.strip()]
    latencies = np.array([int(r[2]) / 1000.0 for r in rows if r[1].startswith("2")])
    duration_s, req_per_s, open_s = _ms(finished[1]) / 1000.0, float(finished[2]), None
    if rows and len(rows) == done:  # the whole log: when the last answer came, and the first request left
        span = (max(int(r[0]) + int(r[2]) for r in rows) - min(int(r[0]) for r in rows)) / 1e6
        if 0 < span < OPEN_FRACTION * duration_s:
            req_per_s, open_s = succeeded / span, span
    return Run(
        tool="h2load",
        concurrency=concurrency,
        duration_s=duration_s,
        requests=succeeded,
        req_per_s=req_per_s,
        mean_ms=_ms(mean),
        p50_ms=float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        p99_ms=float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
        data_bytes=data,
        open_s=open_s,
    )


def check_grpc_answers(run: Run, answer_bytes: int) -> None:
    """Raises unless every request h2load counted carried a served answer of ``answer_bytes``.

    h2load counts every HTTP 200 as a success, and a gRPC error (a gate refusal, which never reaches Triton's
    counters) is an HTTP 200 with its status in the trailers and no message. Triton's counters catch errors it
    made, but not up to ``concurrency`` refusals hidden behind the requests still in flight at the end: the DATA
    bytes do.
    """
    if run.data_bytes < run.requests * answer_bytes:
        missing = run.requests - run.data_bytes // answer_bytes
        raise LoadError(
            f"h2load counted {run.requests} successes but received answers for about {run.requests - missing}: "
            f"{missing} were refusals (a gRPC status in the trailers, no message)"
        )


def h2load_answer_bytes(url: str, body: Path) -> int:
    """The DATA bytes of one answer to ``body`` (the same for every served answer to the same body)."""
    data = parse_h2load(
        _run(["h2load", "-n", "1", "-c", "1", "-m", "1", *_grpc_target(url, body)], timeout=120)
    ).data_bytes
    if data == 0:
        raise LoadError("h2load: the one request sent to measure the answer got none (refused in the trailers)")
    return data


# --- wrk ----------------------------------------------------------------------------------------------------


def wrk_script(body: Path, header_length: int) -> str:
    """A wrk Lua script that POSTs ``body`` (the KServe v2 binary-extension request) on every request."""
    if "]==]" in str(body):
        raise ValueError(f"unusable path for a Lua long string: {body}")
    return "\n".join(
        [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/octet-stream"',
            f'wrk.headers["{wire.HEADER_LENGTH}"] = "{header_length}"',
            f'local f = assert(io.open([==[{body}]==], "rb"))',
            'wrk.body = f:read("*a")',
            "f:close()",
            "",
        ]
    )


def wrk_command(url: str, model: str, script: Path, concurrency: int, duration_s: int) -> list[str]:
    cmd = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{duration_s}s", "--timeout", WRK_TIMEOUT, "--latency"]
    return [*cmd, "-s", str(script), f"http://{url}/v2/models/{model}/infer"]


def parse_wrk(text: str, concurrency: int = 0) -> Run:
    """wrk's summary with ``--latency``; non-2xx answers and socket errors raise."""
    non_2xx = re.search(r"^\s*Non-2xx or 3xx responses: (\d+)", text, re.M)
    sockets = re.search(r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text, re.M)
    done = _field(r"^\s*(\d+) requests in ([\d.]+\w+)", text, "wrk")
    bad = int(non_2xx[1]) if non_2xx else 0
    if bad or (sockets and any(int(v) for v in sockets.groups())):
        raise LoadError(
            f"wrk: {bad} non-2xx answers of {done[1]} requests"
            + (f"; socket errors: {sockets[0].split(':', 1)[1].strip()}" if sockets else "")
        )
    requests = int(done[1])
    if not requests:
        raise LoadError("wrk: no request completed")
    mean = _field(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, "wrk")[1]
    return Run(
        tool="wrk",
        concurrency=concurrency,
        duration_s=_ms(done[2]) / 1000.0,
        requests=requests,
        req_per_s=float(_field(r"^Requests/sec:\s+([\d.]+)", text, "wrk")[1]),
        mean_ms=_ms(mean),
        p50_ms=_ms(_field(r"^\s*50%\s+(\S+)", text, "wrk")[1]),
        p99_ms=_ms(_field(r"^\s*99%\s+(\S+)", text, "wrk")[1]),
    )


# --- running ------------------------------------------------------------------------------------------------


def _run(cmd: list[str], timeout: float) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LoadError(f"{cmd[0]} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}")
    return done.stdout


def h2load(url: str, body: Path, concurrency: int, duration_s: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        log = Path(tmp) / "requests.tsv"
        out = _run(h2load_command(url, body, concurrency, duration_s, log), timeout=duration_s + 120)
        return parse_h2load(out, log.read_text() if log.is_file() else "", concurrency)


def wrk(url: str, model: str, script: Path, concurrency: int, duration_s: int) -> Run:
    out = _run(wrk_command(url, model, script, concurrency, duration_s), timeout=duration_s + 120)
    return parse_wrk(out, concurrency)

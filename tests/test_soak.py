"""The soak benchmark (loadtest/bench/soak.py): its reading of memory over time, its verdict, and a short real run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import contract
from loadtest.bench import soak
from loadtest.bench.soak import Load, Sample

ROOT = Path(__file__).resolve().parents[1]


def _samples(values: list[float], every_s: float = 60.0) -> list[Sample]:
    return [Sample(every_s * i, 100, {"triton": v, "gate": 50.0, "door": 15.0}) for i, v in enumerate(values)]


def test_growth_is_last_minus_first_and_the_trend_is_per_hour():
    g = soak.growth(_samples([600.0, 601.0, 602.0, 603.0]))
    assert (g["first_mb"], g["last_mb"], g["max_mb"], g["growth_mb"]) == (600.0, 603.0, 603.0, 3.0)
    assert g["slope_mb_per_h"] == pytest.approx(60.0)  # 1 MB a minute
    # A burst that came back down: no growth, whatever the highest reading.
    g = soak.growth(_samples([600.0, 650.0, 600.0]))
    assert (g["growth_mb"], g["max_mb"], g["slope_mb_per_h"]) == (0.0, 650.0, 0.0)
    assert soak.growth(_samples([600.0, 610.0]))["slope_mb_per_h"] is None  # two points are no trend


def test_a_leak_or_a_failed_request_fails_the_soak_and_a_flat_run_passes():
    # Rounds 5 minutes apart: long enough to be judged (MIN_MEASURED_MINUTES).
    assert soak.verdict(_samples([672.0, 677.0, 676.0, 678.0], every_s=300), [], 30) == []
    (problem,) = soak.verdict(_samples([672.0, 690.0, 705.0], every_s=300), [], 30)
    assert "grew by 33.0 MB" in problem
    assert soak.verdict(_samples([672.0, 672.0, 672.0], every_s=300), ["faces: refused"], 30) == ["faces: refused"]
    (problem,) = soak.verdict(_samples([672.0]), [], 30)
    assert "fewer than two" in problem


def test_a_soak_too_short_to_show_a_trend_does_not_pass(tmp_path):
    # `--minutes 0`: 12 s of load, three readings, passed while its table showed +1377 MB an hour for tritonserver.
    samples = _samples([672.0, 676.6, 672.5], every_s=6.0)
    (problem,) = soak.verdict(samples, [], 30)
    assert problem.startswith("too short to judge: 0.2 minutes of measured load") and "--minutes 10" in problem
    assert soak.outcome([problem]) == "TOO SHORT TO JUDGE"
    # Just under the minimum is still too short; the minimum itself is judged.
    assert soak.verdict(_samples([672.0] * 11, every_s=59.9), [], 30)
    assert soak.verdict(_samples([672.0] * 11, every_s=60.0), [], 30) == []
    # A short run that also failed is reported as failed, not merely as short.
    assert soak.outcome([problem, "faces: refused"]) == "FAILED"
    meta = {
        "minutes": 0.0,
        "round_s": 12,
        "max_growth_mb": 30.0,
        "date": "d",
        "cpus": 2,
        "cpu_model": "c",
        "commit": "x",
        "uncommitted_changes": False,
    }
    soak.write_markdown(tmp_path / "soak.md", meta, samples, [problem])
    text = (tmp_path / "soak.md").read_text()
    assert "**TOO SHORT TO JUDGE**" in text and "PASSED" not in text


@pytest.mark.parametrize("argv", [["--round", "0"], ["--minutes", "-1"], ["--max-growth-mb", "nan"]])
def test_the_soak_refuses_arguments_it_cannot_run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        soak.parse_args(argv)
    assert exc.value.code == 2 and f"argument {argv[0]}:" in capsys.readouterr().err


def test_the_report_has_every_process_and_the_verdict(tmp_path):
    samples = [
        Sample(0.0, 0, {"triton": 672.0, "triton/stub age": 126.0, "gate": 59.0, "door": 18.0}),
        Sample(60.0, 4000, {"triton": 676.0, "triton/stub age": 126.0, "gate": 60.0, "door": 19.0}),
        Sample(120.0, 4100, {"triton": 705.0, "triton/stub age": 155.0, "gate": 60.0, "door": 19.0}),
    ]
    meta = {
        "minutes": 2.0,
        "round_s": 60,
        "max_growth_mb": 30.0,
        "date": "2026-12-07 01:00 UTC",
        "cpus": 2,
        "cpu_model": "AMD EPYC",
        "commit": "abc1234",
        "uncommitted_changes": False,
    }
    problems = soak.verdict(samples, [], meta["max_growth_mb"])
    soak.write_markdown(tmp_path / "soak.md", meta, samples, problems)
    text = (tmp_path / "soak.md").read_text()
    assert "| **Triton and its stubs** | 672.0 | 705.0 | 705.0 | +33.0 | +990.0 |" in text
    assert "| triton/stub age | 126.0 | 155.0 | 155.0 | +29.0 |" in text
    assert "| 120 | 4100 | 705.0 | 60.0 | 19.0 |" in text
    assert "8100 requests answered after the first round" in text
    assert "**FAILED**" in text and "grew by 33.0 MB" in text


@pytest.mark.integration
def test_a_short_soak_reads_every_process_and_counts_every_answer(triton_tiny):
    samples, failures = soak.soak(triton_tiny, minutes=0, round_s=3, log=lambda _: None)
    assert failures == []
    assert len(samples) == 3  # after the unmeasured round, then two measured ones
    assert all(s.requests > 0 for s in samples[1:])
    names = set(samples[-1].rss_mb)
    assert {"triton", "gate", "door", "triton/tritonserver"} <= names
    # Every model's stub is read: a stub that the reading missed would hide its growth.
    for model in ("age", "gender", "preprocess", "preprocess_crop", "postprocess", "faces"):
        assert f"triton/stub {model}" in names
    assert samples[-1].rss_mb["triton"] == pytest.approx(sum(v for k, v in samples[-1].rss_mb.items() if "/" in k))


@pytest.mark.integration
def test_a_load_the_server_refuses_is_a_failure_not_a_reading(triton_tiny, monkeypatch):
    # The gate refuses a model that is not public with a gRPC status in an HTTP 200, which h2load counts as a success.
    monkeypatch.setattr(soak, "LOADS", (Load(contract.AGE_MODEL, "a crop JPEG sent to a CNN", 1),))
    samples, failures = soak.soak(triton_tiny, minutes=0, round_s=1, log=lambda _: None)
    assert samples == []
    (failure,) = failures
    assert failure.startswith("age: ") and "refused" in failure


#: soak.main with its load replaced by a wait inside the temporary folders the real one makes (soak-*, and h2load-*
#: for each h2load run), the server real: what a signal must leave behind is under test, not the load.
BLOCKED_SOAK = """
import sys, tempfile, time
from loadtest.bench import soak

def blocked(triton, minutes, round_s, log=print):
    with tempfile.TemporaryDirectory(prefix="soak-"), tempfile.TemporaryDirectory(prefix="h2load-"):
        print(triton._proc.pid, flush=True)
        time.sleep(120)

soak.soak = blocked
sys.exit(soak.main(sys.argv[1:]))
"""


@pytest.mark.integration
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT started in the background"])
def test_a_signal_stops_the_soak_cleanly(small_repo, tmp_path_factory, how):
    # SIGTERM killed the soak where it stood (its temporary folders left in /tmp), and a soak started in the
    # background by a shell ignores SIGINT (inherited SIG_IGN); Ctrl-C ended in a KeyboardInterrupt traceback.
    # Not in tmp_path: that is small_repo, where Triton would take any folder for a model.
    scratch, out = tmp_path_factory.mktemp("tmpdir"), tmp_path_factory.mktemp("out")
    sig = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_SOAK, "--repository", str(small_repo), "--out", str(out)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(scratch)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As a shell starts a background job: SIGINT ignored, which the child inherits.
        preexec_fn=None if sig == signal.SIGTERM else (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)),
    )
    try:
        triton_pid = int(proc.stdout.readline() or 0)
        assert triton_pid, proc.stderr.read()[-3000:]
        assert list(scratch.glob("soak-*")) and list(scratch.glob("h2load-*"))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.rstrip().endswith("soak interrupted: server stopped, no report written")
    assert not list(scratch.glob("soak-*")) and not list(scratch.glob("h2load-*"))
    assert not (out / "soak.md").exists()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{triton_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{triton_pid}").exists()

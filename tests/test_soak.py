"""The soak benchmark (loadtest/bench/soak.py): its reading of memory over time, its verdict, and a short real run."""

from __future__ import annotations

import pytest

from common import contract
from loadtest.bench import soak
from loadtest.bench.soak import Load, Sample


def _samples(values: list[float]) -> list[Sample]:
    return [Sample(60.0 * i, 100, {"triton": v, "gate": 50.0, "door": 15.0}) for i, v in enumerate(values)]


def test_growth_is_last_minus_first_and_the_trend_is_per_hour():
    g = soak.growth(_samples([600.0, 601.0, 602.0, 603.0]))
    assert (g["first_mb"], g["last_mb"], g["max_mb"], g["growth_mb"]) == (600.0, 603.0, 603.0, 3.0)
    assert g["slope_mb_per_h"] == pytest.approx(60.0)  # 1 MB a minute
    # A burst that came back down: no growth, whatever the highest reading.
    g = soak.growth(_samples([600.0, 650.0, 600.0]))
    assert (g["growth_mb"], g["max_mb"], g["slope_mb_per_h"]) == (0.0, 650.0, 0.0)
    assert soak.growth(_samples([600.0, 610.0]))["slope_mb_per_h"] is None  # two points are no trend


def test_a_leak_or_a_failed_request_fails_the_soak_and_a_flat_run_passes():
    assert soak.verdict(_samples([672.0, 677.0, 676.0, 678.0]), [], 30) == []
    (problem,) = soak.verdict(_samples([672.0, 690.0, 705.0]), [], 30)
    assert "grew by 33.0 MB" in problem
    assert soak.verdict(_samples([672.0, 672.0, 672.0]), ["faces: refused"], 30) == ["faces: refused"]
    (problem,) = soak.verdict(_samples([672.0]), [], 30)
    assert "fewer than two" in problem


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

"""loadtest.bench.baseline: a tree from git served by its own launcher and code, stopped without leftovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loadtest import procs
from loadtest.bench import baseline, native

ROOT = Path(__file__).resolve().parents[1]


def test_a_commit_the_clone_lacks_is_named(tmp_path):
    with pytest.raises(SystemExit, match="0123abcd is not a commit of this clone"):
        baseline.archive("0123abcd", tmp_path)


@pytest.fixture(scope="module")
def head_tree(tmp_path_factory) -> Path:
    """HEAD's files from git, archived once for the module (134 MB, the committed models with them); a test that
    changes a file in it puts the file back."""
    return baseline.archive("HEAD", tmp_path_factory.mktemp("trees"))


def test_a_tree_from_git_is_served_from_its_own_files_and_stopped(head_tree, tmp_path):
    tree = head_tree
    assert (tree / "model_repository" / "age" / "configs" / "cpu.pbtxt").is_file()
    assert not (tree / ".git").exists()
    server = baseline.Launched(tree, tmp_path / "launch.log", first=_frame("crop"))
    try:
        pids = {p.pid for p in procs.descendants(server.proc.pid)}
        stubs = [p for p in procs.descendants(server.proc.pid) if p.name == "triton_python_backend_stub"]
        assert stubs, "no Python stub under the launcher"
        # The stubs import `serving` and `common` from their working directory: the archived tree's code is what
        # runs, not this checkout's (which the editable install would give them from anywhere else).
        assert {Path(os.readlink(f"/proc/{p.pid}/cwd")) for p in stubs} == {tree}
        values = native.check_estimate(native.grpc_answer(server.grpc_url, _frame("crop")), "crop path")
        assert 0 < values["age"] < 120
        assert server.cpu_seconds() > 0
        # The first crop request went out from the start and was answered (held by the gate while models loaded).
        assert 0 < server.first_answer_s <= server.ready_s < baseline.READY_TIMEOUT_S
        # Every stub the tree starts, `faces` included (it loads after readiness), counted once they have settled.
        rss = server.settled_rss_mb()
        stubs = [p for p in procs.descendants(server.proc.pid) if p.name == "triton_python_backend_stub"]
        assert len(stubs) >= 8 and 200 < rss < 2000, (len(stubs), rss)
    finally:
        server.stop()
    assert server.proc.returncode == 0, (tmp_path / "launch.log").read_text()[-2000:]
    assert not [pid for pid in pids if procs.process(pid) is not None], "processes left after the stop"


def test_a_tree_whose_launcher_fails_is_named_with_its_log(head_tree, tmp_path):
    launcher = head_tree / "serving" / "runtime" / "launch.py"
    kept = launcher.read_bytes()
    launcher.write_text("raise SystemExit('this tree cannot serve')\n")
    try:
        with pytest.raises(RuntimeError, match=r"the launcher exited \(1\):\s+this tree cannot serve"):
            baseline.Launched(head_tree, tmp_path / "launch.log")
    finally:
        launcher.write_bytes(kept)


def _frame(scenario: str) -> bytes:
    from loadtest.bench import wire

    _, model, body, _ = next(s for s in baseline.SCENARIOS if s[0] == scenario)
    return wire.grpc_frame(model, body())


def test_the_ratio_is_of_the_medians():
    readings = [
        baseline.Reading(tree, rnd, "detection", rate, 100.0, 30.0)
        for tree, rnd, rate in [
            ("baseline", 1, 40.0),
            ("current", 1, 60.0),
            ("baseline", 2, 50.0),
            ("current", 2, 90.0),
            ("baseline", 3, 44.0),
            ("current", 3, 70.0),
        ]
    ] + [baseline.Reading(tree, 1, "crop", rate, 10.0, 5.0) for tree, rate in [("baseline", 200.0), ("current", 100.0)]]
    starts = [
        baseline.Start("baseline", 1, 7.0, 7.4, 1200.0),
        baseline.Start("baseline", 2, 9.0, 9.1, 1300.0),
        baseline.Start("current", 1, 1.0, 1.2, 660.0),
        baseline.Start("current", 2, 1.4, 1.6, 670.0),
    ]
    result = baseline.summary(starts, readings, "abc")
    assert result["start"] == {
        "baseline": {"ready_s": 8.0, "first_answer_s": 8.25, "rss_mb": 1250.0},
        "current": {"ready_s": 1.2, "first_answer_s": 1.4, "rss_mb": 665.0},
    }
    assert result["scenarios"]["detection"] == {
        "baseline": 44.0,
        "current": 70.0,
        "ratio": 1.59,
        "rounds": {"baseline": [40.0, 50.0, 44.0], "current": [60.0, 90.0, 70.0]},
    }
    assert result["scenarios"]["crop"]["ratio"] == 0.5


@pytest.mark.parametrize("cap", ["", "AVX2"])
def test_the_report_says_when_the_cnn_kernels_were_held(tmp_path, cap):
    """A run under ONEDNN_MAX_CPU_ISA stands in for another CPU (int8 where bf16 is not native): its report must not
    read as the bare machine's, as loadtest.bench.native's does not."""
    meta = {
        "date": "2026-12-07 00:00 UTC",
        "cpus": 2,
        "cpu_model": "AMD EPYC",
        "vector_isa": "AVX-512",
        "isa_cap": cap,
        "kernel": "6.18",
        "commit": "abc",
        "uncommitted_changes": False,
    }
    starts = [baseline.Start(tree, 1, 1.0, 1.1, 600.0) for tree in ("baseline", "current")]
    readings = [
        baseline.Reading(tree, 1, s[0], 50.0, 10.0, 5.0) for tree in ("baseline", "current") for s in baseline.SCENARIOS
    ]
    args = baseline.parse_args(["--rounds", "1"])
    baseline.write(tmp_path, meta, starts, readings, baseline.summary(starts, readings, "abc"), args)
    header = (tmp_path / "baseline.md").read_text().splitlines()[2]
    assert "2 CPUs (AMD EPYC, AVX-512" in header and "Linux 6.18)" in header, header
    assert ("the CNN kernels held to AVX2 by ONEDNN_MAX_CPU_ISA" in header) == bool(cap), header

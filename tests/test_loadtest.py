"""The Locust suite and the serving benchmark, run briefly against the shared real Triton server."""

from __future__ import annotations

import csv
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadtest.bench.benchmark import repository_without_dynamic_batching, strip_dynamic_batching
from tests.conftest import selected

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtest" / "locust" / "locustfile.py"


def test_strip_dynamic_batching_keeps_the_rest():
    text = (
        'name: "age"\nmax_batch_size: 64\n'
        "dynamic_batching {\n  preferred_batch_size: [ 16, 64 ]\n  priority_levels { x { y: 1 } }\n"
        "  max_queue_delay_microseconds: 2000\n}\n"
        'parameters { key: "k" value { string_value: "2" } }\n'
    )
    out = strip_dynamic_batching(text)
    assert "dynamic_batching" not in out and "max_queue_delay" not in out
    assert out.startswith('name: "age"\nmax_batch_size: 64\n')
    assert out.endswith('parameters { key: "k" value { string_value: "2" } }\n')
    assert strip_dynamic_batching(out) == out


def test_repository_copy_without_dynamic_batching(tmp_path):
    repo = repository_without_dynamic_batching(ROOT / "model_repository", tmp_path / "repo")
    for model in ("age", "gender"):
        configs = [repo / model / "config.pbtxt", *(repo / model / "configs").glob("*.pbtxt")]
        assert configs and all("dynamic_batching" not in c.read_text() for c in configs)
        # Everything else about the model is untouched.
        original = (ROOT / "model_repository" / model / "config.pbtxt").read_text()
        assert "max_batch_size" in (repo / model / "config.pbtxt").read_text() and "max_batch_size" in original
    # Other models keep their batching, and the committed repository is not modified.
    assert "dynamic_batching" in (ROOT / "model_repository" / "age" / "config.pbtxt").read_text()


def _locust_command(triton, prefix: Path, user: str, *extra: str, users: int = 2, seconds: int = 3) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--only-summary",
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--triton-grpc-url",
        triton.grpc_url,
        "--triton-http-url",
        triton.http_url,
        *extra,
        user,
    ]


class _Run:
    """A command started now and checked later (:meth:`result`), its output in files."""

    def __init__(self, cmd: list[str], folder: Path, timeout: float = 180, cwd: Path = ROOT) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.cmd, self.folder, self.timeout = cmd, folder, timeout
        self._out, self._err = folder / "stdout.txt", folder / "stderr.txt"
        with self._out.open("w") as out, self._err.open("w") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=out, stderr=err, text=True
            )
        self._deadline = time.monotonic() + timeout

    def result(self) -> subprocess.CompletedProcess:
        """As ``subprocess.run(..., timeout=)`` from the start: killed, and TimeoutExpired raised, past the timeout."""
        try:
            self.proc.wait(timeout=max(0.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise subprocess.TimeoutExpired(
                self.cmd, self.timeout, output=self._out.read_text(), stderr=self._err.read_text()
            ) from None
        return subprocess.CompletedProcess(self.cmd, self.proc.returncode, self._out.read_text(), self._err.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _side_by_side(request, tmp_path_factory, starters: dict[str, Callable[..., _Run]]) -> Iterator[dict[str, _Run]]:
    """Starts together the run of every case of the tests named in ``starters`` (tests of this module) that this
    session selected, ``starters[name](folder, **the case's parameters)``, and yields them by node id; kills what is
    left at the end.

    Locust runs spend most of their time waiting (its start-up, the fixed run time, a scripted outage, one more CSV
    interval before the exit), so run side by side they take about as long as the slowest of them, not their sum.
    Each test then waits for its own run and checks it as it did when it ran the command itself."""
    runs: dict[str, _Run] = {}
    try:
        for item in selected(request, starters):
            params = item.callspec.params if hasattr(item, "callspec") else {}
            runs[item.nodeid] = starters[item.originalname](tmp_path_factory.mktemp("run"), **params)
        yield runs
    finally:
        for run in runs.values():
            run.stop()


def _aggregated(prefix: Path) -> dict:
    with open(f"{prefix}_stats.csv") as fh:
        return next(row for row in csv.DictReader(fh) if row["Name"] == "Aggregated")


@pytest.fixture(scope="module")
def triton_runs(request, triton_tiny, tmp_path_factory):
    """The Locust runs against the shared server, side by side (:func:`_side_by_side`), by node id."""

    def reports(folder: Path, user: str, path: str) -> _Run:
        return _Run(_locust_command(triton_tiny, folder / user, user, "--path", path, "--batch-size", "2"), folder)

    def p95(folder: Path) -> _Run:
        return _Run(_locust_command(triton_tiny, folder / "p95", "TritonGrpcUser", *P95_EXTRA), folder)

    starters = {
        "test_locust_headless_writes_reports": reports,
        "test_locust_exit_code_enforces_p95": p95,
    }
    yield from _side_by_side(request, tmp_path_factory, starters)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("user", "path"), [("TritonGrpcUser", "crop"), ("TritonHttpUser", "detect"), ("TritonGrpcUser", "faces")]
)
def test_locust_headless_writes_reports(request, triton_runs, user, path):
    run = triton_runs[request.node.nodeid]
    done, prefix = run.result(), run.folder / user
    assert done.returncode == 0, done.stderr[-3000:]
    row = _aggregated(prefix)
    assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0
    assert Path(f"{prefix}.html").stat().st_size > 0


P95_EXTRA = ("--path", "crop", "--max-p95-ms", "0.001")


@pytest.mark.integration
def test_locust_exit_code_enforces_p95(request, triton_runs):
    done = triton_runs[request.node.nodeid].result()
    assert done.returncode == 1
    assert "p95" in done.stderr


@pytest.mark.integration
def test_locust_exits_by_itself(tmp_path, triton_tiny):
    # It used to print its summary and then hang at interpreter exit, in a second close of a gRPC channel from
    # tritonclient's __del__ (about one run in three with 8 users). Each run is killed at its timeout. The three
    # run side by side (the hang is in each process's own exit; 24 users are well within the door's limits).
    started = time.monotonic()
    runs = []
    for run in range(3):
        prefix = tmp_path / str(run) / "TritonGrpcUser"
        cmd = _locust_command(triton_tiny, prefix, "TritonGrpcUser", "--path", "crop", users=8, seconds=3)
        runs.append((_Run(cmd, prefix.parent, timeout=60), prefix))
    try:
        for run, (locust, prefix) in enumerate(runs):
            try:
                done = locust.result()
            except subprocess.TimeoutExpired as err:
                pytest.fail(f"run {run + 1}: still running after {err.timeout:.0f} s:\n{(err.stderr or '')[-2000:]}")
            assert done.returncode == 0, done.stderr[-3000:]
            assert int(_aggregated(prefix)["Request Count"]) > 0  # the reports were written before the exit
            print(f"run {run + 1}: exited {time.monotonic() - started:.1f} s after the start of the three")
    finally:
        for locust, _ in runs:
            locust.stop()


@pytest.fixture(scope="module")
def idle_runs(request, tmp_path_factory):
    """The Locust runs that wait more than they work (no server, or a scripted one), side by side
    (:func:`_side_by_side`), by node id."""
    starters = {
        "test_locust_counts_a_dead_server_as_failures": _dead_server_run,
        "test_a_server_unavailable_during_the_run_fails_it": _outage_run,
        "test_the_run_time_limit_counts_from_the_start_of_the_run_not_of_the_process": _slow_start_run,
        "test_locust_does_not_retry_the_doors_rate_limit": _rate_limit_run,
        "test_locust_web_ui_listens_on_loopback_by_default": _web_ui_run,
    }
    yield from _side_by_side(request, tmp_path_factory, starters)


def _dead_server_run(folder: Path, max_fail_ratio: str, **_) -> _Run:
    from serving.runtime.launch import free_port

    class Dead:
        grpc_url = f"127.0.0.1:{free_port()}"
        http_url = f"127.0.0.1:{free_port()}"

    # Retries ride out a restart (15 s by default); a server that stays dead is a failure after the window.
    # The exit code is the threshold's, not Locust's own "any failure is 1": every request failing is within
    # --max-fail-ratio 1 (and the outage within the --max-unavailable-s given, so that only the ratio decides).
    extra = ("--path", "crop", "--retry-window", "1", "--max-unavailable-s", "600", "--max-fail-ratio", max_fail_ratio)
    return _Run(_locust_command(Dead, folder / "TritonGrpcUser", "TritonGrpcUser", *extra), folder)


@pytest.mark.integration
@pytest.mark.parametrize(("max_fail_ratio", "code"), [("0.01", 1), ("1", 0)])
def test_locust_counts_a_dead_server_as_failures(request, idle_runs, max_fail_ratio, code):
    run = idle_runs[request.node.nodeid]
    done, prefix = run.result(), run.folder / "TritonGrpcUser"
    assert done.returncode == code, done.stderr[-3000:]
    assert int(_aggregated(prefix)["Failure Count"]) > 0
    verdict = "fail ratio 1.000 > --max-fail-ratio" if code else "thresholds met"
    assert verdict in done.stderr


#: A locustfile whose users send through a scripted transport instead of tritonclient: it answers for UP_S seconds
#: from the first request, is unavailable (gRPC UNAVAILABLE, as a stopped server is) for DOWN_S seconds (None: for
#: good; "hang": no answer at all, as from a stopped process), then answers again. What is under test is Locust's
#: accounting of the run, not Triton.
SCRIPTED_OUTAGE = """
import time

from tritonclient.utils import InferenceServerException

from loadtest.locust.locustfile import *  # noqa: F403
from loadtest.locust.locustfile import TritonRequester, TritonUser

UP_S, DOWN_S = {up}, {down}
_first = []


class ScriptedRequester(TritonRequester):
    protocol = "grpc"

    def _infer(self, model, batch, outputs):
        now = time.monotonic()
        _first[:] = _first or [now]
        since = now - _first[0]
        if since >= UP_S and DOWN_S == "hang":
            time.sleep(3600)
        if since < UP_S or (DOWN_S is not None and since >= UP_S + DOWN_S):
            time.sleep(0.02)
            return None
        raise InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")


class ScriptedUser(TritonUser):
    requester_class = ScriptedRequester

    def _url(self, options):
        return options.triton_grpc_url
"""


def _outage_run(folder: Path, down, extra: list[str], **_) -> _Run:
    locustfile = folder / "scripted_locustfile.py"
    locustfile.write_text(SCRIPTED_OUTAGE.format(up=1.5, down=repr(down)))
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", "2", "-r", "2", "-t", "5s"]
    cmd += ["--only-summary", "--csv", str(folder / "scripted"), "--model", "scripted", *extra, "ScriptedUser"]
    return _Run(cmd, folder, timeout=120)


@pytest.mark.parametrize(
    ("down", "extra", "code", "says"),
    [
        # The server dies 1.5 s into a 5 s run and stays down: the users retry (15 s window) until the run ends. It
        # used to print "thresholds met" and exit 0 on what was served before, the retrying requests never recorded.
        (None, [], 1, "server unavailable for"),
        # A 1 s outage ridden out by the retries, every request answered in the end: still an outage of the run ...
        (1.0, [], 1, "server unavailable for"),
        # ... unless the run is told how much unavailability it accepts (testing that a restart is ridden out).
        (1.0, ["--max-unavailable-s", "10"], 0, "thresholds met"),
        # A server that stops answering without refusing (gRPC calls have no client timeout here): the requests
        # waiting past --request-timeout when the run ends are failures too.
        ("hang", ["--request-timeout", "1"], 1, "no answer after"),
    ],
)
def test_a_server_unavailable_during_the_run_fails_it(request, idle_runs, down, extra, code, says):
    # The scripted outage is timed from the run's own first request.
    run = idle_runs[request.node.nodeid]
    done, prefix = run.result(), run.folder / "scripted"
    assert done.returncode == code, done.stderr[-3000:]
    assert says in done.stderr, done.stderr[-3000:]
    row = _aggregated(prefix)
    assert int(row["Request Count"]) > 0
    # The requests still retrying when the run ended are failures in the report, not left out of it.
    assert (int(row["Failure Count"]) > 0) is (down in (None, "hang")), row


def _slow_start_run(folder: Path) -> _Run:
    from serving.runtime.launch import free_port

    slow = folder / "slow_locustfile.py"
    slow.write_text(
        "from gevent import monkey\nfrom locust import events\n\n"
        "# time.sleep is gevent's here, which would run the loop and so read its clock; the original blocks.\n"
        "events.init.add_listener(lambda **_: monkey.get_original('time', 'sleep')(3))\n"
        "from loadtest.locust.locustfile import *  # noqa: E402, F403\n"
    )
    cmd = [sys.executable, "-m", "locust", "-f", str(slow), "--headless", "-u", "1", "-r", "1", "-t", "2s"]
    cmd += ["--only-summary", "--triton-grpc-url", f"127.0.0.1:{free_port()}", "--retry-window", "0.2"]
    cmd += ["--path", "crop", "--max-fail-ratio", "1", "TritonGrpcUser"]
    return _Run(cmd, folder, timeout=60)


def test_the_run_time_limit_counts_from_the_start_of_the_run_not_of_the_process(request, idle_runs):
    # gevent arms Locust's --run-time timer from its loop's clock, last read before the end of Locust's start-up,
    # which runs without yielding: a start-up slower than the limit (a busy CI machine) ended a run at once, with no
    # request made. A start-up hook that takes 3 s stands in for it; the run must still last its 2 s.
    done = idle_runs[request.node.nodeid].result()
    stamps = {}
    for line in done.stderr.splitlines():
        for key in ("Run time limit set", "--run-time limit reached"):
            if key in line:
                stamps[key] = datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
    assert len(stamps) == 2, done.stderr[-3000:]
    ran = (stamps["--run-time limit reached"] - stamps["Run time limit set"]).total_seconds()
    # Without the fix it ends at once (0.007 s); the margin below 2 s is for a busy machine, where Locust's own steps
    # between reading the clock and logging the limit can be descheduled.
    assert 1.0 <= ran < 10, (ran, done.stderr[-3000:])


def _rate_limit_run(folder: Path) -> _Run:
    # In a child: importing the locustfile patches the process for gevent.
    script = """
from tritonclient.utils import InferenceServerException
from loadtest.locust.locustfile import TritonRequester

class Options:
    retry_window = 15.0

class Environment:
    parsed_options = Options()

requester = TritonRequester(Environment(), "127.0.0.1:1", 1.0)
for status, message in [("429", "too many requests"), ("StatusCode.RESOURCE_EXHAUSTED", "too many requests"),
                        ("503", "Triton is not reachable"), ("StatusCode.UNAVAILABLE", "failed to connect")]:
    print(status, requester._unavailable(InferenceServerException(message, status=status), "age_gender_crop"))
"""
    return _Run([sys.executable, "-c", script], folder, timeout=60)


def test_locust_does_not_retry_the_doors_rate_limit(request, idle_runs):
    done = idle_runs[request.node.nodeid].result()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:4] == [
        "429 False",
        "StatusCode.RESOURCE_EXHAUSTED False",
        "503 True",
        "StatusCode.UNAVAILABLE True",
    ]


@pytest.mark.integration
def test_benchmark_runs_against_a_live_server(tmp_path, triton_tiny, tiny_repo):
    """Short durations only: checks the pipeline (crop and detection scenarios, 12 MP JPEG, report) end to end."""
    cmd = [sys.executable, "-m", "loadtest.bench.benchmark", "--triton-grpc-url", triton_tiny.grpc_url]
    cmd += ["--repository", str(tiny_repo), "--out", str(tmp_path), "--duration", "2", "--warmup", "0.5"]
    cmd += ["--concurrency", "1,16", "--inprocess-batch", "0", "--coldstart-runs", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "benchmark.md").read_text()
    assert "| crop path | age_gender_crop | crops | on | 16 |" in report
    assert "| detection path, 12 MP JPEG | age_gender | 12 MP JPEG 4000x3000 | on | 16 |" in report
    assert "| crop path, gRPC, c=16 |" in report  # the targets table
    data = json.loads((tmp_path / "benchmark.json").read_text())
    results = data["results"]
    assert len(results) == 4 and all(r["errors"] == 0 and r["images"] > 0 for r in results), results
    assert data["meta"]["12mp_jpeg_bytes"] > 1_000_000


@pytest.mark.integration
def test_ready_means_warm_tries_each_batch_size_the_models_take(triton_tiny):
    """The benchmark's first scenario, on Triton's own port: a fixed batch of 64 failed against the CPU configs,
    whose CNNs take 32."""
    from loadtest.bench import warmup

    rows = warmup.first_vs_steady(triton_tiny.internal_grpc_url, headers=triton_tiny.internal_headers())
    assert [(r["model"], r["batch"]) for r in rows] == [(m, b) for m in ("age", "gender") for b in (1, 16, 32)]
    assert all(r["first_ms"] > 0 and r["p50_ms"] > 0 for r in rows)


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("coldstart", ["--runs", "0"]),
        ("baseline", ["--rounds", "0"]),
        ("baseline", ["--duration", "0"]),
        ("native", ["--detect-concurrency", "0"]),
        ("native", ["--concurrency", "1,0"]),
        ("benchmark", ["--duration", "0"]),
        ("scaling_signal", ["--users", "0"]),
    ],
)
def test_the_benchmarks_refuse_counts_they_cannot_run(module, argv, capsys):
    # --runs 0 and --rounds 0 ended in "StatisticsError: no median for empty data" after the run; now argparse
    # refuses them before anything starts, naming the option.
    import importlib

    tool = importlib.import_module(f"loadtest.bench.{module}")
    parse = getattr(tool, "parse_args", None) or tool.main
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert f"argument {argv[0]}:" in capsys.readouterr().err


def test_a_report_that_replaces_a_committed_one_says_so(tmp_path, capsys):
    from loadtest import cli

    committed = ROOT / "loadtest" / "results" / "soak.md"
    note = cli.replacing_note([committed, tmp_path / "soak.json"])
    assert f"replaces the committed report {committed} " in note and f"git checkout -- {committed}" in note
    assert cli.replacing_note([tmp_path / "soak.md"]) == ""  # a scratch folder: nothing to say
    cli.report_written([committed])
    err = capsys.readouterr().err
    assert err.startswith(f"wrote {committed}\n") and "note: this replaces the committed report" in err


def test_coldstart_fails_a_start_that_did_not_answer_stop_or_clean_up():
    from loadtest.bench.coldstart import problems

    good = {"exit_code": 0, "leftovers": [], "face_found": True}
    assert problems([good, good]) == []
    bad = [good, {"exit_code": -9, "leftovers": ["tritonserver 1234", "/dev/shm/x"], "face_found": False}]
    assert problems(bad) == [
        "run 2: the launcher exited with -9 after Ctrl-C",
        "run 2: left behind tritonserver 1234, /dev/shm/x",
        "run 2: the first answer found no face",
    ]


def test_coldstart_breakdown_reads_the_logs():
    """`coldstart --breakdown` on a made-up launcher log: Triton's lines, the backend's timing line, stub starts
    and S3 file times land in the right model's row (seconds since the command)."""
    from loadtest.bench.coldstart import breakdown, breakdown_table

    start = time.mktime((2026, 12, 2, 10, 0, 0, 0, 0, -1))  # 10:00:00 local, as Triton stamps its log
    timing = {
        "model": "age",
        "version": "3",
        "instance": "age_0_0",
        "source": "ir",
        "process_start": start + 1.5,
        "imports": [start + 2.0, start + 3.0],
        "initialize": [start + 3.0, start + 4.5],
        "load_model": [start + 3.0, start + 3.25],
        "compile": [start + 3.25, start + 4.5],
    }
    log = "\n".join(
        [
            'I1202 10:00:01.000000 1 model_lifecycle.cc:472] "loading: age:3"',
            'I1202 10:00:01.100000 1 model_lifecycle.cc:472] "loading: preprocess:1"',
            f"[coldstart] {json.dumps(timing)}",
            "I1202 10:00:06.000000 1 model_lifecycle.cc:849] \"successfully loaded 'age'\"",
            "I1202 10:00:09.000000 1 model_lifecycle.cc:849] \"successfully loaded 'preprocess'\"",
        ]
    )
    snapshot = {
        "stubs": [
            {"argv": ["/run/backends/openvino_savedmodel/model.py", "shm", "age_0_0"], "start": start + 1.5},
            {"argv": ["/repo/preprocess/1/model.py", "shm", "preprocess_0_0"], "start": start + 2.0},
            {"argv": ["/repo/preprocess/1/model.py", "shm", "preprocess_0_1"], "start": start + 2.5},
        ],
        "files": [("age", start + 0.5), ("age", start + 0.75), ("preprocess", start + 0.9)],
    }
    rows = breakdown(log, start, snapshot)
    age, pre = rows["age"], rows["preprocess"]
    assert (age["requested_at"], age["stub_start_at"], age["ready_at"], age["instances"]) == (1.0, 1.5, 6.0, 1)
    assert (age["imports"], age["load_ir_or_convert"], age["compile"], age["warmup"]) == (1.0, 0.25, 1.25, 1.5)
    assert (age["source"], age["downloaded_at"], age["files_downloaded"]) == ("ir", 0.75, 2)
    assert (pre["stub_start_at"], pre["instances"], pre["stub_to_ready"]) == (2.0, 2, 7.0)
    table = breakdown_table([rows, rows])
    assert table.index("| age |") < table.index("| preprocess |")  # in the order they became ready


def test_proc_stat_fields_survive_odd_command_names(tmp_path):
    """One /proc/PID/stat parser serves the abuse suite, the cold-start and the native benchmarks."""
    import os
    import subprocess
    import sys
    import time

    from loadtest import procs

    # A command name with spaces and parentheses, as a renamed process may carry.
    odd = tmp_path / "a) (b c"
    odd.symlink_to(sys.executable)
    before = time.time()
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        fields = procs.stat_fields(child.pid)
        assert fields is not None and fields[0] in "RSD"  # state
        assert int(fields[1]) == os.getpid() and int(fields[2]) == child.pid  # ppid; its own process group
        # The start is read back to a clock tick (10 ms) either way; once the child has run 50 ms, it is in the past.
        time.sleep(0.05)
        assert before - 0.05 <= procs.started_at(child.pid) <= time.time()
        assert procs.process(child.pid).ppid == os.getpid()
        assert procs.group_cpu_seconds(child.pid) >= 0.0
    finally:
        child.kill()
        child.wait()
    assert procs.stat_fields(child.pid) is None


@pytest.mark.integration
def test_scaling_signal_ramps_locust_and_reads_the_metrics(tmp_path, triton_tiny):
    """`make scaling-signal` end to end, briefly: Locust really sends (Triton's counters move) and the plot is made.
    Alone, not beside the other runs on this server: the signal reads the server's counters, which they move too."""
    out = tmp_path / "signal"
    cmd = [sys.executable, "-m", "loadtest.bench.scaling_signal", "--grpc-url", triton_tiny.grpc_url]
    # 2 s of load: any request served moves the counters; the scrapes go on through Locust's start-up and exit.
    cmd += ["--metrics-url", triton_tiny.metrics_url, "--users", "2", "--spawn-rate", "2", "--duration", "2"]
    cmd += ["--interval", "0.5", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert sum(data["rps"]["age_gender_crop"]) > 0 and data["t"], data["locust_summary"]
    assert out.with_suffix(".png").stat().st_size > 0


def _web_ui_run(folder: Path) -> _Run:
    from serving.runtime.launch import free_port

    port = free_port()
    run = _Run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--web-port", str(port)], folder, cwd=folder)
    run.port = port
    return run


def test_locust_web_ui_listens_on_loopback_by_default(request, idle_runs):
    # Locust's own default is every interface, and its UI has no login: anyone reaching it could start load.
    run = idle_runs[request.node.nodeid]
    port, proc = run.port, run.proc
    try:
        deadline = time.monotonic() + 60
        while not (bound := _listening(port)):
            assert proc.poll() is None and time.monotonic() < deadline, "locust did not start its web UI"
            time.sleep(0.2)
        assert bound == {"127.0.0.1"}, bound
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _listening(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a socket listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if width == 8:
                    found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
                else:
                    found.add("::" if set(address) == {"0"} else address)
    return found

"""serving.runtime.launch: command line, readiness, failure messages and a clean stop (no processes, no shm left)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.ports import PortInUseError
from serving.runtime import launch, ports
from serving.runtime.launch import TritonServer, TritonStartError, free_port
from tests.conftest import OTHER_UID, binds_as, start_launcher

ROOT = Path(__file__).resolve().parents[1]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pgid: int, seconds: float = 10) -> bool:
    # Orphaned stubs are reaped by init a moment after the server exits.
    deadline = time.monotonic() + seconds
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not group_alive(pgid)


def test_ports_config_and_host_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_HTTP_PORT", "18123")
    server = TritonServer(tmp_path, grpc_port=18124, config_name="cpu")
    cmd, env = server.command()
    assert server.http_url == "127.0.0.1:18123" and server.grpc_url == "127.0.0.1:18124"
    assert server.metrics_port == 8002
    # Behind the door Triton's own ports are chosen at start(): none before, never the public ones.
    assert (server.triton_http_port, server.triton_grpc_port) == (None, None)
    assert "--model-config-name=cpu" in cmd and "--http-address=127.0.0.1" in cmd
    assert str(ROOT) in env["PYTHONPATH"].split(os.pathsep)
    assert "--model-config-name=cpu" not in TritonServer(tmp_path, config_name="default").command()[0]
    server.stop()
    with pytest.raises(ValueError):
        TritonServer(tmp_path, config_name="gpu")


def test_free_port_skips_a_port_another_live_process_reserved(tmp_path, monkeypatch):
    from serving.runtime import ports

    monkeypatch.setattr(ports, "RESERVATIONS", tmp_path)
    monkeypatch.setattr(ports, "_handed_out", set())
    low = max(1024, ports._ephemeral_low() - ports.PORT_SPAN)

    def bindable(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    # A port nothing listens on now (the other pytest worker's servers take ports from the same range).
    k = next(k for k in range(7, ports.PORT_SPAN) if bindable(low + k))
    monkeypatch.setattr(ports.secrets, "randbelow", lambda n: k)  # every try proposes the same port
    proposed = low + k
    (tmp_path / f"{proposed}.1").touch()  # reserved by init, which is alive
    assert free_port() != proposed
    (tmp_path / f"{proposed}.1").unlink()
    (tmp_path / f"{proposed}.999999999").touch()  # a reservation whose process is gone lapses
    monkeypatch.setattr(ports, "_handed_out", set())
    assert free_port() == proposed
    assert [p.name for p in tmp_path.iterdir()] == [f"{proposed}.{os.getpid()}"]


def test_a_child_holds_the_ports_its_parent_handed_it_after_the_parent_is_gone(tmp_path, monkeypatch):
    # A launcher killed mid-start leaves Triton loading, and Triton binds its ports only then: the reservation must
    # live as long as that child, or another process's free_port() hands the port out meanwhile.
    from serving.runtime import ports

    monkeypatch.setattr(ports, "RESERVATIONS", tmp_path)
    monkeypatch.setattr(ports, "_handed_out", set())
    port = free_port()
    child = subprocess.Popen(["sleep", "30"])
    try:
        ports.hold_for(child.pid, port, 8000)  # 8000 was not handed out here: left alone
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{port}.{os.getpid()}", f"{port}.{child.pid}"])
        (tmp_path / f"{port}.{os.getpid()}").unlink()  # the parent is gone
        monkeypatch.setattr(ports, "_handed_out", set())  # as seen from another process
        monkeypatch.setattr(ports.secrets, "randbelow", lambda n: port - max(1024, ports._ephemeral_low() - n))
        assert not ports._reserve(port)  # the child still holds it
        assert free_port() != port
    finally:
        child.kill()
        child.wait()
    assert ports._reserve(port)  # lapsed with the child


def test_reservations_of_processes_that_are_gone_are_swept_once(tmp_path, monkeypatch):
    from serving.runtime import ports

    monkeypatch.setattr(ports, "RESERVATIONS", tmp_path)
    monkeypatch.setattr(ports, "_swept", False)
    (tmp_path / "1234.1").touch()  # init: alive
    (tmp_path / "1235.999999999").touch()  # no such process
    free_port()
    assert "1234.1" in {p.name for p in tmp_path.iterdir()} and not (tmp_path / "1235.999999999").exists()
    (tmp_path / "1236.999999999").touch()
    free_port()  # once per process: later calls do not list the folder again
    assert (tmp_path / "1236.999999999").exists()


def test_free_port_hands_out_distinct_bindable_ports():
    chosen = [free_port() for _ in range(20)]
    assert len(set(chosen)) == len(chosen)
    for port in chosen:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # raises if it was not free


def test_a_held_port_lets_only_its_own_users_servers_listen_beside_it():
    # The launcher holds Triton's and the gate's ports from start to stop (ports.Held): their listeners bind beside
    # it with SO_REUSEPORT, and nobody else can take the port while they load or restart.
    hold = ports.Held()
    try:
        assert not binds_as(hold.port, reuse_port=False)  # a server without SO_REUSEPORT (ours too) cannot
        if os.geteuid() == 0:  # another account cannot, whatever it asks for (as root the test can be that account)
            assert not binds_as(hold.port, uid=OTHER_UID)
        # Held, not listening: a caller is refused at once, as by a closed port.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", hold.port), timeout=5)
    finally:
        hold.close()
    assert binds_as(hold.port, reuse_port=False)  # released by close()
    with pytest.raises(PortInUseError, match=f"port {hold.port}"), socket.socket() as taken:
        taken.bind(("127.0.0.1", hold.port))
        taken.listen()
        ports.Held("127.0.0.1", hold.port)
    # Triton with --reuse-*-port and the gate bind beside it, and the callers reach them.
    hold = ports.Held()
    try:
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            server.bind(("127.0.0.1", hold.port))
            server.listen()
            with socket.create_connection(("127.0.0.1", hold.port), timeout=5):
                server.settimeout(5)
                server.accept()[0].close()
    finally:
        hold.close()


@pytest.fixture
def taken_port():
    """A port some other process listens on, as a first `make serve` would."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen()
        yield s.getsockname()[1]


def holder() -> str:
    """How the error names this process, which listens on ``taken_port``."""
    return f"pid {os.getpid()} ({Path('/proc/self/comm').read_text().strip()}), listening"


def test_a_port_asked_for_as_0_is_chosen_again_when_it_is_taken_first(taken_port, tmp_path, monkeypatch):
    # Between free_port() and the check another program may bind the port (make test saw it once in ~six runs, in a
    # test that chose its ports itself): the server then picks another set instead of failing.
    from serving.runtime import ports

    proposals = iter([taken_port, *(free_port() for _ in range(5))])
    monkeypatch.setattr(ports, "free_port", lambda host="127.0.0.1": next(proposals))
    server = TritonServer(tmp_path / "missing", http_port=0, grpc_port=0, metrics_port=0, front_door=False)
    with pytest.raises(TritonStartError, match="does not exist"):  # past the ports, before anything starts
        server.start()
    assert taken_port not in (server.http_port, server.grpc_port, server.metrics_port)
    assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3
    assert (server.triton_http_port, server.triton_grpc_port) == (server.http_port, server.grpc_port)
    assert server.events == [
        f"port {taken_port} on 127.0.0.1 is already in use ({holder()}); set TRITON_HTTP_PORT: "
        "choosing free ports again"
    ]
    # Always taken: after PORT_ATTEMPTS sets, the error; a port given explicitly is never replaced.
    grpc_port, metrics_port = free_port(), free_port()
    monkeypatch.setattr(ports, "free_port", lambda host="127.0.0.1": taken_port)
    with pytest.raises(PortInUseError, match=f"port {taken_port}"):
        TritonServer(tmp_path, http_port=0, grpc_port=grpc_port, metrics_port=metrics_port).start()
    with pytest.raises(PortInUseError, match="TRITON_METRICS_PORT"):
        TritonServer(tmp_path, http_port=0, grpc_port=0, metrics_port=taken_port).start()


def test_taken_port_fails_before_anything_starts(taken_port, tmp_path):
    server = TritonServer(tmp_path, http_port=free_port(), grpc_port=taken_port, metrics_port=free_port())
    with pytest.raises(PortInUseError, match=f"port {taken_port} on 127.0.0.1 is already in use.*TRITON_GRPC_PORT"):
        server.start()
    assert server._reaper is None and server._proc is None  # nothing was started
    server.stop()


def test_a_start_that_fails_at_triton_leaves_nothing_behind(small_repo, monkeypatch):
    # The reaper and the run folder exist by the time Triton's command is built; a refusal there (no binary, here a
    # missing wheel) must stop them as the door's and the S3 stage's failures do.
    from serving.runtime import binary

    monkeypatch.setattr(binary, "pytriton_dir", lambda: None)
    server = TritonServer(small_repo, http_port=0, grpc_port=0, metrics_port=0)
    with pytest.raises(TritonStartError, match="nvidia-pytriton"):
        server.start()
    assert server._reaper is None and server._tmp is None and server._proc is None


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_names_the_taken_port_in_one_line(taken_port, small_repo):
    ports = ["--http-port", str(taken_port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    done = run_cli(["serving.runtime.launch", "--model-repository", str(small_repo), *ports])
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"error: port {taken_port} on 127.0.0.1 is already in use ({holder()}); set TRITON_HTTP_PORT"
    )


def test_demo_names_the_taken_port_in_one_line(taken_port):
    # `make demo` twice: one line before Triton starts, not Gradio's "Cannot find empty port" traceback after it.
    done = run_cli(["gradio_frontend", "--serve-triton", "--port", str(taken_port)])
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: port {taken_port} on 127.0.0.1 is already in use ({holder()}); set GRADIO_SERVER_PORT (or --port)"
    ]


@pytest.mark.integration
def test_start_stop_leaves_nothing_behind(small_repo):
    server = TritonServer(small_repo, http_port=0, grpc_port=0, metrics_port=0)
    with server:
        assert server.is_ready() and server.startup_seconds > 0
        pgid = server._proc.pid
        assert list(launch.SHM_DIR.glob(f"{server.shm_prefix}*")), "expected the python backend's shm regions"
    assert wait_gone(pgid)
    assert not list(launch.SHM_DIR.glob(f"{server.shm_prefix}*"))


@pytest.fixture
def started(small_repo):
    """A TritonServer on ``small_repo``, started but not yet waited for; stopped at the end."""
    server = TritonServer(small_repo, http_port=0, grpc_port=0, metrics_port=0)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.integration
def test_a_triton_killed_by_a_signal_before_it_was_ready_is_started_once_more(started):
    # Triton 2.51 (and 25.02) now and then aborts while its stubs load (server.START_RETRIES): such a start is tried
    # once more, where it used to fail for good.
    first = _killed_before_ready(started, signal.SIGABRT)
    started.wait_ready(120)
    assert started._proc is not first and first.returncode is not None and started.is_ready()
    assert [e for e in started.events if "before it was ready; starting it again (1 of 1)" in e], started.events
    assert started.poll() is None


@pytest.mark.integration
def test_a_second_signal_before_readiness_fails_the_start(started):
    first = _killed_before_ready(started, signal.SIGKILL)
    _until(lambda: started._proc is not first, "not started again")
    _killed_before_ready(started, signal.SIGKILL)
    with pytest.raises(TritonStartError, match="exited with code -9 before it was ready"):
        started.wait_ready(60)
    assert started.poll() == -9


def _killed_before_ready(server: TritonServer, sig: signal.Signals) -> subprocess.Popen:
    """Kills the Triton ``server`` runs now with ``sig``, before wait_ready (so before its first readiness as the
    launcher counts it), and returns it once it is gone: one that has loaded by then (start() is slow on busy cores)
    would otherwise answer ready while it dies."""
    proc = server._proc
    os.kill(proc.pid, sig)
    _until(lambda: proc.returncode is not None, f"Triton did not die of {sig.name}")
    return proc


def _until(condition, message: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)


@pytest.mark.integration
def test_broken_model_reports_server_log(small_repo):
    (small_repo / "postprocess" / "config.pbtxt").write_text('name: "postprocess"\nbackend: "nonexistent"\n')
    (small_repo / "postprocess" / "configs" / "cpu.pbtxt").unlink()
    server = TritonServer(small_repo, http_port=0, grpc_port=0, metrics_port=0)
    with pytest.raises(TritonStartError, match="exited with code") as info:
        with server:
            pass
    # The message carries Triton's own explanation first, before the tables of its last log lines.
    why = str(info.value).partition("Last log lines:")[0]
    assert "Triton's errors:" in why and "postprocess" in why and "nonexistent" in why, why
    assert "CudaDriverHelper" not in why  # what Triton says at every start without a GPU


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_stops_cleanly_on_signal(small_repo, sig):
    # No drain grace: readiness off and the door's refusals still come first, without the 2 s waits between them that
    # this test does not look at (tests/test_shutdown.py times the drain).
    proc, *_ = start_launcher(small_repo, "--drain-grace", "0")
    servers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopping Triton" in err
    assert servers and all(wait_gone(int(pid)) for pid in servers)


def test_the_launcher_starts_without_the_heavy_imports():
    """A cold start waits for the launcher's own imports before Triton is spawned: numpy, PIL and the gate's grpc
    and aiohttp (1.9 s of imports under load, 0.3 s without them) belong to the processes that use them."""
    code = (
        "import sys, serving.runtime.launch; "
        "print(','.join(m for m in ('numpy', 'PIL', 'grpc', 'aiohttp', 'tritonclient', 'boto3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the launcher imported {out.stdout.strip()}"


#: A process with a live gRPC channel (as the demo, the benchmarks and these tests are) starting children the way the
#: launcher does; prints how many of them died or hung before or in their exec. ``grpc-first``: gRPC imported before the
#: project, as an entry point that forgot common.grpc_fork would.
_FORKS = """
import sys
from concurrent import futures
if sys.argv[2] == "grpc-first":
    import grpc
from serving.runtime import children  # as every entry point does: before gRPC is imported
import grpc
server = grpc.server(futures.ThreadPoolExecutor(2))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=30)
import os, signal, threading
from loadtest import procs
def unstick():
    # A child stuck between fork and exec (gRPC's fork handlers can deadlock one too) holds spawn() itself, which waits
    # for the exec: kill this process's children, so the stuck one counts as failed instead of hanging the test.
    for child in procs.all_processes():
        if child.ppid == os.getpid():
            os.kill(child.pid, signal.SIGKILL)
failed = 0
for _ in range(int(sys.argv[1])):
    timer = threading.Timer(10, unstick)
    timer.start()
    failed += children.spawn(["true"], capture=False).wait() != 0
    timer.cancel()
    if failed and sys.argv[3] == "until-one-fails":  # the answer is known: more children would not change it
        break
print(failed)
"""


def test_children_of_a_process_using_grpc_reach_their_program():
    """gRPC's fork handlers, on when the variable is unset, killed 1 child in 60 to 100 between fork and exec
    (common/grpc_fork.py): a gate that never started, once in a test run."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])

    def failures(order: str, until: str = "all") -> int:
        cmd = [sys.executable, "-c", _FORKS, "600", order, until]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    assert failures("project-first") == 0
    # The harness does reproduce it (P(no failure in 600) ~ 1e-4): up to 600 children, the first failure ends it.
    assert failures("grpc-first", "until-one-fails") > 0


def test_the_reaper_kills_what_it_was_told_and_not_what_it_was_told_to_forget():
    """A launcher that dies without a stop leaves its children to the reaper. Groups that are gone (a crashed Triton's,
    a restarted door's) are forgotten: after a pid wrap-around their number can lead someone else's group."""
    reaper = ROOT / "serving" / "runtime" / "reaper.py"
    kept, killed = (subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2))
    run = None
    try:
        lines = f"pgid {killed.pid}\npgid {kept.pid}\nforget {kept.pid}\n"
        # End of input without "clear": the launcher is gone.
        run = subprocess.Popen([sys.executable, str(reaper)], stdin=subprocess.PIPE, text=True)
        run.stdin.write(lines)
        run.stdin.close()
        # Reaped here as soon as it dies, as init reaps a dead launcher's children: a zombie still counts as alive
        # in its group, and the reaper would wait out its whole grace period (reaper.GRACE_S) for it.
        assert killed.wait(timeout=10) == -signal.SIGTERM
        assert run.wait(timeout=30) == 0
        assert kept.poll() is None
    finally:
        for proc in (kept, killed, *([run] if run else [])):
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("value", ["abc", "99999", "-1", "80 80"])
def test_a_port_variable_that_is_not_a_port_is_one_line_naming_it(monkeypatch, capsys, value):
    # It was int()'s traceback, raised while the argument parser was being built.
    monkeypatch.setenv("TRITON_METRICS_PORT", value)
    with pytest.raises(SystemExit) as exc:
        launch.parse_args([])
    assert exc.value.code == 2 and f"TRITON_METRICS_PORT={value!r} is not a port number" in capsys.readouterr().err
    monkeypatch.setenv("TRITON_METRICS_PORT", " 9102 ")
    assert launch.parse_args([]).metrics_port == 9102


@pytest.mark.parametrize("nohup", [False, True])
def test_a_closed_terminal_stops_the_launcher_as_ctrl_c_does_unless_under_nohup(nohup):
    # SIGHUP (the terminal of `make serve` closed) killed the launcher where it stood: no drain, in-flight requests
    # cut. Under nohup (SIGHUP ignored) the server is meant to outlive its terminal.
    code = (
        "import os, signal, time\n"
        "from serving.runtime.children import interrupt_on_signals\n"
        "interrupt_on_signals()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"  # to itself: delivered at once, acted on before the sleep
        "    time.sleep(0.5)\n"
        "    print('still running')\n"
        "except KeyboardInterrupt:\n"
        "    print('stopping cleanly')\n"
    )
    ignore = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if nohup else None
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, preexec_fn=ignore, cwd=ROOT
    )
    assert proc.returncode == 0 and proc.stdout.strip() == ("still running" if nohup else "stopping cleanly")


@pytest.mark.parametrize(
    ("host", "reached"), [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::1", "[::1]"), ("::", "[::1]")]
)
def test_the_launcher_reaches_its_own_ports_on_any_address(host, reached):
    # On --host ::1 it served, and asked its own readiness at http://::1:8000, which is no URL: "not ready" after the
    # whole --timeout, exit 1.
    server = TritonServer(ROOT / "model_repository", host=host, http_port=18000, grpc_port=18001, metrics_port=18002)
    assert (server.http_url, server.grpc_url) == (f"{reached}:18000", f"{reached}:18001")
    assert server.metrics_url == f"http://{reached}:18002/metrics"


def test_typos_in_ports_and_keys_are_one_line_each_and_start_nothing(monkeypatch, capsys):
    # The same port twice died on a traceback in the readiness probe; a key Triton's flags cannot carry, in Python's.
    for argv, message in (
        (["--http-port", "28000", "--grpc-port", "28000"], "--http-port and --grpc-port are both 28000"),
        (["--grpc-port", "28001", "--metrics-port", "28001"], "--grpc-port and --metrics-port are both 28001"),
        (["--http-port", "99999"], "'99999' is not a port number"),
    ):
        with pytest.raises(SystemExit) as exc:
            launch.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert launch.parse_args(["--http-port", "0", "--grpc-port", "0"]).grpc_port == 0  # two free ones: fine
    for name, value in (("TRITON_ADMIN_KEY", "my key"), ("TRITON_INTERNAL_KEY", "short")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert launch.main(["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {name} must") and "Traceback" not in err and value not in err

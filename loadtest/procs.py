"""Finds a running server's processes from /proc and reads their memory (Linux only, no dependencies).

The abuse suite (loadtest/abuse/suite.py) uses it to tell whether Triton died or was restarted during a run
(its pid changes) and to sum the resident memory of Triton, its Python-backend stubs and nginx.
The server is found either from the launcher's pid (``python -m serving.runtime.launch`` or a process that runs a
``TritonServer``) or from the process that listens on a TCP port (nginx's or Triton's HTTP port).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common.pids import fields_after_name, stat_fields

PROC = Path("/proc")
#: Process names counted as "the server" (the stub's name as its executable is called).
SERVER_NAMES = ("tritonserver", "triton_python_backend_stub", "nginx")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    name: str


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def started_at(pid: int | str) -> float | None:
    """Epoch seconds at which ``pid`` started, to a clock tick: its starttime (ticks after boot) placed on the wall
    clock through /proc/uptime, read now. /proc/stat's btime would place it in whole seconds, rounded down: up to a
    second early, the length of a whole cold start (loadtest.bench.coldstart times each stub's start with this)."""
    fields = stat_fields(pid)
    uptime = _read(PROC / "uptime")
    if fields is None or not uptime:
        return None
    return time.time() - float(uptime.split()[0]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int | str], pgid: int | None = None) -> float:
    """utime + stime of the live processes among ``pids`` (those in process group ``pgid`` only, when given)."""
    total = 0
    for pid in pids:
        if (fields := stat_fields(pid)) is not None and (pgid is None or int(fields[2]) == pgid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in process group ``pgid`` (Triton's: Triton and all its stubs)."""
    return cpu_seconds((entry.name for entry in PROC.iterdir() if entry.name.isdigit()), pgid)


def process(pid: int) -> Proc | None:
    stat = _read(PROC / str(pid) / "stat")
    cmdline = _read(PROC / str(pid) / "cmdline")
    if stat is None:
        return None
    ppid = int(fields_after_name(stat)[1])
    argv0 = (cmdline or "").split("\0")[0]
    # nginx renames itself "nginx: master process ...".
    name = os.path.basename(argv0.split()[0]).rstrip(":") if argv0 else stat[stat.index("(") + 1 : stat.rindex(")")]
    return Proc(pid, ppid, name)


def all_processes() -> list[Proc]:
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (p := process(int(entry.name))) is not None:
            found.append(p)
    return found


def descendants(root: int, table: list[Proc] | None = None) -> list[Proc]:
    """``root`` and every process below it."""
    table = all_processes() if table is None else table
    children: dict[int, list[Proc]] = {}
    for p in table:
        children.setdefault(p.ppid, []).append(p)
    me = next((p for p in table if p.pid == root), None)
    out, frontier = ([me] if me else []), [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            out.append(child)
            frontier.append(child.pid)
    return out


def listener(port: int) -> int | None:
    """The pid of a process listening on TCP ``port`` (any address), or None (not found, or not visible)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        text = _read(PROC / "net" / table) or ""
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])  # state 0A = LISTEN
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        return int(entry.name)
    return None


def server_root(*, pid: int | None = None, port: int | None = None) -> int | None:
    """The process whose descendants are the server: ``pid`` itself, else found from the port's listener.

    A listener that is an nginx worker or master leads to the master's parent (the launcher); a listener that
    is ``tritonserver`` itself (no front door) leads to its parent when that is a Python launcher.
    """
    if pid is not None:
        return pid if process(pid) else None
    if port is None or (owner := listener(port)) is None:
        return None
    proc = process(owner)
    while proc and proc.name == "nginx" and (parent := process(proc.ppid)) and parent.name == "nginx":
        proc = parent
    if proc is None:
        return None
    parent = process(proc.ppid)
    if parent is not None and parent.name.startswith("python"):
        return parent.pid
    return proc.pid


def server_processes(root: int) -> list[Proc]:
    return [p for p in descendants(root) if p.name in SERVER_NAMES]


def triton_pids(root: int) -> set[int]:
    return {p.pid for p in server_processes(root) if p.name == "tritonserver"}


def _field_kb(pid: int | str, file: str, field: str) -> int:
    """A ``Field:  N kB`` line of ``/proc/<pid>/<file>``; 0 when the process or the line is gone."""
    for line in (_read(PROC / str(pid) / file) or "").splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int | str) -> int:
    return _field_kb(pid, "status", "VmRSS:") * 1024


def pss_bytes(pid: int | str) -> int:
    """Proportional set size: pages shared by N processes (the runtime's libraries in every stub) count 1/N."""
    return _field_kb(pid, "smaps_rollup", "Pss:") * 1024


def rss_by_name(root: int) -> dict[str, int]:
    """Resident memory in bytes, summed per process name, of the server processes under ``root``."""
    totals = dict.fromkeys(SERVER_NAMES, 0)
    for p in server_processes(root):
        totals[p.name] += rss_bytes(p.pid)
    return totals

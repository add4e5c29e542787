"""Resident memory of a server and all its children (Triton plus every Python-backend stub), from /proc."""

from __future__ import annotations

import os
from pathlib import Path

from loadtest.procs import pss_bytes, rss_bytes


def group_rss_mb(pid: int) -> dict:
    """Sum of VmRSS over the process group of ``pid`` (the launcher starts Triton in its own session, and
    the stubs inherit its group), with the per-process split. Shared pages count once per process, as
    ``ps`` shows them: an upper bound, comparable between runs. ``pss_mb`` is the sum of PSS, where each
    shared page counts once in all: what the group really occupies."""
    pgid = os.getpgid(pid)
    per: dict[str, float] = {}
    pss = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
        name = Path(cmd[0].decode(errors="replace")).name
        if name == "triton_python_backend_stub" and len(cmd) > 1:
            name = f"stub {Path(cmd[1].decode(errors='replace')).parent.parent.name}"  # <model>/<version>/model.py
        rss = rss_bytes(proc.name)
        if rss:  # threads' and exiting processes' entries have none
            per[f"{name} ({proc.name})"] = rss / 2**20
            pss += pss_bytes(proc.name) / 2**20
    return {"total_mb": sum(per.values()), "pss_mb": pss, "processes": per}

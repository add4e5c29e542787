"""Resident memory of a server and all its children (Triton plus every Python-backend stub), from /proc."""

from __future__ import annotations

import os
from pathlib import Path


def _rss_kb(pid: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def group_rss_mb(pid: int) -> dict:
    """Sum of VmRSS over the process group of ``pid`` (the launcher starts Triton in its own session, and
    the stubs inherit its group), with the per-process split. Shared pages count once per process, as
    ``ps`` shows them: an upper bound, comparable between runs."""
    pgid = os.getpgid(pid)
    per: dict[str, float] = {}
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
        per[f"{name} ({proc.name})"] = _rss_kb(proc.name) / 1024
    return {"total_mb": sum(per.values()), "processes": per}

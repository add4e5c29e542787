"""Whether a TCP port is free to listen on: checked before anything starts, by the launcher and the web UI.

A taken port otherwise surfaces late and confusingly: the launcher's readiness probe reaches the *other* server
and reports "ready in 0.0 s", and Gradio raises its own ``OSError: Cannot find empty port`` traceback. Here
(not in serving/) because the web UI's image has common/, client/, gradio_frontend/ and loadtest/, not serving/.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

#: Triton's usual ports, the one definition: the launcher, the client, the UI and every tool default to them.
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def env_name(kind: str) -> str:
    """The variable that moves a port: ``TRITON_HTTP_PORT``, ``TRITON_GRPC_PORT``, ``TRITON_METRICS_PORT``."""
    return f"TRITON_{kind.upper()}_PORT"


def port_number(text: str) -> int | None:
    """``text`` as a port number (0-65535, ASCII digits, spaces around allowed), or None when it is not one. 0 asks
    a server for a free port; a client cannot call it."""
    text = text.strip()
    return int(text) if re.fullmatch(r"[0-9]{1,5}", text) and int(text) <= 65535 else None


def env_port(kind: str) -> int:
    """``$TRITON_<KIND>_PORT``, else the usual port; ValueError naming the variable when it is not a port (0, a free
    one chosen at start, is a port here: the launcher takes it)."""
    value = os.environ.get(env_name(kind))
    if value is None:
        return DEFAULT_PORTS[kind]
    if (port := port_number(value)) is None:
        raise ValueError(f"{env_name(kind)}={value!r} is not a port number (0-65535)")
    return port


def default_address(kind: str, host: str = "127.0.0.1") -> str:
    """``host:port`` of a local server's ``kind`` port (``$TRITON_<KIND>_PORT``, else the usual one)."""
    return f"{host}:{env_port(kind)}"


#: /proc/net/tcp's state codes, for the ones that hold a port against a new listener.
_STATES = {"01": "connected", "02": "connecting", "07": "bound", "0A": "listening"}


class PortInUseError(RuntimeError):
    """A port this process must listen on is taken; the message is one line that names the setting to change."""


def in_use(host: str, port: int) -> bool:
    """Whether listening on ``host:port`` would fail because someone else holds the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        # As servers bind (nginx, Triton, uvicorn): connections of an earlier run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def holders(port: int, proc: Path = Path("/proc")) -> list[str]:
    """Who holds local TCP ``port``, as far as this user may see: ``"pid 812 (nginx), listening"``, one per socket.

    Read from /proc (Linux) so that the error can name the process instead of guessing; other users' processes
    show their socket's state without a pid. Empty where /proc cannot be read."""
    sockets: dict[str, str] = {}  # inode -> state
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets[fields[9]] = _STATES.get(fields[3], f"state {fields[3]}")
    found = []
    for pid_dir in proc.glob("[0-9]*"):
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue  # gone, or another user's
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue  # closed meanwhile (the listing's own descriptor, for this process)
            inode = link[len("socket:[") : -1] if link.startswith("socket:[") else None
            if inode in sockets:
                try:
                    name = (pid_dir / "comm").read_text().strip()
                except OSError:
                    name = "?"
                found.append(f"pid {pid_dir.name} ({name}), {sockets.pop(inode)}")
    # A socket left over is another user's (no fd of ours names it), or has no owner at all (inode 0: TIME_WAIT,
    # which does not block a listener that sets SO_REUSEADDR, as in_use() does).
    return found + [f"{state} (another user's process)" for inode, state in sockets.items() if inode != "0"]


def check_free(host: str, ports: dict[str, int]) -> None:
    """Raises PortInUseError for the first taken port; ``ports`` maps the setting that chooses each to the port."""
    for setting, port in ports.items():
        if in_use(host, port):
            who = "; ".join(holders(port)) or "another `make serve` or `make demo`?"
            raise PortInUseError(f"port {port} on {host} is already in use ({who}); set {setting}")

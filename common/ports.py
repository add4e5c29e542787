"""Whether a TCP port is free to listen on: checked before anything starts, by the launcher and the web UI.

A taken port otherwise surfaces late and confusingly: the launcher's readiness probe reaches the *other* server
and reports "ready in 0.0 s", and Gradio raises its own ``OSError: Cannot find empty port`` traceback. Here
(not in serving/) because the web UI's image has only common/, client/ and gradio_frontend/.
"""

from __future__ import annotations

import socket


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


def check_free(host: str, ports: dict[str, int]) -> None:
    """Raises PortInUseError for the first taken port; ``ports`` maps the setting that chooses each to the port."""
    for setting, port in ports.items():
        if in_use(host, port):
            raise PortInUseError(
                f"port {port} on {host} is already in use (another `make serve` or `make demo`?); set {setting}"
            )

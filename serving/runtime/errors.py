"""Why a server could not be started; shared by the launcher's modules (and caught by its callers)."""

from __future__ import annotations


class TritonStartError(RuntimeError):
    """Triton exited or did not become ready; the message ends with its last log lines."""

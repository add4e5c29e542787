"""Throughput timing shared by the model benchmarks; no TensorFlow, so OpenVINO-only callers can use it."""

from __future__ import annotations

import time


def rate(step, per_call: int, seconds: float) -> float:
    """Items per second of ``step()`` (``per_call`` items a call) over ``seconds``, after one warm-up call."""
    step()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        step()
        n += per_call
    return n / elapsed

"""The closed-loop load driver: N threads, each sending its next request as soon as the last returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common import contract

#: What the benchmark asks the ensembles for (the box is not needed to count answers).
OUTPUTS = contract.ESTIMATE_OUTPUTS


@dataclass
class Result:
    """One scenario's measurement; latencies in milliseconds over the requests completed in the window."""

    scenario: str
    model: str  # the ensemble called over gRPC
    inputs: str  # what was sent
    dynamic_batching: bool
    concurrency: int
    batch_size: int
    duration_s: float = 0.0
    requests: int = 0
    images: int = 0
    errors: int = 0
    img_per_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    first_error: str | None = None


def closed_loop(make_call: Callable[[], Callable[[], int]], concurrency: int, duration: float, warmup: float) -> dict:
    """Runs ``concurrency`` threads, each calling its own ``make_call()`` result back to back.

    A call returns the number of images it processed or raises. Only requests that complete within
    the ``duration`` seconds after ``warmup`` are counted, for throughput and latency alike.
    """
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    images = [0] * concurrency
    errors = [0] * concurrency
    first_error: list[str] = []
    barrier = threading.Barrier(concurrency + 1)
    times: dict[str, float] = {}

    def worker(k: int) -> None:
        try:
            call = make_call()
        except Exception as exc:  # noqa: BLE001 - reported as this thread's error instead of killing the run
            first_error.append(f"setup: {type(exc).__name__}: {exc}")
            barrier.wait()
            return
        barrier.wait()
        measure_from, stop_at = times["from"], times["stop"]
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            try:
                n = call()
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted as an error of this scenario
                ok = False
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}"[:300])
                time.sleep(0.01)  # a dead server would otherwise turn this loop into a busy spin
            t1 = time.perf_counter()
            # Counted by completion time: a slow server's requests span the window's edges, and
            # dropping those that started in warm-up would undercount it.
            if not measure_from <= t1 <= stop_at:
                continue
            if ok:
                latencies[k].append((t1 - t0) * 1000.0)
                images[k] += n
            else:
                errors[k] += 1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    times["from"], times["stop"] = now + warmup, now + warmup + duration
    barrier.wait()
    for t in threads:
        t.join(timeout=warmup + duration + 120)
    all_lat = np.concatenate([np.asarray(x) for x in latencies]) if any(latencies) else np.array([])
    return {
        "duration_s": duration,
        "requests": int(all_lat.size),
        "images": int(sum(images)),
        "errors": int(sum(errors)),
        "img_per_s": sum(images) / duration,
        "p50_ms": float(np.percentile(all_lat, 50)) if all_lat.size else float("nan"),
        "p99_ms": float(np.percentile(all_lat, 99)) if all_lat.size else float("nan"),
        "first_error": first_error[0] if first_error else None,
    }


def _bytes_batch(corpus: list[bytes], start: int, size: int) -> np.ndarray:
    batch = np.empty((size, 1), dtype=np.object_)
    for k in range(size):
        batch[k, 0] = corpus[(start + k) % len(corpus)]
    return batch


def triton_call_factory(url: str, model: str, corpus: list[bytes], batch_size: int) -> Callable[[], Callable[[], int]]:
    """One gRPC client per thread: separate channels avoid measuring one connection's head-of-line blocking."""
    import tritonclient.grpc as grpcclient

    counter = iter(range(10**9))
    lock = threading.Lock()

    def make() -> Callable[[], int]:
        with lock:
            cursor = next(counter) * 7
        client = grpcclient.InferenceServerClient(url)
        outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
        state = {"i": cursor}

        def call() -> int:
            batch = _bytes_batch(corpus, state["i"], batch_size)
            state["i"] += batch_size
            inp = grpcclient.InferInput(contract.IMAGE_INPUT, list(batch.shape), "BYTES")
            inp.set_data_from_numpy(batch)
            # No gRPC deadline (common/triton_workarounds.py); the scenario's duration bounds the run.
            result = client.infer(model, [inp], outputs=outputs)
            errors = [e for e in result.as_numpy(contract.ENSEMBLE_ERROR).ravel() if e]
            if errors:
                raise RuntimeError(f"{len(errors)} item errors, e.g. {errors[0]!r}")
            return batch_size

        return call

    return make

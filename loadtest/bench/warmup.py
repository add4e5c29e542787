"""Ready means warm: the first request of each batch size after ``/v2/health/ready`` against the steady p50.

Run against a server that has served nothing yet (the benchmark calls it right after start-up). Each
first request goes to a connection already primed by a same-sized request to a model that does not
exist, so gRPC's connection and flow-control ramp-up is not charged to the model.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from common import contract, spec

#: Batch sizes tried, each capped at the model's max_batch_size (the CPU configs take 32, the GPU ones 64): a
#: fixed 64 made the benchmark fail against the CPU configs.
BATCHES = (1, 16, 64)
STEADY_REPEATS = 9
#: The issue's criterion: the first request costs at most this many times the steady median.
TARGET = 2.0


def first_vs_steady(url: str, models: tuple[str, ...] = contract.TASK_MODELS, headers=None) -> list[dict]:
    """``url``: Triton's own gRPC port (the CNNs are internal, not callable through the door), ``headers`` what it
    wants for inference (``TritonServer.internal_headers``)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    rng = np.random.default_rng(0)

    def infer(model: str, x: np.ndarray) -> float:
        image = grpcclient.InferInput(contract.CROP_INPUT, list(x.shape), "UINT8")
        image.set_data_from_numpy(x)
        start = time.perf_counter()
        try:
            client.infer(model, [image], headers=headers)
        except grpcclient.InferenceServerException:
            if model in models:
                raise
        return time.perf_counter() - start

    rows = []
    try:
        for model in models:
            limit = client.get_model_config(model, headers=headers).config.max_batch_size
            for batch in sorted({min(b, limit) for b in BATCHES}):
                side = spec.image_size(model)  # the CNNs are named after their tasks
                x = rng.integers(0, 256, (batch, side, side, 3), dtype=np.uint8)
                infer("no_such_model", x)  # primes the connection for this message size
                first = infer(model, x)
                steady = statistics.median(infer(model, x) for _ in range(STEADY_REPEATS))
                rows.append(
                    {
                        "model": model,
                        "batch": batch,
                        "first_ms": first * 1e3,
                        "p50_ms": steady * 1e3,
                        "ratio": first / steady,
                    }
                )
    finally:
        client.close()
    return rows

"""The seed project's way of serving, kept as the benchmark's yardstick, plus in-process throughput.

    python -m loadtest.bench.keras_baseline serve --port 8500 [--repository model_repository] [--runs runs]
    python -m loadtest.bench.keras_baseline inprocess [--repository model_repository] [--batch 64] [--duration 10]

``serve`` is a threaded web process that, like the seed, decodes each uploaded face crop and calls
Keras ``model.predict`` on it, one request at a time per thread, for the age and the gender model.
POST the encoded crop as the request body to ``/predict``; ``GET /health`` answers 200 once both
models are loaded and warmed up. It binds 127.0.0.1 only: it exists to be measured, not exposed.

``inprocess`` loads the exported SavedModels with ``tf.saved_model.load`` and prints, as one JSON
line, how many images per second each model (and the pair) processes at a fixed batch size: the
ceiling a serving stack could approach with no network, no decode and no queueing.

Kept out of :mod:`loadtest.bench.benchmark` so its process never imports TensorFlow: TF's thread pools
would compete with the load generator's threads.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import spec  # noqa: E402
from training.benchmark import rate  # noqa: E402
from training.export import SAVEDMODEL, latest  # noqa: E402
from training.model import OUTPUT_NAMES, TASKS  # noqa: E402


def load_keras_model(task: str, repository: Path, runs: Path | None):
    """A Keras model with ``.predict``: the trained ``runs/<task>/model.keras`` if present (what the seed
    loaded), else the exported SavedModel wrapped in a Keras layer, so both serve the same weights."""
    import keras

    if runs is not None and (runs / task / "model.keras").is_file():
        return keras.models.load_model(runs / task / "model.keras"), str(runs / task / "model.keras")
    path = latest(repository, task) / SAVEDMODEL
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    inputs = keras.Input((spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), dtype="uint8", name=spec.INPUT_NAME)
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        outputs = outputs[OUTPUT_NAMES[task]]
    return keras.Model(inputs, outputs), str(path)


def serve(args: argparse.Namespace) -> None:
    models = {task: load_keras_model(task, args.repository, args.runs) for task in TASKS}
    dummy = np.zeros((1, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), np.uint8)
    for model, _ in models.values():
        # Builds predict's tf.function before the first request, so concurrent first calls do not race on it.
        model.predict(dummy, verbose=0)
    sources = {task: src for task, (_, src) in models.items()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a browser or a load generator would use

        def log_message(self, *_args) -> None:  # per-request logging would cost more than some requests
            pass

        def _reply(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/health":
                self._reply(200, {"ready": True, "models": sources})
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/predict":
                self._reply(404, {"error": "not found"})
                return
            try:
                face = spec.to_model_input(Image.open(io.BytesIO(data)))
            except (OSError, ValueError) as err:
                self._reply(400, {"error": f"bad image: {err}"})
                return
            x = face[None]
            age = float(models["age"][0].predict(x, verbose=0).reshape(-1)[0])
            female = float(models["gender"][0].predict(x, verbose=0).reshape(-1)[0])
            self._reply(
                200, {"age": age, "female_probability": female, "gender": "female" if female >= 0.5 else "male"}
            )

    class Server(ThreadingHTTPServer):
        # socketserver's backlog of 5 resets connections when 16 clients connect at once; werkzeug
        # (Flask's server, which the seed ran) listens with 128.
        request_queue_size = 128
        daemon_threads = True

    server = Server(("127.0.0.1", args.port), Handler)
    print(f"keras baseline listening on 127.0.0.1:{args.port} ({sources})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def inprocess(args: argparse.Namespace) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    batch = tf.constant(rng.integers(0, 256, (args.batch, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), dtype=np.uint8))
    fns, keep = {}, []
    for task in TASKS:
        loaded = tf.saved_model.load(str(latest(args.repository, task) / SAVEDMODEL))
        keep.append(loaded)  # the signature needs its object alive
        fns[task] = loaded.signatures["serving_default"]

    def measure(tasks: tuple[str, ...]) -> float:
        return rate(lambda: [fns[t](image=batch)[OUTPUT_NAMES[t]].numpy() for t in tasks], args.batch, args.duration)

    result = {
        "batch": args.batch,
        "age_img_s": measure(("age",)),
        "gender_img_s": measure(("gender",)),
        "both_img_s": measure(TASKS),
        "tf_version": tf.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }
    print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="the seed-style Keras web process")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--runs", type=Path, default=None, help="prefer runs/<task>/model.keras when present")
    i = sub.add_parser("inprocess", help="batched SavedModel throughput in this process")
    i.add_argument("--batch", type=int, default=64)
    i.add_argument("--duration", type=float, default=10.0)
    for sp in (s, i):
        sp.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = p.parse_args(argv)
    if args.command == "serve":
        serve(args)
    else:
        inprocess(args)


if __name__ == "__main__":
    main()

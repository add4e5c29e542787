"""Triton Python-based backend ``openvino_savedmodel``: serves a TensorFlow SavedModel with OpenVINO on the CPU.

A model selects it with ``backend: "openvino_savedmodel"``; its version folders hold ``model.savedmodel``
(the artifact ``training.export`` writes) and, beside it, the OpenVINO IR ``model.openvino/`` that
``training.export`` or ``serving.ops.publish`` makes from it (ir.py). The IR is read when its key matches the
SavedModel and this OpenVINO; otherwise the SavedModel is converted in memory as before. No TensorFlow in the
process, nothing written at load.
Triton runs this file through its Python backend (python_backend "Python-based backends"): the
launcher puts this folder next to the ``python`` backend, the Docker image copies it to
``/opt/tritonserver/backends/openvino_savedmodel/``.

Why OpenVINO and not ONNX Runtime or TensorFlow: ``python -m research.runtimes`` (docs/performance.md,
"CPU runtime choice").

Model config parameters (all optional, string values):
    ``inference_threads``: OpenVINO CPU threads for this instance (default 1: Triton scales by
    instances and dynamic batching, and several stubs on a small machine must not each grab every core).
    ``inference_precision``: ``f32`` (default: the exported model's own arithmetic), ``bf16``, ``int8`` (the
    version's ``model.int8/`` from training.quantize; f32 where there is no valid one), or ``auto`` (bf16 where this
    process runs it natively, on AMX or AVX512_BF16; else int8 where the CPU has AVX2; else f32:
    ov_runtime.PRECISIONS says why). bf16 and int8 change the answers; reports/precision.md measures by how much on
    the test split.
    ``max_infer_batch``: the most images one OpenVINO call runs (default: no limit); a larger Triton batch runs
    in slices of it. OpenVINO keeps the activations of the largest batch it has run for the life of the stub
    (age at 96x96 with flip TTA: 99 MB RSS after batch 1, 139 after 16, 181 after 32), while per image the cost
    is flat from batch ~8 up, so a cap bounds the stub's memory, not its throughput. Warming up at this size
    makes memory after warm-up what it will be under load.
"""

from __future__ import annotations

import time

_IMPORTS_START = time.time()  # the cold-start breakdown (loadtest.bench.coldstart --breakdown) reports imports

import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def _sibling(name: str):
    """A module of this backend's folder, loaded by path: nothing promises that the folder is on the stub's
    sys.path (a copy next to the pip wheel's python backend here, /opt/tritonserver/backends/ in the image)."""
    spec = importlib.util.spec_from_file_location(f"openvino_savedmodel_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ov_runtime = _sibling("ov_runtime")  # the lean `import openvino` and the compiled-model cache
ov = ov_runtime.import_openvino()
ir = _sibling("ir")
SAVEDMODEL = ir.SAVEDMODEL
#: Prefix of the timing line each instance prints after initialize() (parsed by loadtest.bench.coldstart).
COLDSTART_TAG = "[coldstart]"
_IMPORTS_END = time.time()


def _process_start() -> float | None:
    """When this stub process started (epoch seconds), from /proc: the stub's own start-up before Python ran."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(x.split()[1]) for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        started = time.time()
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("inference_threads") or 1)
        native = ov_runtime.native()  # read once: the CPU's flags, and on AMX a syscall
        try:
            precision = ov_runtime.resolve_precision(
                params.get("inference_precision", ""), bool(native["bf16"]), bool(native["int8"])
            )
        except ValueError as err:
            raise pb_utils.TritonModelException(f"{args['model_name']}: {err}") from err
        self._max_batch = int(params.get("max_infer_batch") or 0) or None
        # args["model_repository"] is this model's folder; serve the version Triton asked this instance to load.
        path = Path(args["model_repository"]) / args["model_version"] / SAVEDMODEL
        if not path.is_dir():
            raise pb_utils.TritonModelException(f"{path} not found: export a SavedModel there (training.export).")
        load_start = time.time()
        core = ov.Core()
        # The IR if valid for this SavedModel, else converted now; for int8 the version's model.int8, which only
        # training.quantize can make (it needs the training faces): without a valid one, f32, said in the log.
        model, source, served = ir.load_served(path.parent, core, precision)
        if served != precision:
            print(f"{args['model_name']}: {source}", file=sys.stderr, flush=True)
            precision = served
        compile_start = time.time()
        self._compiled = ov_runtime.compile_model(core, model, ov_runtime.settings(threads, precision))
        # One request object per instance: Triton never calls execute() of one instance concurrently.
        self._request = self._compiled.create_infer_request()
        compile_end = time.time()
        # Names and dtypes come from the config, so the same backend serves any single-signature model.
        self._inputs = {i["name"]: pb_utils.triton_string_to_numpy(i["data_type"]) for i in config["input"]}
        self._outputs = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        ports = {name for port in self._compiled.outputs for name in port.get_names()}
        missing = [name for name in self._outputs if name not in ports]
        if missing:
            raise pb_utils.TritonModelException(f"{path} has no output named {missing}; it has {sorted(ports)}.")
        # One line per instance, epoch seconds, for the cold-start breakdown; warm-up follows initialize().
        timing = {
            "model": args["model_name"],
            "version": args["model_version"],
            "instance": args["model_instance_name"],
            "source": source,
            # What the config's inference_precision resolved to on this CPU, and what OpenVINO compiled; how this
            # process runs bf16 ("amx", "avx512_bf16", "none") and int8 ("vnni", "avx2", "none") natively, which is
            # what "auto" went by: on a pool of mixed nodes, why two pods serve different precisions.
            "precision": precision,
            "native_bf16": native["bf16"] or "none",
            "native_int8": native["int8"] or "none",
            "compiled_precision": self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "process_start": _process_start(),
            "imports": [_IMPORTS_START, _IMPORTS_END],
            "initialize": [started, time.time()],
            "load_model": [load_start, compile_start],
            "compile": [compile_start, compile_end],
        }
        print(f"{COLDSTART_TAG} {json.dumps(timing)}", file=sys.stderr, flush=True)

    def execute(self, requests: list) -> list:
        # One inference for the whole dynamic batch: per-request calls would waste the batching Triton just did.
        batches = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self._inputs
        }
        sizes = [len(a) for a in next(iter(batches.values()))]
        try:
            feed = {
                name: np.concatenate(arrays).astype(dtype, copy=False) if len(arrays) > 1 else arrays[0]
                for (name, arrays), dtype in zip(batches.items(), self._inputs.values(), strict=True)
            }
            outputs = self._infer(feed, sum(sizes))
        except Exception as err:  # noqa: BLE001 - a runtime failure must come back as a Triton error, not kill the stub
            return [
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"OpenVINO inference failed: {err}"))
                for _ in requests
            ]
        splits = np.cumsum(sizes)[:-1]
        per_output = {name: np.split(array, splits) for name, array in outputs.items()}
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(name, parts[i]) for name, parts in per_output.items()])
            for i in range(len(requests))
        ]

    def _infer(self, feed: dict, total: int) -> dict:
        """Runs the batch, in slices of at most ``max_infer_batch`` images; outputs copied (the request reuses them)."""
        step = self._max_batch or total
        parts: dict[str, list] = {name: [] for name in self._outputs}
        for start in range(0, total, step):
            result = self._request.infer({name: array[start : start + step] for name, array in feed.items()})
            for name, dtype in self._outputs.items():
                parts[name].append(np.array(result[self._compiled.output(name)], dtype=dtype))
        return {name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays) for name, arrays in parts.items()}

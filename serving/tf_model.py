"""Runs a TensorFlow SavedModel inside a Triton Python-backend model.

The production configs serve ``age`` and ``gender`` with Triton's TensorFlow
backend; the CPU configs (``configs/cpu.pbtxt``) point the Python backend at the
same SavedModel through this class, because the pip-installed Triton has no
TensorFlow backend. Each exported version folder holds a one-line ``model.py``
that re-exports :class:`TritonPythonModel`.

Model config parameters (all optional, string values):
    ``tf_intra_op_threads`` / ``tf_inter_op_threads``: TensorFlow thread pools
    (default: env ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS``, else 1,
    so several stubs on a small machine do not each grab every core).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAVEDMODEL = "model.savedmodel"
SIGNATURE = "serving_default"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}

        import tensorflow as tf  # imported here so the module stays importable (and cheap) without TF

        tf.config.threading.set_intra_op_parallelism_threads(
            int(params.get("tf_intra_op_threads") or os.environ.get("TF_NUM_INTRAOP_THREADS", 1))
        )
        tf.config.threading.set_inter_op_parallelism_threads(
            int(params.get("tf_inter_op_threads") or os.environ.get("TF_NUM_INTEROP_THREADS", 1))
        )
        self._tf = tf
        # args["model_repository"] is this model's folder; serve the version Triton asked this instance to load.
        path = Path(args["model_repository"]) / args["model_version"] / SAVEDMODEL
        self._loaded = tf.saved_model.load(str(path))  # keeps the variables alive for the signature
        self._fn = self._loaded.signatures[SIGNATURE]
        # Names and dtypes come from the config, so the same runner serves any single-signature model.
        self._inputs = {i["name"]: pb_utils.triton_string_to_numpy(i["data_type"]) for i in config["input"]}
        self._outputs = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}

    def execute(self, requests: list) -> list:
        # One TF call for the whole dynamic batch: per-request calls would waste the batching Triton just did.
        batches = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self._inputs
        }
        sizes = [len(a) for a in next(iter(batches.values()))]
        try:
            feed = {
                name: self._tf.constant(np.concatenate(arrays).astype(dtype, copy=False))
                for (name, arrays), dtype in zip(batches.items(), self._inputs.values(), strict=True)
            }
            result = self._fn(**feed)
            outputs = {name: result[name].numpy().astype(dtype, copy=False) for name, dtype in self._outputs.items()}
        except Exception as err:  # noqa: BLE001 - a TF failure must come back as a Triton error, not kill the stub
            return [
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"TensorFlow inference failed: {err}"))
                for _ in requests
            ]
        splits = np.cumsum(sizes)[:-1]
        per_output = {name: np.split(array, splits) for name, array in outputs.items()}
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(name, parts[i]) for name, parts in per_output.items()])
            for i in range(len(requests))
        ]

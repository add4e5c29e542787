"""Decodes uploaded images and crops the face both CNNs take, one batch item at a time.

Serves two Triton models: ``preprocess`` (face detection) and ``preprocess_crop``
(whose ``1/model.py`` links here; parameter ``detect: "false"`` skips detection
for inputs that are already aligned crops). Imports ``serving`` and ``common``
from the project root, which the launcher puts on PYTHONPATH.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from common import spec
from serving.decode import MAX_BYTES, MAX_PIXELS, ImageDecodeError, decode_image
from serving.faces import FaceCropper, crop_aligned

OUTPUTS = ("face", "box", "detection_score", "face_found", "error")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self._max_bytes = int(params.get("max_bytes") or MAX_BYTES)
        self._max_pixels = int(params.get("max_pixels") or MAX_PIXELS)
        self._crop = FaceCropper() if params.get("detect", "true").lower() != "false" else crop_aligned
        self._dtypes = {
            name: pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, name)["data_type"])
            for name in OUTPUTS
        }

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            rows = [self._one(item) for item in items]
            tensors = [
                pb_utils.Tensor(name, np.asarray([row[i] for row in rows], dtype=self._dtypes[name]))
                for i, name in enumerate(OUTPUTS)
            ]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses

    def _one(self, data: bytes) -> tuple:
        """Returns (face, box, [score], [found], [error]) for one upload, never raising."""
        blank = np.zeros((spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), np.uint8)
        try:
            image = decode_image(bytes(data), max_pixels=self._max_pixels, max_bytes=self._max_bytes)
            face = self._crop(image)
        except ImageDecodeError as err:
            return blank, (0.0,) * 4, [0.0], [False], [str(err).encode()]
        except Exception as err:  # noqa: BLE001 - one bad upload must not fail the other items of the batch
            return blank, (0.0,) * 4, [0.0], [False], [f"Could not process the image: {err}".encode()]
        if face is None:
            return blank, (0.0,) * 4, [0.0], [False], [b""]
        return face.crop, face.box, [face.score], [True], [b""]

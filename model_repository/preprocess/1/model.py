"""Decodes uploaded images and crops the face each CNN takes, one batch item at a time.

Serves two Triton models: ``preprocess`` (face detection) and ``preprocess_crop``
(whose ``1/model.py`` links here; parameter ``detect: "false"`` skips detection
for inputs that are already aligned crops). Imports ``serving`` and ``common``
from the project root: through the editable install (``make setup``) or Triton's working directory when that is
the project root (the 2.51 stub ignores PYTHONPATH: serving/runtime/server.py ``command``).
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from common import contract
from serving.pipeline.background import Background, NotReady
from serving.pipeline.crops import MIN_FACE_SIDE, crop_aligned, too_small
from serving.pipeline.decode import (
    REQUEST_MAX_PIXELS,
    DecodeLimits,
    ImageDecodeError,
    PixelBudget,
    sample_pictures,
)
from serving.pipeline.detect import FaceCropper

OUTPUTS = contract.PREPROCESS_OUTPUTS
#: ``detection_score`` where no face was scored (common/contract.py).
NO_SCORE = float("nan")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self._limits = DecodeLimits.from_params(params)
        self._request_pixels = int(params.get("request_max_pixels") or REQUEST_MAX_PIXELS)
        self._detect = params.get("detect", "true").lower() != "false"
        # The detector builds in the background (serving/pipeline/background.py): the server's start, and the
        # crop path, do not wait for it; a detection request does, when it comes first (_request_detector).
        self._detector = Background(self._build_detector, name="face detector") if self._detect else None
        outputs = {name: pb_utils.get_output_config_by_name(config, name) for name in OUTPUTS}
        self._dtypes = {name: pb_utils.triton_string_to_numpy(out["data_type"]) for name, out in outputs.items()}
        # What an item without a face sends each model: zeros of the shape its config declares.
        self._blank = tuple(
            np.zeros(outputs[name]["dims"], self._dtypes[name]) for name in contract.PREPROCESS_FACES.values()
        )

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, contract.IMAGE_INPUT).as_numpy().reshape(-1)
            budget = PixelBudget(self._request_pixels)  # per request, not per item: bounds one caller's work
            crop = self._request_detector() if self._detect else self._crop_only
            rows = [self._one(item, budget, crop) for item in items]
            tensors = [
                pb_utils.Tensor(name, np.asarray([row[i] for row in rows], dtype=self._dtypes[name]))
                for i, name in enumerate(OUTPUTS)
            ]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses

    def _request_detector(self):
        """One request's detector: fetched at its first item that decodes, then kept for its other items.

        Once per request: waited for per item, a detector that never got ready held one request for items x the
        wait (a 32-item request 32 minutes), and items of one request could differ. Not before an item decodes:
        an item that does not decode gets its error without waiting for a detector still being built, and so does
        the config's warm-up (an empty upload), which Triton runs before it calls the model ready.
        """
        got: list = []

        def crop(image):
            if not got:
                try:
                    got.append(self._detector.get())
                except NotReady as err:
                    got.append(err)
            if isinstance(got[0], NotReady):
                raise got[0]
            return got[0](image)

        return crop

    def _build_detector(self) -> FaceCropper:
        """The detector, run once on each sample picture (serving/pipeline/decode.py): the decoders' and detectors'
        first use, which a stub's first detection paid for, is paid here by the build's low-priority thread."""
        cropper = FaceCropper()
        for picture in sample_pictures():
            cropper(picture)
        return cropper

    @staticmethod
    def _crop_only(image):
        width, height = image.size
        if min(width, height) < MIN_FACE_SIDE:  # no face crop: UTKFace's are 200 px (serving/pipeline/crops.py)
            raise ImageDecodeError(
                f"The image is {width}x{height}; a face crop needs at least {MIN_FACE_SIDE} px on each side "
                "(send the whole photo to the detecting model instead)."
            )
        return crop_aligned(image)

    def _failed(self, error: str) -> tuple:
        """The row of an item without a face: blank crops, no box, no score, not found, ``error`` ('' for none)."""
        return *self._blank, (0.0,) * 4, [NO_SCORE], [False], [error.encode()]

    def _one(self, data: bytes, budget: PixelBudget, crop) -> tuple:
        """Returns (age face, gender face, box, [score], [found], [error]) for one upload, never raising.

        ``detection_score`` is the found face's detector confidence, NaN where there is none (no face, the crop
        path, an upload that did not decode): not a confidence of 0. ``face_found`` on the crop path only means
        "used as a face".
        """
        try:
            decoded = self._limits.decode(bytes(data), budget=budget)
            face = crop(decoded.image)
        except (ImageDecodeError, NotReady) as err:
            return self._failed(str(err))
        except Exception as err:  # noqa: BLE001 - one bad upload must not fail the other items of the batch
            return self._failed(f"Could not process the image: {err}")
        if face is None:  # the detector ran and found nothing
            return self._failed("")
        score = face.score if self._detect else NO_SCORE
        box = decoded.to_file(face.box)  # the uploaded file's pixels
        if (why := too_small(face.side * decoded.scale)) is not None:  # found, but too few pixels for an estimate
            return *self._blank, box, [score], [True], [why.encode()]
        return *(face.crops[task] for task in contract.PREPROCESS_FACES), box, [score], [True], [b""]

"""Every face in one image: detect, align and crop each, then age and gender through Triton (BLS).

Walk-through in ``model_repository/faces/README.md``. Detection and cropping are
:class:`serving.pipeline.detect.MultiFaceCropper`; decoding and its per-image errors are the preprocess model's
(:class:`serving.pipeline.decode.DecodeLimits`: same limits, JPEG draft decoding). Age and gender run as the
``age`` and ``gender`` models through business logic scripting, so their dynamic batching still combines
the faces of concurrent requests (from this model's instances and from the ensembles) into one batch.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from common import contract as c
from common import spec
from serving.pipeline.background import Background, NotReady
from serving.pipeline.crops import too_small
from serving.pipeline.decode import DecodeLimits, ImageDecodeError, sample_pictures
from serving.pipeline.detect import MultiFaceCropper

#: The models each image's face crops go to, and the outputs read from each.
CALLS = tuple((model, c.TASK_MODEL_OUTPUTS[model]) for model in c.TASK_MODELS)
#: Where each of those outputs goes in this model's answer (one value per face).
ANSWER_NAMES = {
    c.AGE_OUTPUT: c.FACES_AGE,
    c.AGE_LOW_OUTPUT: c.FACES_AGE_LOW,
    c.AGE_HIGH_OUTPUT: c.FACES_AGE_HIGH,
    c.GENDER_OUTPUT: c.FACES_FEMALE,
}
NO_FACES = {name: np.zeros(0, np.float32) for name in ANSWER_NAMES.values()}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        # The multi-face detector looks at the picture at most DRAFT_SIDE px wide, so larger JPEGs decode smaller.
        self._limits = DecodeLimits.from_params(params)
        self._max_faces = int(params.get("max_faces") or c.MAX_FACES)
        # All faces of one picture go to age and gender as one batch, which their max_batch_size bounds.
        if not 1 <= self._max_faces <= c.MAX_FACES:
            raise ValueError(f"max_faces must lie in 1-{c.MAX_FACES} (the CNNs' max_batch_size), got {self._max_faces}")
        # Built in the background (serving/pipeline/background.py): the server's start does not wait for it.
        self._cropper = Background(self._build_cropper, name="face detector")

    def _build_cropper(self) -> MultiFaceCropper:
        """As the preprocess model's: run once on each sample picture, so the first request does not pay for the
        decoders' and detectors' first use."""
        cropper = MultiFaceCropper()
        for picture in sample_pictures():
            cropper.crop_all(picture)
        return cropper

    async def execute(self, requests: list) -> list:
        # max_batch_size 0: each request is one image. Several requests of one call run concurrently, so
        # their age/gender calls reach the models' dynamic batchers together.
        return list(await asyncio.gather(*(self._one(request) for request in requests)))

    async def _one(self, request) -> pb_utils.InferenceResponse:
        data = pb_utils.get_input_tensor_by_name(request, c.FACES_INPUT).as_numpy().reshape(-1)
        try:
            if data.size != 1:
                raise ImageDecodeError(f"Send exactly one image per request, got {data.size}.")
            decoded = self._limits.decode(bytes(data[0]))
            # Whether the picture holds more faces than come back is part of the answer (more_faces).
            faces, more = self._cropper.get().crop_counted(decoded.image, max_faces=self._max_faces)
        except (ImageDecodeError, NotReady) as err:
            return _response([], NO_FACES, str(err))
        except Exception as err:  # noqa: BLE001 - same message shape as the preprocess model's
            return _response([], NO_FACES, f"Could not process the image: {err}")
        if not faces:
            return _response([], NO_FACES, "")
        # Each model gets its own crops (the two may take different sizes) in its own Tensor: once, with one
        # Tensor shared by the two concurrent BLS requests, Triton 2.51 received 0 bytes for one of them
        # ("input byte size mismatch ... got 0"); separate ones rule that out.
        crops = {model: np.stack([f.crops[model] for f in faces]).astype(spec.INPUT_DTYPE) for model, _ in CALLS}
        calls = [
            pb_utils.InferenceRequest(
                model_name=model,
                requested_output_names=list(outputs),
                inputs=[pb_utils.Tensor(c.CROP_INPUT, crops[model])],
            )
            for model, outputs in CALLS
        ]
        try:
            answers = await asyncio.gather(*(call.async_exec() for call in calls))
        except Exception as err:  # noqa: BLE001 - a failed call must fail this request only, with a clear message
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"age/gender inference failed: {err}"))
        estimates = {}
        for answer, (model, outputs) in zip(answers, CALLS, strict=True):
            if answer.has_error():
                message = f"{model} model failed: {answer.error().message()}"
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
            for output in outputs:
                tensor = pb_utils.get_output_tensor_by_name(answer, output)
                estimates[ANSWER_NAMES[output]] = tensor.as_numpy().reshape(-1).astype(np.float32)
        # A face too small for an estimate (serving/pipeline/crops.py MIN_FACE_SIDE) keeps its box and score, and
        # its numbers go out as NaN, its gender empty: found, not estimated.
        small = np.array([too_small(f.side * decoded.scale) is not None for f in faces])
        for values in estimates.values():
            values[small] = np.nan
        return _response(faces, estimates, "", to_file=decoded.to_file, more=more)


def _response(
    faces: list, estimates: dict[str, np.ndarray], error: str, *, to_file=tuple, more: bool = False
) -> pb_utils.InferenceResponse:
    # Boxes go back to the uploaded file's pixels (upright), each axis by its own factor when the JPEG was drafted.
    box = np.array([to_file(f.box) for f in faces], np.float32).reshape(-1, 4)
    score = np.array([f.score for f in faces], np.float32)
    female = estimates[c.FACES_FEMALE]
    gender = np.array([b"" if np.isnan(p) else c.gender_label(p).encode() for p in female], np.object_)
    tensors = {
        c.FACES_BOX: box,
        c.FACES_SCORE: score,
        **estimates,
        c.FACES_GENDER: gender,
        c.FACES_ERROR: np.array([error.encode()], np.object_),
        c.FACES_MORE: np.array([more], np.bool_),
    }
    return pb_utils.InferenceResponse([pb_utils.Tensor(name, tensors[name]) for name in c.FACES_OUTPUTS])

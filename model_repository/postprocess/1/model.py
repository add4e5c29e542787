"""Turns the gender probability into a label; every other tensor passes through unchanged."""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

#: Above this probability of female the label is "female"; the classifier was trained with balanced loss.
THRESHOLD = 0.5
PASS_THROUGH = ("age", "female_probability", "box", "detection_score", "face_found", "error")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self._gender_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "gender")["data_type"]
        )

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            tensors = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in PASS_THROUGH}
            # Where no face was found or the item failed, the CNNs saw a blank crop: their numbers mean nothing,
            # so they go out as NaN (clients map NaN to null; docs/contract.md).
            usable = tensors["face_found"] & (tensors["error"].astype(bytes) == b"")
            for name in ("age", "female_probability"):
                tensors[name] = np.where(usable, tensors[name], np.float32("nan")).astype(tensors[name].dtype)
            female = tensors["female_probability"] >= THRESHOLD
            label = np.where(female, b"female", b"male")
            gender = np.where(usable, label, b"").astype(self._gender_dtype)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("gender", gender)] + [pb_utils.Tensor(n, a) for n, a in tensors.items()]
                )
            )
        return responses

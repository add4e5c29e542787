"""Turns the gender probability into a label; every other tensor passes through (NaN where no usable face).

Imports ``common`` from the project root, which the launcher puts on PYTHONPATH.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from common import contract as c

PASS_THROUGH = tuple(name for name in c.ENSEMBLE_OUTPUTS if name != c.ENSEMBLE_GENDER)
#: The CNNs' numbers. The age interval is NaN already where the age model has no distributional head; kept so.
ESTIMATES = (c.ENSEMBLE_AGE, c.ENSEMBLE_AGE_LOW, c.ENSEMBLE_AGE_HIGH, c.ENSEMBLE_FEMALE)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self._gender_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, c.ENSEMBLE_GENDER)["data_type"]
        )

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            tensors = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in PASS_THROUGH}
            # Where no face was found or the item failed, the CNNs saw a blank crop: their numbers mean nothing,
            # so they go out as NaN (clients map NaN to null; docs/contract.md).
            usable = tensors[c.ENSEMBLE_FOUND] & (tensors[c.ENSEMBLE_ERROR].astype(bytes) == b"")
            for name in ESTIMATES:
                tensors[name] = np.where(usable, tensors[name], np.float32("nan")).astype(tensors[name].dtype)
            female = c.is_female(tensors[c.ENSEMBLE_FEMALE])
            label = np.where(female, c.FEMALE.encode(), c.MALE.encode())
            # A NaN probability decides nothing (NaN >= threshold is False, which would read "male"): it gets the
            # no-face label, and the NaN goes out as it came in.
            known = usable & ~np.isnan(tensors[c.ENSEMBLE_FEMALE])
            gender = np.where(known, label, b"").astype(self._gender_dtype)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(c.ENSEMBLE_GENDER, gender)] + [pb_utils.Tensor(n, a) for n, a in tensors.items()]
                )
            )
        return responses

"""Turns the gender probability into a label, and the CNNs' numbers into NaN where no usable face was found.

Reads only ``common.contract.POSTPROCESS_INPUTS`` and writes ``POSTPROCESS_OUTPUTS``: the box, the detection score,
``face_found`` and ``error`` reach the ensemble's outputs from preprocessing directly, since a tensor sent through
this stub and back is copied twice for nothing. On the crop path at c=16 this step's execution took 3.6-3.9 ms per
batch of about four with all nine tensors in and out, 2.4-2.8 ms with these (docs/performance-log.md, twelfth part).
Imports ``common`` from the project root: through the editable install (``make setup``) or Triton's working
directory when that is the project root (the 2.51 stub ignores PYTHONPATH: serving/runtime/server.py ``command``).
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from common import contract as c

#: The CNNs' numbers. The age interval is NaN already where the age model has no distributional head; kept so.
ESTIMATES = c.POSTPROCESS_ESTIMATES


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self._gender_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, c.ENSEMBLE_GENDER)["data_type"]
        )

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            found = pb_utils.get_input_tensor_by_name(request, c.ENSEMBLE_FOUND).as_numpy()
            error = pb_utils.get_input_tensor_by_name(request, c.ENSEMBLE_ERROR).as_numpy()
            # Where no face was found or the item failed, the CNNs saw a blank crop: their numbers mean nothing,
            # so they go out as NaN (clients map NaN to null; docs/contract.md).
            usable = found & (error.astype(bytes) == b"")
            tensors = {}
            for name in ESTIMATES:
                value = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                tensors[name] = np.where(usable, value, np.float32("nan")).astype(value.dtype)
            female = c.is_female(tensors[c.ENSEMBLE_FEMALE])
            label = np.where(female, c.FEMALE.encode(), c.MALE.encode())
            # A NaN probability decides nothing (NaN >= threshold is False, which would read "male"): it gets the
            # no-face label, and the NaN goes out as it came in.
            known = usable & ~np.isnan(tensors[c.ENSEMBLE_FEMALE])
            gender = np.where(known, label, b"").astype(self._gender_dtype)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, a) for n, a in tensors.items()] + [pb_utils.Tensor(c.ENSEMBLE_GENDER, gender)]
                )
            )
        return responses

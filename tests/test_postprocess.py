"""The postprocess model called directly (issue 18, item 6): a NaN gender probability never becomes a gender, and
where no usable face was found (not found, or the item failed) every estimate is blanked."""

from __future__ import annotations

import json
import math
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from common import contract
from serving.runtime.launch import TritonServer

ROOT = Path(__file__).resolve().parents[1]


def tensor(name: str, datatype: str, data: list, width: int = 1) -> dict:
    return {"name": name, "datatype": datatype, "shape": [len(data) // width, width], "data": data}


@pytest.mark.integration
def test_nan_probability_gives_no_gender_and_stays_nan(tmp_path):
    shutil.copytree(ROOT / "model_repository" / "postprocess", tmp_path / "postprocess")
    # Triton alone (no door): "called directly", as a caller on Triton's own ports would.
    server = TritonServer(tmp_path, http_port=0, grpc_port=0, metrics_port=0, front_door=False)
    # NaN, female, male on a usable face; then a female face that was not found, and one whose item failed.
    probabilities = [float("nan"), 0.7, 0.2, 0.7, 0.7]
    body = {
        "inputs": [
            tensor(contract.ENSEMBLE_AGE, "FP32", [30.0] * 5),
            tensor(contract.ENSEMBLE_AGE_LOW, "FP32", [24.0] * 5),
            tensor(contract.ENSEMBLE_AGE_HIGH, "FP32", [37.0] * 5),
            tensor(contract.ENSEMBLE_FEMALE, "FP32", probabilities),
            tensor(contract.ENSEMBLE_FOUND, "BOOL", [True, True, True, False, True]),
            tensor(contract.ENSEMBLE_ERROR, "BYTES", ["", "", "", "", "Could not decode the image."]),
        ]
    }
    with server:
        request = urllib.request.Request(
            f"http://{server.http_url}/v2/models/postprocess/infer",
            data=json.dumps(body, allow_nan=True).encode(),  # Triton's parser reads NaN
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            outputs = {o["name"]: o["data"] for o in json.loads(response.read())["outputs"]}
    assert list(outputs) == list(contract.POSTPROCESS_OUTPUTS)  # nothing passed through for nothing
    assert outputs[contract.ENSEMBLE_GENDER] == ["", contract.FEMALE, contract.MALE, "", ""]

    def nan(value) -> bool:
        return value is None or math.isnan(value)  # Triton 2.51 writes NaN as a bare token or null

    female = outputs[contract.ENSEMBLE_FEMALE]
    assert nan(female[0]) and female[1:3] == pytest.approx([0.7, 0.2]) and all(map(nan, female[3:]))
    # No usable face: every estimate blanked, not only the gender.
    sent = {contract.ENSEMBLE_AGE: 30.0, contract.ENSEMBLE_AGE_LOW: 24.0, contract.ENSEMBLE_AGE_HIGH: 37.0}
    for name, value in sent.items():
        assert outputs[name][:3] == pytest.approx([value] * 3) and all(map(nan, outputs[name][3:]))


def test_gender_threshold_is_female_at_one_half_and_above():
    # Documented as "female at 0.5 and above" (common/contract.py, docs/models-log.md): 0.5 itself is female.
    assert contract.GENDER_THRESHOLD == 0.5
    assert contract.gender_label(0.5) == contract.FEMALE == "female"
    assert contract.gender_label(0.4999) == contract.MALE == "male"
    assert (contract.gender_label(0.0), contract.gender_label(1.0)) == ("male", "female")
    # Elementwise on float32, as the postprocess model gets the CNN's output: the float just below 0.5 is male.
    below = np.nextafter(np.float32(0.5), np.float32(0.0))
    assert contract.is_female(np.array([below, 0.5, 0.5001], np.float32)).tolist() == [False, True, True]

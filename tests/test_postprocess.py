"""The postprocess model called directly (issue 18, item 6): a NaN gender probability never becomes a gender."""

from __future__ import annotations

import json
import math
import shutil
import urllib.request
from pathlib import Path

import pytest

from common import contract
from serving.runtime.launch import TritonServer, free_port

ROOT = Path(__file__).resolve().parents[1]


def tensor(name: str, datatype: str, data: list, width: int = 1) -> dict:
    return {"name": name, "datatype": datatype, "shape": [len(data) // width, width], "data": data}


@pytest.mark.integration
def test_nan_probability_gives_no_gender_and_stays_nan(tmp_path):
    shutil.copytree(ROOT / "model_repository" / "postprocess", tmp_path / "postprocess")
    # Triton alone (no door): "called directly", as a caller on Triton's own ports would.
    server = TritonServer(
        tmp_path, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), front_door=False
    )
    probabilities = [float("nan"), 0.7, 0.2]  # NaN, female, male; the same face otherwise
    body = {
        "inputs": [
            tensor(contract.ENSEMBLE_AGE, "FP32", [30.0] * 3),
            tensor(contract.ENSEMBLE_AGE_LOW, "FP32", [24.0] * 3),
            tensor(contract.ENSEMBLE_AGE_HIGH, "FP32", [37.0] * 3),
            tensor(contract.ENSEMBLE_FEMALE, "FP32", probabilities),
            tensor(contract.ENSEMBLE_BOX, "FP32", [0, 0, 1, 1] * 3, width=4),
            tensor(contract.ENSEMBLE_SCORE, "FP32", [0.9] * 3),
            tensor(contract.ENSEMBLE_FOUND, "BOOL", [True] * 3),
            tensor(contract.ENSEMBLE_ERROR, "BYTES", [""] * 3),
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
    assert outputs[contract.ENSEMBLE_GENDER] == ["", contract.FEMALE, contract.MALE]
    female = outputs[contract.ENSEMBLE_FEMALE]
    assert (female[0] is None or math.isnan(female[0])) and female[1:] == pytest.approx([0.7, 0.2])

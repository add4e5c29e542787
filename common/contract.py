"""The serving contract in one place: Triton model names and their tensor names.

Model input/output names of the CNNs come from :mod:`common.spec` (the SavedModel signature is built
from them); this module adds what Triton serves around them. Configs in ``model_repository/`` must
agree (``tests/test_configs.py``); clients, load tests and benchmarks import from here.
"""

from __future__ import annotations

from common import spec

#: The two CNNs, served directly by Triton (uint8 crops in, one float out).
AGE_MODEL = "age"
GENDER_MODEL = "gender"
TASK_MODELS = (AGE_MODEL, GENDER_MODEL)
#: Input tensor of the CNNs (``(batch, IMAGE_SIZE, IMAGE_SIZE, 3)`` uint8) and of the ensembles (encoded bytes).
IMAGE_INPUT = spec.INPUT_NAME
#: Each CNN's output tensor.
TASK_OUTPUTS = {AGE_MODEL: spec.AGE_OUTPUT, GENDER_MODEL: spec.GENDER_OUTPUT}

#: Ensembles: a photo (detection, alignment, crop) and an already aligned face crop.
DETECT_ENSEMBLE = "age_gender"
CROP_ENSEMBLE = "age_gender_crop"
#: Outputs of both ensembles, one row per image.
ENSEMBLE_OUTPUTS = ("age", "female_probability", "gender", "box", "detection_score", "face_found", "error")

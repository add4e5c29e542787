"""The serving contract in one place: Triton model names and their tensor names.

Model input/output names of the CNNs come from :mod:`common.spec` (the SavedModel signature is built
from them); this module adds what Triton serves around them. Configs in ``model_repository/`` must
agree (``tests/test_configs.py``); the models, clients, load tests, benchmarks and tests import from here
instead of spelling the strings out.
"""

from __future__ import annotations

from common import spec

#: The two CNNs, served directly by Triton (uint8 crops in; age: the estimate and its 80% interval, gender: one
#: probability out).
AGE_MODEL = "age"
GENDER_MODEL = "gender"
TASK_MODELS = (AGE_MODEL, GENDER_MODEL)
#: Input of the ensembles and of the preprocess models: one encoded image file (BYTES) per batch item.
IMAGE_INPUT = spec.INPUT_NAME
#: Input of the CNNs: ``(batch, size, size, 3)`` uint8 face crops, size ``spec.image_size(task)`` (the SavedModel
#: signature's name).
#: The same string as IMAGE_INPUT today; kept apart so that each caller says which tensor it fills.
CROP_INPUT = spec.INPUT_NAME
#: Each CNN's estimate: age in years, probability of female.
AGE_OUTPUT = spec.AGE_OUTPUT
GENDER_OUTPUT = spec.GENDER_OUTPUT
TASK_OUTPUTS = {AGE_MODEL: AGE_OUTPUT, GENDER_MODEL: GENDER_OUTPUT}
#: The age model's 80% interval (10th and 90th percentile of its age distribution, ``spec.AGE_INTERVAL``), in
#: years; NaN from an age model without a distributional head.
AGE_LOW_OUTPUT = spec.AGE_LOW_OUTPUT
AGE_HIGH_OUTPUT = spec.AGE_HIGH_OUTPUT
#: Every output of each CNN, in config order (what a caller wanting all of a model's answer asks for).
TASK_MODEL_OUTPUTS = {AGE_MODEL: (AGE_OUTPUT, AGE_LOW_OUTPUT, AGE_HIGH_OUTPUT), GENDER_MODEL: (GENDER_OUTPUT,)}

#: Ensembles: a photo (detection, alignment, crop) and an already aligned face crop.
DETECT_ENSEMBLE = "age_gender"
CROP_ENSEMBLE = "age_gender_crop"
#: Outputs of both ensembles, one row per image (the postprocess model's too).
ENSEMBLE_AGE = AGE_OUTPUT  # FP32 [1], years; NaN where no usable face
# FP32 [1], years: the 10th / 90th percentile; NaN where no usable face or the age model gives no interval.
ENSEMBLE_AGE_LOW = AGE_LOW_OUTPUT
ENSEMBLE_AGE_HIGH = AGE_HIGH_OUTPUT
ENSEMBLE_FEMALE = GENDER_OUTPUT  # FP32 [1]; NaN where no usable face
ENSEMBLE_GENDER = "gender"  # STRING [1]: "female" / "male", "" where no usable face
ENSEMBLE_BOX = "box"  # FP32 [4]: x0, y0, x1, y1 in the original image's pixels
ENSEMBLE_SCORE = "detection_score"  # FP32 [1]; NaN where no face was scored (none found, no detector ran)
ENSEMBLE_FOUND = "face_found"  # BOOL [1]
ENSEMBLE_ERROR = "error"  # STRING [1]: empty, or why the item could not be processed
ENSEMBLE_OUTPUTS = (
    ENSEMBLE_AGE,
    ENSEMBLE_AGE_LOW,
    ENSEMBLE_AGE_HIGH,
    ENSEMBLE_FEMALE,
    ENSEMBLE_GENDER,
    ENSEMBLE_BOX,
    ENSEMBLE_SCORE,
    ENSEMBLE_FOUND,
    ENSEMBLE_ERROR,
)
#: The outputs a caller that wants only the estimate asks for (no box or detection score): the load tests.
#: The age interval is part of the estimate (8 bytes an image), so load tests fetch what the client shows.
ESTIMATE_OUTPUTS = (
    ENSEMBLE_AGE,
    ENSEMBLE_AGE_LOW,
    ENSEMBLE_AGE_HIGH,
    ENSEMBLE_FEMALE,
    ENSEMBLE_GENDER,
    ENSEMBLE_FOUND,
    ENSEMBLE_ERROR,
)

#: The ensembles' first step: decode (and detect, in ``preprocess``), align, crop. One model.py serves both.
PREPROCESS_MODEL = "preprocess"
PREPROCESS_CROP_MODEL = "preprocess_crop"
#: The face as each CNN reads it, UINT8 [size, size, 3] with size ``spec.image_size(task)``: one crop per model,
#: since the two models may take different sizes.
PREPROCESS_FACES = {AGE_MODEL: "age_face", GENDER_MODEL: "gender_face"}
# In this order: the preprocess model fills them from one tuple per item.
PREPROCESS_OUTPUTS = (*PREPROCESS_FACES.values(), ENSEMBLE_BOX, ENSEMBLE_SCORE, ENSEMBLE_FOUND, ENSEMBLE_ERROR)
#: The ensembles' last step: labels gender and blanks the estimates where no usable face was found. It reads only
#: what it needs: box and detection score go from preprocessing to the ensemble's outputs directly, and found and
#: error are read, not passed on (each tensor through a Python stub is a copy each way).
POSTPROCESS_MODEL = "postprocess"
#: Its inputs, by the ensemble outputs' names: the CNNs' numbers and the two that say whether they mean anything.
POSTPROCESS_ESTIMATES = (ENSEMBLE_AGE, ENSEMBLE_AGE_LOW, ENSEMBLE_AGE_HIGH, ENSEMBLE_FEMALE)
POSTPROCESS_INPUTS = (*POSTPROCESS_ESTIMATES, ENSEMBLE_FOUND, ENSEMBLE_ERROR)
POSTPROCESS_OUTPUTS = (*POSTPROCESS_ESTIMATES, ENSEMBLE_GENDER)

#: The BLS model that returns every face of one image.
FACES_MODEL = "faces"
#: Most faces one picture returns (the ``faces`` model's output bound); the most prominent are kept.
MAX_FACES = 32
#: Input: one encoded image (TYPE_STRING, dims [1]; the model has no batch dimension), named like the ensembles'.
FACES_INPUT = IMAGE_INPUT
#: Outputs, N = faces found (0..MAX_FACES), most prominent first: the ensembles' names, one row per face.
FACES_BOX = ENSEMBLE_BOX  # FP32 [N, 4]: x0, y0, x1, y1 in the original image's pixels
FACES_SCORE = ENSEMBLE_SCORE  # FP32 [N]
FACES_AGE = ENSEMBLE_AGE  # FP32 [N], years
FACES_AGE_LOW = ENSEMBLE_AGE_LOW  # FP32 [N], years: 10th percentile; NaN where the age model gives no interval
FACES_AGE_HIGH = ENSEMBLE_AGE_HIGH  # FP32 [N], years: 90th percentile; NaN likewise
FACES_FEMALE = ENSEMBLE_FEMALE  # FP32 [N]
FACES_GENDER = ENSEMBLE_GENDER  # STRING [N]: "female" / "male"; "" for a face too small to estimate
FACES_ERROR = ENSEMBLE_ERROR  # STRING [1]: empty, or why the image could not be processed (then N = 0)
#: BOOL [1]: whether the picture holds more faces than came back (N = MAX_FACES, the least prominent left out).
FACES_MORE = "more_faces"
FACES_OUTPUTS = (
    FACES_BOX,
    FACES_SCORE,
    FACES_AGE,
    FACES_AGE_LOW,
    FACES_AGE_HIGH,
    FACES_FEMALE,
    FACES_GENDER,
    FACES_ERROR,
    FACES_MORE,
)

#: The models callers may reach from the public ports; the rest (CNNs, pre/postprocess) are steps inside these.
#: The gate (serving/runtime/gate.py) refuses every other name, over gRPC and HTTP alike.
PUBLIC_MODELS = (DETECT_ENSEMBLE, CROP_ENSEMBLE, FACES_MODEL)

#: What the front door answers (HTTP 503, gRPC UNAVAILABLE, both retryable) while the server stops, and while the
#: launcher restarts a crashed Triton (serving/runtime/door.py); the client tells the two from "cannot reach"
#: (client/errors.py), and the web page says which (gradio_frontend/backend.py).
SHUTTING_DOWN = "server is shutting down"
RESTARTING = "Triton is restarting after a crash; retry in a few seconds"
#: ... and what the gate answers (HTTP 503, gRPC UNAVAILABLE) when it already holds all the request bytes it may
#: (serving/runtime/gate_relay.py, Budget): the server is up and busy, not unreachable.
BUSY = "the server is receiving as many request bytes as it holds at once"

#: At or above this probability of female the label is "female". Decided only by the functions below, which the
#: postprocess and faces models, the client, training and evaluation call.
GENDER_THRESHOLD = 0.5
FEMALE = "female"
MALE = "male"


def is_female(female_probability):
    """The gender decision, for one probability or elementwise for a numpy array of them."""
    return female_probability >= GENDER_THRESHOLD


def gender_label(female_probability: float) -> str:
    """``"female"`` or ``"male"`` for one probability of female (not NaN: callers check for a missing face)."""
    return FEMALE if is_female(female_probability) else MALE

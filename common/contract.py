"""Names on the wire for the multi-face endpoint: one home for the serving contract of ``faces``.

The Triton model config (``model_repository/faces/config.pbtxt``), the model itself, the client, the load
tests and the tests import these instead of spelling the strings out (review note 1). The single-face
ensembles' names still live where they were; move them here when those files are next touched.
"""

from __future__ import annotations

#: The BLS model that returns every face of one image.
FACES_MODEL = "faces"
#: Models it calls for each batch of face crops (the same ones the ``age_gender`` ensemble uses).
AGE_MODEL = "age"
GENDER_MODEL = "gender"

#: Input: one encoded image (TYPE_STRING, dims [1]; the model has no batch dimension).
FACES_INPUT = "image"
#: Outputs, N = faces found (0..MAX_FACES), most prominent first.
FACES_BOX = "box"  # FP32 [N, 4]: x0, y0, x1, y1 in the original image's pixels
FACES_SCORE = "detection_score"  # FP32 [N]
FACES_AGE = "age"  # FP32 [N], years
FACES_FEMALE = "female_probability"  # FP32 [N]
FACES_GENDER = "gender"  # STRING [N]: "female" / "male"
FACES_ERROR = "error"  # STRING [1]: empty, or why the image could not be processed (then N = 0)
FACES_OUTPUTS = (FACES_BOX, FACES_SCORE, FACES_AGE, FACES_FEMALE, FACES_GENDER, FACES_ERROR)

#: Face-crop tensor of the age/gender models, and their outputs.
CROP_INPUT = "image"
AGE_OUTPUT = "age"
GENDER_OUTPUT = "female_probability"

#: At or above this probability of female the label is "female" (as in the postprocess model).
GENDER_THRESHOLD = 0.5

"""The one definition of the model input: size, colour order and resize method.

Training caches faces through :func:`to_model_input` and the serving preprocessor
calls the same function, so a face seen in production is resized exactly as the
faces the models learned from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# numpy and PIL are imported where they are used (PEP 562 below for the two constants that are their objects):
# the launcher, the door and the gate read names from here and from common.contract, and a scale-from-zero start
# waits for the launcher's imports before Triton is spawned.

#: Side of the square face crop each CNN takes, in pixels, by task. The two may differ: each model learned from
#: UTKFace's 200x200 faces resized straight to its own size (docs/models.md compares the sizes).
IMAGE_SIZES = {"age": 96, "gender": 64}
#: Channel order of the model input (PIL's native order; no BGR anywhere).
CHANNEL_ORDER = "RGB"
#: ``RESIZE_METHOD``: the resize filter, PIL's bilinear (it antialiases when it shrinks, which matters at
#: 200 -> 64). ``INPUT_DTYPE``: the model input dtype, numpy's uint8 (raw 0-255 pixels; the models rescale inside).


def __getattr__(name: str) -> Any:
    if name == "RESIZE_METHOD":
        from PIL import Image

        return Image.Resampling.BILINEAR
    if name == "INPUT_DTYPE":
        import numpy as np

        return np.uint8
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: SavedModel signature and Triton tensor names, fixed so configs can rely on them.
INPUT_NAME = "image"
AGE_OUTPUT = "age"
#: The age model's 10th and 90th percentile of its age distribution, in years: an 80% interval around ``age``.
#: NaN from a model without a distributional head (a plain regressor has no interval to give).
AGE_LOW_OUTPUT = "age_low"
AGE_HIGH_OUTPUT = "age_high"
#: The quantiles those two outputs report.
AGE_INTERVAL = (0.1, 0.9)
#: The share of true ages a calibrated interval covers: what temperatures and interval calibration aim at.
NOMINAL_COVERAGE = round(AGE_INTERVAL[1] - AGE_INTERVAL[0], 6)
GENDER_OUTPUT = "female_probability"


def image_size(task: str) -> int:
    """The input side of the ``age`` or ``gender`` model."""
    return IMAGE_SIZES[task]


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """Converts a face crop into one model input.

    Args:
        image: A face crop in any PIL mode, ideally framed like UTKFace's aligned crops.
        size: The model's input side, :func:`image_size` (or a candidate size compared in training).

    Returns:
        A ``(size, size, 3)`` uint8 array in RGB order.
    """
    import numpy as np

    if image.mode != CHANNEL_ORDER:
        image = image.convert(CHANNEL_ORDER)
    if image.size != (size, size):
        image = image.resize((size, size), __getattr__("RESIZE_METHOD"))
    return np.asarray(image, dtype=__getattr__("INPUT_DTYPE"))


def model_inputs(image: Image.Image) -> dict[str, np.ndarray]:
    """One face crop as each model's input, by task; a size both models share is resized once."""
    if image.mode != CHANNEL_ORDER:
        image = image.convert(CHANNEL_ORDER)
    by_size = {size: to_model_input(image, size) for size in set(IMAGE_SIZES.values())}
    return {task: by_size[size] for task, size in IMAGE_SIZES.items()}

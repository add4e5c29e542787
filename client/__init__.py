"""Client for the age and gender estimation served by Triton (``age_gender`` ensembles).

Only numpy, pillow and tritonclient are needed: the client never imports TensorFlow.

Example:
    >>> from client import AgeGenderClient
    >>> with AgeGenderClient() as client:
    ...     print(client.predict("photo.jpg").to_dict())
"""

from client.api import CROP_MODEL, DETECT_MODEL, AgeGenderClient, ImageInput, default_url, encode_image
from client.errors import (
    AgeGenderError,
    InferenceTimeoutError,
    InvalidImageError,
    ModelNotReadyError,
    RequestTooLargeError,
    ServerError,
    ServerUnavailableError,
)
from client.results import RESULT_KEYS, DetectedFace, FaceResult, FacesResult, Health

__all__ = [
    "CROP_MODEL",
    "DETECT_MODEL",
    "RESULT_KEYS",
    "AgeGenderClient",
    "AgeGenderError",
    "DetectedFace",
    "FaceResult",
    "FacesResult",
    "Health",
    "ImageInput",
    "InferenceTimeoutError",
    "InvalidImageError",
    "ModelNotReadyError",
    "RequestTooLargeError",
    "ServerError",
    "ServerUnavailableError",
    "default_url",
    "encode_image",
]

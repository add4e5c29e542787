"""Client for the age and gender estimation served by Triton (``age_gender`` ensembles).

Only numpy, pillow and tritonclient are needed: the client never imports TensorFlow. Layout, as in
pytriton's client: :mod:`client.client` (the class callers use), :mod:`client.errors` (exceptions),
:mod:`client.utils` (addresses, encoding, backoff, protocol probe), :mod:`client.transports` (gRPC, HTTP),
:mod:`client.outputs` / :mod:`client.faces` (tensors to results), :mod:`client.results` (the result types).

Example:
    >>> from client import AgeGenderClient
    >>> with AgeGenderClient() as client:
    ...     print(client.predict("photo.jpg").to_dict())
"""

import sys

try:
    from client.client import AgeGenderClient
    from client.utils import ImageInput, default_url, encode_image
except ModuleNotFoundError as exc:
    # `python -m client` from a shell whose python lacks the project's packages (sys.argv[0] is "-m" while
    # the package is imported): one line that says what to run instead of a traceback.
    if sys.argv[:1] == ["-m"] and exc.name in ("numpy", "PIL", "tritonclient", "grpc", "gevent", "geventhttpclient"):
        print(
            f"{sys.executable} has no {exc.name!r} module: run `.venv/bin/agegender IMAGE ...` "
            "(after `make setup`) instead of `python -m client`",
            file=sys.stderr,
        )
        raise SystemExit(2) from None  # the CLI's "cannot run at all" code
    raise
from client.errors import (
    AgeGenderError,
    InferenceTimeoutError,
    InvalidImageError,
    ModelNotReadyError,
    ProtocolMismatchError,
    RateLimitedError,
    RequestTooLargeError,
    ServerError,
    ServerUnavailableError,
    UnknownModelError,
)
from client.results import RESULT_KEYS, DetectedFace, FaceResult, FacesResult, Health

__all__ = [
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
    "ProtocolMismatchError",
    "RateLimitedError",
    "RequestTooLargeError",
    "ServerError",
    "ServerUnavailableError",
    "UnknownModelError",
    "default_url",
    "encode_image",
]

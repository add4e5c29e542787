"""The client's exception hierarchy and the translation of transport errors into it.

Callers catch :class:`AgeGenderError` (or one subclass) and never need to know whether gRPC, HTTP or
tritonclient raised the original error; the original stays available as ``__cause__``.
"""

from __future__ import annotations

import socket

from tritonclient.utils import InferenceServerException

from common import contract


class AgeGenderError(Exception):
    """Base class of every error the client raises."""

    #: Whether retrying the same request later may succeed (the server is starting or overloaded).
    retryable: bool = False


class ServerUnavailableError(AgeGenderError):
    """Triton cannot be reached (nothing listens, connection refused or reset, server shutting down).

    ``restarting``: the front door says the launcher is restarting a crashed Triton (back in seconds); ``busy``: the
    server's gate holds all the request bytes it may at once (back in a moment)."""

    retryable = True

    def __init__(self, message: str, *, restarting: bool = False, busy: bool = False):
        super().__init__(message)
        self.restarting = restarting
        self.busy = busy


class ModelNotReadyError(AgeGenderError):
    """Triton answers but the requested ensemble is not loaded or not ready yet."""

    retryable = True


class RateLimitedError(AgeGenderError):
    """The server's front door refused the request for this caller's rate or concurrency (HTTP 429); it asks for a
    pause of :data:`RETRY_AFTER_S` before the next try."""

    retryable = True


#: What the front door's 429 asks for (its ``Retry-After`` header, serving/runtime/door.py).
RETRY_AFTER_S = 1.0


class UnknownModelError(AgeGenderError):
    """The server does not serve the requested model at all (a wrong model name): retrying cannot help.

    The server's gate refuses any model that is not public (serving/runtime/gate_check.py), loaded or not; Triton's
    own "unknown model" while it is still loading stays a :class:`ModelNotReadyError`.
    """


class InferenceTimeoutError(AgeGenderError):
    """The request did not complete within the client's timeout."""


class InvalidImageError(AgeGenderError):
    """The image cannot be used: missing or unreadable file, empty bytes, or the server cannot decode it."""


class RequestTooLargeError(AgeGenderError):
    """The request exceeds a server limit (message size or the model's maximum batch size)."""


class ServerError(AgeGenderError):
    """Triton failed or rejected the request for a reason the client cannot fix by retrying."""


class ProtocolMismatchError(AgeGenderError):
    """The address answers the other protocol: an HTTP port called over gRPC, or the reverse."""


_MODEL_MISSING_HINTS = ("unknown model", "not ready", "no available versions", "is not found", "not found")
#: The gate's and the door's refusal of a model that is not public (serving/runtime/gate_check.py, door.NOT_PUBLIC);
#: it answers the same whether Triton has loaded anything yet, so it never means "still starting".
_NOT_PUBLIC_HINT = "not a public model"


def unavailable_message(url: str, protocol: str, detail: str) -> str:
    """Builds the message of a :class:`ServerUnavailableError`, with the fix a user most often needs."""
    return (
        f"cannot reach Triton at {url} over {protocol} ({detail}); "
        "is tritonserver running? try `make serve`, or pass --url / set TRITON_URL"
    )


def translate(exc: BaseException, *, url: str, protocol: str, model: str | None = None) -> AgeGenderError:
    """Maps an exception raised by tritonclient, gRPC or the HTTP stack onto the client's hierarchy.

    Args:
        exc: The original exception.
        url: The server address, quoted in messages so the user sees which server failed.
        protocol: ``"grpc"`` or ``"http"``.
        model: The model the request was for, if any.

    Returns:
        The matching :class:`AgeGenderError`; the caller raises it ``from exc``.
    """
    if isinstance(exc, AgeGenderError):
        return exc
    if isinstance(exc, InferenceServerException):
        return _translate_triton(exc, url=url, protocol=protocol, model=model)
    # geventhttpclient raises socket-level errors directly; check timeouts before OSError since
    # TimeoutError is an OSError.
    if isinstance(exc, TimeoutError | socket.timeout) or type(exc).__name__ == "Timeout":
        return InferenceTimeoutError(
            f"request to {url} over {protocol} timed out ({exc}); raise the client timeout (timeout= or --timeout)"
        )
    if isinstance(exc, OSError | EOFError):
        return ServerUnavailableError(unavailable_message(url, protocol, f"{type(exc).__name__}: {exc}"))
    return ServerError(f"unexpected error talking to Triton at {url} over {protocol}: {type(exc).__name__}: {exc}")


def _translate_triton(exc: InferenceServerException, *, url: str, protocol: str, model: str | None) -> AgeGenderError:
    status = (exc.status() or "").removeprefix("StatusCode.")
    message = exc.message() or str(exc)
    lowered = message.lower()
    where = f"model {model!r} on {url}" if model else url

    if status in ("DEADLINE_EXCEEDED", "408", "504") or "deadline exceeded" in lowered:
        # The server's own deadlines, which a longer client timeout would not change: the door's 504 (no answer in
        # time) and the gate's 408 (the upload itself too slow).
        if "no answer within" in lowered or status == "408":
            return InferenceTimeoutError(f"{where} gave up on the request: {message}")
        return InferenceTimeoutError(
            f"{where} did not answer in time ({message}); raise the client timeout (timeout= or --timeout)"
        )
    # The door's per-address limits (429 over HTTP, RESOURCE_EXHAUSTED with its message over gRPC): a pause helps,
    # sending fewer images does not.
    if status == "429" or (status == "RESOURCE_EXHAUSTED" and "too many requests" in lowered):
        return RateLimitedError(f"{where} is limiting requests from this address: {message}")
    if status == "RESOURCE_EXHAUSTED" or status == "413" or "batch-size must be" in lowered:
        advice = "" if "fewer or smaller images" in lowered else "; send fewer or smaller images"  # the door says it
        return RequestTooLargeError(f"request rejected by {where}: {message}{advice}")
    if status in ("NOT_FOUND", "404") and _NOT_PUBLIC_HINT in lowered:
        return UnknownModelError(f"{where} is not served ({message}); check the model name")
    model_missing = "model" in lowered and any(hint in lowered for hint in _MODEL_MISSING_HINTS)
    # 502: the front door (nginx) lost Triton mid-request, e.g. a crash the launcher is restarting it from.
    if status in ("UNAVAILABLE", "503", "502"):
        if model_missing:
            return ModelNotReadyError(
                f"{where} is not ready ({message}); wait for the server to finish loading or check its log"
            )
        restarting = contract.RESTARTING.lower() in lowered
        busy = contract.BUSY in lowered
        if restarting or busy or contract.SHUTTING_DOWN in lowered:
            # The door or the gate answered for a server that is there but not serving now: "cannot reach" would send
            # the user looking for a server that is not running.
            now = "is busy" if busy else "is not serving right now"
            return ServerUnavailableError(f"{where} {now}: {message}", restarting=restarting, busy=busy)
        return ServerUnavailableError(unavailable_message(url, protocol, message))
    if status in ("NOT_FOUND", "404") or (status in ("INVALID_ARGUMENT", "400") and model_missing):
        return ModelNotReadyError(
            f"{where} is not available ({message}); check that the model repository holds it and it loaded"
        )
    if status in ("INVALID_ARGUMENT", "400"):
        return ServerError(f"{where} rejected the request: {message}")
    if status in ("CANCELLED", "499"):
        return ServerUnavailableError(unavailable_message(url, protocol, f"request cancelled: {message}"))
    if not status and ("connection refused" in lowered or "failed to connect" in lowered):
        return ServerUnavailableError(unavailable_message(url, protocol, message))
    return ServerError(f"{where} failed [{status or 'no status'}]: {message}")

"""The UI's connection to Triton (:class:`TritonBackend`), and what the page says when a request to it fails."""

from __future__ import annotations

import threading
from typing import Any

from PIL import Image

from client import AgeGenderClient, AgeGenderError, FaceResult, FacesResult, InvalidImageError, ServerUnavailableError
from client.errors import InferenceTimeoutError, ModelNotReadyError, RateLimitedError
from gradio_frontend.settings import DEFAULT_TIMEOUT_S


class TritonBackend:
    """The UI's one :class:`AgeGenderClient`, created on first use so the UI can start before Triton does.

    Gradio's worker threads share it: the client is thread-safe (one gRPC channel, or over HTTP at most 32 lane
    threads with a client each) and reconnects quickly after an outage. Its retries with backoff carry a click
    across a restart of Triton by the launcher (ready again within its cold start, a few seconds).
    """

    #: Attempts after the first while the server is unavailable: backoff 0.5 + 1 + 2 + 4 s covers a restart.
    RETRIES = 4

    def __init__(self, url: str, protocol: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.url = url
        self.protocol = protocol
        self.timeout = timeout
        self._lock = threading.Lock()
        self._shared: AgeGenderClient | None = None

    def client(self) -> AgeGenderClient:
        with self._lock:
            if self._shared is None:
                self._shared = AgeGenderClient(
                    self.url, protocol=self.protocol, timeout=self.timeout, retries=self.RETRIES
                )
            return self._shared

    def close(self) -> None:
        with self._lock:
            client, self._shared = self._shared, None
        if client is not None:
            client.close()

    def predict(self, image: str | bytes | Image.Image, *, detect: bool) -> FaceResult:
        return self.client().predict(image, detect=detect)

    def predict_faces(self, image: str | bytes | Image.Image) -> FacesResult:
        """Every face (the ``faces`` model); a refused image comes back as ``error``."""
        return self.client().predict_faces_result(image)

    def health_markdown(self) -> str:
        where = f"`{self.url}` ({self.protocol})"
        try:
            health = self.client().health()  # never retries: the status line shows what is true now
        except AgeGenderError as err:
            return f"Triton at {where}: **unreachable** ({for_the_page(str(err))})"
        if getattr(health, "ok", False):
            return f"Triton at {where}: **ready**"
        if getattr(health, "live", False):
            return f"Triton at {where}: **starting**, models still loading"
        error = getattr(health, "error", None)
        return f"Triton at {where}: **unreachable**" + (f" ({for_the_page(error)})" if error else "")


def error_json(kind: str, message: str) -> dict[str, Any]:
    """The raw JSON the page shows for a photo it has no answer for."""
    return {"error": message, "error_kind": kind}


def for_the_page(message: str) -> str:
    """The client's advice in the page's terms: the CLI's --url is the page's --triton-url (set where it starts)."""
    return message.replace("pass --url / set TRITON_URL", "start this page with --triton-url / TRITON_URL")


def request_failed(backend: TritonBackend, err: AgeGenderError) -> tuple[str, dict[str, Any]]:
    """The status markdown and raw JSON for a request the client could not complete."""
    where = f"`{backend.url}` ({backend.protocol})"
    if isinstance(err, InvalidImageError):
        return f"**The image was rejected**: {err}", error_json("invalid_image", str(err))
    if isinstance(err, ModelNotReadyError):
        message = (
            f"**Triton is starting**: it answers at {where} but the models are not ready yet. "
            "Try again in a few seconds."
        )
        return message, error_json("model_not_ready", str(err))
    if isinstance(err, ServerUnavailableError):
        message = (
            f"**Triton server is unreachable** at {where}: it is down or still starting. "
            "This page keeps working; press *Estimate* again once the server is up."
        )
        if err.restarting:  # the door says so while the launcher restarts Triton
            message = (
                f"**Triton is restarting** at {where} after a crash. "
                "This page keeps working; press *Estimate* again in a few seconds."
            )
        elif err.busy:  # the gate holds all the uploads it may at once
            message = (
                f"**Triton is busy** at {where}: it is receiving as many uploads as it holds at once. "
                "This page keeps working; press *Estimate* again in a moment."
            )
        return message, error_json("server_unavailable", for_the_page(str(err)))
    if isinstance(err, InferenceTimeoutError):
        message = f"**Triton did not answer in time** ({backend.timeout:g} s) at {where}. It may be overloaded."
        return message, error_json("timeout", str(err))
    if isinstance(err, RateLimitedError):
        message = f"**Too many requests** from this address at {where}. Wait a moment and press *Estimate* again."
        return message, error_json("rate_limited", str(err))
    return f"**The request failed**: {err}", error_json(type(err).__name__, str(err))

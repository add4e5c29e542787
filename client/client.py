"""The client callers use: :class:`AgeGenderClient`, over gRPC or HTTP, with retries and per-item errors.

Thread safety: one :class:`AgeGenderClient` may be shared by any number of threads (how each protocol manages
that: :mod:`client.transports`). Encoding and addresses: :mod:`client.utils`; errors: :mod:`client.errors`.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

import numpy as np

from client.errors import (
    RETRY_AFTER_S,
    AgeGenderError,
    InferenceTimeoutError,
    InvalidImageError,
    ModelNotReadyError,
    ProtocolMismatchError,
    RateLimitedError,
    RequestTooLargeError,
    ServerError,
    ServerUnavailableError,
    translate,
    unavailable_message,
)
from client.faces import parse_faces
from client.outputs import parse_outputs
from client.results import DetectedFace, FaceResult, FacesResult, Health
from client.transports import TRANSPORTS, Transport
from client.utils import (
    MAX_TIMEOUT_S,
    PROTOCOL_LABELS,
    ImageInput,
    ProtocolName,
    backoff_delay,
    default_url,
    encode_image,
    image_name,
    probe_protocol,
    split_scheme,
)
from common import contract
from common.ports import DEFAULT_PORTS

T = TypeVar("T")
#: Longest wait for the one-connection protocol probe made after a failed call.
PROBE_TIMEOUT_S = 2.0


def _looks_down(error: AgeGenderError, cause: BaseException) -> bool:
    """Whether a failed call reads like a server that is down: what a port of the other protocol also gives."""
    return isinstance(error, ServerUnavailableError) or isinstance(cause, http.client.HTTPException)


class AgeGenderClient:
    """Estimates age and gender of the face in images through Triton's ``age_gender`` ensembles.

    Example:
        >>> with AgeGenderClient("localhost:8001") as client:
        ...     result = client.predict("photo.jpg")
        ...     print(result.age, result.gender)

    One instance can be shared by many threads (see the module docstring). Every server call retries with
    exponential backoff while the server is unreachable or the model is still loading, and never retries a
    request the server rejected, nor one for a model it does not serve.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        protocol: ProtocolName | None = None,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_batch: int = 8,
        concurrency: int = 4,
        ssl: bool = False,
        root_certificates: str | None = None,
        model: str = contract.DETECT_ENSEMBLE,
        crop_model: str = contract.CROP_ENSEMBLE,
        faces_model: str = contract.FACES_MODEL,
        image_format: Literal["PNG", "JPEG"] = "PNG",
    ) -> None:
        """Creates the client; no connection is made until the first call.

        Args:
            url: ``host:port`` (a ``grpc://``, ``grpcs://``, ``http://`` or ``https://`` prefix is accepted; the
                port may be left out only after ``grpcs://`` or ``https://``, for 443: ``utils.split_scheme``).
                Defaults to ``$TRITON_URL``, else ``localhost:8001`` for gRPC / ``localhost:8000`` for HTTP (ports from
                ``$TRITON_GRPC_PORT`` / ``$TRITON_HTTP_PORT``).
            protocol: ``"grpc"`` or ``"http"``; defaults to the url's scheme, else gRPC.
            timeout: Seconds one server call may take. HTTP: connect and network timeouts. gRPC: the client stops
                waiting and raises; the deadline sent with the request is only a distant backstop, since Triton
                2.51 can crash when an ensemble request is cancelled (docs/client.md).
            retries: Extra attempts while the server is unavailable or the model not ready; 0 disables retries.
            backoff: First wait between attempts in seconds, doubled after each attempt (capped at 8 s).
            max_batch: Most images per request in :meth:`predict_many`; lowered to the model's maximum.
            concurrency: Requests :meth:`predict_many` keeps in flight at once.
            ssl: Use TLS (implied by an ``https://`` url).
            root_certificates: PEM file of CAs to trust for TLS, instead of the system's.
            model: Ensemble used when ``detect=True``.
            crop_model: Ensemble used when ``detect=False``.
            faces_model: Model used by :meth:`predict_faces`.
            image_format: How PIL images and arrays are encoded before sending.
        """
        if not 0 < timeout <= MAX_TIMEOUT_S:  # NaN fails this too: it timed out at once, and inf did too (gRPC)
            raise ValueError(f"timeout must be a number of seconds from 0 to {MAX_TIMEOUT_S:.0f}, got {timeout}")
        if retries < 0 or backoff < 0 or max_batch < 1 or concurrency < 1:
            raise ValueError("retries and backoff must be >= 0; max_batch and concurrency must be >= 1")
        if url is None:
            url = default_url(protocol or "grpc")
        scheme, address = split_scheme(url)
        if protocol is None:
            protocol = "http" if scheme in ("http", "https") else "grpc"
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.url = address
        self.protocol: ProtocolName = protocol
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.model = model
        self.crop_model = crop_model
        self.faces_model = faces_model
        self.image_format = image_format
        ssl = ssl or scheme in ("https", "grpcs")
        self._ssl = ssl
        self._transport: Transport = TRANSPORTS[protocol](
            address, timeout=timeout, ssl=ssl, root_certificates=root_certificates
        )
        self._batch_limits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AgeGenderClient(url={self.url!r}, protocol={self.protocol!r})"

    def __enter__(self) -> AgeGenderClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Releases connections and worker threads; the client cannot be used afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self._transport.close()

    # -- server calls -------------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], *, model: str | None = None) -> T:
        """Runs one server call, translating errors and retrying the retryable ones with backoff."""
        if self._closed:
            raise AgeGenderError("the client is closed")
        attempt = 0
        while True:
            try:
                return fn()
            except self._transport.errors as exc:
                error = translate(exc, url=self.url, protocol=self.protocol, model=model)
                cause: BaseException = exc
            except AgeGenderError as exc:
                error, cause = exc, exc
            if attempt == 0 and _looks_down(error, cause) and (mismatch := self._protocol_mismatch()):
                raise mismatch from cause
            if not error.retryable or attempt >= self.retries or self._closed:
                if attempt:
                    error.args = (f"{error.args[0]} (after {attempt + 1} attempts)",)
                raise error from cause
            delay = backoff_delay(attempt, self.backoff)
            time.sleep(max(delay, RETRY_AFTER_S) if isinstance(error, RateLimitedError) else delay)
            attempt += 1

    def _protocol_mismatch(self) -> ProtocolMismatchError | None:
        """A :class:`ProtocolMismatchError` when the address speaks the other protocol, else None.

        A gRPC call to an HTTP/1 port fails as "unavailable", and an HTTP call to a gRPC port with a reply that
        is not HTTP/1: both read like a server that is down, while it runs. One cheap probe tells them apart, and
        tells a TLS client that the port speaks plain text.
        """
        answered = probe_protocol(self.url, timeout=min(self.timeout, PROBE_TIMEOUT_S))
        if self._ssl:
            # The probe speaks plain text: a TLS port answers it neither way. One that answers speaks no TLS, and a
            # TLS handshake with it read as "connection refused".
            if answered is None:
                return None
            return ProtocolMismatchError(
                f"{self.url} answers {PROTOCOL_LABELS[answered]} without TLS, and this client asked for TLS: use "
                f"{answered}:// (no 's'), or the address of a TLS endpoint in front of the server"
            )
        if answered is None or answered == self.protocol:
            return None
        return ProtocolMismatchError(
            f"{self.url} answers {PROTOCOL_LABELS[answered]}, not {PROTOCOL_LABELS[self.protocol]}: "
            f"use --protocol {answered} (protocol={answered!r}), or the server's {PROTOCOL_LABELS[self.protocol]} "
            f"port ({DEFAULT_PORTS[self.protocol]} unless it was started on others)"
        )

    def health(self) -> Health:
        """Asks the server whether it and this client's ensembles are ready; never raises, never retries.

        Returns:
            A :class:`Health`; when the server cannot be reached, ``live`` is False and ``error`` says why.
        """
        models = dict.fromkeys((self.model, self.crop_model), False)
        if self._closed:  # the transport would raise ValueError ("closed channel")
            return Health(url=self.url, live=False, ready=False, models=models, error="the client is closed")
        try:
            live = self._transport.live()
        except self._transport.errors as exc:
            error = translate(exc, url=self.url, protocol=self.protocol)
            if _looks_down(error, exc):
                error = self._protocol_mismatch() or error
            return Health(url=self.url, live=False, ready=False, models=models, error=str(error))
        try:
            ready = self._transport.ready()
        except self._transport.errors:
            ready = False
        for name in models:
            try:
                models[name] = self._transport.model_ready(name)
            except self._transport.errors:
                models[name] = False
        return Health(url=self.url, live=live, ready=ready, models=models)

    def wait_until_ready(self, timeout: float = 60.0, *, poll: float = 0.5) -> Health:
        """Blocks until :meth:`health` reports the server live and both ensembles ready.

        Raises:
            ServerUnavailableError: The server did not answer within ``timeout`` seconds.
            ModelNotReadyError: It answered but an ensemble was still not ready.
        """
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health.ok:
                return health
            if not health.live and (mismatch := self._protocol_mismatch()) is not None:
                raise mismatch  # waiting cannot help
            if time.monotonic() >= deadline:
                if not health.live:  # health.error is the whole message already ("cannot reach Triton at ...")
                    raise ServerUnavailableError(health.error or unavailable_message(self.url, self.protocol, "?"))
                missing = ", ".join(name for name, ok in health.models.items() if not ok)
                raise ModelNotReadyError(f"{missing} not ready on {self.url} after {timeout:.0f}s")
            time.sleep(poll)

    def _batch_limit(self, model: str) -> int:
        """Returns how many images one request to ``model`` may carry (asked once, then cached)."""
        limit = self._batch_limits.get(model)
        if limit is None:
            try:
                server_max = self._call(lambda: self._transport.max_batch_size(model), model=model)
            except (RateLimitedError, InferenceTimeoutError):
                return self.max_batch  # for this call: asked again next time, when the answer may come
            except (ServerError, RequestTooLargeError):
                server_max = 0  # config not readable: rely on max_batch and split on rejection.
            limit = min(self.max_batch, server_max) if server_max > 0 else self.max_batch
            self._batch_limits[model] = limit
        return limit

    def _infer(self, model: str, blobs: Sequence[bytes], files: Sequence[str | None]) -> list[FaceResult]:
        batch = np.empty((len(blobs), 1), dtype=np.object_)
        for k, blob in enumerate(blobs):
            batch[k, 0] = blob
        outputs = self._call(
            lambda: self._transport.infer(model, contract.IMAGE_INPUT, batch, contract.ENSEMBLE_OUTPUTS), model=model
        )
        return parse_outputs(outputs, files)

    # -- public API ---------------------------------------------------------------------------------------

    def predict(self, image: ImageInput, *, detect: bool = True) -> FaceResult:
        """Estimates age and gender of the most prominent face in one image.

        Args:
            image: A path, encoded image bytes (sent as is), a PIL image or a uint8 array (encoded here). An array
                is HxW (grey), HxWx1, HxWx3 in RGB order (not OpenCV's BGR: convert with ``img[..., ::-1]``) or
                HxWx4 RGBA. A PIL image's EXIF orientation is applied by the server, once (docs/client.md).
            detect: Find the face first (``age_gender``); False sends the image as an already aligned face
                crop (``age_gender_crop``).

        Returns:
            The :class:`FaceResult`; ``face_found`` is False (and age/gender None) when there is no face. A face
            found but too small in the photo to estimate comes back with its box and score, no numbers, and
            ``error`` saying so (``estimated`` is False).

        Raises:
            InvalidImageError: The image cannot be read here or decoded by the server, or the array is not one of
                the shapes above in uint8.
            ServerUnavailableError, ModelNotReadyError: Still failing after the retries.
            UnknownModelError: The server does not serve the model at all (a wrong ``model=``); never retried.
            InferenceTimeoutError, RequestTooLargeError, ServerError: The request failed.
        """
        file = image_name(image)
        blob = encode_image(image, image_format=self.image_format)
        (result,) = self._infer(self.model if detect else self.crop_model, [blob], [file])
        if result.error is not None and result.estimated:
            raise InvalidImageError(f"{file}: {result.error}" if file else result.error)
        return result

    def predict_faces(self, image: ImageInput) -> list[DetectedFace]:
        """Estimates age and gender of every face in one image (the ``faces`` model), most prominent first.

        Returns:
            One :class:`DetectedFace` per face, at most the server's maximum (32); empty when there is none.

        Raises:
            As :meth:`predict`.
        """
        result = self.predict_faces_result(image)
        if result.error is not None:
            raise InvalidImageError(f"{result.file}: {result.error}" if result.file else result.error)
        return list(result.faces)

    def predict_faces_result(self, image: ImageInput) -> FacesResult:
        """Like :meth:`predict_faces`, but an image the server refuses comes back as ``error``, not raised."""
        file = image_name(image)
        batch = np.array([encode_image(image, image_format=self.image_format)], dtype=np.object_)
        outputs = self._call(
            lambda: self._transport.infer(self.faces_model, contract.FACES_INPUT, batch, contract.FACES_OUTPUTS),
            model=self.faces_model,
        )
        return parse_faces(outputs, file)

    def predict_many(self, images: Iterable[ImageInput], *, detect: bool = True) -> list[FaceResult]:
        """Estimates every image, in batches of up to ``max_batch`` with ``concurrency`` requests in flight.

        A problem with one image (unreadable file, undecodable bytes, server-side ``error``) becomes that
        item's ``error`` and the other images still get their results.

        Args:
            images: Paths, bytes, PIL images or arrays, in any mix.
            detect: As in :meth:`predict`.

        Returns:
            One :class:`FaceResult` per image, in input order.

        Raises:
            ServerUnavailableError, ModelNotReadyError: The server cannot serve at all (after the retries).
            UnknownModelError: The server does not serve the model (a wrong ``model=``/``crop_model=``).
        """
        images = list(images)
        if not images:
            return []
        model = self.model if detect else self.crop_model
        size = self._batch_limit(model)
        chunks = [list(range(start, min(start + size, len(images)))) for start in range(0, len(images), size)]
        results: list[FaceResult | None] = [None] * len(images)

        def run(indices: list[int]) -> None:
            for index, result in self._run_chunk(model, [(i, images[i]) for i in indices]):
                results[index] = result

        if len(chunks) == 1:
            run(chunks[0])
        else:
            futures = [self._pool().submit(run, chunk) for chunk in chunks]
            try:
                for future in futures:
                    future.result()
            finally:
                for future in futures:
                    future.cancel()
        return [r if r is not None else FaceResult.failed("no result") for r in results]

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise AgeGenderError("the client is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="agegender")
            return self._executor

    def _run_chunk(self, model: str, chunk: list[tuple[int, ImageInput]]) -> list[tuple[int, FaceResult]]:
        done: list[tuple[int, FaceResult]] = []
        pending: list[tuple[int, bytes, str | None]] = []
        for index, image in chunk:
            file = image_name(image)
            try:
                pending.append((index, encode_image(image, image_format=self.image_format), file))
            except InvalidImageError as exc:
                # The result carries the path already; don't repeat it in the message.
                message = str(exc).removeprefix(f"{file}: ") if file else str(exc)
                done.append((index, FaceResult.failed(message, file=file)))
        if pending:
            done.extend(self._infer_isolating(model, pending))
        return done

    def _infer_isolating(self, model: str, items: list[tuple[int, bytes, str | None]]) -> list[tuple[int, FaceResult]]:
        """Infers a batch; if the server rejects it as a whole, halves it until the culprit stands alone."""
        try:
            results = self._infer(model, [blob for _, blob, _ in items], [file for _, _, file in items])
        except (InvalidImageError, RequestTooLargeError, ServerError) as exc:
            if len(items) == 1:
                index, _, file = items[0]
                return [(index, FaceResult.failed(str(exc), file=file))]
            half = len(items) // 2
            return self._infer_isolating(model, items[:half]) + self._infer_isolating(model, items[half:])
        except (InferenceTimeoutError, RateLimitedError) as exc:
            # Splitting would multiply the wait (or the requests a rate limit refuses); report it on each image.
            return [(index, FaceResult.failed(str(exc), file=file)) for index, _, file in items]
        return [(index, result) for (index, _, _), result in zip(items, results, strict=True)]

"""One synchronous client for the ``age_gender`` ensembles, over gRPC or HTTP.

Thread safety: one :class:`AgeGenderClient` may be shared by any number of threads. The gRPC transport
shares one channel (gRPC channels are thread-safe and multiplex calls). ``tritonclient.http`` is built on
gevent and its client must not be used from several threads, so the HTTP transport keeps one underlying
client per thread (``threading.local``) and closes them all in :meth:`AgeGenderClient.close`.

Timeouts over gRPC are enforced by the client, not by gRPC deadlines: cancelling an in-flight request
crashes the Triton build this project runs on CPU (see :class:`_GrpcTransport`).
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
from PIL import Image
from tritonclient.utils import InferenceServerException

from client.errors import (
    AgeGenderError,
    InferenceTimeoutError,
    InvalidImageError,
    ModelNotReadyError,
    RequestTooLargeError,
    ServerError,
    ServerUnavailableError,
    translate,
    unavailable_message,
)
from client.faces import parse_faces
from client.results import DetectedFace, FaceResult, FacesResult, Health, finite_or_none
from common import contract, triton_workarounds
from common.contract import FACES_MODEL, FACES_OUTPUTS

log = logging.getLogger(__name__)

ProtocolName = Literal["grpc", "http"]
#: Everything :meth:`AgeGenderClient.predict` accepts as an image.
ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

# The names live in common.contract; these aliases stay public (imported from the client by code and docs).
DETECT_MODEL = contract.DETECT_ENSEMBLE
CROP_MODEL = contract.CROP_ENSEMBLE
INPUT_NAME = contract.IMAGE_INPUT
OUTPUT_NAMES = contract.ENSEMBLE_OUTPUTS

DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
#: Longest single wait between retries; keeps a long retry budget from turning into minute-long sleeps.
MAX_BACKOFF_S = 8.0

#: Deadline sent with gRPC inference requests, far beyond the client's own timeout (see _GrpcTransport.infer).
GRPC_BACKSTOP_MIN_S = triton_workarounds.GRPC_BACKSTOP_MIN_S
GRPC_BACKSTOP_FACTOR = triton_workarounds.GRPC_BACKSTOP_FACTOR
#: Longest wait in close() (and at exit) for requests the client stopped waiting for.
GRPC_DRAIN_S = 30.0

T = TypeVar("T")


def default_url(protocol: ProtocolName) -> str:
    """Returns ``$TRITON_URL``, else localhost on ``$TRITON_GRPC_PORT``/``$TRITON_HTTP_PORT`` (8001/8000)."""
    if env := os.environ.get("TRITON_URL"):
        return env
    if protocol == "grpc":
        return f"localhost:{os.environ.get('TRITON_GRPC_PORT', DEFAULT_GRPC_PORT)}"
    return f"localhost:{os.environ.get('TRITON_HTTP_PORT', DEFAULT_HTTP_PORT)}"


def _split_scheme(url: str) -> tuple[str | None, str]:
    """Splits ``scheme://host:port/...`` into the scheme and ``host:port`` (what tritonclient wants)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None, url.rstrip("/")
    return scheme.lower(), rest.split("/", 1)[0]


class _Transport(Protocol):
    """The few server calls the client needs, implemented once per protocol."""

    #: Exceptions the transport's library raises that :func:`client.errors.translate` understands.
    errors: tuple[type[BaseException], ...]

    def live(self) -> bool: ...

    def ready(self) -> bool: ...

    def model_ready(self, model: str) -> bool: ...

    def max_batch_size(self, model: str) -> int: ...

    def infer(
        self, model: str, batch: np.ndarray, outputs: Sequence[str] = OUTPUT_NAMES
    ) -> dict[str, np.ndarray | None]: ...

    def close(self) -> None: ...


def _grpc_channel_args() -> list[tuple[str, int]]:
    """tritonclient's default channel options, plus a short reconnect backoff.

    After a refused connection gRPC waits up to two minutes before it tries the address again, failing every
    call meanwhile; capping that wait lets our own retries reach a server that has just started.
    """
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class _GrpcTransport:
    """gRPC calls over one shared channel.

    Inference never lets gRPC cancel a request the server is running (why: common/triton_workarounds.py): the
    client stops *waiting* after ``timeout`` but sends only a distant backstop deadline, and :meth:`close` lets
    abandoned requests finish before closing.
    """

    def __init__(self, address: str, *, timeout: float, ssl: bool, root_certificates: str | None) -> None:
        import grpc
        import tritonclient.grpc as grpcclient

        self._mod = grpcclient
        self._timeout = timeout
        self._backstop = max(GRPC_BACKSTOP_MIN_S, GRPC_BACKSTOP_FACTOR * timeout)
        self._submit_lock = threading.Lock()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._client = grpcclient.InferenceServerClient(
            address, ssl=ssl, root_certificates=root_certificates, channel_args=_grpc_channel_args()
        )
        self.errors = (InferenceServerException, grpc.RpcError, OSError)
        _open_grpc_transports.add(self)

    def live(self) -> bool:
        return bool(self._client.is_server_live(client_timeout=self._timeout))

    def ready(self) -> bool:
        return bool(self._client.is_server_ready(client_timeout=self._timeout))

    def model_ready(self, model: str) -> bool:
        return bool(self._client.is_model_ready(model, client_timeout=self._timeout))

    def max_batch_size(self, model: str) -> int:
        config = self._client.get_model_config(model, as_json=True, client_timeout=self._timeout)
        return int(config.get("config", {}).get("max_batch_size", 0))

    def infer(
        self, model: str, batch: np.ndarray, outputs: Sequence[str] = OUTPUT_NAMES
    ) -> dict[str, np.ndarray | None]:
        inp = self._mod.InferInput(INPUT_NAME, list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch)
        requested = [self._mod.InferRequestedOutput(name) for name in outputs]
        done = threading.Event()
        answer: dict[str, Any] = {}

        def callback(result: Any, error: Any) -> None:
            answer["result"], answer["error"] = result, error
            done.set()
            self._finished()

        with self._idle:
            self._in_flight += 1
        try:
            # async_infer keeps the call in an attribute between two statements, so concurrent submissions race.
            with self._submit_lock:
                self._client.async_infer(model, [inp], callback, outputs=requested, client_timeout=self._backstop)
        except BaseException:
            self._finished()
            raise
        if not done.wait(self._timeout):
            raise TimeoutError(f"no answer within {self._timeout:g} s")
        if answer["error"] is not None:
            raise answer["error"]
        result = answer["result"]
        return {name: result.as_numpy(name) for name in outputs}

    def _finished(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for abandoned requests to finish; True when none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight <= 0, timeout=timeout)

    def close(self) -> None:
        if not self.drain(GRPC_DRAIN_S):
            log.warning("closing the gRPC channel with requests still running on the server")
        self._client.close()
        _open_grpc_transports.discard(self)


#: Transports not closed yet; drained at interpreter exit so a forgotten close() cannot cancel requests either.
_open_grpc_transports: weakref.WeakSet[_GrpcTransport] = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    for transport in list(_open_grpc_transports):
        transport.drain(GRPC_DRAIN_S)


class _HttpTransport:
    def __init__(self, address: str, *, timeout: float, ssl: bool, root_certificates: str | None) -> None:
        import gevent
        import tritonclient.http as httpclient

        self._mod = httpclient
        self._address = address
        self._timeout = timeout
        self._ssl = ssl
        self._ssl_options = {"ca_certs": root_certificates} if root_certificates else None
        self._local = threading.local()
        # Weak so a client dies with its thread (threading.local drops it) instead of piling up here.
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.errors = (InferenceServerException, OSError, EOFError, gevent.Timeout)

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._mod.InferenceServerClient(
                self._address,
                connection_timeout=self._timeout,
                network_timeout=self._timeout,
                ssl=self._ssl,
                ssl_options=self._ssl_options,
            )
            self._local.client = client
            with self._lock:
                self._clients.add(client)
        return client

    def live(self) -> bool:
        return bool(self._client().is_server_live())

    def ready(self) -> bool:
        return bool(self._client().is_server_ready())

    def model_ready(self, model: str) -> bool:
        return bool(self._client().is_model_ready(model))

    def max_batch_size(self, model: str) -> int:
        return int(self._client().get_model_config(model).get("max_batch_size", 0))

    def infer(
        self, model: str, batch: np.ndarray, outputs: Sequence[str] = OUTPUT_NAMES
    ) -> dict[str, np.ndarray | None]:
        inp = self._mod.InferInput(INPUT_NAME, list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch, binary_data=True)
        requested = [self._mod.InferRequestedOutput(name, binary_data=True) for name in outputs]
        result = self._client().infer(model, [inp], outputs=requested)
        return {name: result.as_numpy(name) for name in outputs}

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients)
            self._clients.clear()
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a socket owned by another thread's hub may fail; it is
                # going away anyway and close() must not hide the caller's own exception.
                log.debug("closing an HTTP client failed", exc_info=True)


def _image_name(image: ImageInput) -> str | None:
    return os.fspath(image) if isinstance(image, str | os.PathLike) else None


def encode_image(image: ImageInput, *, image_format: Literal["PNG", "JPEG"] = "PNG") -> bytes:
    """Returns the encoded bytes to send for ``image``.

    Paths are read and bytes passed through untouched: decoding and preprocessing happen on the server,
    so every client sees the same pixels. PIL images and ``HxWxC`` uint8 arrays are encoded here.

    Args:
        image: A path, encoded image bytes, a PIL image or an RGB(A)/grey uint8 array.
        image_format: Encoding for PIL images and arrays; PNG is lossless so results match the original file.

    Raises:
        InvalidImageError: The file is missing or unreadable, the bytes are empty, or the object is not an image.
    """
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidImageError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InvalidImageError(f"{path}: is a directory, not an image file") from None
        except OSError as exc:
            raise InvalidImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
        if not data:
            raise InvalidImageError(f"{path}: file is empty")
        return data
    if isinstance(image, bytes | bytearray | memoryview):
        if not len(image):
            raise InvalidImageError("image bytes are empty")
        return bytes(image)
    if isinstance(image, np.ndarray):
        try:
            image = Image.fromarray(image)
        except (TypeError, ValueError) as exc:
            raise InvalidImageError(f"array of shape {image.shape} and dtype {image.dtype} is not an image") from exc
    if isinstance(image, Image.Image):
        return _encode_pil(image, image_format)
    raise InvalidImageError(
        f"unsupported image type {type(image).__name__}; pass a path, bytes, a PIL image or a uint8 array"
    )


def _encode_pil(image: Image.Image, image_format: Literal["PNG", "JPEG"]) -> bytes:
    exif = image.getexif()
    if image_format == "JPEG":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        save_kwargs: dict[str, Any] = {"quality": 95}
    else:
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I", "I;16"):
            image = image.convert("RGB")
        # Speed matters more than size for a request that lives a few milliseconds.
        save_kwargs = {"compress_level": 1}
    if exif:
        # Keeps the orientation tag, so the server's EXIF handling sees what it would see in the original file.
        save_kwargs["exif"] = exif
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=image_format, **save_kwargs)
    except (OSError, ValueError) as exc:
        raise InvalidImageError(f"cannot encode {image.mode} image as {image_format}: {exc}") from exc
    return buffer.getvalue()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _column(outputs: dict[str, np.ndarray | None], name: str, n: int) -> np.ndarray | None:
    array = outputs.get(name)
    return None if array is None else array.reshape(n, -1)


def parse_outputs(outputs: dict[str, np.ndarray | None], files: Sequence[str | None]) -> list[FaceResult]:
    """Turns the ensemble's output tensors for a batch into one :class:`FaceResult` per item."""
    n = len(files)
    # By name, so a new output in ENSEMBLE_OUTPUTS cannot shift the others onto the wrong fields.
    age, age_low, age_high, fprob, gender, box, score, found, error = (
        _column(outputs, name, n)
        for name in (
            contract.ENSEMBLE_AGE,
            contract.ENSEMBLE_AGE_LOW,
            contract.ENSEMBLE_AGE_HIGH,
            contract.ENSEMBLE_FEMALE,
            contract.ENSEMBLE_GENDER,
            contract.ENSEMBLE_BOX,
            contract.ENSEMBLE_SCORE,
            contract.ENSEMBLE_FOUND,
            contract.ENSEMBLE_ERROR,
        )
    )
    results = []
    for k, file in enumerate(files):
        message = _text(error[k, 0]).strip() if error is not None else ""
        if message:
            results.append(FaceResult.failed(message, file=file))
            continue
        face_found = bool(found[k, 0]) if found is not None else True
        if not face_found:
            results.append(FaceResult(None, None, None, False, None, None, None, file))
            continue
        probability = finite_or_none(fprob[k, 0]) if fprob is not None else None
        label = _text(gender[k, 0]) if gender is not None else ""
        if label not in ("male", "female"):
            label = None if probability is None else ("female" if probability >= contract.GENDER_THRESHOLD else "male")
        results.append(
            FaceResult(
                age=finite_or_none(age[k, 0]) if age is not None else None,
                gender=label,
                female_probability=probability,
                face_found=True,
                box=tuple(float(v) for v in box[k, :4]) if box is not None else None,
                detection_score=finite_or_none(score[k, 0]) if score is not None else None,
                error=None,
                file=file,
                age_low=finite_or_none(age_low[k, 0]) if age_low is not None else None,
                age_high=finite_or_none(age_high[k, 0]) if age_high is not None else None,
            )
        )
    return results


class AgeGenderClient:
    """Estimates age and gender of the face in images through Triton's ``age_gender`` ensembles.

    Example:
        >>> with AgeGenderClient("localhost:8001") as client:
        ...     result = client.predict("photo.jpg")
        ...     print(result.age, result.gender)

    One instance can be shared by many threads (see the module docstring). Every server call retries with
    exponential backoff while the server is unreachable or the model is still loading, and never retries a
    request the server rejected.
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
        model: str = DETECT_MODEL,
        crop_model: str = CROP_MODEL,
        faces_model: str = FACES_MODEL,
        image_format: Literal["PNG", "JPEG"] = "PNG",
    ) -> None:
        """Creates the client; no connection is made until the first call.

        Args:
            url: ``host:port`` (a ``grpc://``, ``http://`` or ``https://`` prefix is accepted). Defaults to
                ``$TRITON_URL``, else ``localhost:8001`` for gRPC / ``localhost:8000`` for HTTP (ports from
                ``$TRITON_GRPC_PORT`` / ``$TRITON_HTTP_PORT``).
            protocol: ``"grpc"`` or ``"http"``; defaults to the url's scheme, else gRPC.
            timeout: Seconds one server call may take (gRPC deadline; HTTP connect and network timeouts).
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
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if retries < 0 or backoff < 0 or max_batch < 1 or concurrency < 1:
            raise ValueError("retries and backoff must be >= 0; max_batch and concurrency must be >= 1")
        if url is None:
            url = default_url(protocol or "grpc")
        scheme, address = _split_scheme(url)
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
        transport_cls = _GrpcTransport if protocol == "grpc" else _HttpTransport
        self._transport: _Transport = transport_cls(
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
            if not error.retryable or attempt >= self.retries or self._closed:
                if attempt:
                    error.args = (f"{error.args[0]} (after {attempt + 1} attempts)",)
                raise error from cause
            time.sleep(min(self.backoff * 2**attempt, MAX_BACKOFF_S))
            attempt += 1

    def health(self) -> Health:
        """Asks the server whether it and this client's ensembles are ready; never raises, never retries.

        Returns:
            A :class:`Health`; when the server cannot be reached, ``live`` is False and ``error`` says why.
        """
        models = dict.fromkeys((self.model, self.crop_model), False)
        try:
            live = self._transport.live()
        except self._transport.errors as exc:
            error = translate(exc, url=self.url, protocol=self.protocol)
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
            if time.monotonic() >= deadline:
                if not health.live:
                    raise ServerUnavailableError(unavailable_message(self.url, self.protocol, health.error or "?"))
                missing = ", ".join(name for name, ok in health.models.items() if not ok)
                raise ModelNotReadyError(f"{missing} not ready on {self.url} after {timeout:.0f}s")
            time.sleep(poll)

    def _batch_limit(self, model: str) -> int:
        """Returns how many images one request to ``model`` may carry (asked once, then cached)."""
        limit = self._batch_limits.get(model)
        if limit is None:
            try:
                server_max = self._call(lambda: self._transport.max_batch_size(model), model=model)
            except (ServerError, RequestTooLargeError, InferenceTimeoutError):
                server_max = 0  # config not readable: rely on max_batch and split on rejection.
            limit = min(self.max_batch, server_max) if server_max > 0 else self.max_batch
            self._batch_limits[model] = limit
        return limit

    def _infer(self, model: str, blobs: Sequence[bytes], files: Sequence[str | None]) -> list[FaceResult]:
        batch = np.empty((len(blobs), 1), dtype=np.object_)
        for k, blob in enumerate(blobs):
            batch[k, 0] = blob
        outputs = self._call(lambda: self._transport.infer(model, batch), model=model)
        return parse_outputs(outputs, files)

    # -- public API ---------------------------------------------------------------------------------------

    def predict(self, image: ImageInput, *, detect: bool = True) -> FaceResult:
        """Estimates age and gender of the most prominent face in one image.

        Args:
            image: A path, encoded image bytes (sent as is), a PIL image or a uint8 array (encoded here).
            detect: Find the face first (``age_gender``); False sends the image as an already aligned face
                crop (``age_gender_crop``).

        Returns:
            The :class:`FaceResult`; ``face_found`` is False (and age/gender None) when there is no face.

        Raises:
            InvalidImageError: The image cannot be read here or decoded by the server.
            ServerUnavailableError, ModelNotReadyError: Still failing after the retries.
            InferenceTimeoutError, RequestTooLargeError, ServerError: The request failed.
        """
        file = _image_name(image)
        blob = encode_image(image, image_format=self.image_format)
        (result,) = self._infer(self.model if detect else self.crop_model, [blob], [file])
        if result.error is not None:
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
        file = _image_name(image)
        batch = np.array([encode_image(image, image_format=self.image_format)], dtype=np.object_)
        outputs = self._call(
            lambda: self._transport.infer(self.faces_model, batch, FACES_OUTPUTS), model=self.faces_model
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
            file = _image_name(image)
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
        except InferenceTimeoutError as exc:
            # Splitting would multiply the wait; report the timeout on each image instead.
            return [(index, FaceResult.failed(str(exc), file=file)) for index, _, file in items]
        return [(index, result) for (index, _, _), result in zip(items, results, strict=True)]

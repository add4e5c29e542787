"""Helpers of the client that hold no connection: addresses, image encoding, backoff and protocol detection."""

from __future__ import annotations

import io
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from client.errors import InvalidImageError
from common import exif
from common.ports import default_address, port_number
from common.upload import QUARTER_TURNS, exif_block, orientation, to_rgb

ProtocolName = Literal["grpc", "http"]
#: Everything :meth:`client.AgeGenderClient.predict` accepts as an image.
ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

#: How messages name the protocols.
PROTOCOL_LABELS: dict[str, str] = {"grpc": "gRPC", "http": "HTTP"}
#: Longest single wait between retries; keeps a long retry budget from turning into minute-long sleeps.
MAX_BACKOFF_S = 8.0
#: Longest timeout a call may be given: a day (1e12 s overflowed gRPC's deadline, inf and NaN timed out at once).
MAX_TIMEOUT_S = 86_400.0

# An HTTP/2 client's first bytes (RFC 9113 section 3.4): the preface, then an empty SETTINGS frame.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_HTTP2_SETTINGS = 0x04


def default_url(protocol: ProtocolName) -> str:
    """Returns ``$TRITON_URL``, else localhost on ``$TRITON_GRPC_PORT``/``$TRITON_HTTP_PORT`` (8001/8000)."""
    if env := os.environ.get("TRITON_URL"):
        return env
    return default_address(protocol, host="localhost")


#: The schemes a url may name: the two protocols, each with and without TLS.
SCHEMES = ("grpc", "grpcs", "http", "https")


def split_scheme(url: str) -> tuple[str | None, str]:
    """Splits ``[scheme://]host:port[/...]`` into the scheme and ``host:port`` (what tritonclient wants).

    Raises:
        ValueError: For a scheme that is not one of :data:`SCHEMES` (``ftp://`` was taken for gRPC), an IPv6
            address without brackets (``::1:8001`` is ambiguous: write ``[::1]:8001``), or a port that is not a
            number from 1 to 65535 (gRPC took ``:83537`` as port 18001, and ``:99999`` as a port of its own
            choosing). A port may be left out only after ``https://`` or ``grpcs://`` (443): without one, gRPC
            went to 443 and HTTP to 80.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() not in SCHEMES:
        raise ValueError(f"url {url!r}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    address = (rest if sep else url).split("/", 1)[0]
    if address.count(":") > 1 and not address.startswith("["):
        raise ValueError(f"url {url!r}: write an IPv6 address in brackets, e.g. [::1]:8001")
    if address.startswith("[") and not re.fullmatch(r"\[[^\[\]]+\](:[0-9]*)?", address):
        raise ValueError(f"url {url!r}: an IPv6 address goes in one pair of brackets, then the port: [::1]:8001")
    host, colon, port = address.rpartition(":") if not address.endswith("]") else (address, "", "")
    if not colon:
        host = address
    if not host.strip("[]"):
        raise ValueError(f"url {url!r}: no host; write host:port, e.g. localhost:8001")
    if colon and (port != port.strip() or not port_number(port)):  # None, or 0: no port a client can call
        raise ValueError(f"url {url!r}: the port must be a number from 1 to 65535, e.g. localhost:8001")
    if not colon and not (sep and scheme.lower() in ("https", "grpcs")):
        raise ValueError(f"url {url!r}: give the port, e.g. {host}:8001 (gRPC) or {host}:8000 (HTTP)")
    return (scheme.lower() if sep else None), address


def backoff_delay(attempt: int, backoff: float) -> float:
    """Seconds to wait before retry number ``attempt + 1``: doubled each time, capped at :data:`MAX_BACKOFF_S`."""
    return min(backoff * 2**attempt, MAX_BACKOFF_S)


def probe_protocol(address: str, timeout: float = 1.0) -> ProtocolName | None:
    """Which protocol the server at ``host:port`` speaks, from one HTTP/2 preface; None when it cannot tell.

    gRPC runs over HTTP/2, so a gRPC port answers the preface with a SETTINGS frame; Triton's HTTP port
    (and the nginx door in front of it) speaks HTTP/1 and answers with an ``HTTP/1.x 400`` status line.
    Only the plain-text protocols are told apart: a TLS port answers neither way and gives None.
    """
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout) as sock:
            sock.sendall(_HTTP2_PREFACE)
            head = sock.recv(16)
    except (OSError, ValueError):
        return None
    if head.startswith(b"HTTP/"):
        return "http"
    if len(head) >= 4 and head[3] == _HTTP2_SETTINGS:
        return "grpc"
    return None


def image_name(image: ImageInput) -> str | None:
    """The path an image came from, or None when it was not given as a path."""
    return os.fspath(image) if isinstance(image, str | os.PathLike) else None


def text(value: Any) -> str:
    """A BYTES tensor element (or anything else) as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def encode_image(image: ImageInput, *, image_format: Literal["PNG", "JPEG"] = "PNG") -> bytes:
    """Returns the encoded bytes to send for ``image``.

    Paths are read and bytes passed through untouched: decoding and preprocessing happen on the server,
    so every client sees the same pixels. PIL images and uint8 arrays are encoded here; a PIL image's EXIF
    orientation goes along, as the tag alone, for the server to apply (:func:`orientation_to_send`).

    Args:
        image: A path, encoded image bytes, a PIL image, or a uint8 array: HxW or HxWx1 (grey), HxWx3 (RGB order,
            not OpenCV's BGR) or HxWx4 (RGBA).
        image_format: Encoding for PIL images and arrays; PNG is lossless so results match the original file. JPEG
            has no alpha: transparency is composited on white, as the server does for a PNG.

    Raises:
        InvalidImageError: The file is missing or unreadable, the bytes are empty, or the object is not an image.
    """
    if isinstance(image, str | os.PathLike):
        if not os.fspath(image):  # Path("") is ".", which read as "is a directory"
            raise InvalidImageError("an empty file name; give the path of an image file")
        path = Path(image)
        try:
            # A device or a pipe has no end a read can wait for (/dev/zero filled memory, a FIFO blocked the open).
            if path.exists() and not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):
                raise InvalidImageError(f"{path}: not a regular file (a device, pipe or socket); save the image first")
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
        image = _array_image(image)
    if isinstance(image, Image.Image):
        return _encode_pil(image, image_format)
    raise InvalidImageError(
        f"unsupported image type {type(image).__name__}; pass a path, bytes, a PIL image or a uint8 array"
    )


def _array_image(array: np.ndarray) -> Image.Image:
    """A uint8 grey, RGB or RGBA array as a PIL image; any other array is refused rather than guessed at.

    PIL takes far more, and guesses badly: a float array became a black picture (no face, no error), int32 a 16-bit
    one, a 1-D array a picture one pixel high.
    """
    channels = array.shape[2] if array.ndim == 3 else None
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or channels not in (None, 1, 3, 4):
        raise InvalidImageError(
            f"array of shape {array.shape} and dtype {array.dtype} is not an image; pass a uint8 array of shape "
            "HxW or HxWx1 (grey), HxWx3 (RGB order, not BGR) or HxWx4 (RGBA)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidImageError(f"array of shape {array.shape} has no pixels")
    return Image.fromarray(array[..., 0] if channels == 1 else array)


def orientation_to_send(image: Image.Image) -> int:
    """The EXIF orientation the server should still apply to ``image``'s pixels, 1 for none.

    PIL copies the file's EXIF to every image derived from it. ``convert`` and ``resize`` (the common cases) leave
    the pixels as stored, so the tag still applies; ``transpose`` or ``rotate`` by hand turn them, and the tag sent
    along turned them twice. A quarter turn shows when the size is the file's own (EXIF 0xA002/0xA003) swapped;
    ``ImageOps.exif_transpose`` drops the tag itself.
    """
    turn = orientation(image)
    if turn in QUARTER_TURNS:
        block = exif_block(image)  # read without PIL's getexif(), which copies every tag's data (common/exif.py)
        stored = None if block is None else exif.pixel_size(exif.tiff_of(block))
        if stored is not None and stored[0] != stored[1] and image.size == stored[::-1]:
            return 1  # already turned a quarter
    return turn


def _encode_pil(image: Image.Image, image_format: Literal["PNG", "JPEG"]) -> bytes:
    turn = orientation_to_send(image)
    if image.mode == "I":
        # 8-bit values in a 32-bit image (``convert("I")`` of a grey picture): saved as is they became a 16-bit PNG,
        # which the server reads as values out of 65535, near black, and answered "no face" without an error. Wider
        # values are sent as the 16-bit picture they are (Pillow no longer saves mode I as PNG).
        low, high = image.getextrema()
        image = image.convert("L" if 0 <= low and high <= 255 else "I;16")
    if image_format == "JPEG":
        if image.mode not in ("RGB", "L") or "transparency" in image.info:
            image = to_rgb(image)  # convert("RGB") would drop the alpha and show what lies under it, often black
        save_kwargs: dict[str, Any] = {"quality": 95}
    else:
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I", "I;16"):
            image = image.convert("RGB")
        # Speed matters more than size for a request that lives a few milliseconds.
        save_kwargs = {"compress_level": 1}
    if turn != 1:
        # The orientation alone: the server needs nothing else of the EXIF (camera, GPS), and writing a camera's
        # whole block back fails on a tag of the wrong type.
        exif = Image.Exif()
        exif[0x0112] = turn
        save_kwargs["exif"] = exif
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=image_format, **save_kwargs)
    except (OSError, ValueError) as exc:
        raise InvalidImageError(f"cannot encode {image.mode} image as {image_format}: {exc}") from exc
    return buffer.getvalue()

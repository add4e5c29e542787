"""Turns untrusted upload bytes into an RGB PIL image, or a message the user can act on."""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Formats accepted from clients; anything else PIL could open (PSD, TIFF, ...) is refused on purpose.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
#: Defaults shared by the Triton preprocess config and the client's own pre-checks.
MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
#: Decoded size one item may reach (width x height x bytes per pixel of the stored samples), checked from the
#: header before decoding. Bounds the work of images that compress absurdly well: a zero-filled 40-megapixel
#: 16-bit PNG is 78 KB on the wire but 80 MB to inflate and unfilter (about 1 s of CPU). 64 MiB still takes a
#: 21-megapixel 8-bit RGB PNG.
MAX_DECODED_BYTES = 64 * 2**20
#: Decoded pixels one request may take, summed over its items (after JPEG draft reduction); items past the
#: budget get an error, the ones before it are served. 100 MP is 32 phone photos drafted to ~3 MP each.
REQUEST_MAX_PIXELS = 100_000_000
#: JPEGs larger than this on their longer side are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
#: several times faster than a full decode), never below it. Detection runs at ``faces.DETECT_MAX_SIDE``
#: (640) anyway; twice that keeps the face crop sharp for faces down to ~1/20 of the picture's side.
#: Raise it (issue 11: small faces in crowds) if the crops of small faces get blurry.
DRAFT_SIDE = 1280


class ImageDecodeError(ValueError):
    """The bytes are not an image this service accepts; ``str(err)`` is meant for the end user."""


class PixelBudget:
    """Decoded pixels left to one request; shared by its items, in order."""

    def __init__(self, pixels: int = REQUEST_MAX_PIXELS):
        self.limit = pixels
        self.left = pixels

    def take(self, pixels: int) -> None:
        if pixels > self.left:
            raise ImageDecodeError(
                f"This request's images add up to more than {self.limit / 1e6:.0f} megapixels; "
                "send fewer or smaller images per request."
            )
        self.left -= pixels


@dataclass(frozen=True)
class Decoded:
    """An upright RGB image and the factor that maps its pixel coordinates back to the uploaded file's."""

    image: Image.Image
    scale: float = 1.0


@dataclass(frozen=True)
class DecodeLimits:
    """The per-item limits of :func:`decode_upload`, as the Python models read them from their config."""

    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    max_decoded_bytes: int = MAX_DECODED_BYTES
    draft_side: int = DRAFT_SIDE

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> DecodeLimits:
        """Reads the ``max_bytes``, ``max_pixels``, ``max_decoded_bytes`` and ``draft_side`` string parameters
        of a model config; a missing or empty one keeps the default."""
        return cls(
            max_bytes=int(params.get("max_bytes") or MAX_BYTES),
            max_pixels=int(params.get("max_pixels") or MAX_PIXELS),
            max_decoded_bytes=int(params.get("max_decoded_bytes") or MAX_DECODED_BYTES),
            draft_side=int(params.get("draft_side") or DRAFT_SIDE),
        )

    def decode(self, data: bytes, *, budget: PixelBudget | None = None) -> Decoded:
        """:func:`decode_upload` under these limits."""
        return decode_upload(
            data,
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
            max_decoded_bytes=self.max_decoded_bytes,
            draft_side=self.draft_side,
            budget=budget,
        )


def decode_upload(
    data: bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
    draft_side: int | None = None,
    budget: PixelBudget | None = None,
) -> Decoded:
    """Decodes an upload into an upright RGB image, bounding the work before any pixel is decoded.

    Args:
        data: The encoded file (JPEG, PNG, WebP, BMP or GIF; GIFs give their first frame).
        max_pixels: Largest width * height accepted; checked from the header, before any pixel is decoded.
        max_bytes: Largest encoded size accepted.
        max_decoded_bytes: Largest decoded sample size accepted (see :data:`MAX_DECODED_BYTES`).
        draft_side: Decode JPEGs at reduced scale down to this longer side; None decodes at full size.
        budget: The request's pixel budget; this item's decoded pixels are taken from it.

    Raises:
        ImageDecodeError: For empty, oversized, unrecognised, truncated or corrupt input.
    """
    if not data:
        raise ImageDecodeError("The image is empty (0 bytes); upload a JPEG, PNG, WebP, BMP or GIF file.")
    if len(data) > max_bytes:
        raise ImageDecodeError(
            f"The file is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB. "
            "Upload a smaller image."
        )
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as err:
        # PIL's own, process-wide bomb guard fires at open for absurd sizes; report it like ours.
        raise ImageDecodeError(f"The image has too many pixels (limit {max_pixels / 1e6:.0f} megapixels).") from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError("The file is not a recognised image; upload a JPEG, PNG, WebP, BMP or GIF.") from err
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"The image is {width}x{height} ({width * height / 1e6:.0f} megapixels); the limit is "
            f"{max_pixels / 1e6:.0f} megapixels. Downscale it before uploading."
        )
    if width == 0 or height == 0:
        raise ImageDecodeError("The image has no pixels.")
    scale = 1.0
    if draft_side and img.format == "JPEG" and max(width, height) > draft_side:
        # draft() keeps both sides >= the requested size and picks the smallest DCT scale that does.
        ratio = draft_side / max(width, height)
        img.draft("RGB", (math.ceil(width * ratio), math.ceil(height * ratio)))
        scale = width / img.size[0]
    decoded = _decoded_bytes(img, data)
    if decoded > max_decoded_bytes:
        raise ImageDecodeError(
            f"The image would take {decoded / 2**20:.0f} MiB to decode ({width}x{height}, {img.mode}); the limit "
            f"is {max_decoded_bytes / 2**20:.0f} MiB. Upload an 8-bit JPEG or a smaller image."
        )
    if budget is not None:
        budget.take(img.size[0] * img.size[1])
    fast = _fast_png(img, data)
    if fast is not None:
        return Decoded(fast, scale)
    try:
        img.load()  # decodes the first frame of animations
        img = ImageOps.exif_transpose(img)
        return Decoded(_to_rgb(img), scale)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError(
            f"The {img.format} file is truncated or corrupt ({err}); re-export or re-upload it."
        ) from err


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_depth_and_colour(data: bytes) -> tuple[int, int] | None:
    """Bit depth and colour type from a PNG's IHDR chunk (2 = RGB), or None when the first chunk is not IHDR."""
    return struct.unpack(">BB", data[24:26]) if data[12:16] == b"IHDR" else None


def _fast_png(img: Image.Image, data: bytes) -> Image.Image | None:
    """The picture of an 8-bit RGB PNG decoded by libspng (pyspng), else None for PIL to decode.

    Only after every check above (size, pixels, decoded bytes, budget) has passed on the header. libspng inflates
    and unfilters with SIMD: a 512x512 photo PNG took 5.1 CPU-ms against PIL's 9.0 (same machine, same moment),
    the largest single cost of the detection path's PNG requests. The pixels are the same (tests/test_decode.py).
    Anything else (16-bit, palette, grey, alpha or tRNS, an eXIf orientation to apply, pyspng not installed, a
    file libspng refuses) goes to PIL, whose messages for broken files the callers already show.
    """
    if img.format != "PNG" or _png_depth_and_colour(data) != (8, 2):
        return None
    if "transparency" in img.info or b"eXIf" in data:
        return None
    try:
        import pyspng
    except ImportError:
        return None
    try:
        pixels = pyspng.load(data)
    except Exception:  # noqa: BLE001 - PIL decodes it again and names what is wrong
        return None
    if pixels.shape != (img.size[1], img.size[0], 3) or pixels.dtype != np.uint8:
        return None
    return Image.fromarray(pixels)


def _decoded_bytes(img: Image.Image, data: bytes) -> int:
    """Bytes the decoder will produce for ``img`` (its current, possibly drafted, size)."""
    width, height = img.size
    if img.format == "PNG" and (header := _png_depth_and_colour(data)) is not None:
        # The inflated stream: PIL reports 16-bit RGB as mode RGB, but inflating it costs 6 bytes per pixel.
        depth, colour = header
        return height * (1 + math.ceil(width * _PNG_CHANNELS.get(colour, 4) * depth / 8))
    sample = 4 if img.mode in ("I", "F") else 2 if ";16" in img.mode else 1
    return width * height * len(img.getbands()) * sample


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # convert("L") would clip 16-bit samples at 255 and wash the picture out.
        arr = np.asarray(img, dtype=np.float32)
        scale = 255 / 65535 if arr.max(initial=0) > 255 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        # Transparent pixels often hold black or garbage colour; users expect them to look like a white page.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV

"""Turns untrusted upload bytes into an RGB PIL image, or a message the user can act on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from common import structure

# The limits, the header checks and the conversion to RGB live in common/upload.py, shared with the web page;
# re-exported here for the models' code and configs, which read them from this module.
from common.upload import (  # noqa: F401
    DRAFT_SIDE,
    FORMATS,
    MAX_BYTES,
    MAX_DECODED_BYTES,
    MAX_PIXELS,
    ImageDecodeError,
    load_rgb,
    open_bounded,
    png_depth_and_colour,
    upright_size,
)

#: Decoded pixels one request may take, summed over its items (after JPEG draft reduction); items past the
#: budget get an error, the ones before it are served. 100 MP is 32 phone photos drafted to ~3 MP each.
REQUEST_MAX_PIXELS = 100_000_000


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
    """An upright RGB image, possibly decoded at a reduced scale (JPEG draft), and the uploaded file's size upright."""

    image: Image.Image
    file_size: tuple[int, int] | None = None  # None: the image is the file's own size

    def _factors(self) -> tuple[float, float]:
        """The uploaded file's pixels per pixel of :attr:`image`, along x and along y (1 unless drafted)."""
        width, height = self.file_size or self.image.size
        return width / self.image.width, height / self.image.height

    @property
    def scale(self) -> float:
        """The uploaded file's pixels per pixel of :attr:`image` (1 unless drafted), the two axes' mean."""
        return sum(self._factors()) / 2

    def to_file(self, box) -> tuple[float, float, float, float]:
        """A box on :attr:`image` in the uploaded file's pixels (upright), clipped to the file.

        Each axis has its own factor: a draft divides the sides by one power of two but rounds each up, so a
        4000x3001 JPEG drafted to 1000x751 is 4.0 wide and 3.996 high (one factor put a box's bottom at 3002).
        """
        width, height = self.file_size or self.image.size
        sx, sy = self._factors()
        x0, y0, x1, y1 = (float(v) for v in box)
        return (
            min(max(x0 * sx, 0.0), width),
            min(max(y0 * sy, 0.0), height),
            min(max(x1 * sx, 0.0), width),
            min(max(y1 * sy, 0.0), height),
        )


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
    img, stored = open_bounded(
        data, max_pixels=max_pixels, max_bytes=max_bytes, max_decoded_bytes=max_decoded_bytes, draft_side=draft_side
    )
    if budget is not None:
        budget.take(img.size[0] * img.size[1])
    fast = _fast_png(img, data)
    if fast is not None:
        # Upright as stored: _fast_png takes no file that can carry an orientation. Asking PIL for it here would
        # decode the whole PNG a second time (PIL reads a PNG's EXIF by loading it): the 512x512 portrait took 21 ms
        # to decode that way, 9.6 without (docs/performance-log.md, twenty-fourth part).
        return Decoded(fast, stored)
    return Decoded(load_rgb(img, data), upright_size(img, stored))


#: The text chunks' keywords under which PIL finds a PNG's orientation (common.upload.orientation): ImageMagick's
#: EXIF as hex text, and XMP; besides those, an eXIf chunk holds one.
_ORIENTATION_KEYWORDS = (b"Raw profile type exif", b"XML:com.adobe.xmp")
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def _may_be_turned(data: bytes) -> bool:
    """Whether a PNG has a chunk that can give it an orientation, from the chunks' headers (a keyword is never
    compressed; it ends at the first NUL, within 80 bytes): about 5 us on a photo, where searching its bytes for the
    three names took 0.5 ms. True for a file whose chunks do not add up, which PIL then decodes and names what is
    wrong (open_bounded has refused files of more than structure.MAX_PNG_CHUNKS chunks)."""
    for kind, at, length in structure.png_chunks(data):
        if kind == b"IEND":
            return False
        if kind == b"eXIf" or (
            kind in _TEXT_CHUNKS and data[at : at + min(length, 80)].split(b"\0", 1)[0] in _ORIENTATION_KEYWORDS
        ):
            return True
    return True  # no IEND


def _fast_png(img: Image.Image, data: bytes) -> Image.Image | None:
    """The picture of an 8-bit RGB PNG decoded by libspng (pyspng), else None for PIL to decode.

    Only after every check above (size, pixels, decoded bytes, budget) has passed on the header. libspng inflates
    and unfilters with SIMD: a 512x512 photo PNG took 5.1 CPU-ms against PIL's 9.0 (an earlier 2-core VM, same
    moment), the largest single cost of the detection path's PNG requests. The pixels are the same
    (tests/test_decode.py). Anything else (16-bit, palette, grey, alpha or tRNS, an orientation to apply, pyspng not
    installed, a file libspng refuses) goes to PIL, whose messages for broken files the callers already show.
    """
    if img.format != "PNG" or png_depth_and_colour(data) != (8, 2):
        return None
    if "transparency" in img.info or _may_be_turned(data):
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


def sample_pictures() -> list[Image.Image]:
    """A small PNG and a small JPEG, made here and decoded as uploads are: for a detecting model to run its detector
    on once, in the background build (serving/pipeline/background.py), before any request comes. Under the default
    limits, not the model's: the paths are the same, and a config with tighter ones cannot fail the build.

    A stub's first upload paid for the decoders' first use (PIL's format plugins, libspng, libjpeg-turbo: a 512x512
    PNG took 20 ms to decode first and 7 ms after, Intel VM, 2026-12-06) and the detectors' (XNNPACK prepares a
    model on its first run). These take the same paths as an upload (tests/test_decode.py) on a few pixels.
    """
    import io

    ramp = np.linspace(0, 255, 64 * 64 * 3).astype(np.uint8).reshape(64, 64, 3)
    pictures = []
    for fmt in ("PNG", "JPEG"):
        out = io.BytesIO()
        Image.fromarray(ramp).save(out, fmt)
        pictures.append(DecodeLimits().decode(out.getvalue()).image)
    return pictures

"""Turns untrusted upload bytes into an RGB PIL image, or a message the user can act on."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Formats accepted from clients; anything else PIL could open (PSD, TIFF, ...) is refused on purpose.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
#: Defaults shared by the Triton preprocess config and the client's own pre-checks.
MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image this service accepts; ``str(err)`` is meant for the end user."""


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Image.Image:
    """Decodes an upload into an upright RGB image.

    Args:
        data: The encoded file (JPEG, PNG, WebP, BMP or GIF; GIFs give their first frame).
        max_pixels: Largest width * height accepted; checked from the header, before any pixel is decoded.
        max_bytes: Largest encoded size accepted.

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
    try:
        img.load()  # decodes the first frame of animations
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError(
            f"The {img.format} file is truncated or corrupt ({err}); re-export or re-upload it."
        ) from err


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

"""What an upload may be, checked from its header before any pixel is decoded, and how it becomes an RGB picture.

Shared by the server's decoder (serving/pipeline/decode.py, inside Triton) and the web page
(gradio_frontend/drawing.py), which draws the picture it shows: both refuse the same files for the same reasons,
neither decodes one it would refuse, and both see the same upright RGB picture. A 140 KB PNG of 144 megapixels
decoded in the page's process took 0.85 s and 958 MB before the page applied these checks; the server refuses it
from its header.
"""

from __future__ import annotations

import io
import math
import re
import struct

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from common import exif, structure

#: Formats accepted from clients; anything else PIL could open (PSD, TIFF, ...) is refused on purpose.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
#: What PIL calls an accepted JPEG: "MPO" is one that carries more pictures after the first (a camera's preview
#: or a second view, CIPA's Multi-Picture Format), opened through the JPEG plugin; its first picture is the photo.
JPEG_FORMATS = ("JPEG", "MPO")
#: Defaults shared by the Triton preprocess configs (tests/test_configs.py ties them) and the web page's checks.
MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
#: Decoded size one item may reach (width x height x bytes per pixel of the stored samples), checked from the
#: header before decoding. Bounds the work of images that compress absurdly well: a zero-filled 40-megapixel
#: 16-bit PNG is 78 KB on the wire but 80 MB to inflate and unfilter (about 1 s of CPU). 64 MiB still takes a
#: 21-megapixel 8-bit RGB PNG.
MAX_DECODED_BYTES = 64 * 2**20
#: JPEGs larger than this on their longer side are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
#: several times faster than a full decode), never below it. Detection runs at
#: ``serving.pipeline.detect.DETECT_MAX_SIDE`` (640) anyway; twice that keeps the face crop sharp for faces down to
#: ~1/20 of the picture's side. Raise it (issue 11: small faces in crowds) if the crops of small faces get blurry.
DRAFT_SIDE = 1280


class ImageDecodeError(ValueError):
    """The bytes are not an image this service accepts; ``str(err)`` is meant for the end user."""


#: What PIL's decoders raise for a truncated or corrupt file, at open ("Truncated File Read", WebP's "could not
#: create decoder object") or when decoding; struct.error and TypeError come from malformed headers and tags.
DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, TypeError)


#: The start of an accepted format's file written in base64 (JPEG, PNG, WebP/RIFF, GIF, BMP), perhaps as a data URL:
#: a caller that base64-encoded the file before putting it in the request (the KServe v2 JSON's habit elsewhere).
_BASE64_IMAGE = re.compile(rb"\s*(data:image/[\w.+-]+;base64,)?(/9j/|iVBORw0KGgo|UklGR|R0lGOD|Qk[0-9A-Za-z+/]{6})")


def too_large(size: int, max_bytes: int = MAX_BYTES) -> str | None:
    """What the user reads for a file of ``size`` bytes over ``max_bytes``; None when it is within."""
    if size <= max_bytes:
        return None
    return f"The file is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB. Upload a smaller image."


def open_bounded(
    data: bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
    draft_side: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Opens an upload without decoding it, once its header has passed every bound.

    Returns the opened image (JPEGs larger than ``draft_side`` set to decode at a reduced scale) and the file's
    own size as stored (before any draft; :func:`upright_size` turns it as the picture is shown). Raises
    :class:`ImageDecodeError` for empty, oversized or unrecognised input, a structure that costs more than its
    pixels (common.structure), too many pixels, or too many decoded bytes.
    """
    if not data:
        raise ImageDecodeError("The image is empty (0 bytes); upload a JPEG, PNG, WebP, BMP or GIF file.")
    if (why := too_large(len(data), max_bytes)) is not None:
        raise ImageDecodeError(why)
    if (why := structure.refusal(data)) is not None:  # before PIL, which walks some of it in Python at open
        raise ImageDecodeError(why)
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as err:
        # PIL's own, process-wide bomb guard fires at open for absurd sizes; report it like ours.
        raise ImageDecodeError(f"The image has too many pixels (limit {max_pixels / 1e6:.0f} megapixels).") from err
    except UnidentifiedImageError as err:
        if _BASE64_IMAGE.match(data):
            raise ImageDecodeError(
                "The file is not a recognised image: it is an image written as base64 text. Send the file's own "
                "bytes (a BYTES tensor holds them as they are), not base64."
            ) from err
        raise ImageDecodeError("The file is not a recognised image; upload a JPEG, PNG, WebP, BMP or GIF.") from err
    except DECODER_ERRORS as err:  # recognised, but its header is cut short or broken
        raise ImageDecodeError(corrupt_message(None, err)) from err
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"The image is {width}x{height} ({width * height / 1e6:.0f} megapixels); the limit is "
            f"{max_pixels / 1e6:.0f} megapixels. Downscale it before uploading."
        )
    if width == 0 or height == 0:
        raise ImageDecodeError("The image has no pixels.")
    if draft_side and img.format in JPEG_FORMATS and max(width, height) > draft_side:
        # draft() keeps both sides >= the requested size and picks the smallest DCT scale that does.
        ratio = draft_side / max(width, height)
        img.draft("RGB", (math.ceil(width * ratio), math.ceil(height * ratio)))
    decoded = decoded_bytes(img, data)
    if decoded > max_decoded_bytes:
        raise ImageDecodeError(
            f"The image would take {decoded / 2**20:.0f} MiB to decode ({width}x{height}, {img.mode}); the limit "
            f"is {max_decoded_bytes / 2**20:.0f} MiB. Upload an 8-bit JPEG or a smaller image."
        )
    return img, (width, height)


def upright_size(img: Image.Image, stored: tuple[int, int]) -> tuple[int, int]:
    """The file's size as :func:`load_rgb` turns it: sides swapped for a quarter turn."""
    return (stored[1], stored[0]) if orientation(img) in QUARTER_TURNS else stored


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_depth_and_colour(data: bytes) -> tuple[int, int] | None:
    """Bit depth and colour type from a PNG's IHDR chunk (2 = RGB), or None when the first chunk is not IHDR."""
    return struct.unpack(">BB", data[24:26]) if data[12:16] == b"IHDR" else None


def decoded_bytes(img: Image.Image, data: bytes) -> int:
    """Bytes the decoder will produce for ``img`` (its current, possibly drafted, size)."""
    width, height = img.size
    if img.format == "PNG" and (header := png_depth_and_colour(data)) is not None:
        # The inflated stream: PIL reports 16-bit RGB as mode RGB, but inflating it costs 6 bytes per pixel.
        depth, colour = header
        return height * (1 + math.ceil(width * _PNG_CHANNELS.get(colour, 4) * depth / 8))
    sample = 4 if img.mode in ("I", "F") else 2 if ";16" in img.mode else 1
    return width * height * len(img.getbands()) * sample


def load_rgb(img: Image.Image, data: bytes) -> Image.Image:
    """Decodes an image :func:`open_bounded` let through: its first frame, upright (EXIF orientation), in RGB.

    ``data`` is the file ``img`` was opened from. The result may be ``img`` itself (an upright RGB file that PIL
    decoded): close ``img`` only when done with it.

    Raises:
        ImageDecodeError: The file is truncated or corrupt.
    """
    fmt = img.format
    picture = _jpeg_picture(img, data)  # outside the try: its refusal is an ImageDecodeError (a ValueError) already
    try:
        if picture is None:
            img.load()  # decodes the first frame of animations
            picture = img
        return to_rgb(upright(img, picture))
    except DECODER_ERRORS as err:
        raise ImageDecodeError(corrupt_message(fmt, err)) from err


#: The starts of libjpeg's warnings (as simplejpeg raises them) that mean part of the picture is not in the file:
#: the file ends inside it, a marker comes in the middle of a scan (an end marker put back after a cut, by hand or
#: by a tool that "repairs" the file), or a scan's data is damaged. libjpeg carries on and paints what is missing
#: grey, and PIL hands that picture over without a word: a photo cut in half and given its end marker back was
#: answered with an age and a gender for half a face. The other warnings (stray bytes before a marker, an unknown
#: JFIF version, a bad ICC profile, an odd progression) leave every pixel as encoded: those files decode as before.
_PICTURE_MISSING = (
    "Premature end of JPEG file",
    "Corrupt JPEG data: premature end of data segment",
    "Corrupt JPEG data: bad Huffman code",
    "Corrupt JPEG data: bad arithmetic code",
    "Corrupt JPEG data: found marker",  # ... instead of a restart marker: the data in between is lost
)


def _jpeg_picture(img: Image.Image, data: bytes) -> Image.Image | None:
    """The picture of a colour or grey JPEG, decoded by libjpeg-turbo through simplejpeg; None for PIL to decode.

    simplejpeg, unlike PIL, stops on libjpeg's warnings, so a picture with a part missing is refused
    (:data:`_PICTURE_MISSING`) instead of shown half grey. The pixels are PIL's: the same libjpeg-turbo, the same
    DCT and upsampling, and the draft scale :func:`open_bounded` chose (``img.size`` is the drafted size; the
    smallest scale that is at least that large is the one PIL picked), checked equal over subsamplings,
    progressive and grey files and four draft sizes (tests/test_decode.py), and on 400 of UTKFace's faces. CMYK
    files, files with a harmless warning and any size simplejpeg would not match go to PIL, which decodes them as
    it always did.
    """
    if img.format not in JPEG_FORMATS or img.mode not in ("RGB", "L"):
        return None
    try:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB" if img.mode == "RGB" else "GRAY", min_width=img.width, min_height=img.height
        )
    except ValueError as err:  # libjpeg's errors, and its warnings in simplejpeg's default strict mode
        if str(err).startswith(_PICTURE_MISSING):
            raise ImageDecodeError(corrupt_message(img.format, err)) from err
        return None
    if pixels.shape[:2] != (img.height, img.width):
        return None
    return Image.fromarray(pixels if img.mode == "RGB" else pixels[:, :, 0])


def corrupt_message(fmt: str | None, err: BaseException) -> str:
    """What the user reads for a truncated or corrupt file; ``fmt`` None when it failed before PIL named one."""
    what = f"{fmt} file" if fmt else "file"
    return f"The {what} is truncated or corrupt ({err}); re-export or re-upload it."


#: How to turn a picture stored with EXIF orientation 2-8 upright (the tag's values, as PIL's exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: The EXIF orientations that turn a picture a quarter (its sides swap).
QUARTER_TURNS = (5, 6, 7, 8)
#: Where an opened file keeps its EXIF (with the orientation) and XMP (which may hold one too).
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def exif_block(img: Image.Image) -> bytes | None:
    """An opened file's EXIF block, from where PIL's ``getexif()`` takes it (a PNG's ImageMagick text chunk holds it
    as hex); None when it has none. A PNG's eXIf chunk after its pixels is found only once it is loaded, as by
    PIL."""
    if img.format == "PNG" and "exif" not in img.info:
        img.load()
    block = img.info.get("exif")
    if block is None and isinstance(text := img.info.get("Raw profile type exif"), str):
        try:
            block = bytes.fromhex("".join(text.split("\n")[3:]))
        except ValueError:
            return None
    return block


def orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation of an opened file, 1 to 8; 1 (as stored) when it has none or it is unreadable.

    Read tag by tag, never re-serialised: PIL's exif_transpose writes the whole block back and raised TypeError or
    struct.error on a tag of the wrong type (e.g. a Canon's 0x011E stored as text), failing a photo viewers show.
    A block whose tags share their data is not parsed at all: PIL would copy it once per tag (common/exif.py).
    """
    block = exif_block(img)
    if block is not None and exif.costly(block) is not None:
        return 1
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: show the pixels as stored, as browsers do
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def upright(img: Image.Image, picture: Image.Image | None = None) -> Image.Image:
    """``picture`` (``img`` itself when None: its pixels decoded by PIL) turned as ``img``'s EXIF orientation says
    (a new image), or ``picture`` itself when it is upright already; either way without the metadata that says it.

    The metadata goes because it describes the file, not this picture: kept, anything that saves the picture again
    (Gradio saves the annotated copy it shows with the info's EXIF) would have it turned a second time. No copy of an
    upright picture: besides the copy itself, two live pictures made the allocator hand memory back and fault fresh
    pages in on every request (a 1280x960 JPEG decoded in 6.2-6.6 ms instead of 10-11).
    """
    picture = img if picture is None else picture
    method = _UPRIGHT.get(orientation(img))  # read (and cached by PIL) before the keys go
    out = picture.transpose(method) if method is not None else picture
    for key in _ORIENTATION_KEYS:
        out.info.pop(key, None)
    if out is img:
        # PIL's parsed copy too (camera, GPS, an orientation of 1), as a copy of the picture had none. It does not
        # raise: orientation() parsed it once, and PIL hands back what it got then, even from a broken block; one it
        # did not parse (its tags share their data) is not parsed now either, its keys being gone.
        img.getexif().clear()
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` in RGB: 16-bit and float samples scaled to 8 bits, transparency composited on white."""
    if img.mode == "RGB" and "transparency" not in img.info:  # an RGB PNG's tRNS colour is composited below
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # convert("L") would clip 16-bit samples at 255 and wash the picture out. The scale follows the declared
        # depth, not the pixels: scaled only when some sample exceeded 255, a 16-bit grey of 255 came out white
        # and one of 256 black. I;16*: a PNG's 16-bit grey; I: the same in older PIL (no accepted format gives a
        # wider integer); F (no accepted format gives it either): taken as 0-255.
        arr = np.asarray(img, dtype=np.float32)
        scale = 255 / 65535 if img.mode.startswith("I") else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        # Transparent pixels often hold black or garbage colour; users expect them to look like a white page.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV

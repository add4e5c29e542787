"""An EXIF block's directories, read without PIL: a bounded number of steps whatever the block holds.

PIL's ``getexif()`` copies the data of every tag of the block's first directory before it answers a question about
one of them. A directory may list 65,535 tags, and each may point at the same megabytes: a 9.6 MB PNG whose eXIf
chunk did so kept a ``preprocess`` stub busy for over a minute, and one of 300 such tags took it to 2.8 GB (the
red-team probe of 2026-12-07). So before PIL parses a block, :func:`costly` says whether it would copy more than the
block itself (a JPEG's is refused as the file is opened, common/structure.py; any other's orientation is left as
stored, common/upload.py); and the client reads the one sub-directory value it needs here (:func:`pixel_size`).

The layout is TIFF's (TIFF 6.0, section 2): "II" or "MM" (byte order), 42, the first directory's offset; a
directory is a 2-byte count of 12-byte entries (tag, type, count, and the value itself when it fits in 4 bytes, else
its offset). BigTIFF's layout (43), which no camera writes into EXIF, is read as no tags.
"""

from __future__ import annotations

import re

import numpy as np

#: Bytes per value of each TIFF type PIL reads (BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE, UNDEFINED, SSHORT,
#: SLONG, SRATIONAL, FLOAT, DOUBLE, IFD, LONG8); an entry of any other type is skipped, by PIL too.
UNIT_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}
#: The types whose single value PIL hands over as an int: SHORT, LONG, SSHORT, SLONG, IFD (a sub-directory's offset).
_INTEGER = {3: "H", 4: "I", 8: "h", 9: "i", 13: "I"}
_UNITS = np.zeros(65536, np.uint64)
_UNITS[list(UNIT_BYTES)] = list(UNIT_BYTES.values())

#: Bytes of tag data a block may point at beyond its own size. Each tag's data is its own in a well-formed block, so
#: PIL copies at most the block; tags that all point at the same bytes made it copy them once per tag: a 60 KiB JPEG
#: of 5,000 such tags took 0.21 s and 326 MB to open, a 9.6 MB PNG's orientation over a minute.
MAX_SHARED_BYTES = 4 * 2**20

EXIF_IFD = 0x8769
PIXEL_X, PIXEL_Y = 0xA002, 0xA003
_PREFIXES = re.compile(rb"(?:Exif\0\0)*")


def tiff_of(block: bytes) -> bytes:
    """The TIFF structure inside an EXIF block: without the "Exif\\0\\0" that JPEG, WebP and some PNG writers put
    before it (PIL strips any number of them, one copy of the block each; here one copy in all)."""
    return block[_PREFIXES.match(block).end() :]


def _byte_order(tiff: bytes) -> str | None:
    # PIL also accepts the two odd orders ("MM*\0", "II\0*"); the byte order is the first two bytes either way.
    if tiff[:4] in (b"II*\0", b"II\0*"):
        return "<"
    if tiff[:4] in (b"MM\0*", b"MM*\0"):
        return ">"
    return None


def _directory(tiff: bytes, offset: int | None = None) -> tuple[str, int, int]:
    """The byte order, and where the entries of the directory at ``offset`` (the first one when None) start and how
    many the block holds of them; 0 entries when the block is no classic TIFF or the directory lies outside it."""
    order = _byte_order(tiff)
    if order is None or len(tiff) < 8:
        return "<", 0, 0
    endian = "little" if order == "<" else "big"
    if offset is None:
        offset = int.from_bytes(tiff[4:8], endian)
    if offset + 2 > len(tiff):
        return order, 0, 0
    count = int.from_bytes(tiff[offset : offset + 2], endian)
    return order, offset + 2, min(count, (len(tiff) - offset - 2) // 12)  # PIL stops at the first entry cut short


def entries(tiff: bytes, offset: int | None = None) -> tuple[np.ndarray, str]:
    """The entries of the directory at ``offset`` (the first one when None) as a structured array (tag, type,
    count, value: the value's 4 raw bytes), as many as the block holds, and the byte order (:func:`_directory`)."""
    order, start, count = _directory(tiff, offset)
    dtype = np.dtype([("tag", order + "u2"), ("type", order + "u2"), ("count", order + "u4"), ("value", "V4")])
    return np.frombuffer(tiff, dtype, count=count, offset=start), order


def _offsets(found: np.ndarray, order: str) -> np.ndarray:
    """Each entry's value field read as an offset into the block (where its data lies when it does not fit there)."""
    return np.frombuffer(found["value"].tobytes(), order + "u4").astype(np.int64)


def _sizes(found: np.ndarray) -> np.ndarray:
    return found["count"].astype(np.uint64) * _UNITS[found["type"]]


def copied_bytes(tiff: bytes) -> int:
    """The bytes PIL copies out of ``tiff`` to load its first directory: each tag's data that does not fit in its
    entry, as far as the block holds it. Within the block's size for any well-formed block (each tag's data is its
    own); far more for one whose tags all point at the same bytes."""
    found, order = entries(tiff)
    sizes = _sizes(found)
    outside = sizes > 4
    available = np.clip(len(tiff) - _offsets(found[outside], order), 0, None).astype(np.uint64)
    return int(np.minimum(sizes[outside], available).sum())


def costly(block: bytes) -> int | None:
    """The bytes PIL would copy to load the first directory of an EXIF ``block`` (as a file holds it), when more
    than the block plus :data:`MAX_SHARED_BYTES`; else None. Besides the tags' data, PIL copies the block once for
    each "Exif\\0\\0" it strips: those past the two that writers put there (PIL adds one to a PNG's) count."""
    prefixes = _PREFIXES.match(block).end() // 6
    tiff = block[6 * prefixes :]
    stripping = max(0, prefixes - 2) * len(block)
    allowed = len(tiff) + MAX_SHARED_BYTES
    # Even were every tag to copy all of the block: a camera's (10-20 tags in its first directory) is let through
    # here in 2-3 us, where numpy's count takes 17-20.
    if _directory(tiff)[2] * len(tiff) + stripping <= allowed:
        return None
    copied = copied_bytes(tiff) + stripping
    return copied if copied > allowed else None


def integer(tiff: bytes, tag: int, offset: int | None = None) -> int | None:
    """The single integer value of ``tag`` in the directory at ``offset`` (the first one when None), as PIL's
    ``getexif()`` reads it (its last entry of a known type wins); None when the tag is absent, and 0 when it is
    present but no single integer (a text, two values, a rational), which no caller takes for a valid value."""
    found, order = entries(tiff, offset)
    mine = found[(found["tag"] == tag) & (_UNITS[found["type"]] > 0)]
    sizes = _sizes(mine)
    ends = _offsets(mine, order).astype(np.uint64) + sizes
    mine = mine[(sizes <= 4) | (ends <= len(tiff))]  # PIL skips an entry whose data the block cuts short
    if not len(mine):
        return None
    last = mine[-1]
    kind = _INTEGER.get(int(last["type"]))
    if kind is None or int(last["count"]) != 1:
        return 0
    raw = last["value"].tobytes()[: np.dtype(kind).itemsize]
    return int(np.frombuffer(raw, order + kind)[0])


def pixel_size(tiff: bytes) -> tuple[int, int] | None:
    """The picture's stored width and height from the EXIF sub-directory (PixelXDimension, PixelYDimension), or
    None when either is missing."""
    pointer = integer(tiff, EXIF_IFD)
    if not pointer:
        return None
    width, height = integer(tiff, PIXEL_X, pointer), integer(tiff, PIXEL_Y, pointer)
    return (width, height) if width and height else None

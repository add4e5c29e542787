"""An upload's structure (markers, chunks, blocks), read before PIL opens it: files whose decode cost is not bounded
by their pixels.

common.upload bounds an upload by its bytes, pixels and decoded bytes. Some small, legal files cost far more than
those bounds suggest, because the work grows with how the file is put together rather than with its picture
(measured on the 2-core VM by the bad-input audit of 2026-12-05, one item each):

- a progressive JPEG is decoded once per scan, over the whole picture, even when drafted: one 59-byte scan repeated
  through a 0.3 MiB file of 36 megapixels took 14.7 s in the server;
- PIL walks a JPEG's segments before its first scan, and a PNG's chunks, in Python: 2.6 million empty JPEG comments
  or 870,000 empty PNG chunks in 10 MiB took about 4.5 s, inside ``Image.open``;
- PIL joins a GIF's comment sub-blocks one by one (quadratic): a 10 MiB comment took 20.6 s;
- PIL decodes run-length compressed BMPs in Python: 9.75 MiB of one-pixel runs took 4.4 s;
- a PNG whose IHDR is not the first chunk (which the format forbids, and PIL accepts) hid its 16-bit depth from the
  decoded-bytes check.
- PIL copies the data of every tag of a JPEG's EXIF block as it opens the file, and a block's tags may all point at
  the same bytes: a 60 KiB file of 5,000 such tags took 0.21 s and 326 MB (the red-team probe of 2026-12-07; a
  PNG's or WebP's EXIF, which PIL parses only when asked, is read without PIL: common/exif.py).

:func:`refusal` reads only headers and lengths, at C speed or in a bounded number of steps, and names what is
wrong; every limit is far above what cameras, phones, editors and encoders write. Its cost per item on the 2-core
Intel VM: 27 us for the abuse suite's 9 KiB face crop (93 before COUNT_FIRST_BYTES), 11 us for the 394 KiB portrait
PNG, 52 us for the 60 KiB example photo (a decode of each takes milliseconds).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from common import exif

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Scans in a JPEG, counted by their start marker (entropy-coded data cannot hold one: a 0xFF there is always
#: followed by 0x00 or a restart marker; an embedded thumbnail or preview adds its own few). A baseline JPEG has 1-3,
#: libjpeg's progressive mode 10, mozjpeg's optimised scans about 10-20. Each scan costs a pass over the picture,
#: drafted or not: a flat 36-megapixel progressive JPEG decoded in 0.22 s with 10 scans, 0.53 s with 64 and 0.73 s
#: with 100 (2-core Intel VM).
MAX_JPEG_SCANS = 64
#: Segments before a JPEG's first scan (APPn, COM, DQT, DHT, SOF...); a camera writes 10-30, an ICC profile split in
#: 64 KiB pieces a few more.
MAX_JPEG_SEGMENTS = 512
#: Chunks in a PNG (libpng writes its IDAT in 8 KiB chunks: a 10 MiB file has about 1,300); PIL spends about 5 us
#: on each, so 16,384 cost under 0.1 s.
MAX_PNG_CHUNKS = 16_384
#: Bytes of extension blocks (comments, XMP and other application data) before a GIF's first picture, each block's
#: framing counted, and how many blocks: PIL joins comments one to the next, so a million empty ones cost minutes.
MAX_GIF_METADATA_BYTES = 256 * 1024
MAX_GIF_EXTENSIONS = 64
#: Bytes between two JPEG segments that are not a marker (fill bytes 0xFF, or junk libjpeg skips with a warning):
#: PIL steps over them one at a time in Python (9 MiB of them: 6.5 s), and a file has none or a few.
MAX_JPEG_GAP = 1024
#: JPEGs up to this size count their start-of-scan markers with ``bytes.count`` first (about 1 ns a byte, Intel VM):
#: when even that upper bound is within MAX_JPEG_SCANS the exact count (:func:`_jpeg_scans`, whose numpy calls cost
#: 70-90 us whatever the size) is not needed. A 8 KB face crop's check took 0.19 ms, half of it that count.
COUNT_FIRST_BYTES = 64 * 1024
#: A run-length compressed BMP (RLE8/RLE4, decoded by PIL in Python at up to ~0.45 us a byte) may be this large.
MAX_RLE_BMP_BYTES = 256 * 1024


def png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset of its data, length) of each chunk of a PNG, in order, up to IEND or as far as the data goes."""
    at, end = len(PNG_SIGNATURE), len(data)
    while at + 8 <= end:
        length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        yield kind, at + 8, length
        if kind == b"IEND":
            return
        at += 12 + length  # length, type, data, CRC


def refusal(data: bytes) -> str | None:
    """Why ``data`` is refused for its structure, for the end user; None when its structure is within the limits
    (or it is no format checked here: PIL and common.upload judge the rest)."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:8] == PNG_SIGNATURE:
        return _png(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if data[:2] == b"BM":
        return _bmp(data)
    return None


def _jpeg_scans(data: bytes) -> int:
    """Start-of-scan headers in a JPEG: 0xFF 0xDA, a length of 8-14 and the component count that length implies, so
    that the same two bytes in metadata or in data after the picture (a phone's motion-photo video) do not count.
    Found as 16-bit words at even and at odd offsets, without copying: a 2.7 MB photo in 0.7 ms on the 2-core Intel
    VM (``bytes.count`` took 3.1), 10 MiB of 0xFF in 2 ms."""
    n = len(data)
    found = [
        np.flatnonzero(np.frombuffer(data, "<u2", count=(n - start) // 2, offset=start) == 0xDAFF) * 2 + start
        for start in (0, 1)
    ]
    at = np.concatenate(found)
    at = at[at + 5 <= n]
    view = np.frombuffer(data, np.uint8)
    length = view[at + 3].astype(np.int16)
    real = (view[at + 2] == 0) & np.isin(length, (8, 10, 12, 14)) & (view[at + 4] == (length - 6) // 2)
    return int(np.count_nonzero(real))


_MARKER = re.compile(rb"\xff+")


def _jpeg(data: bytes) -> str | None:
    few = len(data) <= COUNT_FIRST_BYTES and data.count(b"\xff\xda") <= MAX_JPEG_SCANS
    if not few and (scans := _jpeg_scans(data)) > MAX_JPEG_SCANS:
        return (
            f"The JPEG file has {scans} scans; the limit is {MAX_JPEG_SCANS} (a photo has 1-20). "
            "Re-save it as a baseline JPEG or a PNG."
        )
    at, end = 2, len(data)
    exif_parts = []  # the EXIF block, as PIL joins it from every APP1 segment that holds a piece
    for _ in range(MAX_JPEG_SEGMENTS + 1):  # the segments, then the first scan's marker
        # The next marker: junk and fill bytes (0xFF) skipped at C speed; its own 0xFF is the last of the run.
        found = _MARKER.search(data, at, min(end, at + MAX_JPEG_GAP + 1))
        marker = None if found is None else _MARKER.match(data, found.start()).end() - 1
        if marker is None or marker - at > MAX_JPEG_GAP:
            if marker is None and end - at <= MAX_JPEG_GAP:
                return _exif(exif_parts)  # cut short: PIL names it
            return f"The JPEG file has more than {MAX_JPEG_GAP} stray bytes between two segments; re-save it."
        at = marker
        if at + 4 > end:
            return _exif(exif_parts)
        code = data[at + 1]
        if code in (0xDA, 0xD9):  # the first scan (PIL stops here; libjpeg reads the rest in C), or the end
            return _exif(exif_parts)
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # no length
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if code == 0xE1 and data.startswith(b"Exif\0\0", at + 4):
            exif_parts.append(data[at + 4 + 6 * bool(exif_parts) : at + 2 + length])
        at += 2 + length
    return (
        f"The JPEG file has more than {MAX_JPEG_SEGMENTS} metadata segments before its picture; "
        "re-save it without the extra metadata."
    )


def _exif(parts: list[bytes]) -> str | None:
    """Why a JPEG's EXIF block is refused: PIL parses it as it opens the file (for the resolution), copying the data
    of every tag of its first directory (common/exif.py); the block may span many segments, which PIL joins."""
    if not parts:
        return None
    block = b"".join(parts)
    if exif.tiff_of(block)[:4] in (b"II+\0", b"MM\0+"):
        return "The JPEG file's EXIF block is laid out as BigTIFF, which no camera writes; re-save it without it."
    if (copied := exif.costly(block)) is not None:
        return (
            f"The JPEG file's EXIF block is malformed: its tags make {copied / 2**20:.0f} MiB of data out of a "
            f"{len(block) / 1024:.0f} KiB block. Re-save it without its metadata."
        )
    return None


def _png(data: bytes) -> str | None:
    chunks = png_chunks(data)
    first = next(chunks, None)
    if first is None or first[0] != b"IHDR":
        return "The PNG file is malformed: its first chunk is not the IHDR header. Re-export it."
    for count, _ in enumerate(chunks, start=2):
        if count > MAX_PNG_CHUNKS:
            return (
                f"The PNG file has more than {MAX_PNG_CHUNKS} chunks; re-export it "
                "(a photo has a few thousand at most)."
            )
    return None


def _gif(data: bytes) -> str | None:
    if len(data) < 13:
        return None
    at = 13
    if data[10] & 0x80:  # a global colour table
        at += 3 << ((data[10] & 0x07) + 1)
    metadata, blocks, end = 0, 0, len(data)
    too_much = (
        f"The GIF file has more than {MAX_GIF_METADATA_BYTES // 1024} KiB or {MAX_GIF_EXTENSIONS} blocks of comments "
        "and other metadata before its picture; re-save it without them."
    )
    while at < end and data[at] == 0x21:  # extension blocks until the first image (0x2C) or the trailer
        blocks += 1
        metadata += 3  # introducer, label, terminator
        at += 2
        while at < end and (size := data[at]):
            metadata += 1 + size
            at += 1 + size
            if metadata > MAX_GIF_METADATA_BYTES:
                return too_much
        if blocks > MAX_GIF_EXTENSIONS:
            return too_much
        at += 1  # the block terminator
    if at < end and data[at] not in (0x2C, 0x3B):
        # Anything else is no GIF block: PIL would step over it byte by byte (9 MiB of it: 1.2 s).
        return f"The GIF file is malformed: byte {data[at]:#04x} where its picture should start. Re-save it."
    return None


def _bmp(data: bytes) -> str | None:
    # BITMAPINFOHEADER and later (header size >= 40) say their compression at offset 30: 1 RLE8, 2 RLE4.
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return None
    if int.from_bytes(data[30:34], "little") in (1, 2) and len(data) > MAX_RLE_BMP_BYTES:
        return (
            f"The BMP file is run-length compressed and {len(data) / 1024:.0f} KiB; the limit for such files is "
            f"{MAX_RLE_BMP_BYTES // 1024} KiB. Save it as PNG."
        )
    return None

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

:func:`refusal` reads only headers and lengths, at C speed or in a bounded number of steps, and names what is
wrong; every limit is far above what cameras, phones, editors and encoders write. Its cost per item on the 2-core
Intel VM: 32 us for the benchmark's 15 KiB face crop, 11 us for the 394 KiB portrait PNG, 52 us for the 60 KiB
example photo (a decode of each takes milliseconds).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

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
#: Bytes of extension blocks (comments, XMP and other application data) before a GIF's first picture.
MAX_GIF_METADATA_BYTES = 256 * 1024
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
    """Start-of-scan markers in a JPEG: the 0xFF bytes followed by 0xDA, found with numpy (a 2.7 MB photo in 0.8 ms on
    the 2-core Intel VM, where ``bytes.count`` took 3.1)."""
    view = np.frombuffer(data, np.uint8)
    marks = np.flatnonzero(view[:-1] == 0xFF)
    return int(np.count_nonzero(view[marks + 1] == 0xDA))


def _jpeg(data: bytes) -> str | None:
    scans = _jpeg_scans(data)
    if scans > MAX_JPEG_SCANS:
        return (
            f"The JPEG file has {scans} scans; the limit is {MAX_JPEG_SCANS} (a photo has 1-20). "
            "Re-save it as a baseline JPEG or a PNG."
        )
    at, end = 2, len(data)
    for _ in range(MAX_JPEG_SEGMENTS + 1):  # the segments, then the first scan's marker
        while at < end and data[at] == 0xFF and at + 1 < end and data[at + 1] == 0xFF:
            at += 1  # fill bytes before a marker
        if at + 4 > end or data[at] != 0xFF:
            return None  # cut short or broken: PIL names it
        marker = data[at + 1]
        if marker in (0xDA, 0xD9):  # the first scan (PIL stops here; libjpeg reads the rest in C), or the end
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            at += 2
            continue
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return (
        f"The JPEG file has more than {MAX_JPEG_SEGMENTS} metadata segments before its picture; "
        "re-save it without the extra metadata."
    )


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
    metadata, end = 0, len(data)
    while at < end and data[at] == 0x21:  # extension blocks until the first image (0x2C) or the trailer
        at += 2  # introducer, label
        while at < end and (size := data[at]):
            metadata += size
            if metadata > MAX_GIF_METADATA_BYTES:
                return (
                    f"The GIF file has more than {MAX_GIF_METADATA_BYTES // 1024} KiB of comments and other metadata "
                    "before its picture; re-save it without them."
                )
            at += 1 + size
        at += 1  # the block terminator
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

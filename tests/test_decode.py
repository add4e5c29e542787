"""serving.pipeline.decode: every accepted format and mode becomes upright RGB; every bad upload a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from common import upload
from loadtest.abuse import cases
from serving.pipeline.decode import DecodeLimits, ImageDecodeError

#: Smaller than the served defaults so the limits are cheap to cross; decoded through the models' own entry point.
LIMITS = DecodeLimits(max_pixels=1_000_000, max_bytes=1_000_000)


def decode_image(data: bytes) -> Image.Image:
    return LIMITS.decode(data).image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def gradient(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    arr = np.stack(np.broadcast_arrays(x[None, :], np.full((h, 1), 90, np.uint8), x[::-1][None, :]), -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_formats_decode_to_rgb(fmt):
    out = decode_image(encode(gradient(), fmt))
    assert out.mode == "RGB" and out.size == (40, 30)
    assert abs(int(np.asarray(out)[15, 0, 0]) - 0) < 40 and abs(int(np.asarray(out)[15, -1, 0]) - 255) < 40


def test_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(decode_image(data))[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_applied():
    img = gradient(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    out = decode_image(encode(img, "JPEG", exif=exif))
    assert out.size == (30, 40)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "I;16", "LA", "RGBA"])
def test_modes_become_rgb(mode):
    img = gradient().convert(mode) if mode != "I;16" else Image.fromarray(np.full((30, 40), 40000, np.uint16))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == (40, 30)
    if mode == "I;16":  # 16-bit samples are scaled, not clipped to white
        assert 140 < np.asarray(out)[0, 0, 0] < 170


def test_transparency_composited_on_white():
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    arr = np.asarray(decode_image(encode(img, "PNG")))
    assert arr[5, 5].tolist() == [255, 255, 255] and arr[0, 0].tolist() == [255, 0, 0]


def test_pixel_bomb_rejected_from_header():
    data = encode(Image.new("1", (2000, 1000)), "PNG")  # 2 MP in a few kilobytes
    with pytest.raises(ImageDecodeError, match="megapixels"):
        decode_image(data)


def test_too_many_bytes():
    with pytest.raises(ImageDecodeError, match="MiB"):
        decode_image(b"\xff\xd8" + b"\0" * 2_000_000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
    data = encode(gradient(200, 200), fmt)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def textured(w: int, h: int, seed: int = 0) -> Image.Image:
    """A photo-like picture (smooth noise): a JPEG of it has real scan data all the way down."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8))
    return small.resize((w, h), Image.BICUBIC)


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_a_jpeg_cut_short_and_given_its_end_marker_back_is_refused(progressive):
    """libjpeg paints the missing part grey and PIL decodes such a file without a word: the service answered an age
    and a gender for the top half of a face. The cut file without its end marker was refused already."""
    data = encode(textured(320, 240), "JPEG", quality=90, progressive=progressive)
    mended = data[: len(data) * 3 // 4] + b"\xff\xd9"
    Image.open(io.BytesIO(mended)).load()  # PIL alone: no error
    with pytest.raises(ImageDecodeError, match=r"JPEG file is truncated or corrupt \(Corrupt JPEG data: premature"):
        decode_image(mended)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) * 3 // 4])
    # A progressive file cut between two scans is a whole picture, at a coarser quality: served, as PIL shows it.
    if progressive:
        scans = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
        whole = data[: scans[len(scans) // 2]] + b"\xff\xd9"
        np.testing.assert_array_equal(
            np.asarray(decode_image(whole)), np.asarray(Image.open(io.BytesIO(whole)).convert("RGB"))
        )


JPEG_KINDS = {
    "4:4:4": {"subsampling": 0},
    "4:2:2": {"subsampling": 1},
    "4:2:0": {"subsampling": 2},
    "progressive": {"progressive": True},
    "grey": {},
}


@pytest.mark.parametrize("kind", JPEG_KINDS)
@pytest.mark.parametrize("size", [(641, 481), (2003, 3001)], ids=["small", "drafted"])
def test_jpegs_decode_to_the_pixels_pil_gives(kind, size):
    """libjpeg-turbo through simplejpeg (which reports the warnings above) gives PIL's pixels, drafted or not: the
    served answers do not move."""
    img = textured(*size, seed=len(kind)).convert("L") if kind == "grey" else textured(*size, seed=len(kind))
    data = encode(img, "JPEG", quality=90, **JPEG_KINDS[kind])
    limits = DecodeLimits(max_pixels=10_000_000, max_bytes=10_000_000, draft_side=1280)
    decoded = limits.decode(data).image
    expected, _ = upload.open_bounded(data, draft_side=1280)
    assert decoded.size == expected.size and (decoded.size == size) == (max(size) <= 1280)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(expected.convert("RGB")))


def test_a_jpeg_with_a_harmless_warning_decodes_as_before():
    """Stray bytes between two segments: libjpeg warns and decodes every pixel; simplejpeg stops there, and PIL
    decodes the file as it always did."""
    data = encode(textured(320, 240), "JPEG", quality=90)
    at = data.index(b"\xff\xdb")  # the first quantisation table
    junk = data[:at] + b"\x00" * 10 + data[at:]
    np.testing.assert_array_equal(
        np.asarray(decode_image(junk)), np.asarray(Image.open(io.BytesIO(junk)).convert("RGB"))
    )


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"hello, not an image" * 10, "not a recognised image"),
        (encode(gradient(), "TIFF"), "not a recognised image"),
    ],
)
def test_empty_garbage_and_unsupported(data, match):
    with pytest.raises(ImageDecodeError, match=match) as info:
        decode_image(data)
    assert isinstance(info.value, ValueError)


def _png_variants() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 256, (61, 83, 3), dtype=np.uint8))  # odd sizes: row padding
    rotated = photo.getexif()
    rotated[0x0112] = 6  # EXIF orientation: rotate on display
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (61, 83), dtype=np.uint8)))
    # The two other places PIL reads a PNG's orientation from: XMP (iTXt) and ImageMagick's EXIF as hex text.
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt(
        "XML:com.adobe.xmp",
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>',
        zip=True,
    )
    raw = rotated.tobytes().hex()
    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", f"\nexif\n{len(raw) // 2:8d}\n{raw}", zip=True)
    return {
        "rgb": encode(photo, "PNG"),
        "rgb, optimised": encode(photo, "PNG", optimize=True),
        "rgb with eXIf orientation": encode(photo, "PNG", exif=rotated),
        "rgb with XMP orientation": encode(photo, "PNG", pnginfo=xmp),
        "rgb with EXIF orientation in a text chunk": encode(photo, "PNG", pnginfo=text),
        "rgba": encode(rgba, "PNG"),
        "grey": encode(photo.convert("L"), "PNG"),
        "palette": encode(photo.convert("P"), "PNG"),
        "16-bit grey": encode(Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257), "PNG"),
    }


@pytest.fixture
def fast_png_results(monkeypatch) -> list:
    """What serving.pipeline.decode._fast_png returned, one entry per decode: a picture where libspng decoded the
    file, None where it left it to PIL."""
    from serving.pipeline import decode

    results = []
    real = decode._fast_png
    monkeypatch.setattr(decode, "_fast_png", lambda img, data: results.append(real(img, data)) or results[-1])
    return results


@pytest.mark.parametrize("name", list(_png_variants()))
def test_png_fast_path_gives_the_same_pixels_as_pil(name, monkeypatch, fast_png_results):
    """8-bit RGB PNGs go to libspng (serving.pipeline.decode._fast_png), everything else to PIL: same pictures."""
    import builtins

    data = _png_variants()[name]
    fast = np.asarray(decode_image(data))
    # Which decoder made the first picture: libspng exactly for the plain 8-bit RGB files, so the comparison below
    # is libspng against PIL there, and PIL's own conversions elsewhere.
    assert (fast_png_results[-1] is not None) == (name in ("rgb", "rgb, optimised")), name
    real_import = builtins.__import__

    def no_pyspng(module, *args, **kwargs):
        if module == "pyspng":
            raise ImportError(module)
        return real_import(module, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyspng)
    pil = np.asarray(decode_image(data))
    np.testing.assert_array_equal(fast, pil)
    assert fast.dtype == np.uint8 and fast.shape[2] == 3
    if "orientation" in name:
        assert fast.shape[:2] == (83, 61), name  # turned a quarter, as the tag says


def test_png_fast_path_decodes_the_file_once(monkeypatch):
    """libspng's picture is the only decode: reading the orientation from PIL afterwards loaded the whole PNG
    again (PIL looks for a PNG's EXIF by decoding it), which more than doubled a photo PNG's cost."""
    from PIL import ImageFile

    from serving.pipeline import decode

    pytest.importorskip("pyspng")
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.format) or real_load(self))
    decoded = decode.decode_upload(_png_variants()["rgb"])
    assert loads == [] and decoded.image.size == decoded.file_size == (83, 61)
    decode.decode_upload(_png_variants()["rgb with XMP orientation"])
    assert loads  # the control: PIL decodes what the fast path leaves to it, so the counter sees a PIL decode


def test_png_fast_path_is_taken_for_rgb_and_broken_files_keep_their_message(fast_png_results):
    pytest.importorskip("pyspng")
    calls = fast_png_results
    data = _png_variants()["rgb"]
    decode_image(data)
    assert calls[-1] is not None  # libspng decoded it
    decode_image(_png_variants()["rgba"])
    assert calls[-1] is None  # PIL composites the alpha
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])  # libspng refuses it; PIL names the problem
    assert calls[-1] is None


def _chunks(data: bytes) -> list[bytes]:
    """A PNG's chunks, whole (length, type, data, CRC), after the signature."""
    from common import structure

    return [data[at - 8 : at + length + 4] for _, at, length in structure.png_chunks(data)]


def test_png_orientation_is_found_from_the_chunks_wherever_they_lie(fast_png_results):
    """The fast path's check reads chunk headers, not the file's bytes: an XMP orientation after the pixels (where
    PIL reads it at load) still goes to PIL and is turned; the three names inside a chunk that is not a text chunk
    (as they could lie, by chance, in the compressed pixels) leave the file to libspng."""
    pytest.importorskip("pyspng")
    taken = fast_png_results
    variants = _png_variants()
    chunks = _chunks(variants["rgb with XMP orientation"])
    xmp = next(c for c in chunks if c[4:8] == b"iTXt")
    moved = [c for c in chunks if c is not xmp]
    after_pixels = b"\x89PNG\r\n\x1a\n" + b"".join([*moved[:-1], xmp, moved[-1]])  # IEND stays last
    assert [c[4:8] for c in _chunks(after_pixels)][-3:] == [b"IDAT", b"iTXt", b"IEND"]
    assert decode_image(after_pixels).size == (61, 83) and taken[-1] is None  # turned, by PIL
    plain = _chunks(variants["rgb"])
    decoy = cases.png_chunk(b"prVt", b"eXIf XML:com.adobe.xmp\0Raw profile type exif")
    lucky = b"\x89PNG\r\n\x1a\n" + b"".join([plain[0], decoy, *plain[1:]])
    np.testing.assert_array_equal(np.asarray(decode_image(lucky)), np.asarray(decode_image(variants["rgb"])))
    assert taken[-2] is not None  # libspng


def test_an_upright_picture_is_not_copied():
    """load_rgb returns an upright RGB file's own picture: a copy cost a memory copy and fresh page faults per
    request (the detection path's 1280 px photos 19% slower)."""
    data = encode(gradient(), "WEBP")  # decoded by PIL (JPEGs by simplejpeg, PNGs by libspng in the server)
    opened, _ = upload.open_bounded(data)
    assert upload.load_rgb(opened, data) is opened
    # Nor does it keep the file's EXIF (a camera's, its GPS), which a copy never had: neither does a JPEG's picture.
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "a camera", 1
    for fmt in ("WEBP", "JPEG"):
        data = encode(gradient(), fmt, exif=exif)
        opened, _ = upload.open_bounded(data)
        picture = upload.load_rgb(opened, data)
        assert (picture is opened) == (fmt == "WEBP")
        assert dict(picture.getexif()) == {} and "exif" not in picture.info


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright_without_its_tag(orientation):
    """As PIL's exif_transpose turns it, for all eight values; the tag goes with the turn, so nothing that saves the
    picture again (the web page's annotated copy) turns it a second time."""
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(gradient(40, 30), "PNG", exif=exif)  # lossless: the pixels must match exactly
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    out = decode_image(data)
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert 0x0112 not in out.getexif()


def test_a_mistyped_exif_tag_does_not_fail_a_photo():
    """A camera's EXIF with orientation 6 and tag 0x011E written as text: exif_transpose wrote the block back and
    raised TypeError, answered as "Could not process the image: bad operand type for abs(): 'str'"."""
    exif = bytes.fromhex(
        "4578696600004d4d002a000000080002011e000200000006000000260112000300000001000600000000000043616e6f6e00"
    )
    assert decode_image(encode(gradient(40, 30), "JPEG", exif=exif)).size == (30, 40)  # turned, not refused
    # An EXIF block that cannot be read at all: the pixels as stored, as browsers show them.
    assert decode_image(encode(gradient(40, 30), "JPEG", exif=b"Exif\0\0MM\0*garbage")).size == (40, 30)


@pytest.mark.parametrize(
    "fmt,cut",
    [("JPEG", lambda data: data[:200]), ("WEBP", lambda data: data[: len(data) // 2]), ("BMP", lambda d: d[:40])],
    ids=["jpeg header", "half a webp", "bmp header"],
)
def test_a_file_cut_in_its_header_is_refused_as_truncated(fmt, cut):
    # PIL raises these while opening, not decoding ("Truncated File Read", "could not create decoder object"): they
    # escaped as OSError, which the server answered "Could not process the image" and the web page as a bare Error.
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(cut(encode(gradient(200, 200), fmt)))


def test_an_rgb_pngs_transparent_colour_is_composited_on_white():
    img = Image.new("RGB", (10, 10), (0, 0, 0))  # black is the tRNS colour: transparent
    img.putpixel((0, 0), (255, 0, 0))
    arr = np.asarray(decode_image(encode(img, "PNG", transparency=(0, 0, 0))))
    assert arr[5, 5].tolist() == [255, 255, 255] and arr[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("value,expected", [(0, 0), (255, 1), (256, 1), (257 * 128, 128), (65535, 255)])
def test_16_bit_grey_is_scaled_by_its_depth_not_its_pixels(value, expected):
    # Scaled only when some sample exceeded 255, a flat 16-bit 255 came out white and a flat 256 black.
    data = encode(Image.fromarray(np.full((8, 8), value, np.uint16)), "PNG")
    assert np.asarray(decode_image(data))[4, 4].tolist() == [expected] * 3


@pytest.mark.parametrize(("size", "orientation"), [((4000, 3001), 1), ((10240, 1001), 6), ((3001, 4000), 8)])
def test_a_drafted_jpegs_boxes_map_back_to_the_upright_file_exactly(size, orientation):
    # A draft divides both sides by one power of two, rounding each up: one factor for both axes put the bottom of
    # a 4000x3001 file at 3002, and an EXIF-rotated file's x at the stored width's factor (30 px off at 10 kpx).
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(gradient(*size), "JPEG", quality=80, exif=exif)
    decoded = DecodeLimits(draft_side=1280).decode(data)
    upright = size if orientation == 1 else size[::-1]
    assert max(decoded.image.size) < max(size)  # really drafted
    width, height = decoded.image.size
    assert decoded.to_file((0, 0, width, height)) == (0, 0, *upright)
    assert decoded.to_file((width / 2, height / 4, width * 2, -5)) == (upright[0] / 2, upright[1] / 4, upright[0], 0)


# Files whose decode cost grows with their structure, not their pixels (common/structure.py): each is refused with a
# message before PIL opens it, and the same kind of file within the limit still decodes. The files are the abuse
# suite's (loadtest/abuse/cases.py, category costly_structure).
def test_a_jpeg_with_too_many_scans_is_refused_before_decoding():
    from common import structure

    assert decode_image(cases.jpeg_with_scans(structure.MAX_JPEG_SCANS)).size == (64, 48)
    with pytest.raises(ImageDecodeError, match=f"has {structure.MAX_JPEG_SCANS + 1} scans; the limit is"):
        decode_image(cases.jpeg_with_scans(structure.MAX_JPEG_SCANS + 1))


def test_a_small_jpeg_with_few_scan_markers_skips_the_exact_count(monkeypatch):
    """Up to COUNT_FIRST_BYTES, bytes.count bounds the scans from above: a face crop pays no numpy calls for it; a
    file with more markers than scans allowed, or a larger one, gets the exact count."""
    from common import structure

    exact: list[int] = []
    real = structure._jpeg_scans
    monkeypatch.setattr(structure, "_jpeg_scans", lambda data: exact.append(len(data)) or real(data))
    crop = cases.face_crop()
    assert len(crop) <= structure.COUNT_FIRST_BYTES and structure.refusal(crop) is None and exact == []
    many = cases.jpeg_with_scans(structure.MAX_JPEG_SCANS + 1)
    assert len(many) <= structure.COUNT_FIRST_BYTES and "scans" in structure.refusal(many) and exact == [len(many)]
    photo = encode(textured(640, 480), "JPEG", quality=95)
    assert len(photo) > structure.COUNT_FIRST_BYTES and structure.refusal(photo) is None and exact[-1] == len(photo)


def test_a_jpeg_with_too_many_segments_before_its_picture_is_refused():
    from common import structure

    plain = cases.jpeg_with_comments(0)
    room = structure.MAX_JPEG_SEGMENTS - (len(cases.jpeg_segments(plain)) - 2)  # the scan and EOI are not counted
    assert decode_image(cases.jpeg_with_comments(room)).size == (16, 16)
    with pytest.raises(ImageDecodeError, match=f"more than {structure.MAX_JPEG_SEGMENTS} metadata segments"):
        decode_image(cases.jpeg_with_comments(room + 1))


def test_a_png_must_start_with_ihdr_and_may_have_only_so_many_chunks():
    from common import structure

    # PIL opens a PNG whose IHDR comes second, and read a 16-bit file's depth from it as 8 (half its decoded size).
    with pytest.raises(ImageDecodeError, match="first chunk is not the IHDR"):
        decode_image(cases.png_ihdr_second(40, 30))
    plain = _chunks(encode(gradient(), "PNG"))
    signature = b"\x89PNG\r\n\x1a\n"
    # IDAT in 100-byte chunks, as some encoders write it, and as many empty ones as the limit lets in: decoded.
    pixels = b"".join(c[8:-4] for c in plain if c[4:8] == b"IDAT")
    idats = [cases.png_chunk(b"IDAT", pixels[i : i + 100]) for i in range(0, len(pixels), 100)]
    room = structure.MAX_PNG_CHUNKS - len(idats) - 2  # IHDR and IEND
    many = signature + b"".join([plain[0], *[cases.png_chunk(b"tEXt", b"")] * room, *idats, plain[-1]])
    assert np.asarray(decode_image(many)).shape == (30, 40, 3)
    too_many = signature + b"".join([plain[0], *[cases.png_chunk(b"tEXt", b"")] * (room + 1), *idats, plain[-1]])
    with pytest.raises(ImageDecodeError, match=f"more than {structure.MAX_PNG_CHUNKS} chunks"):
        decode_image(too_many)
    with pytest.raises(ImageDecodeError, match=f"more than {structure.MAX_PNG_CHUNKS} chunks"):
        decode_image(cases.png_with_chunks(structure.MAX_PNG_CHUNKS))  # the abuse suite's, 3 chunks more


def test_a_gif_with_too_much_metadata_before_its_picture_is_refused():
    from common import structure

    assert decode_image(cases.gif_with_comment(50_000)).size == (16, 16)
    assert decode_image(cases.gif_with_comments(structure.MAX_GIF_EXTENSIONS)).size == (16, 16)
    for too_much in (
        cases.gif_with_comment(structure.MAX_GIF_METADATA_BYTES + 1),
        cases.gif_with_comments(structure.MAX_GIF_EXTENSIONS + 1),  # empty ones: PIL joined them in quadratic time
    ):
        with pytest.raises(ImageDecodeError, match="KiB or 64 blocks of comments and other metadata"):
            decode_image(too_much)
    one = cases.gif_with_comments(1)
    at = one.index(b"\x21\xfe\x00") + 3  # where the picture starts
    with pytest.raises(ImageDecodeError, match="malformed: byte 0x00 where its picture should start"):
        decode_image(one[:at] + b"\x00" * 1000 + one[at:])  # PIL stepped over such junk byte by byte


def test_a_jpeg_counts_only_real_scans_and_bounds_the_bytes_between_segments():
    from common import structure

    # A phone's motion photo: a video after the picture, whose bytes hold 0xFF 0xDA by chance; not scans.
    tail = b"\x00\x00\x00\x18ftypmp42" + b"\xff\xda\x12\x34" * (structure.MAX_JPEG_SCANS + 1)
    assert decode_image(encode(gradient(), "JPEG") + tail).size == (40, 30)
    # Fill bytes before a marker are legal, a few of them; PIL steps over each in Python.
    assert decode_image(cases.jpeg_with_gap(structure.MAX_JPEG_GAP)).size == (16, 16)
    with pytest.raises(ImageDecodeError, match=f"more than {structure.MAX_JPEG_GAP} stray bytes between two segments"):
        decode_image(cases.jpeg_with_gap(structure.MAX_JPEG_GAP + 1))


def test_a_large_run_length_compressed_bmp_is_refused():
    from common import structure

    small = decode_image(cases.rle8_bmp(8, 4))
    assert small.size == (8, 4) and small.getpixel((0, 0)) == (1, 1, 1)
    with pytest.raises(ImageDecodeError, match="run-length compressed and .* KiB; the limit"):
        decode_image(cases.rle8_bmp(8, 4, padding=structure.MAX_RLE_BMP_BYTES))


def test_a_jpeg_with_a_second_picture_mpo_is_drafted_and_bounded_as_a_jpeg():
    """PIL names a JPEG that carries a camera's preview or a second view "MPO"; it was decoded at full size and held
    to the decoded-bytes limit as if it could not be drafted (a 6000x4000 photo refused)."""
    big = gradient(6000, 4000)
    mpo = encode(big, "MPO", save_all=True, append_images=[gradient(600, 400)], quality=70)
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    limits = DecodeLimits()  # the served defaults: 6000x4000x3 is 69 MiB undrafted, over the 64 MiB limit
    decoded = limits.decode(mpo)
    assert decoded.image.size == (1500, 1000) and decoded.file_size == (6000, 4000)


def test_a_requests_pixel_budget_refuses_the_items_past_it_and_serves_the_ones_before():
    from serving.pipeline.decode import PixelBudget

    budget = PixelBudget(3 * 40 * 30)  # three 40x30 pictures
    picture = encode(gradient(), "PNG")
    for _ in range(3):
        assert LIMITS.decode(picture, budget=budget).image.size == (40, 30)
    with pytest.raises(ImageDecodeError, match="add up to more than 0 megapixels; send fewer or smaller"):
        LIMITS.decode(picture, budget=budget)
    assert budget.left == 0
    # A drafted JPEG counts the pixels decoded, not the file's: 4000x3000 drafted to 1000x750 takes 0.75 MP.
    budget = PixelBudget(1_000_000)
    big = encode(gradient(4000, 3000), "JPEG", quality=50)
    DecodeLimits(draft_side=1000).decode(big, budget=budget)
    assert budget.left == 1_000_000 - 1000 * 750


def test_the_models_decode_with_the_limits_their_config_gives():
    """DecodeLimits.from_params is how preprocess and preprocess_crop read their config: each value is used."""
    picture = encode(gradient(400, 300), "JPEG")
    with pytest.raises(ImageDecodeError, match="the limit is 0 MiB"):
        DecodeLimits.from_params({"max_bytes": "100"}).decode(picture)
    with pytest.raises(ImageDecodeError, match="megapixels"):
        DecodeLimits.from_params({"max_pixels": "1000"}).decode(picture)
    with pytest.raises(ImageDecodeError, match="to decode"):
        DecodeLimits.from_params({"max_decoded_bytes": "1000"}).decode(picture)
    assert DecodeLimits.from_params({"draft_side": "100"}).decode(picture).image.size == (100, 75)
    assert DecodeLimits.from_params({"draft_side": ""}).decode(picture).image.size == (400, 300)  # default 1280


def test_pils_own_bomb_guard_reads_as_ours():
    # Over PIL's process-wide limit (2 x MAX_IMAGE_PIXELS) PIL raises at open, before our pixel check.
    chunks = _chunks(encode(Image.new("L", (1, 1)), "PNG"))
    side = (20_000).to_bytes(4, "big")
    huge = b"\x89PNG\r\n\x1a\n" + b"".join([cases.png_chunk(b"IHDR", side + side + chunks[0][16:21]), *chunks[1:]])
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        DecodeLimits(max_pixels=10**12, max_decoded_bytes=10**12).decode(huge)


def test_the_warm_up_samples_take_the_paths_uploads_take(fast_png_results, monkeypatch):
    """What the detecting models decode and detect on before their first request (decode.sample_pictures) must go
    through the decoders an upload goes through, or the first upload still pays for them."""
    from serving.pipeline.decode import sample_pictures

    jpeg_calls = []
    real = upload.simplejpeg.decode_jpeg
    monkeypatch.setattr(upload.simplejpeg, "decode_jpeg", lambda *a, **k: jpeg_calls.append(1) or real(*a, **k))
    pictures = sample_pictures()
    assert [p.size for p in pictures] == [(64, 64)] * 2 and {p.mode for p in pictures} == {"RGB"}
    assert fast_png_results[0] is not None  # the PNG: libspng
    assert jpeg_calls == [1]  # the JPEG: libjpeg-turbo through simplejpeg


# An EXIF block whose tags all point at the same bytes (common/exif.py): PIL's getexif() copies them once per tag.
def served_picture(data: bytes) -> Image.Image:
    """Decoded within the served limits (10 MiB a file), as common.upload decodes it."""
    return upload.load_rgb(upload.open_bounded(data)[0], data)


@pytest.mark.parametrize("make", [cases.png_with_exif, cases.webp_with_exif], ids=["png", "webp"])
def test_exif_whose_tags_share_their_data_is_not_parsed_and_the_picture_is_served_as_stored(make):
    """The red-team probe's bomb: a 9.6 MB PNG of such tags kept a preprocess stub over a minute, 300 distinct ones
    took it to 2.8 GB. Here 2,000 distinct tags of 1 MiB: PIL would keep 2 GiB of copies (a few ms here)."""
    import tracemalloc

    data = make(cases.exif_sharing_tags(2_000, 2**20, distinct=True))
    tracemalloc.start()
    try:
        picture = served_picture(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert picture.size == (64, 48) and peak < 16 * 2**20, peak
    # A well-formed block as large is parsed as before: its orientation turns the picture.
    exif = Image.Exif()
    exif[0x0112], exif[0x9286] = 6, b"ASCII\0\0\0" + bytes(2**20)  # a 1 MiB user comment: its own bytes
    assert served_picture(make(exif.tobytes())).size == (48, 64)


@pytest.mark.parametrize("make", [cases.png_with_exif, cases.webp_with_exif], ids=["png", "webp"])
def test_exif_behind_many_exif_headers_is_not_parsed(make):
    """PIL strips each "Exif\\0\\0" before the structure with a copy of the rest: 400,000 of them took it 11 s."""
    block = Image.Exif()
    block[0x0112] = 6
    data = make(b"Exif\0\0" * 400_000 + block.tobytes()[6:])
    assert served_picture(data).size == (64, 48)  # as stored
    assert served_picture(make(b"Exif\0\0" + block.tobytes())).size == (48, 64)  # two of them (PIL adds one): turned


def test_a_jpeg_whose_exif_tags_share_their_data_is_refused_as_it_would_be_opened():
    """PIL parses a JPEG's EXIF as it opens the file (for its resolution), joining every APP1 piece of it."""
    from common import exif, structure

    for tags, shared in ((5_000, 60_000), (65_535, 4 * 2**20)):  # in one segment; over 65 segments
        data = cases.jpeg_with_exif(cases.exif_sharing_tags(tags, shared))
        assert len(cases.jpeg_segments(data)) > (1 if tags < 6_000 else 60)
        with pytest.raises(ImageDecodeError, match="EXIF block is malformed: its tags make .* MiB of data out of a"):
            upload.open_bounded(data)
    # Up to the block plus MAX_SHARED_BYTES is let through, as a camera's own data never comes near.
    room = cases.exif_sharing_tags(65, 64_000)  # 65 x 64,000 bytes out of about 65 KB: within 4 MiB more
    assert exif.costly(room) is None and structure.refusal(cases.jpeg_with_exif(room)) is None
    assert exif.costly(cases.exif_sharing_tags(70, 64_000)) is not None
    big_tiff = b"II+\0" + bytes(20)
    assert "BigTIFF" in structure.refusal(cases.jpeg_with_exif(big_tiff))


def test_an_image_sent_as_base64_text_is_told_to_send_its_bytes():
    """The KServe v2 JSON habit elsewhere: the red-team probe's base64 PNG got only "not a recognised image"."""
    import base64

    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):
        text = base64.b64encode(encode(gradient(), fmt))
        for data in (text, b"data:image/x;base64," + text):
            with pytest.raises(ImageDecodeError, match="it is an image written as base64 text. Send the file's own"):
                decode_image(data)
    with pytest.raises(ImageDecodeError, match=r"not a recognised image; upload a JPEG"):
        decode_image(base64.b64encode(b"some text that is no image at all"))

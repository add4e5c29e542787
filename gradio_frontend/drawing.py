"""The picture the page shows: the upload decoded as the server decodes it, at most DISPLAY_SIDE px, with each
face's box drawn on it (a label on the one face, or a number per face that the table explains)."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from client import DetectedFace, FaceResult
from common import upload
from gradio_frontend.labels import place_labels
from gradio_frontend.results import summary

#: The longest side of the picture the page shows and draws on; a phone photo's 4,000 px only slow the page down.
#: JPEGs are decoded at a reduced scale as the server decodes them (upload.DRAFT_SIDE), so a photo's longer side
#: shows at 1280-2048 px (a 6000x4000 one at 1500).
DISPLAY_SIDE = 2048
BOX_COLOUR = (255, 64, 64)


def load_display_image(data: bytes) -> tuple[Image.Image, float]:
    """The upload as the server's decoder sees it (bounded, upright, RGB: common/upload.py), at most
    :data:`DISPLAY_SIDE` on its longer side; returns it with the factor that maps its pixels to the file's (the
    boxes' coordinates).

    Raises:
        upload.ImageDecodeError: For what the server refuses too: size, format, pixels and decoded bytes from the
            header, before any pixel is decoded here; a truncated or corrupt file once decoded.
    """
    # Drafted as the server drafts (a JPEG over DRAFT_SIDE decoded at a reduced scale): drafted to DISPLAY_SIDE, a
    # 4000x3000 photo could not be halved (2000 < 2048) and took 285 ms to decode in full instead of 55.
    opened, stored = upload.open_bounded(data, draft_side=upload.DRAFT_SIDE)
    img = upload.load_rgb(opened, data)  # may be `opened` itself, so it stays open (its bytes are in memory)
    scale = upload.upright_size(opened, stored)[0] / img.width
    if max(img.size) > DISPLAY_SIDE:
        factor = DISPLAY_SIDE / max(img.size)
        img = img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))), Image.BILINEAR)
        scale /= factor
    return img, scale


def _shown(box, scale: float) -> tuple[float, ...]:
    """A box in the file's pixels, on the picture shown (``scale``: from :func:`load_display_image`)."""
    return tuple(float(v) / scale for v in box)


def annotate(image: Image.Image, result: FaceResult, scale: float = 1.0) -> Image.Image:
    """Draws the face box and the summary label onto a copy of ``image`` (shown ``scale`` times smaller than the file
    the box refers to)."""
    out = image.copy()
    if not result.face_found:
        return out
    width, height = out.size
    box = _shown(result.box, scale) if result.box else (0.0, 0.0, float(width), float(height))
    _draw_box(out, box, summary(result, dash="-"))
    return out


def annotate_faces(
    image: Image.Image, faces: list[DetectedFace] | tuple[DetectedFace, ...], scale: float = 1.0
) -> Image.Image:
    """Draws every face's box with its number on a copy; the details are in the table, on the row of that number.
    ``scale``: the picture is shown that many times smaller than the file the boxes refer to.

    Numbers instead of text labels: a crowd's labels would cover each other and the faces. Each number sits
    on its box's corner where it collides with no other number (gradio_frontend/labels.py).
    """
    out = image.copy()
    draw = ImageDraw.Draw(out)
    width, height = out.size
    boxes = [_shown(face.box, scale) for face in faces]
    fonts, sizes = [], []
    for k, (x0, _, x1, _) in enumerate(boxes, 1):
        # Scales with its face within readable limits, so small faces in a crowd get small markers.
        font = ImageFont.load_default(size=max(14, min(round(min(width, height) / 10), round((x1 - x0) / 2.5))))
        left, top, right, bottom = draw.textbbox((0, 0), str(k), font=font)
        pad = max(2, (bottom - top) // 4)
        fonts.append((font, left, top, pad))
        sizes.append((right - left + 2 * pad, bottom - top + 2 * pad))
    for x0, y0, x1, y1 in boxes:
        line = max(2, min(round(min(width, height) / 150), round((x1 - x0) / 30)))
        draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR, width=line)
    for k, ((font, left, top, pad), (tx, ty, tx1, ty1)) in enumerate(
        zip(fonts, place_labels(boxes, sizes, (width, height)), strict=True), 1
    ):
        draw.rectangle((tx, ty, tx1, ty1), fill=BOX_COLOUR)
        draw.text((tx + pad - left, ty + pad - top), str(k), fill=(255, 255, 255), font=font)
    return out


def _draw_box(out: Image.Image, box, label: str) -> None:
    draw = ImageDraw.Draw(out)
    width, height = out.size
    x0, y0, x1, y1 = (float(v) for v in box)
    line = max(2, round(min(width, height) / 150))
    font = ImageFont.load_default(size=max(14, round(min(width, height) / 22)))
    draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR, width=line)
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    text_w, text_h = right - left, bottom - top
    pad = max(2, text_h // 4)
    # Label above the box when it fits, else inside its top edge.
    ty = y0 - text_h - 2 * pad if y0 - text_h - 2 * pad >= 0 else y0
    tx = min(max(0.0, x0), max(0.0, width - text_w - 2 * pad))
    draw.rectangle((tx, ty, tx + text_w + 2 * pad, ty + text_h + 2 * pad), fill=BOX_COLOUR)
    draw.text((tx + pad - left, ty + pad - top), label, fill=(255, 255, 255), font=font)

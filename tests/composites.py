"""Group-photo composites built from the committed public-domain portrait (tests cannot see UTKFace)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "gradio_frontend" / "examples" / "grace_hopper.jpg"  # 512x600, face ~190 px wide


def grid(rows: int, cols: int, *, cell: int = 160, big: int = 0, background=(200, 205, 210)) -> Image.Image:
    """``rows x cols`` portraits (every other one mirrored) of ``cell`` px width; with ``big`` > 0 the
    first cell is replaced by a portrait ``big`` px wide placed below the grid, the most prominent face."""
    portrait = Image.open(PORTRAIT).convert("RGB")
    height = round(cell * portrait.height / portrait.width)
    small = portrait.resize((cell, height), Image.Resampling.LANCZOS)
    mirrored = ImageOps.mirror(small)
    gap = cell // 8
    extra = round(big * portrait.height / portrait.width) + gap if big else 0
    canvas = Image.new("RGB", (cols * (cell + gap) + gap, rows * (height + gap) + gap + extra), background)
    for r in range(rows):
        for c in range(cols):
            canvas.paste(small if (r + c) % 2 == 0 else mirrored, (gap + c * (cell + gap), gap + r * (height + gap)))
    if big:
        large = portrait.resize((big, round(big * portrait.height / portrait.width)), Image.Resampling.LANCZOS)
        canvas.paste(large, (gap, rows * (height + gap) + gap))
    return canvas


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    return buf.getvalue()

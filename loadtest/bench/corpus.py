"""Inputs for the benchmarks, made at run time from the shipped public-domain portrait (and UTKFace
crops when the archive is next to the checkout; read, never shipped)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from common import spec

ROOT = Path(__file__).resolve().parents[2]
PORTRAIT = ROOT / "gradio_frontend" / "examples" / "grace_hopper.jpg"
DEFAULT_UTKFACE = ROOT.parent / "shared" / "datasets" / "UTKFace.tar.gz"
#: A 12-megapixel phone photo's frame.
PHONE_SIZE = (4000, 3000)


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def portrait() -> Image.Image:
    return Image.open(PORTRAIT).convert("RGB")


def phone_photo() -> bytes:
    """A 12-megapixel phone-style JPEG (4000x3000, quality 90): the portrait upscaled to fill most of the
    frame's height, on a textured background so the file has a phone photo's size (several MB)."""
    width, height = PHONE_SIZE
    rng = np.random.default_rng(12)
    # Low-frequency colour texture, upscaled: compresses like a real scene, unlike noise or a flat fill.
    texture = Image.fromarray(rng.integers(40, 200, (30, 40, 3), dtype=np.uint8)).resize(PHONE_SIZE)
    face = portrait()
    scale = 0.8 * height / face.height
    face = face.resize((round(face.width * scale), round(face.height * scale)), Image.Resampling.BILINEAR)
    texture.paste(face, ((width - face.width) // 3, (height - face.height) // 2))
    return jpeg(texture, quality=90)


def crop_corpus(utkface: Path | None = DEFAULT_UTKFACE, n: int = 64) -> tuple[list[bytes], str]:
    """Aligned 200x200 crops (JPEG): the first ``n`` UTKFace files when the archive is here, else crops
    around the portrait's face."""
    if utkface is not None and utkface.is_file():
        blobs = []
        with tarfile.open(utkface) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(".jpg"):
                    blobs.append(tar.extractfile(member).read())
                    if len(blobs) == n:
                        break
        if blobs:
            return blobs, f"first {len(blobs)} UTKFace crops ({utkface.name})"
    base, blobs = portrait(), []
    for dx in (-20, 0, 20):
        for dy in (-20, 0, 20):
            box = (106 + dx, 70 + dy, 406 + dx, 370 + dy)  # around the face in the 512x600 portrait
            blobs.append(jpeg(base.crop(box).resize((200, 200), Image.Resampling.BILINEAR)))
    return blobs, "9 crops of gradio_frontend/examples/grace_hopper.jpg"


def model_crops() -> np.ndarray:
    """A fixed batch of 64 model inputs (uint8, 64x64x3): the crop corpus resized as serving does."""
    blobs, _ = crop_corpus()
    faces = [spec.to_model_input(Image.open(io.BytesIO(b))) for b in blobs]
    reps = -(-64 // len(faces))
    return np.stack((faces * reps)[:64])

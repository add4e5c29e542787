"""The crop path's warm-up uploads: made here, committed beside ``preprocess_crop``'s configs.

    python -m serving.ops.warmup   # rewrites model_repository/preprocess_crop/warmup/

Triton runs a model's ``model_warmup`` requests before it calls the model ready. Without them the first real
crop after a cold start paid what the stub does once: PIL's JPEG and PNG plugins loaded, libspng's first call,
the first allocations of decode and resize; that first answer took 91-146 ms against 19-32 ms with them
(docs/performance-log.md, cold start). So the warm-up sends one upload per format the crop path is sent, each
going the whole way, decode and crop, as a user's would. The picture is synthetic (smooth gradients, no face, no
data from anywhere), at UTKFace's crop size.

Triton reads a ``TYPE_STRING`` warm-up input from a file of elements, each a 4-byte little-endian length and
then its bytes: what tritonclient's ``serialize_byte_tensor`` writes, so this module calls it rather than
restating the layout. ``tests/test_warmup.py`` checks that the committed files are what this module makes and
that they decode into a crop without an error.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image
from tritonclient.utils import serialize_byte_tensor

FOLDER = Path(__file__).resolve().parents[2] / "model_repository" / "preprocess_crop" / "warmup"
#: UTKFace's aligned crops are 200x200: the size the crop path is built for.
SIDE = 200
#: Warm-up file -> the format it holds; the configs name these files.
FILES = {"crop_jpeg.bin": "JPEG", "crop_png.bin": "PNG"}


def picture() -> Image.Image:
    """A deterministic RGB picture with detail in every channel (so the encoders have something to code)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6.0 * (x + y))], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")


def encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    picture().save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def warmup_file(fmt: str) -> bytes:
    """The content of the warm-up file for ``fmt``: one BYTES element holding the encoded picture."""
    return serialize_byte_tensor(np.array([encoded(fmt)], dtype=np.object_)).item()


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    FOLDER.mkdir(parents=True, exist_ok=True)
    for name, fmt in FILES.items():
        (FOLDER / name).write_bytes(warmup_file(fmt))
        print(f"wrote {FOLDER / name}")


if __name__ == "__main__":
    main()

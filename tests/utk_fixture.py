"""A tiny UTKFace-format data set made on the fly (UTKFace itself is never in the repo)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

N_GOOD = 60


def jpeg(seed: int, size: int = 200) -> bytes:
    """A synthetic 'face-sized' JPEG; different seeds give different pictures (not just different noise: the
    loader takes pictures that look alike for copies of one photo)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BILINEAR)
    img = np.asarray(coarse, np.float32) + rng.normal(0, 20, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def files() -> dict[str, bytes]:
    """File name -> bytes, with every quirk the loader must survive, and the expected counts."""
    out = {}
    for i in range(N_GOOD):
        age = [1, 3, 4, 8, 15, 25, 33, 47, 59, 66, 78, 85, 92, 101, 116][i % 15]
        out[f"{age}_{i % 2}_{i % 5}_20170116{i:09d}.jpg.chip.jpg"] = jpeg(i)
    dup = jpeg(1000)
    out["30_0_0_20170117000000001.jpg.chip.jpg"] = dup  # agreeing duplicates: one kept
    out["30_0_2_20170117000000002.jpg.chip.jpg"] = dup
    conflict = jpeg(1001)
    out["20_1_0_20170117000000003.jpg.chip.jpg"] = conflict  # conflicting labels: both dropped
    out["45_1_0_20170117000000004.jpg.chip.jpg"] = conflict
    out["39_1_20170116174525125.jpg.chip.jpg"] = jpeg(1002)  # no race field
    out["24_0_1_20170116220224657 .jpg.chip.jpg"] = jpeg(1003)  # space in the timestamp
    out["26_1_2_201701161745251.jpg.chip.jpg"] = jpeg(1004)  # 16-digit timestamp
    out["27_0_3_201701161745251251.jpg.chip.jpg"] = jpeg(1005)  # 18-digit timestamp
    out["33_0_1_20170116174525125.jpg.chip.jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg"  # corrupt
    out["notaface.jpg"] = jpeg(1006)  # unparsable names
    out["x_1_0_20170116174525125.jpg.chip.jpg"] = jpeg(1007)
    out["200_0_0_20170116174525125.jpg.chip.jpg"] = jpeg(1008)
    out["20_7_0_20170116174525125.jpg.chip.jpg"] = jpeg(1009)
    return out


EXPECTED = {
    "files": N_GOOD + 13,
    "unparsable": 4,
    "undecodable": 1,
    "duplicate_copies": 1,
    "conflicting_dropped": 2,
    "kept": N_GOOD + 1 + 4,
}


def write_folder(root: Path) -> Path:
    folder = root / "UTKFace"
    folder.mkdir(parents=True)
    for name, data in files().items():
        (folder / name).write_bytes(data)
    return folder


def write_archive(root: Path) -> Path:
    path = root / "UTKFace.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files().items():
            info = tarfile.TarInfo(f"UTKFace/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path

"""The OpenVINO IR beside a SavedModel: converted once (export or publish), read at load instead of converting.

    <version>/model.savedmodel/   the exported model: always the truth
    <version>/model.openvino/     model.xml, model.bin and key.json, made by :func:`build`

Converting a SavedModel costs every stub start a TensorFlow-frontend pass; reading the IR costs a parse. The IR is
only a cache, so it must never serve anything but the SavedModel beside it: ``key.json`` records a SHA-256 over
every file of the SavedModel (paths and bytes), the OpenVINO version that converted it and the digests of
``model.xml`` / ``model.bin``. :func:`load` uses the IR only when all of them match what is on disk now, and
otherwise converts the SavedModel as if there were no IR (a changed SavedModel, another OpenVINO, a truncated
copy from object storage). Hashing the ~3 MB SavedModel costs a few milliseconds.

Nothing here imports Triton, so ``training.export`` and ``serving.ops.publish`` build the IR with this same code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

SAVEDMODEL = "model.savedmodel"
IR_DIR = "model.openvino"
XML, BIN, KEY = "model.xml", "model.bin", "key.json"
#: Bumped when the way the IR is made changes (e.g. the precision), so older caches stop matching.
FORMAT = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def savedmodel_digest(savedmodel: Path) -> str:
    """SHA-256 over the relative path and the bytes of every file in ``savedmodel``, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(savedmodel).rglob("*") if p.is_file()):
        digest.update(path.relative_to(savedmodel).as_posix().encode() + b"\0")
        digest.update(_sha256(path).encode())
    return digest.hexdigest()


def expected_key(version_dir: Path) -> dict:
    """The key an IR for ``version_dir`` must carry to be used with the OpenVINO installed here."""
    import openvino as ov

    return {
        "format": FORMAT,
        "openvino": ov.get_version(),
        "savedmodel_sha256": savedmodel_digest(Path(version_dir) / SAVEDMODEL),
    }


def valid(version_dir: Path) -> tuple[bool, str]:
    """Whether the IR of ``version_dir`` may be used, and why not when it may not."""
    ir = Path(version_dir) / IR_DIR
    if not (ir / KEY).is_file():
        return False, "no IR"
    try:
        stored = json.loads((ir / KEY).read_text())
    except (OSError, ValueError) as err:
        return False, f"unreadable {KEY}: {err}"
    want = expected_key(version_dir)
    for field, value in want.items():
        if stored.get(field) != value:
            return False, f"{field} differs (IR {stored.get(field)!r}, here {value!r})"
    for name in (XML, BIN):
        if not (ir / name).is_file() or _sha256(ir / name) != stored.get(f"{name}_sha256"):
            return False, f"{name} is missing or not the one converted"
    return True, "valid"


def convert(version_dir: Path):
    """The SavedModel converted in memory (what the backend did before there was an IR)."""
    from openvino.tools.ovc import convert_model  # not `ov.convert_model`: the backend imports openvino without it

    return convert_model(str(Path(version_dir) / SAVEDMODEL))


def build(version_dir: Path) -> Path:
    """Converts the SavedModel of ``version_dir`` and writes ``model.openvino/`` beside it, atomically."""
    import openvino as ov

    version_dir = Path(version_dir)
    key = expected_key(version_dir)
    tmp = version_dir / f".{IR_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # f32 weights, not the f16 save_model writes by default: served outputs must match TensorFlow within 1e-3.
    ov.save_model(convert(version_dir), str(tmp / XML), compress_to_fp16=False)
    key.update({f"{name}_sha256": _sha256(tmp / name) for name in (XML, BIN)})
    (tmp / KEY).write_text(json.dumps(key, indent=2) + "\n")
    final = version_dir / IR_DIR
    shutil.rmtree(final, ignore_errors=True)
    # Rename last: a reader sees the old IR, no IR, or the whole new one, never a half-written one.
    tmp.rename(final)
    return final


def ensure(version_dir: Path) -> bool:
    """Builds the IR of ``version_dir`` unless a valid one is there; returns whether it built one."""
    if valid(version_dir)[0]:
        return False
    build(version_dir)
    return True


def load(version_dir: Path, core) -> tuple[object, str]:
    """The model to compile: the IR when it is valid for this SavedModel, else a fresh conversion.

    Returns the model and where it came from (``"ir"`` or ``"converted: <why the IR was not used>"``).
    """
    ok, why = valid(version_dir)
    if ok:
        ir = Path(version_dir) / IR_DIR
        return core.read_model(str(ir / XML), str(ir / BIN)), "ir"
    return convert(version_dir), f"converted: {why}"

"""The OpenVINO IR beside a SavedModel: converted once (export or publish), read at load instead of converting.

    <version>/model.savedmodel/   the exported model: always the truth
    <version>/model.openvino/     model.xml, model.bin and key.json, made by :func:`build`

Converting a SavedModel costs every stub start a TensorFlow-frontend pass; reading the IR costs a parse. The IR is
only a cache, so it must never serve anything but the SavedModel beside it: ``key.json`` records a SHA-256 over
every file of the SavedModel (paths and bytes), the OpenVINO version that converted it and the digests of
``model.xml`` / ``model.bin``. :func:`load` uses the IR only when all of them match what is on disk now, and
otherwise converts the SavedModel as if there were no IR (a changed SavedModel, another OpenVINO, a truncated
copy from object storage). Hashing the ~3 MB SavedModel costs a few milliseconds.

    <version>/model.int8/         the same model quantized to int8 by ``training.quantize`` (optional)

The int8 model is not a cache: quantizing needs the training faces, so only ``training.quantize`` makes it, from the
SavedModel beside it, and its key records that SavedModel's digest the same way. :func:`load_served` uses it only while
that digest and its own files' digests match, else says why (the backend then serves f32). An IR that one OpenVINO
wrote reads in a later one, so for it the OpenVINO version is recorded, not required.

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
INT8_DIR = "model.int8"
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
    return _matches(Path(version_dir) / IR_DIR, expected_key(version_dir))


def int8_valid(version_dir: Path) -> tuple[bool, str]:
    """Whether the int8 model of ``version_dir`` was quantized from the SavedModel there and is whole."""
    want = {"savedmodel_sha256": savedmodel_digest(Path(version_dir) / SAVEDMODEL)}
    return _matches(Path(version_dir) / INT8_DIR, want)


def _matches(folder: Path, want: dict) -> tuple[bool, str]:
    """Whether ``folder``'s key.json holds every field of ``want`` and the digests of the model files beside it."""
    if not (folder / KEY).is_file():
        return False, f"no {folder.name}"
    try:
        stored = json.loads((folder / KEY).read_text())
    except (OSError, ValueError) as err:
        return False, f"unreadable {KEY}: {err}"
    for field, value in want.items():
        if stored.get(field) != value:
            return False, f"{field} differs ({folder.name} {stored.get(field)!r}, here {value!r})"
    for name in (XML, BIN):
        if not (folder / name).is_file() or _sha256(folder / name) != stored.get(f"{name}_sha256"):
            return False, f"{folder.name}/{name} is missing or not the one written"
    return True, "valid"


def write(version_dir: Path, folder_name: str, model, key: dict) -> Path:
    """Saves ``model`` (an ``ov.Model``, f32 weights kept) as ``version_dir/folder_name`` with ``key`` and the
    files' digests in key.json, atomically: a reader sees the old folder, none, or the whole new one."""
    import openvino as ov

    version_dir = Path(version_dir)
    tmp = version_dir / f".{folder_name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # f32 weights, not the f16 save_model writes by default: served outputs must match TensorFlow within 1e-3.
    ov.save_model(model, str(tmp / XML), compress_to_fp16=False)
    key = {**key, **{f"{name}_sha256": _sha256(tmp / name) for name in (XML, BIN)}}
    (tmp / KEY).write_text(json.dumps(key, indent=2) + "\n")
    final = version_dir / folder_name
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # last
    return final


def convert(version_dir: Path):
    """The SavedModel converted in memory (what the backend did before there was an IR)."""
    from openvino.tools.ovc import convert_model  # not `ov.convert_model`: the backend imports openvino without it

    return convert_model(str(Path(version_dir) / SAVEDMODEL))


def build(version_dir: Path) -> Path:
    """Converts the SavedModel of ``version_dir`` and writes ``model.openvino/`` beside it, atomically."""
    return write(version_dir, IR_DIR, convert(version_dir), expected_key(version_dir))


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


def served_precision(version_dir: Path, precision: str) -> tuple[str, str]:
    """The precision ``version_dir`` serves for ``precision`` (f32, bf16 or int8), and why where it differs: int8
    without a valid ``model.int8`` serves f32, the SavedModel's own arithmetic."""
    if precision != "int8":
        return precision, ""
    ok, why = int8_valid(version_dir)
    return ("int8", "") if ok else ("f32", why)


def load_served(version_dir: Path, core, precision: str) -> tuple[object, str, str]:
    """The model to compile for ``precision``, where it came from, and the precision it serves
    (:func:`served_precision`); where that is not the one asked for, the source says why."""
    served, why = served_precision(version_dir, precision)
    if served == "int8":
        folder = Path(version_dir) / INT8_DIR
        return core.read_model(str(folder / XML), str(folder / BIN)), "int8", "int8"
    model, source = load(version_dir, core)
    return model, (f"{source}; int8 chosen, serving f32: {why}" if served != precision else source), served

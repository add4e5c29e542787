"""UTKFace loading: lenient name parsing, deduplication, grouped splits and a decode cache.

The archive (``UTKFace.tar.gz``) or a folder of images is read once, decoded and
resized with :func:`common.spec.to_model_input`, and cached as one ``.npz`` so
later runs and epochs never decode a JPEG again.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from common import pids, spec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_AGE = 116
N_RACES = 5
RACES = ("white", "black", "asian", "indian", "others")
SPLITS = ("train", "val", "test")
#: The split every served model was trained on; a run records its own (``--seed``), and later steps read that.
SPLIT_SEED = 1337
#: The training record in an exported version folder (``training.export.RECORD``); its ``seed`` is that split.
TRAINING_RECORD = "training_config.json"
# Bump when the cached arrays would change for the same source.
CACHE_VERSION = 3
#: Side of the grey thumbnail that finds re-encoded copies of one photo (:func:`near_copies`), from the full file.
THUMB_SIDE = 32
#: Thumbnails (or one and the other's mirror) correlating above this are taken for one photo. UTKFace holds the
#: same photo under other names, re-encoded or resized and often with other labels: 460 such pairs at 0.97 on
#: 16x16 thumbnails, 69 of them between test and train (audit, 2026-12-05). Looked at side by side, pairs above
#: 0.95 on 32x32 are mostly one photo, with some look-alikes; leaving a look-alike out of an evaluation split costs
#: one face, keeping a copy there scores memory.
NEAR_COPY_CORRELATION = 0.95


@dataclasses.dataclass(frozen=True)
class Label:
    """Labels parsed from a UTKFace file name; ``race`` is -1 where the name lacks it."""

    age: int
    gender: int
    race: int


def parse_name(name: str) -> Label | None:
    """Parses ``{age}_{gender}_{race}_{timestamp}...``, leniently.

    A missing race field and odd timestamps are accepted; anything else that
    does not give an age in 0-116 and a gender of 0 or 1 returns None. Age, gender and race must be plain ASCII
    digits: ``int()`` alone would also take ``+5``, `` 7``, ``-0`` and other scripts' digits, names no UTKFace
    file has and whose label nobody meant.
    """
    parts = os.path.basename(name).split("_")
    if len(parts) < 3 or not (_DIGITS.fullmatch(parts[0]) and _DIGITS.fullmatch(parts[1])):
        return None
    age, gender = int(parts[0]), int(parts[1])
    if not 0 <= age <= MAX_AGE or gender not in (0, 1):
        return None
    # With four or more fields the third is the race; with three it is the timestamp.
    race = -1
    if len(parts) >= 4 and _DIGITS.fullmatch(parts[2]) and int(parts[2]) < N_RACES:
        race = int(parts[2])
    return Label(age, gender, race)


#: A label field: ASCII digits only (``str.isdigit`` and ``int`` accept far more).
_DIGITS = re.compile(r"[0-9]+")


def iter_source(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yields ``(file name, raw bytes)`` for every image in an archive or folder."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.is_file() and file.name.lower().endswith(IMAGE_SUFFIXES):
                yield file.name, file.read_bytes()
        return
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                fh = tar.extractfile(member)
                if fh is not None:
                    yield os.path.basename(member.name), fh.read()


@dataclasses.dataclass
class LoadSummary:
    """Counts of what the loader kept and skipped."""

    files: int = 0
    unparsable: int = 0
    undecodable: int = 0
    duplicate_copies: int = 0
    conflicting_dropped: int = 0
    kept: int = 0

    def line(self, source: str | Path) -> str:
        return (
            f"{source}: {self.files} files, kept {self.kept}; skipped {self.unparsable} "
            f"unparsable names, {self.undecodable} undecodable images, "
            f"{self.duplicate_copies} duplicate copies, {self.conflicting_dropped} files "
            "in duplicate groups with conflicting labels"
        )


@dataclasses.dataclass
class Dataset:
    """Decoded faces with their labels, one row per unique image."""

    images: np.ndarray  # (N, S, S, 3) uint8 RGB
    ages: np.ndarray  # (N,) int
    genders: np.ndarray  # (N,) int, 1 = female
    races: np.ndarray  # (N,) int, -1 = unknown
    names: np.ndarray  # (N,) str
    hashes: np.ndarray  # (N,) str, sha256 of the file bytes
    thumbs: np.ndarray  # (N, THUMB_SIDE, THUMB_SIDE) uint8 grey, from the full file: finds re-encoded copies
    summary: LoadSummary = dataclasses.field(default_factory=LoadSummary)

    def __len__(self) -> int:
        return len(self.ages)

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(
            self.images[index],
            self.ages[index],
            self.genders[index],
            self.races[index],
            self.names[index],
            self.hashes[index],
            self.thumbs[index],
            self.summary,
        )


def _decode(data: bytes, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The model input and the grey thumbnail of one file, or None if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            thumb = img.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
            return spec.to_model_input(img, size), np.asarray(thumb, np.uint8)
    except Exception:  # noqa: BLE001 - any decoder failure means "skip this file"
        return None


def _read(path: Path, size: int) -> Dataset:
    """Reads, deduplicates and decodes a source (no cache)."""
    summary = LoadSummary()
    groups: dict[str, list[tuple[str, Label, bytes]]] = defaultdict(list)
    for name, data in iter_source(path):
        summary.files += 1
        label = parse_name(name)
        if label is None:
            summary.unparsable += 1
            continue
        groups[hashlib.sha256(data).hexdigest()].append((name, label, data))

    rows = []
    for digest in sorted(groups):
        copies = groups[digest]
        # Rule: byte-identical copies that disagree on age or gender are all
        # dropped, since no copy's label can be trusted; agreeing copies keep one.
        if len({(c[1].age, c[1].gender) for c in copies}) > 1:
            summary.conflicting_dropped += len(copies)
            continue
        summary.duplicate_copies += len(copies) - 1
        name, label, data = min(copies, key=lambda c: c[0])
        if len({c[1].race for c in copies}) > 1:
            label = dataclasses.replace(label, race=-1)  # the copies disagree: the race is unknown
        decoded = _decode(data, size)
        if decoded is None:
            summary.undecodable += 1
            continue
        rows.append((*decoded, label, name, digest))
    summary.kept = len(rows)
    return Dataset(
        images=np.stack([r[0] for r in rows]) if rows else np.zeros((0, size, size, 3), np.uint8),
        ages=np.array([r[2].age for r in rows], dtype=np.int32),
        genders=np.array([r[2].gender for r in rows], dtype=np.int32),
        races=np.array([r[2].race for r in rows], dtype=np.int32),
        names=np.array([r[3] for r in rows], dtype=str),
        hashes=np.array([r[4] for r in rows], dtype=str),
        thumbs=np.stack([r[1] for r in rows]) if rows else np.zeros((0, THUMB_SIDE, THUMB_SIDE), np.uint8),
        summary=summary,
    )


class DataError(ValueError):
    """The data source cannot be read as UTKFace, or holds no usable face: what the operator must fix."""


def _read_checked(path: Path, size: int) -> Dataset:
    """:func:`_read`, with an unreadable source (not a tar, a truncated or corrupt gzip) or one without a single
    usable face raised as :class:`DataError`, one line that names the source."""
    try:
        data = _read(path, size)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{path} could not be read as a UTKFace archive ({err}); is it complete?") from err
    if not len(data):
        raise DataError(f"no usable UTKFace image in {path}: {data.summary.line(path)}")
    return data


def _source_id(path: Path) -> str:
    """Which source a cache file belongs to (its absolute path): caches of one source replace each other."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]


def _cache_key(path: Path, size: int) -> str:
    """What the cached arrays depend on. For a folder, every file's relative name, size and mtime: a count and the
    newest mtime missed a renamed file (a relabelled face: the label is the name) and a file swapped for another
    with an old mtime (``cp -p``, ``rsync -t``)."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        listing = hashlib.sha256()
        for f in files:
            stat = f.stat()
            listing.update(f"{f.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        stamp = listing.hexdigest()
    else:
        stat = path.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    text = f"{path.resolve()}|{stamp}|{size}|{spec.RESIZE_METHOD}|{spec.CHANNEL_ORDER}|{CACHE_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_file(cache_dir: Path, path: Path, size: int) -> Path:
    """The decode cache of ``path`` at input side ``size``: ``utkface-<source>-<size>-<key>.npz``."""
    return Path(cache_dir) / f"utkface-{_source_id(path)}-{size}-{_cache_key(path, size)}.npz"


def default_cache_dir() -> Path:
    return Path(os.environ.get("AGEGENDER_CACHE", Path.home() / ".cache" / "agegender"))


def _tidy(cache: Path) -> None:
    """Removes what older builds of ``cache`` left: the same source's caches at the same size under another key
    (the source changed, or the decoding did; each is a copy of every face, hundreds of MB for UTKFace), and
    temporary files of builds whose process is gone (interrupted). So are caches named before this scheme
    (``utkface-<16 hex>.npz``, one per source, size and change, readable by everyone): no build reads them any more,
    and they piled up to gigabytes. Other sources and sizes are left alone, and so is anything named otherwise."""
    prefix = cache.name.rsplit("-", 1)[0]  # utkface-<source>-<size>
    stale = [p for p in cache.parent.glob(f"{prefix}-*.npz") if p != cache]
    stale += [p for p in cache.parent.glob("utkface-*.npz") if _OLD_CACHE_NAME.fullmatch(p.name)]
    for other in stale:
        parts = other.name.split(".")  # <stem>.npz, or <stem>.<pid>.tmp.npz
        if len(parts) == 2 or (len(parts) == 4 and parts[1].isdigit() and not pids.alive(int(parts[1]))):
            other.unlink(missing_ok=True)


#: A decode cache (or its temporary file) named as builds before ``utkface-<source>-<size>-<key>.npz`` named them.
_OLD_CACHE_NAME = re.compile(r"utkface-[0-9a-f]{16}(\.[0-9]+\.tmp)?\.npz")


def _write_cache(cache: Path, data: Dataset) -> None:
    """Writes ``data`` to ``cache`` atomically, readable by this user only: it holds every face of the source."""
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Per process: variants trained side by side (training.compare --jobs) may build the same cache at once.
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                images=data.images,
                ages=data.ages,
                genders=data.genders,
                races=data.races,
                names=data.names,
                hashes=data.hashes,
                thumbs=data.thumbs,
                summary=json.dumps(dataclasses.asdict(data.summary)),
            )
        tmp.replace(cache)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _tidy(cache)


def load(path: str | Path, *, size: int, cache_dir: Path | None = None) -> Dataset:
    """Loads a UTKFace archive or folder, from the decode cache where possible.

    Args:
        path: ``UTKFace.tar.gz`` (any tar the ``tarfile`` module opens) or a folder.
        cache_dir: Where decoded arrays are cached; None disables the cache. Created readable by this user
            only (mode 0700, files 0600): the cache holds the faces.

    Returns:
        The deduplicated dataset; ``summary`` says what was skipped.

    Raises:
        FileNotFoundError: no such archive or folder.
        DataError: the source cannot be read, or holds no usable face.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"UTKFace data not found at {path}; pass --data PATH")
    cache = cache_file(cache_dir, path, size) if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            data = Dataset(
                z["images"],
                z["ages"],
                z["genders"],
                z["races"],
                z["names"],
                z["hashes"],
                z["thumbs"],
                LoadSummary(**json.loads(str(z["summary"]))),
            )
    else:
        data = _read_checked(path, size)
        if cache is not None:
            _write_cache(cache, data)
    log.info(data.summary.line(path))
    return data


def split(data: Dataset, *, seed: int = SPLIT_SEED, val: float = 0.1, test: float = 0.1) -> np.ndarray:
    """Assigns each image to a split, grouped by file hash, and leaves re-encoded copies out of val and test.

    Grouping by content hash keeps every copy of an image in one split even for
    data that has not been deduplicated. The assignment depends only on the hash
    and the seed, so adding or removing other files does not move an image.

    A validation face that is a near copy of a training face, or a test face that is one of a training or
    validation face (:func:`near_copies`), is ``"copy"``: in no split. Training keeps the faces it has always
    had, so models trained before this rule was added were trained on exactly the training split it gives.

    Returns:
        An array of split names, one per row of ``data``: one of ``SPLITS``, or ``COPY``.
    """
    out = np.empty(len(data.hashes), dtype=object)
    for i, digest in enumerate(data.hashes):
        u = int(hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest()[:12], 16) / 16**12
        out[i] = "test" if u < test else "val" if u < test + val else "train"
    out = out.astype(str)
    unit, mirrored = _unit(data.thumbs), _unit(data.thumbs[:, :, ::-1])  # once: train's serve both checks
    for name, earlier in (("val", ("train",)), ("test", ("train", "val"))):
        rows, others = np.flatnonzero(out == name), np.isin(out, earlier)
        out[rows[near_copies(unit[rows], unit[others], mirrored[others])]] = COPY
    return out


#: The split of a face left out as a near copy of a face in an earlier split (:func:`split`).
COPY = "copy"


def near_copies(faces: np.ndarray, others: np.ndarray, mirrored: np.ndarray, *, chunk: int = 1024) -> np.ndarray:
    """Which ``faces`` are near copies of one of ``others`` (each row a thumbnail as :func:`_unit` gives it;
    ``mirrored``: ``others``' mirror images, the same way).

    One photo saved twice differs in compression, size and sometimes by a mirror, not in what it shows: its
    thumbnails, less their mean and scaled to unit length, correlate above :data:`NEAR_COPY_CORRELATION`.
    """
    found = np.zeros(len(faces), bool)
    if not len(faces) or not len(others):
        return found
    for start in range(0, len(faces), chunk):
        mine = faces[start : start + chunk]
        best = np.maximum((mine @ others.T).max(1), (mine @ mirrored.T).max(1))
        found[start : start + chunk] = best > NEAR_COPY_CORRELATION
    return found


def _unit(thumbs: np.ndarray) -> np.ndarray:
    """Grey thumbnails as rows less their mean, scaled to unit length: a dot product is their correlation."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    flat -= flat.mean(1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-6)


def part(data: Dataset, name: str, *, seed: int = SPLIT_SEED) -> Dataset:
    """The faces of one split (``SPLITS``) under split seed ``seed``: what every fit, choice and report on the
    validation split reads."""
    if name not in SPLITS:
        raise ValueError(f"split {name!r}: expected one of {SPLITS}")
    return data.subset(np.flatnonzero(split(data, seed=seed) == name))


def shared_split_seed(configs: list[dict]) -> int:
    """The split seed every one of these training records shares; refuses records of different splits, since one
    network's training faces would then be in the other's validation and test faces."""
    splits = {c.get("seed", SPLIT_SEED) for c in configs}
    if len(splits) != 1:
        raise ValueError(f"networks trained on different splits (seeds {sorted(splits)})")
    return splits.pop()


def served_split_seed(repo: Path, tasks: tuple[str, ...] = ("age", "gender")) -> int:
    """The split the newest (served) version of each task in ``repo`` was trained on, from their training records:
    what a study of the served models must take its validation or test faces from. :data:`SPLIT_SEED` where no
    version has a record; ValueError where they name different splits."""
    configs = []
    for task in tasks:
        folder = Path(repo) / task
        numbered = (
            [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"[0-9]+", p.name)] if folder.is_dir() else []
        )
        if numbered and (record := max(numbered, key=lambda p: int(p.name)) / TRAINING_RECORD).is_file():
            configs.append(json.loads(record.read_text()))
    return shared_split_seed(configs) if configs else SPLIT_SEED


def rebalance(data: Dataset, *, seed: int = SPLIT_SEED, keep_young: float = 1 / 3, max_age: int = 80) -> np.ndarray:
    """The seed project's rebalancing: keeps ~1/3 of ages 0-4 and drops ages >= ``max_age``.

    Returns:
        Indices of the rows kept.
    """
    rng = np.random.default_rng(seed)
    young = data.ages <= 4
    keep = (data.ages < max_age) & (~young | (rng.random(len(data)) < keep_young))
    return np.flatnonzero(keep)


def tail_weights(ages: np.ndarray, power: float, *, band: int = 10, top: int = 80, cap: float = 4.0) -> np.ndarray:
    """Per-face loss weights that count the rare age bands more: ``(faces in the band) ** -power``.

    UTKFace has about six faces in their twenties for every one past 60, so an unweighted loss is mostly
    spent on the middle and regresses old faces toward it. ``power`` 0 weighs every face alike, 1 every band
    alike; 0.5 sits between. Bands are ``band`` years wide with everything from ``top`` up in one. Weights
    are capped at ``cap`` times their mean, so a band of a handful of faces cannot dominate a batch, then
    scaled to mean 1 (so the learning rate keeps its meaning; a capped band ends slightly above ``cap``).
    """
    bands = np.minimum(np.asarray(ages, int), top) // band
    counts = np.bincount(bands)
    w = counts[bands].astype("float64") ** -power
    w /= w.mean()
    w = np.minimum(w, cap)
    return (w / w.mean()).astype("float32")


def child_weights(ages: np.ndarray, weight: float, *, below: int = 10) -> np.ndarray:
    """Per-face loss weights that count children (ages under ``below``) ``weight`` times an older face, scaled to
    mean 1 (so the learning rate keeps its meaning).

    For gender: children under ten are 14% of UTKFace's faces and two thirds of the gender network's errors
    (docs/models-log.md, twelfth part). Decade bands do not single them out (:func:`tail_weights` gives ages 0-9 about
    the mean weight: the band is not rare), so this weight names them.
    """
    w = np.where(np.asarray(ages) < below, float(weight), 1.0)
    return (w / w.mean()).astype("float32")


def write_manifest(data: Dataset, splits: np.ndarray, path: Path) -> None:
    """Writes one CSV row per image: name, sha256, labels and split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "sha256", "age", "gender", "race", "split"])
        for row in zip(data.names, data.hashes, data.ages, data.genders, data.races, splits, strict=True):
            w.writerow(row)

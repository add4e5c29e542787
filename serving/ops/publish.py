"""Uploads a model repository to S3-compatible object storage, exactly as Triton will read it.

    python -m serving.ops.publish model_repository s3://[HOST:PORT/]BUCKET/PREFIX [--skip-existing] [--dry-run]
                                  [--all-versions] [--no-ir]
    python -m serving.ops.publish model_repository --ir-only   # only make the OpenVINO IR, upload nothing

- Only the versions the configs serve are uploaded: Triton downloads every object under a model at each cold
  start, whatever it serves, so an old version in the bucket is paid for at every scale from zero. A model's
  served versions are the union over its configs (``config.pbtxt`` and ``configs/*.pbtxt``) of their
  ``version_policy`` (none: the newest one, as Triton). ``--all-versions`` uploads every version folder, for
  an explicit-model-control server that must be able to roll back to one it does not load by default.
- Before uploading, each served SavedModel gets its OpenVINO IR (``model.openvino/``, keyed to the SavedModel
  and the OpenVINO version: serving/pipeline/backends/openvino_savedmodel/ir.py) if it lacks a valid one, so
  the CPU backend reads it instead of converting at load. ``--no-ir`` skips that; ``--ir-only`` does only that.
- Symlinks are resolved (``preprocess_crop/1/model.py`` is one): object stores have none. A link that leads back
  into a folder on its own path (a loop), a link to nothing or a file that cannot be read is refused while the
  upload is planned, naming it, before anything is written.
- Caches and leftovers are not uploaded: ``__pycache__``, ``*.pyc``, hidden files,
  and the ``.tmp-N`` folders ``training.export`` writes before its atomic rename; nor are the files Triton
  never reads (``README.md``, ``history.csv``, ``training_config.json``: each object costs a cold start ~25 S3
  requests); nor is a version's int8 model (``model.int8/``) unless one of the model's configs may serve it
  (``inference_precision``: ``int8``, or ``auto``, which serves int8 on CPUs without native bf16).
- Every version folder is kept, under its own number. Object stores have no empty folders,
  so a version folder with no files (an ensemble's ``1/``) gets an empty ``.keep`` object.
- A version that already exists in the bucket is never overwritten: versions are
  immutable, so a server that loaded ``age/2`` keeps meaning the same model. Without
  ``--skip-existing`` the whole upload is refused, before anything is written, if any
  local version is already there; with it, only versions the bucket lacks are sent
  (the way to publish a newly exported version), and a version an interrupted publish left
  incomplete (some of its files there, each the size it is here) is finished. A version whose
  objects differ in size from the local files, or that holds files they lack, is refused either way
  (sizes only: a retrained network of the same shape has the same sizes, so a version number is
  never reused for other weights: ``training.export`` always writes a new one).
- A model's own files (its configs, warm-up data) are immutable within a prefix too: one the bucket
  holds with other bytes (read back and compared) is refused, whatever the flags; a new config is a
  new release (a new prefix). Identical ones are not sent again.
- Within a model, version files go first and the model's ``config.pbtxt`` last, so a
  reader never sees a new model's config before its files.

Credentials come from the standard AWS environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). The bucket must exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime
from serving.runtime import storage

SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", "~")
# Files Triton never reads (they stay in git): at a cold start from S3 Triton pays about 25 requests per object
# (HEAD bucket, listings, GET; loadtest.bench.coldstart --s3), whatever the object's size. export.json, which
# names the training run a version came from, is kept as the bucket's provenance.
NOT_SERVED = {"README.md", "history.csv", "training_config.json"}
KEEP = storage.KEEP  # placeholder object that makes an otherwise empty version folder exist (staging skips it)


def _skipped(name: str) -> bool:
    return (
        (name.startswith(".") and name != KEEP)
        or name in SKIP_DIRS
        or name in NOT_SERVED
        or name.endswith(SKIP_SUFFIXES)
    )


def version_folders(model: Path) -> list[Path]:
    """The version folders of the model folder ``model``, by number. A folder Triton would not read as a version
    but one may take for one (``022``, ``²``: Triton skips names with leading zeros, and ``str.isdigit`` takes other
    scripts' digits) is refused: published, a release whose only served version is one Triton skips cannot start."""
    found = []
    for path in model.iterdir():
        if not path.is_dir() or not path.name.isdigit():
            continue
        if not (path.name.isascii() and (path.name == "0" or not path.name.startswith("0"))):
            raise storage.StorageError(
                f"{path}: a version folder is named by its number in ASCII digits without leading zeros (Triton "
                "reads no other name as a version); rename it"
            )
        found.append(path)
    return sorted(found, key=lambda p: int(p.name))


def _policy_versions(config: str, available: list[int]) -> set[int]:
    """The versions of ``available`` (ascending) that one config's ``version_policy`` serves."""
    text = re.sub(r"#[^\n]*", "", config)  # comments may mention a policy without setting one
    found = re.search(r"\bversion_policy\s*:?\s*\{", text)
    body, depth = "", 1
    if found:  # the policy's block, braces balanced
        for i, char in enumerate(text[found.end() :]):
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth == 0:
                body = text[found.end() : found.end() + i]
                break
    if re.search(r"\ball\b", body):
        return set(available)
    if re.search(r"\bspecific\b", body):
        return {v for v in available if str(v) in re.findall(r"\d+", body)}
    latest = re.search(r"num_versions\s*:\s*(\d+)", body)
    count = int(latest.group(1)) if latest else 1  # no policy: Triton serves the newest version
    return set(available[-count:]) if count else set()


def _models(repository: Path) -> list[Path]:
    """The model folders of ``repository`` that are published: those with a ``config.pbtxt``, caches and hidden
    folders left out, in name order. What publish uploads is also what it builds IR for and checks for int8."""
    return sorted(
        p for p in Path(repository).iterdir() if p.is_dir() and not _skipped(p.name) and (p / "config.pbtxt").is_file()
    )


def _configs(model: Path) -> list[Path]:
    """The config files of the model folder ``model``: ``config.pbtxt`` and ``configs/*.pbtxt``, those that exist."""
    return [c for c in (model / "config.pbtxt", *sorted((model / "configs").glob("*.pbtxt"))) if c.is_file()]


def serves_int8(model: Path) -> bool:
    """Whether any config of the model folder ``model`` may serve its versions' ``model.int8/`` (training.quantize).
    Where none may, that folder is not published: every object is paid for at each scale from zero."""
    return any(ov_runtime.may_serve_int8(ov_runtime.configured_precision(c.read_text())) for c in _configs(model))


def served_versions(model: Path) -> list[int]:
    """Versions of the model folder ``model`` that any of its configs serves, ascending."""
    available = [int(p.name) for p in version_folders(model)]
    served = set()
    for config in _configs(model):
        served |= _policy_versions(config.read_text(), available)
    return sorted(served)


def build_ir(repository: Path, *, all_versions: bool = False, dry_run: bool = False, out=sys.stdout) -> list[str]:
    """Makes the OpenVINO IR of every published SavedModel that lacks a valid one; returns the versions built."""
    if importlib.util.find_spec("openvino") is None:
        print("note: OpenVINO is not installed here, so no IR is made; the CPU backend converts at load", file=out)
        return []

    built = []
    for model in _models(repository):
        for version in served_versions(model) if not all_versions else [int(p.name) for p in version_folders(model)]:
            folder = model / str(version)
            if not (folder / ir.SAVEDMODEL).is_dir():
                continue
            ok, why = ir.valid(folder)
            if ok:
                continue
            if not dry_run:
                ir.build(folder)
            built.append(f"{model.name}/{version}")
            print(f"{'would build' if dry_run else 'built'} {folder / ir.IR_DIR} ({why})", file=out)
    return built


def missing_int8(repository: Path) -> list[tuple[str, str]]:
    """Served versions whose configs may serve int8 (``int8``, or ``auto`` on a CPU without native bf16) but
    that have no valid ``model.int8/``, with why: those serve f32 there. Not an error (f32 answers are the exported
    model's own), but the capacity ``auto`` was chosen for is not there until ``make quantize`` runs."""
    missing = []
    for model in _models(repository):
        if not serves_int8(model):
            continue
        for version in served_versions(model):
            folder = model / str(version)
            if (folder / ir.SAVEDMODEL).is_dir():
                ok, why = ir.int8_valid(folder)
                if not ok:
                    missing.append((f"{model.name}/{version}", why))
    return missing


def _files(folder: Path, *, versions: bool = True) -> list[Path]:
    """Files under ``folder``, symlinks followed, caches left out, in a stable order (a folder's files, then its
    folders'). ``versions`` False leaves out ``folder``'s version folders (a model's own files only).

    What cannot be uploaded is refused here, while publish plans and before it uploads anything (an error halfway
    leaves an immutable release prefix half-made, red-team finding 7): a symbolic link that leads back into a folder
    on its own path (a loop: followed, it never ends), a link that leads nowhere, a folder or file that cannot be
    read. Other links are followed (``preprocess_crop/1/model.py``): object stores have none."""
    found: list[Path] = []

    def walk(path: Path, chain: list[Path]) -> None:
        try:
            with os.scandir(path) as scan:
                entries = sorted((e for e in scan if not _skipped(e.name)), key=lambda e: e.name)
        except OSError as err:
            raise storage.StorageError(f"cannot read the folder {path}: {err.strerror or err}") from None
        folders = []
        for entry in entries:
            child = path / entry.name
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()  # through links
            except OSError as err:  # a link in a loop of links (a -> b -> a), one too deep
                raise storage.StorageError(f"{child}: {err.strerror or err}; remove or fix the link") from None
            if is_dir:
                if versions or path != folder or not entry.name.isdigit():
                    folders.append((entry, child))
            elif is_file:
                if not os.access(child, os.R_OK):
                    raise storage.StorageError(f"cannot read {child}: permission denied")
                found.append(child)
            elif entry.is_symlink():
                raise storage.StorageError(
                    f"symbolic link {child} -> {os.readlink(child)} leads nowhere; fix or remove it"
                )
            else:
                raise storage.StorageError(f"{child} is neither a file nor a folder (a pipe, a socket...): remove it")
        for entry, child in folders:
            real = Path(os.path.realpath(child))
            if entry.is_symlink() and any(seen.is_relative_to(real) for seen in chain):
                # The link's target holds a folder this walk is in (or is one): following it comes back here forever.
                raise storage.StorageError(
                    f"symbolic link {child} -> {os.readlink(child)} leads back into {real}, a folder it is in: a loop "
                    "(followed, publish would upload copies within copies until the path is too long); remove it"
                )
            walk(child, [*chain, real])

    walk(Path(folder), [Path(os.path.realpath(folder))])
    return found


@dataclass
class Plan:
    """What one publish would upload: (local file, key relative to the prefix) pairs, in upload order."""

    uploads: list[tuple[Path | None, str]] = field(default_factory=list)  # path None: an empty placeholder
    existing: list[str] = field(default_factory=list)  # "model/version" already in the bucket, whole
    incomplete: list[str] = field(default_factory=list)  # "model/version" partly there: its missing files in uploads
    conflicting: list[str] = field(default_factory=list)  # "model/version" there with other sizes or files: untouched
    changed: list[str] = field(default_factory=list)  # model-level keys the bucket holds with other bytes
    new_versions: list[str] = field(default_factory=list)
    unserved: list[str] = field(default_factory=list)  # "model/version" left out: no config serves it


def _same_size(path: Path | None, size: int) -> bool:
    """Whether the bucket's object, of ``size`` bytes, is ``path``'s size. Not the ETag: it is the MD5 of the bytes
    only for a single-part upload without KMS or customer-key encryption (boto3 sends files over 8 MiB, the weights,
    in parts)."""
    return size == (path.stat().st_size if path is not None else 0)


def plan(
    repository: Path,
    remote: dict[str, int],
    *,
    all_versions: bool = False,
    read_remote=None,
) -> Plan:
    """``remote``: the bucket's objects under the prefix and their sizes (storage.list_objects).
    ``read_remote`` (key -> bytes): how a model's own files in the bucket are read, to compare them byte for byte
    (they are small: configs, warm-up data); None compares sizes only."""
    repository = Path(repository)
    remote_versions = {"/".join(k.split("/")[:2]) for k in remote if k.count("/") >= 2}
    result = Plan()
    for model in _models(repository):
        served = served_versions(model)
        int8 = serves_int8(model)
        for folder in version_folders(model):
            version = f"{model.name}/{folder.name}"
            if not all_versions and int(folder.name) not in served:
                result.unserved.append(version)
                continue
            files = [
                (path, path.relative_to(repository).as_posix())
                for path in _files(folder)
                if int8 or ir.INT8_DIR not in path.relative_to(folder).parts
            ]
            files = files or [(None, f"{version}/{KEEP}")]
            if version in remote_versions:
                there = {k for k in remote if k.startswith(f"{version}/")}
                missing = [(path, key) for path, key in files if key not in remote]
                if there - {key for _, key in files} or any(
                    not _same_size(path, remote[key]) for path, key in files if key in remote
                ):
                    result.conflicting.append(version)
                elif missing:
                    result.incomplete.append(version)
                    result.uploads += missing
                else:
                    result.existing.append(version)
                continue
            result.new_versions.append(version)
            result.uploads += files
        model_files = []
        for path in _files(model, versions=False):
            key = path.relative_to(repository).as_posix()
            if path.relative_to(model).parts[0].isdigit():
                continue
            if key not in remote:
                model_files.append((path, key))
            elif not _same_size(path, remote[key]) or (
                read_remote is not None and read_remote(key) != path.read_bytes()
            ):
                result.changed.append(key)
        # config.pbtxt last: the file that makes a folder a model appears only once the rest is there.
        model_files.sort(key=lambda item: item[1] == f"{model.name}/config.pbtxt")
        result.uploads += model_files
    return result


def publish(
    repository: Path,
    uri: str,
    *,
    skip_existing: bool = False,
    dry_run: bool = False,
    all_versions: bool = False,
    ir: bool = True,
    out=sys.stdout,
):
    """Uploads ``repository`` to ``uri``; returns the Plan. Raises StorageError on refusal or S3 errors."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bex

    repository = Path(repository)
    if not repository.is_dir():
        raise storage.StorageError(f"model repository {repository} does not exist")
    location = storage.S3Location.parse(uri)
    s3 = storage.client(location)
    remote = storage.list_objects(location, s3)  # first: bad credentials fail before minutes of conversion
    if ir:
        build_ir(repository, all_versions=all_versions, dry_run=dry_run, out=out)
    for version, why in missing_int8(repository):
        print(
            f"note: {version} has no int8 model ({why}); where its config serves int8 (auto on a CPU without "
            "native bf16) it serves f32 until `make quantize` makes one",
            file=out,
        )

    def read_remote(key: str) -> bytes:
        try:
            return s3.get_object(Bucket=location.bucket, Key=location.key(key))["Body"].read()
        except (bex.BotoCoreError, bex.ClientError) as err:
            raise storage.explain(err, location) from None

    todo = plan(repository, remote, all_versions=all_versions, read_remote=read_remote)
    if todo.conflicting:
        raise storage.StorageError(
            f"refusing: version(s) {', '.join(todo.conflicting)} in {location} differ from the local ones. Versions "
            "are immutable: export a new version number."
        )
    if todo.changed:
        raise storage.StorageError(
            f"refusing: {', '.join(todo.changed)} in {location} differ from the local files. A release's configs are "
            "immutable too, since servers read them at every start: publish to a new prefix."
        )
    if (todo.existing or todo.incomplete) and not skip_existing:
        partly = f" ({', '.join(todo.incomplete)} only partly: --skip-existing finishes it)" if todo.incomplete else ""
        raise storage.StorageError(
            f"refusing to overwrite version(s) already in {location}: {', '.join(todo.existing + todo.incomplete)}"
            f"{partly}. Versions are immutable: export a new version number, or pass --skip-existing to upload only "
            "the new ones."
        )
    for version in todo.existing:
        print(f"skip     {version}/ (already in the bucket)", file=out)
    for version in todo.incomplete:
        print(f"finish   {version}/ (an earlier publish left it incomplete)", file=out)
    for version in todo.unserved:
        print(f"skip     {version}/ (not served by its configs; --all-versions publishes it)", file=out)
    total = 0
    for path, rel in todo.uploads:
        key = location.key(rel)
        size = path.stat().st_size if path else 0
        total += size
        if not dry_run:
            try:
                if path is None:
                    s3.put_object(Bucket=location.bucket, Key=key, Body=b"")
                else:
                    s3.upload_file(str(path), location.bucket, key)
            except (bex.BotoCoreError, bex.ClientError) as err:
                raise storage.explain(err, location) from None
            except S3UploadFailedError as err:  # boto3 wraps the ClientError of a failed upload in this
                raise storage.StorageError(f"upload of {path} to {location} failed: {err}") from None
        print(f"{'would upload' if dry_run else 'uploaded'} s3://{location.bucket}/{key} ({size:,} B)", file=out)
    verb = "would upload" if dry_run else "uploaded"
    print(
        f"{verb} {len(todo.uploads)} files, {total / 1e6:.1f} MB to {location}; "
        f"new versions: {', '.join(todo.new_versions) or 'none'}",
        file=out,
    )
    return todo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repository", type=Path, help="local model repository, e.g. model_repository")
    p.add_argument("uri", nargs="?", help="s3://[HOST:PORT/]BUCKET/PREFIX (not with --ir-only)")
    p.add_argument(
        "--skip-existing", action="store_true", help="upload only versions the bucket does not have (or has in part)"
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded, upload nothing")
    p.add_argument("--all-versions", action="store_true", help="every version folder, not only the served ones")
    p.add_argument("--no-ir", action="store_true", help="do not make missing OpenVINO IR before uploading")
    p.add_argument("--ir-only", action="store_true", help="make the missing OpenVINO IR locally, upload nothing")
    args = p.parse_args(argv)
    if args.ir_only == bool(args.uri):
        p.error("give an s3:// URI to publish to, or --ir-only without one")
    try:
        if args.ir_only:
            if not args.repository.is_dir():
                raise storage.StorageError(f"model repository {args.repository} does not exist")
            built = build_ir(args.repository, all_versions=args.all_versions, dry_run=args.dry_run)
            print(f"IR up to date for every {'' if args.all_versions else 'served '}SavedModel ({len(built)} built)")
            return 0
        publish(
            args.repository,
            args.uri,
            skip_existing=args.skip_existing,
            dry_run=args.dry_run,
            all_versions=args.all_versions,
            ir=not args.no_ir,
        )
    except storage.StorageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the repository's own files: a symbolic link in a loop, a file that cannot be read
        print(f"error: cannot read the repository {args.repository}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

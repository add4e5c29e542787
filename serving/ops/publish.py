"""Uploads a model repository to S3-compatible object storage, exactly as Triton will read it.

    python -m serving.ops.publish model_repository s3://[HOST:PORT/]BUCKET/PREFIX [--skip-existing] [--dry-run]

- Symlinks are resolved (``preprocess_crop/1/model.py`` is one): object stores have none.
- Caches and leftovers are not uploaded: ``__pycache__``, ``*.pyc``, hidden files,
  and the ``.tmp-N`` folders ``training.export`` writes before its atomic rename.
- Every version folder is kept, under its own number. Object stores have no empty folders,
  so a version folder with no files (an ensemble's ``1/``) gets an empty ``.keep`` object.
- A version that already exists in the bucket is never overwritten: versions are
  immutable, so a server that loaded ``age/2`` keeps meaning the same model. Without
  ``--skip-existing`` the whole upload is refused, before anything is written, if any
  local version is already there; with it, only versions the bucket lacks are sent
  (the way to publish a newly exported version).
- Within a model, version files go first and the model's ``config.pbtxt`` last, so a
  reader never sees a new model's config before its files.

Credentials come from the standard AWS environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). The bucket must exist.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from serving.runtime import storage

SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", "~")
KEEP = ".keep"  # placeholder object that makes an otherwise empty version folder exist


def _skipped(name: str) -> bool:
    return (name.startswith(".") and name != KEEP) or name in SKIP_DIRS or name.endswith(SKIP_SUFFIXES)


def _files(folder: Path) -> list[Path]:
    """Files under ``folder``, symlinks followed, caches left out, in a stable order."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        found += [Path(root) / f for f in sorted(files) if not _skipped(f)]
    return found


@dataclass
class Plan:
    """What one publish would upload: (local file, key relative to the prefix) pairs, in upload order."""

    uploads: list[tuple[Path | None, str]] = field(default_factory=list)  # path None: an empty placeholder
    existing: list[str] = field(default_factory=list)  # "model/version" already in the bucket
    new_versions: list[str] = field(default_factory=list)


def plan(repository: Path, remote_keys: list[str]) -> Plan:
    repository = Path(repository)
    remote_versions = {"/".join(k.split("/")[:2]) for k in remote_keys if k.count("/") >= 2}
    result = Plan()
    for model in sorted(p for p in repository.iterdir() if p.is_dir() and not _skipped(p.name)):
        if not (model / "config.pbtxt").is_file():
            continue  # not a model folder
        for folder in sorted(
            (p for p in model.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
        ):
            version = f"{model.name}/{folder.name}"
            if version in remote_versions:
                result.existing.append(version)
                continue
            result.new_versions.append(version)
            files = [(path, path.relative_to(repository).as_posix()) for path in _files(folder)]
            result.uploads += files or [(None, f"{version}/{KEEP}")]
        model_files = [
            (path, path.relative_to(repository).as_posix())
            for path in _files(model)
            if not path.relative_to(model).parts[0].isdigit()
        ]
        # config.pbtxt last: the file that makes a folder a model appears only once the rest is there.
        model_files.sort(key=lambda item: item[1] == f"{model.name}/config.pbtxt")
        result.uploads += model_files
    return result


def publish(repository: Path, uri: str, *, skip_existing: bool = False, dry_run: bool = False, out=sys.stdout):
    """Uploads ``repository`` to ``uri``; returns the Plan. Raises StorageError on refusal or S3 errors."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bex

    repository = Path(repository)
    if not repository.is_dir():
        raise storage.StorageError(f"model repository {repository} does not exist")
    location = storage.S3Location.parse(uri)
    s3 = storage.client(location)
    todo = plan(repository, storage.list_keys(location, s3))
    if todo.existing and not skip_existing:
        raise storage.StorageError(
            f"refusing to overwrite version(s) already in {location}: {', '.join(todo.existing)}. Versions are "
            "immutable: export a new version number, or pass --skip-existing to upload only the new ones."
        )
    for version in todo.existing:
        print(f"skip     {version}/ (already in the bucket)", file=out)
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
    p.add_argument("uri", help="s3://[HOST:PORT/]BUCKET/PREFIX")
    p.add_argument("--skip-existing", action="store_true", help="upload only versions the bucket does not have")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded, upload nothing")
    args = p.parse_args(argv)
    try:
        publish(args.repository, args.uri, skip_existing=args.skip_existing, dry_run=args.dry_run)
    except storage.StorageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

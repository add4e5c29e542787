"""Model repositories in S3-compatible object storage, addressed the way Triton addresses them.

    s3://BUCKET/PREFIX                    AWS S3 (region from AWS_DEFAULT_REGION)
    s3://HOST:PORT/BUCKET/PREFIX          any S3 API over http (MinIO, Ceph, moto)
    s3://https://HOST:PORT/BUCKET/PREFIX  the same over TLS

Triton reads such a URI itself. It takes the endpoint from the URI (not from
AWS_ENDPOINT_URL), credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_DEFAULT_REGION, and copies each model into TRITON_AWS_MOUNT_DIRECTORY, which
must exist and be empty. Without AWS_EC2_METADATA_DISABLED=true the AWS SDK first
tries the EC2 metadata endpoint and stalls off EC2. A wrong key or a missing bucket
only shows up in Triton's log as models failing to load, so ``preflight`` asks the
same questions with boto3 first and fails with a message that says what is wrong.
boto3 is imported lazily: serving a local folder never needs it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"


class StorageError(RuntimeError):
    """The object store cannot serve this repository; the message says why and what to do."""


def is_s3(uri: str | os.PathLike) -> bool:
    return isinstance(uri, str) and uri.startswith(SCHEME)


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://`` URI. ``endpoint`` is None for AWS itself."""

    bucket: str
    prefix: str  # no leading or trailing slash; "" for the bucket root
    endpoint: str | None = None

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not is_s3(uri):
            raise StorageError(f"not an s3:// URI: {uri!r}")
        rest = uri[len(SCHEME) :]
        endpoint = None
        for scheme in ("http://", "https://"):
            if rest.startswith(scheme):
                host, _, rest = rest[len(scheme) :].partition("/")
                endpoint = scheme + host
                break
        else:
            first, _, tail = rest.partition("/")
            if ":" in first:  # bucket names cannot hold a colon, so this is HOST:PORT
                endpoint, rest = f"http://{first}", tail
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"no bucket in {uri!r}; expected s3://[HOST:PORT/]BUCKET/PREFIX")
        return cls(bucket=bucket, prefix=prefix.strip("/"), endpoint=endpoint)

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        host = f"{self.endpoint.removeprefix('http://')}/" if self.endpoint else ""
        return f"{SCHEME}{host}{self.bucket}/{self.prefix}".rstrip("/")


def client(location: S3Location):
    """A boto3 S3 client for ``location``, with credentials from the standard AWS environment variables."""
    import boto3
    from botocore.config import Config

    # A fresh session reads the environment now; boto3's default session caches the first credentials it saw.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=location.endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or DEFAULT_REGION,
        # Fail in seconds, not after the SDK's default minute of retries, when the endpoint is down.
        config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}),
    )


def explain(err: Exception, location: S3Location, key: str | None = None) -> StorageError:
    """Turns a boto3/botocore exception into a StorageError that names the cause (``key``: the object it was
    reading, relative to the location, if any)."""
    from botocore import exceptions as bex

    where = f"{location} (endpoint {location.endpoint or 'AWS'})"
    if isinstance(err, bex.NoCredentialsError):
        return StorageError(f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(err, bex.EndpointConnectionError | bex.ConnectTimeoutError):
        return StorageError(f"cannot reach the S3 endpoint of {where}: {err}")
    if isinstance(err, bex.ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken") or status == 403:
            return StorageError(
                f"S3 rejected the credentials for {where} ({code or status}): check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, and that the key may list and read the bucket"
            )
        if code == "NoSuchBucket" or (status == 404 and key is None and code != "NoSuchKey"):
            return StorageError(f"bucket {location.bucket!r} does not exist at {where}")
        if status == 404:  # a listed object that is gone, or a key the server does not read back as listed
            return StorageError(f"object {key!r} listed under {where} could not be read: {code or status}")
        return StorageError(f"S3 error for {where}: {code or status}: {err}")
    return StorageError(f"S3 error for {where}: {err}")


#: The most objects a server reads under a repository URI. The published repository is a few dozen (42 for the
#: committed one's release); a URI that lists thousands is the wrong prefix (a bucket's root, a folder of datasets), and
#: listing, staging or letting Triton walk it would take minutes and fill the disk before any model loads.
MAX_REPOSITORY_OBJECTS = 5_000


def list_objects(
    location: S3Location, s3=None, prefix: str | None = None, *, limit: int | None = None
) -> dict[str, int]:
    """Every object under ``prefix`` (default: the location's prefix): its size, by key relative to the location's
    prefix. With ``limit``, a listing that passes it stops there: StorageError, before the rest is listed."""
    from botocore import exceptions as bex

    s3 = s3 or client(location)
    base = location.key(prefix or "")
    search = f"{base}/" if base else ""
    found = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=search):
            for o in page.get("Contents", []):
                found[o["Key"][len(location.key()) :].lstrip("/")] = o["Size"]
            if limit is not None and len(found) > limit:
                raise StorageError(
                    f"more than {limit} objects under {location}: a model repository holds a few dozen; "
                    "is the URI the published repository's prefix (s3://BUCKET/PREFIX, where PREFIX/MODEL/config.pbtxt "
                    "exists)?"
                )
    except (bex.BotoCoreError, bex.ClientError) as err:
        raise explain(err, location) from None
    return found


def list_keys(location: S3Location, s3=None, prefix: str | None = None, *, limit: int | None = None) -> list[str]:
    """Every object key under ``prefix`` (default: the location's prefix), relative to the location's prefix."""
    return list(list_objects(location, s3, prefix, limit=limit))


def preflight(uri: str) -> list[str]:
    """Checks that the credentials can list ``uri``, that it holds models and no more objects than a repository
    does (:data:`MAX_REPOSITORY_OBJECTS`); returns the model names."""
    location = S3Location.parse(uri)
    return models_in(location, list_keys(location, limit=MAX_REPOSITORY_OBJECTS))


def models_in(location: S3Location, keys: list[str]) -> list[str]:
    """The model names among ``keys`` (a listing relative to ``location``); StorageError when there is none."""
    models = sorted({k.split("/")[0] for k in keys if k.endswith("/config.pbtxt") and k.count("/") == 1})
    if not models:
        raise StorageError(
            f"no models under {location}: expected MODEL/config.pbtxt objects; "
            "upload a repository with `python -m serving.ops.publish model_repository URI`"
        )
    return models


#: How a server reads an s3:// repository. ``stage``: the launcher copies it once into a private local folder,
#: one listing and parallel GETs, and Triton loads that folder, as KServe's storage initializer does for a pod.
#: ``triton``: Triton reads the bucket itself, which costs about 25 S3 requests per object at every start (HEADs
#: and listings, sequential: 994 requests for 36 objects, 6.5 of an 8.2 s cold start on moto), but sees what is
#: published after the start: ``serving.ops.rollout`` can load a new version, and polling finds it.
#: ``auto`` (the default): ``triton`` under explicit or poll model control, where the bucket may change under a
#: running server, else ``stage``.
READ_MODES = ("auto", "stage", "triton")
#: The publisher's placeholder object that makes an otherwise empty version folder (an ensemble's ``1/``) exist.
KEEP = ".keep"


def read_mode(mode: str, triton_args: tuple[str, ...] | list[str]) -> str:
    """Resolves ``auto`` (see :data:`READ_MODES`) from the model-control flag among Triton's arguments."""
    if mode not in READ_MODES:
        raise ValueError(f"s3_read must be one of {READ_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    changing = {"--model-control-mode=explicit", "--model-control-mode=poll"}
    return "triton" if changing.intersection(triton_args) else "stage"


STAGE_WORKERS = 8
#: Disk left free after staging: Triton, its stubs' logs and OpenVINO's compiled-model cache write there too.
STAGE_DISK_RESERVE = 256 * 2**20


@dataclass(frozen=True)
class Staged:
    """What :func:`stage` copied."""

    folder: Path
    objects: int
    bytes: int
    seconds: float


def _local_path(dest: Path, relative_key: str) -> Path:
    """Where ``relative_key`` lands under ``dest``; refuses a key that would land anywhere else."""
    parts = relative_key.split("/")
    if not relative_key or relative_key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"refusing to stage object key {relative_key!r}: it is not a plain relative path")
    return dest.joinpath(*parts)


def stage(uri: str, dest: str | Path, *, workers: int = STAGE_WORKERS) -> Staged:
    """Copies the models under ``uri`` into the empty folder ``dest`` (created private); returns the counts.

    One client and one listing, which also does :func:`preflight`'s checks (credentials, bucket, models present,
    at most :data:`MAX_REPOSITORY_OBJECTS` objects), then GETs in ``workers`` threads. Only the models' folders
    are copied (what Triton reads: a top-level folder with a ``config.pbtxt`` or ``configs/``); other objects
    under the prefix are left in the bucket. A version folder that exists only as the publisher's :data:`KEEP`
    placeholder becomes an empty folder. Keys that would escape ``dest``, and a copy that would not fit on
    ``dest``'s disk with :data:`STAGE_DISK_RESERVE` to spare, are refused before anything is written.
    """
    import concurrent.futures
    import time

    from botocore import exceptions as bex

    started = time.monotonic()
    location = S3Location.parse(uri)
    dest = Path(dest)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise StorageError(f"staging folder {dest} is not empty")
    s3 = client(location)
    sizes = list_objects(location, s3, limit=MAX_REPOSITORY_OBJECTS)
    models = set(models_in(location, list(sizes)))
    models |= {key.split("/")[0] for key in sizes if key.count("/") == 2 and key.split("/")[1] == "configs"}
    sizes = {key: size for key, size in sizes.items() if key.split("/")[0] in models}
    keys = list(sizes)
    need, free = sum(sizes.values()), shutil.disk_usage(dest).free
    if need + STAGE_DISK_RESERVE > free:
        raise StorageError(
            f"cannot stage {location}: its models are {need / 2**20:.0f} MiB and {dest} has {free / 2**20:.0f} MiB "
            f"free, of which {STAGE_DISK_RESERVE // 2**20} MiB stay free; free some disk, point TMPDIR at a larger "
            "one, or let Triton read the bucket (--s3-read triton)"
        )
    # A key ending in "/" is a folder marker (the AWS console's "Create folder" writes one): a folder, as KEEP is.
    folders = [key.rstrip("/") for key in keys if key.endswith("/") and key.strip("/")]
    keys = [key for key in keys if not key.endswith("/")]
    targets = {key: _local_path(dest, key) for key in keys}
    try:
        for path in [*targets.values(), *(_local_path(dest, f"{folder}/{KEEP}") for folder in folders)]:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:  # a key that is a file and a folder's prefix at once, a name too long for this disk
        raise StorageError(f"cannot stage {location}: {err}") from None

    def get(key: str) -> int:
        if key.rsplit("/", 1)[-1] == KEEP:
            return 0
        try:
            body = s3.get_object(Bucket=location.bucket, Key=location.key(key))["Body"]
            with targets[key].open("wb") as out:  # streamed: an object of any size costs this process 1 MiB
                size = sum(out.write(chunk) for chunk in body.iter_chunks(2**20))
        except (bex.BotoCoreError, bex.ClientError) as err:
            raise explain(err, location, key) from None
        except OSError as err:
            raise StorageError(f"cannot stage object key {key!r} of {location}: {err}") from None
        return size

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(get, keys))
    return Staged(folder=dest, objects=len(keys), bytes=sum(sizes), seconds=time.monotonic() - started)


def triton_env(mount_dir: str | Path) -> dict[str, str]:
    """The environment Triton needs to read an s3:// repository, copying models into ``mount_dir``."""
    env = {
        "AWS_EC2_METADATA_DISABLED": "true",
        "TRITON_AWS_MOUNT_DIRECTORY": str(mount_dir),
    }
    if not (os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")):
        env["AWS_DEFAULT_REGION"] = DEFAULT_REGION
    return env

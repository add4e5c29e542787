"""Model repositories in object storage: publish to a real local S3 server (moto), serve from it with Triton."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.ops.publish import missing_int8, plan, publish, served_versions
from serving.runtime import storage
from serving.runtime.launch import TritonServer, TritonStartError

pytest.importorskip("moto.server", reason="moto[server] is in the dev extra (make setup)")
from loadtest.local_s3 import LocalS3  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "model_repository"
PORTRAIT = ROOT / "gradio_frontend" / "examples" / "grace_hopper.jpg"


@pytest.mark.parametrize(
    "uri, bucket, prefix, endpoint",
    [
        ("s3://models/prod/repo", "models", "prod/repo", None),
        ("s3://models", "models", "", None),
        ("s3://127.0.0.1:9000/models/prod/", "models", "prod", "http://127.0.0.1:9000"),
        ("s3://https://minio.local:443/models/x", "models", "x", "https://minio.local:443"),
    ],
)
def test_parse_uri(uri, bucket, prefix, endpoint):
    loc = storage.S3Location.parse(uri)
    assert (loc.bucket, loc.prefix, loc.endpoint) == (bucket, prefix, endpoint)
    with pytest.raises(storage.StorageError):
        storage.S3Location.parse("s3://127.0.0.1:9000/")


@pytest.fixture(scope="module")
def s3():
    with LocalS3() as server:
        yield server


@pytest.fixture
def aws_env(s3, monkeypatch):
    for name, value in s3.credentials.items():
        monkeypatch.setenv(name, value)
    return s3


def _repo_with_cache(tmp_path: Path) -> Path:
    """A copy of the committed repository (symlinks kept as links) plus the clutter publish must leave out."""
    repo = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repo, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "preprocess" / "1" / "__pycache__").mkdir()
    (repo / "preprocess" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    (repo / "age" / ".tmp-9").mkdir()  # an export that was interrupted before its rename
    (repo / "age" / ".tmp-9" / "half.bin").write_bytes(b"\0")
    return repo


def test_publish_as_triton_reads_it_and_never_overwrites(aws_env, tmp_path):
    repo = _repo_with_cache(tmp_path)
    assert (repo / "preprocess_crop" / "1" / "model.py").is_symlink()
    uri = aws_env.uri("publish-test")
    s3 = aws_env.client()  # the test's own reads of the bucket, all through one client
    out = io.StringIO()
    publish(repo, uri, out=out)
    keys = storage.list_keys(storage.S3Location.parse(uri), s3)
    assert "preprocess_crop/1/model.py" in keys and "age/configs/cpu.pbtxt" in keys
    assert not [k for k in keys if "__pycache__" in k or ".tmp-" in k or k.endswith(".pyc")]
    body = s3.get_object(Bucket=aws_env.bucket, Key="publish-test/preprocess_crop/1/model.py")["Body"]
    assert body.read() == (REPOSITORY / "preprocess" / "1" / "model.py").read_bytes()  # the link's target
    assert f"uploaded {len(keys)} files" in out.getvalue()

    # The committed versions, whatever their numbers.
    age_v, gender_v = (max(int(p.name) for p in (repo / t).iterdir() if p.name.isdigit()) for t in ("age", "gender"))
    # Only what the configs serve (the newest version) goes up, with the OpenVINO IR beside its SavedModel;
    # --all-versions would send the older ones too.
    published = {"/".join(k.split("/")[:2]) for k in keys if k.split("/")[1].isdigit()}
    assert {"age/1", "gender/1"}.isdisjoint(published) and {f"age/{age_v}", f"gender/{gender_v}"} <= published
    assert f"age/{age_v}/model.openvino/key.json" in keys and f"gender/{gender_v}/model.openvino/model.bin" in keys
    # The CPU configs say auto, which serves int8 on CPUs without native bf16: the int8 models go up too.
    assert f"age/{age_v}/model.int8/model.bin" in keys and "has no int8 model" not in out.getvalue()
    assert "skip     age/1/ (not served by its configs" in out.getvalue()
    assert {"age/1", "gender/1"} <= set(plan(repo, {}, all_versions=True).new_versions)
    # Same versions again: refused before anything is written.
    with pytest.raises(storage.StorageError, match=f"refusing to overwrite.*age/{age_v}"):
        publish(repo, uri, out=io.StringIO())
    # A model's config that differs from the bucket's: refused, --skip-existing or not (servers read it at every
    # start); the bucket is left as it was.
    config = (repo / "age" / "config.pbtxt").read_bytes()
    (repo / "age" / "config.pbtxt").write_bytes(config.replace(b"max_batch_size: 64", b"max_batch_size: 63"))
    with pytest.raises(storage.StorageError, match="age/config.pbtxt in .* differ from the local files"):
        publish(repo, uri, skip_existing=True, out=io.StringIO())
    (repo / "age" / "config.pbtxt").write_bytes(config)
    assert storage.list_keys(storage.S3Location.parse(uri), s3) == keys

    # A new version is published with --skip-existing, through the CLI; the existing ones are not re-sent.
    shutil.copytree(repo / "age" / str(age_v), repo / "age" / str(age_v + 1), symlinks=True)
    cli = subprocess.run(
        [sys.executable, "-m", "serving.ops.publish", str(repo), uri, "--skip-existing"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"new versions: age/{age_v + 1}" in cli.stdout and f"skip     gender/{gender_v}/" in cli.stdout
    assert f"s3://models/publish-test/age/{age_v}/" not in cli.stdout
    assert "s3://models/publish-test/age/config.pbtxt" not in cli.stdout  # the same bytes: not sent again

    # A publish interrupted halfway through a version: refused as it stands, finished by --skip-existing.
    lost = f"publish-test/age/{age_v + 1}/model.openvino/model.bin"
    s3.delete_object(Bucket=aws_env.bucket, Key=lost)
    with pytest.raises(storage.StorageError, match=f"age/{age_v + 1} only partly: --skip-existing finishes it"):
        publish(repo, uri, out=io.StringIO())
    out = io.StringIO()
    publish(repo, uri, skip_existing=True, out=out)
    assert f"finish   age/{age_v + 1}/" in out.getvalue() and f"s3://models/{lost}" in out.getvalue()
    assert out.getvalue().count("uploaded s3://") == 1
    # A version whose files differ from the bucket's: refused whatever the flags.
    record = repo / "age" / str(age_v + 1) / "export.json"
    kept = record.read_bytes()
    record.write_text("{}")
    with pytest.raises(storage.StorageError, match=f"age/{age_v + 1} in .* differ from the local ones"):
        publish(repo, uri, skip_existing=True, out=io.StringIO())
    record.write_bytes(kept)
    cli = subprocess.run(
        [sys.executable, "-m", "serving.ops.publish", str(repo), uri],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert cli.returncode == 1 and "refusing to overwrite" in cli.stderr


def test_publish_refuses_a_symlink_loop_before_uploading_anything(aws_env, tmp_path):
    """A link back into a folder on its own path was followed until the path was too long: ~40 nested copies went
    up, then ELOOP halfway, and the immutable release prefix stayed half-made for good (red-team finding 7).
    It is refused while publish plans, naming the link; the committed links (a file's) are still followed."""
    repo = _repo_with_cache(tmp_path)
    uri = aws_env.uri("symlink-loop")
    location = storage.S3Location.parse(uri)
    s3 = aws_env.client()  # one client for every listing here, not a fresh session each
    for link, target in (("postprocess/1/loop", "."), ("age/configs/up", "../.."), ("gender/m", "../gender")):
        (repo / link).symlink_to(target)
        for dry_run in (True, False):
            out = io.StringIO()
            with pytest.raises(storage.StorageError, match=f"symbolic link {re.escape(str(repo / link))} -> .*loop"):
                publish(repo, uri, dry_run=dry_run, ir=False, out=out)
            assert "upload" not in out.getvalue()
        assert storage.list_keys(location, s3) == []
        cli = subprocess.run(
            [sys.executable, "-m", "serving.ops.publish", str(repo), uri, "--no-ir"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert cli.returncode == 1 and f"error: symbolic link {repo / link} -> {target} leads back" in cli.stderr
        assert "Traceback" not in cli.stderr and storage.list_keys(location, s3) == []
        (repo / link).unlink()
    # An ordinary link to a folder is followed, and publish then goes through.
    (repo / "postprocess" / "1" / "shared").symlink_to("../../preprocess/1")
    publish(repo, uri, ir=False, out=io.StringIO())
    keys = storage.list_keys(location, s3)
    assert "postprocess/1/shared/model.py" in keys and "preprocess_crop/1/model.py" in keys


@pytest.mark.parametrize(
    "change, message",
    [
        ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "rejected the credentials"),
        ({"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN"}, "rejected the credentials"),
        ({"bucket": "no-such-bucket"}, "does not exist"),
        ({"prefix": "empty-prefix"}, "no models under"),
    ],
)
def test_bad_storage_fails_fast_with_a_clear_message(aws_env, monkeypatch, change, message):
    for name, value in change.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    bucket = change.get("bucket", aws_env.bucket)
    uri = f"s3://127.0.0.1:{aws_env.port}/{bucket}/{change.get('prefix', 'publish-test')}"
    start = time.monotonic()
    with pytest.raises(TritonStartError, match=message), TritonServer(uri, http_port=0):
        pass
    assert time.monotonic() - start < 15


@pytest.mark.integration
def test_auto_read_mode_stages_unless_the_bucket_may_change_under_the_server():
    assert storage.read_mode("auto", []) == "stage"
    assert storage.read_mode("auto", ["--model-control-mode=explicit", "--load-model=*"]) == "triton"
    assert storage.read_mode("auto", ["--model-control-mode=poll", "--repository-poll-secs=5"]) == "triton"
    assert storage.read_mode("stage", ["--model-control-mode=explicit"]) == "stage"  # the operator's choice
    with pytest.raises(ValueError, match="s3_read must be one of"):
        storage.read_mode("copy", [])


@pytest.fixture(scope="module")
def published(s3):
    """The committed repository, published once for the module: both ways of serving it read the same prefix, which
    nothing writes to after this publish."""
    uri = s3.uri("serve-test")
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3.credentials.items():
            env.setenv(name, value)
        publish(REPOSITORY, uri, out=io.StringIO())
    return uri


@pytest.mark.parametrize("s3_read", ["stage", "triton"])
def test_serve_portrait_from_s3_like_from_disk(aws_env, published, triton_committed, tmp_path, s3_read):
    from client import AgeGenderClient

    uri = published
    objects = len(storage.list_keys(storage.S3Location.parse(uri), aws_env.client()))
    server = TritonServer(uri, http_port=0, grpc_port=0, metrics_port=0, s3_read=s3_read)
    assert server.config_name == "cpu"  # configs/cpu.pbtxt is fetched from the bucket with the rest
    before = len(aws_env.requests())
    with server:
        mount = server.s3_mount
        assert mount.is_dir() and any(mount.iterdir())  # the models were copied there
        assert (mount.stat().st_mode & 0o077) == 0, "the local copy is private"
        # What this cold start read from the bucket (moto's access log): version files of served versions only.
        requests = aws_env.requests()[before:]
        reads = [path for method, path in requests if method == "GET" and "?" not in path]
        prefix = "/serve-test/"
        fetched = {"/".join(p.split(prefix, 1)[1].split("/")[:2]) for p in reads if prefix in p}
        fetched = {v for v in fetched if v.split("/")[1].isdigit()}
        served = {f"{m.name}/{v}" for m in REPOSITORY.iterdir() if m.is_dir() for v in served_versions(m)}
        assert fetched and fetched <= served, (fetched, served)
        assert {"age/1", "gender/1"}.isdisjoint(fetched)
        if s3_read == "stage":
            # The launcher's copy: the preflight listing, one listing, one GET per object; Triton reads none.
            assert server.staged is not None and server.staged.objects == objects
            assert len(requests) <= objects + 2, (len(requests), objects)
        else:
            assert server.staged is None
            assert len(requests) > 2 * objects  # what staging saves: Triton's HEADs and listings per object
        print(f"\n[s3 {s3_read}] cold start: {len(requests)} S3 requests for {objects} objects, {len(reads)} GETs")
        with (
            AgeGenderClient(server.grpc_url, protocol="grpc") as remote,
            AgeGenderClient(triton_committed.grpc_url, protocol="grpc") as local,
        ):
            from_s3, from_disk = remote.predict(PORTRAIT), local.predict(PORTRAIT)
    assert from_s3.face_found and from_s3.error in (None, "")
    assert from_s3.age == pytest.approx(from_disk.age, abs=1e-4)
    assert from_s3.female_probability == pytest.approx(from_disk.female_probability, abs=1e-5)
    assert not mount.exists(), "the launcher removes its local copy"
    assert "AWS_ENDPOINT_URL" not in os.environ  # the endpoint came from the URI


def test_staging_refuses_keys_that_leave_the_folder(aws_env, tmp_path):
    uri = aws_env.uri("stage-escape")
    location = storage.S3Location.parse(uri)
    s3 = aws_env.client()
    s3.put_object(Bucket=location.bucket, Key=location.key("age/config.pbtxt"), Body=b'name: "age"')
    s3.put_object(Bucket=location.bucket, Key=location.key("age/1/../../../escaped"), Body=b"x")
    with pytest.raises(storage.StorageError, match="not a plain relative path"):
        storage.stage(uri, tmp_path / "copy")
    assert not any(tmp_path.rglob("escaped")) and not (tmp_path.parent / "escaped").exists()
    # A clean prefix lands as it is in the bucket, the publisher's empty-folder placeholder as an empty folder.
    clean = storage.S3Location.parse(aws_env.uri("stage-clean"))
    s3.put_object(Bucket=clean.bucket, Key=clean.key("age/config.pbtxt"), Body=b'name: "age"')
    s3.put_object(Bucket=clean.bucket, Key=clean.key("ens/config.pbtxt"), Body=b"")
    s3.put_object(Bucket=clean.bucket, Key=clean.key("ens/1/.keep"), Body=b"")
    staged = storage.stage(str(clean), tmp_path / "clean")
    assert (tmp_path / "clean/age/config.pbtxt").read_bytes() == b'name: "age"'
    assert (tmp_path / "clean/ens/1").is_dir() and not any((tmp_path / "clean/ens/1").iterdir())
    assert staged.objects == 3 and staged.bytes == len(b'name: "age"')
    with pytest.raises(storage.StorageError, match="not empty"):
        storage.stage(str(clean), tmp_path / "clean")
    # Folder markers (the AWS console's "Create folder": empty keys ending in "/") are folders, not refusals; a key
    # that is a file and a folder's prefix at once is one line naming it, not a traceback (red-team probe).
    s3.put_object(Bucket=clean.bucket, Key=clean.key("ens") + "/", Body=b"")
    s3.put_object(Bucket=clean.bucket, Key=clean.key("ens/2") + "/", Body=b"")
    staged = storage.stage(str(clean), tmp_path / "markers")
    assert (tmp_path / "markers/ens/2").is_dir() and (tmp_path / "markers/age/config.pbtxt").is_file()
    s3.put_object(Bucket=clean.bucket, Key=clean.key("age/3"), Body=b"x")
    s3.put_object(Bucket=clean.bucket, Key=clean.key("age/3/model.bin"), Body=b"y")
    with pytest.raises(storage.StorageError, match="cannot stage"):
        storage.stage(str(clean), tmp_path / "both")


def test_staging_copies_only_the_models_and_refuses_what_would_not_fit(aws_env, tmp_path, monkeypatch):
    """A URI that is not a repository's prefix, or a copy larger than the disk, is one clear error before anything
    is written; objects beside the models stay in the bucket."""
    location = storage.S3Location.parse(aws_env.uri("stage-bounds"))
    s3 = aws_env.client()
    s3.put_object(Bucket=location.bucket, Key=location.key("age/config.pbtxt"), Body=b'name: "age"')
    s3.put_object(Bucket=location.bucket, Key=location.key("age/1/model.bin"), Body=b"w" * 100)
    s3.put_object(Bucket=location.bucket, Key=location.key("datasets/faces.tar"), Body=b"d" * 1000)
    s3.put_object(Bucket=location.bucket, Key=location.key("NOTES.md"), Body=b"n")
    staged = storage.stage(str(location), tmp_path / "models")
    assert sorted(str(p.relative_to(tmp_path / "models")) for p in (tmp_path / "models").rglob("*") if p.is_file()) == [
        "age/1/model.bin",
        "age/config.pbtxt",
    ]
    assert (staged.objects, staged.bytes) == (2, 100 + len(b'name: "age"'))

    monkeypatch.setattr(storage, "MAX_REPOSITORY_OBJECTS", 3)
    for attempt in (lambda: storage.stage(str(location), tmp_path / "many"), lambda: storage.preflight(str(location))):
        with pytest.raises(storage.StorageError, match="more than 3 objects under .*stage-bounds"):
            attempt()
    assert not any((tmp_path / "many").iterdir())
    monkeypatch.setattr(storage, "MAX_REPOSITORY_OBJECTS", 4)
    assert storage.preflight(str(location)) == ["age"]

    monkeypatch.setattr(storage, "STAGE_DISK_RESERVE", shutil.disk_usage(tmp_path).free)
    with pytest.raises(storage.StorageError, match=r"its models are 0 MiB and .* free"):
        storage.stage(str(location), tmp_path / "full")
    assert not any((tmp_path / "full").iterdir())


def test_launcher_cli_names_the_storage_problem(aws_env):
    ports = [f"--{kind}-port=0" for kind in ("http", "grpc", "metrics")]  # free ones, chosen at start
    uri = f"s3://127.0.0.1:{aws_env.port}/no-such-bucket/releases/r1"
    cli = subprocess.run(
        [sys.executable, "-m", "serving.runtime.launch", "--model-repository", uri, *ports],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert cli.returncode == 1
    assert "bucket 'no-such-bucket' does not exist" in cli.stderr


def test_publish_refuses_a_version_folder_triton_would_not_read(tmp_path):
    # Published, "022" was age's only served version, which Triton skips (leading zero): the release could not start.
    for name in ("022", "\u00b2"):
        model = tmp_path / name.encode().hex() / "m"
        (model / "21").mkdir(parents=True)
        (model / name).mkdir()
        (model / "config.pbtxt").write_text('name: "m"\n')
        with pytest.raises(storage.StorageError, match="named by its number in ASCII digits without leading zeros"):
            served_versions(model)


@pytest.mark.parametrize(
    "policy, served",
    [
        ("", [3]),  # no policy: Triton serves the newest version
        ("version_policy { latest { num_versions: 2 } }", [2, 3]),
        ("version_policy: { all { } }", [1, 2, 3]),
        ("version_policy { specific { versions: [1, 3] } }", [1, 3]),
        ("# version_policy { all { } } was tried\nversion_policy { latest { num_versions: 1 } }", [3]),
    ],
)
def test_publish_finds_the_served_versions_in_the_configs(tmp_path, policy, served):
    model = tmp_path / "m"
    for v in (1, 2, 3):
        (model / str(v)).mkdir(parents=True)
    (model / "config.pbtxt").write_text(f'name: "m"\n{policy}\n')
    assert served_versions(model) == served
    # A variant config (configs/cpu.pbtxt) that serves version 1 too adds it: the bucket must hold both.
    (model / "configs").mkdir()
    (model / "configs" / "cpu.pbtxt").write_text('name: "m"\nversion_policy { specific { versions: 1 } }\n')
    assert served_versions(model) == sorted({1, *served})


def test_publish_ir_only_makes_the_missing_ir(tiny_repo, tmp_path):
    """`publish REPO --ir-only` (for versions exported before the IR existed) converts only what lacks a valid IR."""
    from serving.pipeline.backends.openvino_savedmodel import ir

    repo = tmp_path / "model_repository"
    shutil.copytree(tiny_repo / "gender", repo / "gender")
    version = repo / "gender" / str(served_versions(repo / "gender")[-1])
    shutil.rmtree(version / ir.IR_DIR)
    cli = [sys.executable, "-m", "serving.ops.publish", str(repo), "--ir-only"]
    first = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert first.returncode == 0 and "(1 built)" in first.stdout, first.stdout + first.stderr
    assert ir.valid(version) == (True, "valid")
    again = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 0 and "(0 built)" in again.stdout
    wrong = subprocess.run([*cli[:-1], "s3://bucket/x", "--ir-only"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "--ir-only without one" in wrong.stderr


def test_int8_models_are_published_only_where_a_config_may_serve_them(aws_env, tmp_path):
    """A version's model.int8/ (training.quantize) is one more download per scale from zero: published where a
    config asks for int8 or for auto (int8 on CPUs without native bf16), left out where every config says f32 or
    bf16."""
    repo = _repo_with_cache(tmp_path)
    versions = {t: max(int(p.name) for p in (repo / t).iterdir() if p.name.isdigit()) for t in ("age", "gender")}
    for task, v in versions.items():
        (repo / task / str(v) / "model.int8").mkdir(exist_ok=True)
        (repo / task / str(v) / "model.int8" / "key.json").write_text("{}")
    keys = [key for _, key in plan(repo, {}).uploads]
    assert {f"{t}/{v}/model.int8/key.json" for t, v in versions.items()} <= set(keys)  # the committed "auto"
    # These int8 folders hold no model: the publisher says those versions serve f32 where int8 was to be served.
    assert [v for v, _ in missing_int8(repo)] == [f"{t}/{versions[t]}" for t in ("age", "gender")]
    out = io.StringIO()
    publish(repo, aws_env.uri("int8-note"), dry_run=True, out=out)
    assert f"note: age/{versions['age']} has no int8 model (savedmodel_sha256 differs" in out.getvalue()
    for precision, published in (("f32", False), ("bf16", False), ("int8", True)):
        config = repo / "age" / "configs" / "cpu.pbtxt"
        config.write_text(
            re.sub(r'(inference_precision" value \{ string_value: )"\w+"', rf'\1"{precision}"', config.read_text())
        )
        keys = [key for _, key in plan(repo, {}).uploads]
        assert (f"age/{versions['age']}/model.int8/key.json" in keys) is published, precision
        assert (f"age/{versions['age']}" in [v for v, _ in missing_int8(repo)]) is published, precision
        assert (
            f"gender/{versions['gender']}/model.int8/key.json" in keys
            and f"age/{versions['age']}/model.openvino/model.bin" in keys
        )


def test_a_restart_that_reads_the_bucket_again_removes_the_copy_of_the_triton_before(tmp_path):
    # Triton reading s3:// itself copies every model into a fresh folder at each start: a crash loop kept one full
    # copy of the repository per restart until the launcher stopped.
    server = TritonServer("s3://127.0.0.1:1/bucket/r1", s3_read="triton", http_port=0, grpc_port=0, metrics_port=0)
    try:
        server.command()
        first = server.s3_mount
        (first / "age").mkdir()  # what Triton downloaded
        server.command()  # the restart's
        assert not first.exists() and server.s3_mount.is_dir() and server.s3_mount != first
    finally:
        server.stop()
    assert not server.s3_mount.exists()

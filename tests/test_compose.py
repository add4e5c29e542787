"""Static checks of docker-compose.yml, its CPU override and the Dockerfiles they build.

No Docker engine runs in CI, so these guard what breaks a `docker compose up` before it starts:
missing build contexts or copied paths, floating image tags, ports that disagree with the
client's defaults, and a health check that would never pass.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common import contract
from serving.runtime import command as triton_command
from serving.runtime.gate_process import SERVED_MODELS_ENV

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.02-py3"
# The contract's defaults (docs/contract.md): HTTP, gRPC, metrics.
TRITON_PORTS = {8000, 8001, 8002}


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that understands Compose's merge tags `!reset` and `!override`."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_constructor("!reset", _tagged)
_ComposeLoader.add_constructor("!override", _tagged)


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - SafeLoader subclass


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def compose_cpu() -> dict:
    return load(COMPOSE_CPU)


def _expand(value: str) -> str:
    """Resolves `${VAR:-default}` to its default, as Compose does when VAR is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _host_ports(service: dict) -> set[int]:
    ports = set()
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        ports.add(int(parts[-1].split("/")[0]))
    return ports


def _dockerfile_lines(path: Path) -> list[str]:
    # Joins continuation lines so `RUN a \ b` is one instruction.
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_compose_files_parse(compose, compose_cpu):
    assert {"triton", "gradio", "locust-master", "locust-worker"} <= set(compose["services"])
    assert set(compose_cpu["services"]) == {"triton"}


def test_build_contexts_and_dockerfiles_exist(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = ROOT / build["context"]
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"


def test_every_copied_path_exists(compose):
    dockerfiles = {
        ROOT / s["build"]["context"] / s["build"]["dockerfile"] for s in compose["services"].values() if "build" in s
    }
    for dockerfile in dockerfiles:
        lines = _dockerfile_lines(dockerfile)
        froms = [line for line in lines if line.upper().startswith("FROM ")]
        stages = {shlex.split(line)[-1] for line in froms if " AS " in line.upper()}
        for line in lines:
            if not line.upper().startswith(("COPY ", "ADD ")):
                continue
            words = shlex.split(line)[1:]
            stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            args = [a for a in words if not a.startswith("--")]
            if stage is not None:
                # From an earlier build stage, not the context: the stage must be defined here, and what it copies
                # is made inside it (a path on this machine, e.g. /tmp/..., says nothing about it).
                assert stage in stages, f"{dockerfile.name}: {line!r} copies from undefined stage {stage}"
                continue
            for src in args[:-1]:
                assert (ROOT / src).exists(), f"{dockerfile.name}: {line!r} copies missing {src}"


def test_mounted_host_paths_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = _expand(str(volume).split(":")[0])
            if not source.startswith("."):
                continue  # named volume
            # Results folders are created by the run itself; everything else must ship.
            if source.rstrip("/").endswith("results"):
                continue
            assert (ROOT / source).exists(), f"{name}: mounted {source} missing"


def test_images_pinned(compose):
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: give locally built images an explicit, versioned tag"
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"
    froms = []
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        for line in _dockerfile_lines(dockerfile):
            if line.upper().startswith("FROM "):
                image = line.split()[1]
                froms.append(image)
                assert ":" in image and not image.endswith(":latest"), f"{dockerfile.name}: {image} not pinned"
    assert TRITON_IMAGE in froms, f"Triton must be built FROM exactly {TRITON_IMAGE}"


def test_ports_go_through_the_door_on_loopback(compose):
    triton, door = compose["services"]["triton"], compose["services"]["door"]
    assert _host_ports(door) | _host_ports(triton) == TRITON_PORTS
    assert _host_ports(triton) == {8002}, "HTTP and gRPC must only be reachable through nginx"
    for spec in door["ports"] + triton["ports"]:
        bind, host, container = _expand(str(spec)).split(":")
        assert bind == "127.0.0.1" and "${BIND_ADDRESS" in str(spec), f"{spec}: publish on loopback by default"
        assert host == container, f"{spec}: remapping breaks the client's default URLs"
    gradio = compose["services"]["gradio"]
    assert gradio["environment"]["TRITON_URL"] == "door:8001"
    assert gradio["environment"].get("TRITON_PROTOCOL", "grpc") == "grpc"


def test_admin_apis_restricted_with_a_secret_from_the_env_file(compose, compose_cpu):
    from serving.runtime import door as proxy
    from serving.runtime import security

    # The key is in the environment and the command holds placeholders that the image's argv_secret.so fills in
    # before Triton's main(): `docker inspect` and /proc/PID/cmdline never show the key (docs/security.md).
    env = {"LD_PRELOAD": "/opt/agegender/lib/argv_secret.so"}
    env[security.ARGV_SECRETS_ENV] = f"{security.ADMIN_KEY_ENV},{security.PRELOAD_CHECK_ENV}"
    env[security.PRELOAD_CHECK_ENV] = security.PRELOAD_CHECK_VALUE
    env[security.ADMIN_KEY_ENV] = "${TRITON_ADMIN_KEY:?copy .env.example to .env and set TRITON_ADMIN_KEY}"
    assert env.items() <= compose["services"]["triton"]["environment"].items()
    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text()
    assert f"COPY --from=argv-secret /tmp/argv_secret.so {env['LD_PRELOAD']}" in dockerfile
    # The image's own command too: a plain `docker run` must not serve the admin APIs without a key.
    image_cmd = json.loads(re.search(r"^CMD (\[.*?\])", dockerfile.replace("\\\n", ""), re.M | re.S).group(1))
    for command in (compose["services"]["triton"]["command"], compose_cpu["services"]["triton"]["command"], image_cmd):
        args = security.restricted_args(security.placeholder(security.ADMIN_KEY_ENV))
        assert all(a in command for a in args)
        assert security.placeholder(security.PRELOAD_CHECK_ENV) in command
        assert not any("TRITON_ADMIN_KEY" in a and "@" not in a for a in command)
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert "TRITON_ADMIN_KEY=\n" in (ROOT / ".env.example").read_text()
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    assert conf == proxy.compose_nginx_config(), (
        "regenerate with: python -m serving.runtime.door --compose > docker/nginx.conf"
    )
    # The door listens on its container's interfaces, on Triton's ports, and forwards to the triton service.
    for line in ("listen 0.0.0.0:8000;", "listen 0.0.0.0:8001 http2;", "server triton:8000;", "server triton:8001;"):
        assert line in conf, line
    assert compose["services"]["door"]["image"].count(":") == 1


def test_client_defaults_agree(compose, monkeypatch):
    # The compose ports only help if the client and UI default to the same ones.
    from client.utils import default_url

    for name in ("TRITON_URL", "TRITON_GRPC_PORT", "TRITON_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    published = _host_ports(compose["services"]["door"])
    for protocol in ("grpc", "http"):
        host, port = default_url(protocol).rsplit(":", 1)
        assert host == "localhost" and int(port) in published, (protocol, default_url(protocol), published)
    assert default_url("grpc") != default_url("http")
    # The UI takes the client's default (gradio_frontend/settings.py), read when it is imported: in a fresh process
    # without TRITON_* it is the door's published gRPC port too.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_")}
    code = "from gradio_frontend import settings; print(settings.DEFAULT_TRITON_URL)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == default_url("grpc"), proc.stderr[-2000:]


def test_triton_healthcheck_and_gpu(compose):
    triton = compose["services"]["triton"]
    check = " ".join(triton["healthcheck"]["test"])
    assert "localhost:8000/v2/models/{m}/ready" in check
    assert all(f"'{model}'" in check for model in contract.PUBLIC_MODELS)
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert triton.get("shm_size"), "the Python backend needs more than Docker's 64 MB /dev/shm"
    assert any(v.startswith("./model_repository:") for v in triton["volumes"])


def test_rollouts_work_and_a_failed_one_leaves_the_service_ready(compose, compose_cpu):
    # Rollouts load versions through the repository API, which needs explicit model control; every model loads at
    # start. Readiness (the door's, through the gate) asks for each public model, not for Triton's own answer, which
    # stays "not ready" after any failed load (serving/runtime/gate.py, GrpcGate.not_ready).
    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text().replace("\\\n", "")
    image_cmd = json.loads(re.search(r"^CMD (\[.*?\])", dockerfile, re.M | re.S).group(1))
    commands = {
        "docker-compose.yml": compose["services"]["triton"]["command"],
        "docker-compose.cpu.yml": compose_cpu["services"]["triton"]["command"],
        "the Triton image's CMD": image_cmd,
    }
    for name, triton_args in commands.items():
        assert triton_command.flag(triton_args, "model-control-mode") == "explicit", name
        assert "--load-model=*" in triton_args, name
    served = compose["services"]["gate"]["environment"][SERVED_MODELS_ENV].split(",")
    assert sorted(served) == sorted(contract.PUBLIC_MODELS)


def test_gradio_waits_for_healthy_triton(compose):
    gradio = compose["services"]["gradio"]
    assert gradio["depends_on"]["triton"]["condition"] == "service_healthy"
    for spec in gradio["ports"]:
        assert str(spec).startswith("127.0.0.1:"), "the UI has no auth; publish it on loopback only"


def test_locust_services_use_the_project_locustfile(compose):
    assert (ROOT / "loadtest" / "locust" / "locustfile.py").is_file()
    master = compose["services"]["locust-master"]
    worker = compose["services"]["locust-worker"]
    assert "--master" in master["command"] and "--worker" in worker["command"]
    for service in (master, worker):
        assert "loadtest/locust/locustfile.py" in service["command"]
        assert service["environment"]["TRITON_GRPC_URL"] == "door:8001"
        assert service["environment"]["TRITON_HTTP_URL"] == "door:8000"
    assert any("--master-host=locust-master" in arg for arg in worker["command"])


def test_cpu_override_drops_gpu_and_selects_cpu_configs(compose_cpu):
    triton = compose_cpu["services"]["triton"]
    assert "--model-config-name=cpu" in triton["command"]
    assert triton["deploy"] == {}, "the override must reset the GPU reservation"
    raw = COMPOSE_CPU.read_text()
    assert re.search(r"^\s*deploy:\s*!reset", raw, re.M), "use !reset so Compose drops the inherited devices"


def test_cpu_override_keeps_compiled_models_on_a_volume(compose, compose_cpu):
    from serving.pipeline.backends.openvino_savedmodel import ov_runtime

    triton = compose_cpu["services"]["triton"]
    cache = triton["environment"][ov_runtime.ENV]
    mounts = dict(m.split(":")[:2][::-1] for m in triton["volumes"])  # container path -> source
    volume = next(path for path in mounts if cache.startswith(path + "/"))
    assert mounts[volume] in compose_cpu["volumes"]  # a named volume: it outlives the container
    # Compose replaces a service's volume list only entry by entry: the models stay mounted read-only.
    assert set(triton["volumes"]) >= set(compose["services"]["triton"]["volumes"])


def test_no_service_can_gain_privileges(compose):
    # A setuid binary in an image would otherwise give a compromised process root again (audit).
    for name, service in compose["services"].items():
        assert "no-new-privileges:true" in service.get("security_opt", []), name


def test_services_drop_capabilities_and_run_bounded_and_unprivileged(compose):
    # What a compromised process keeps: no Linux capabilities beyond the few named here, and no root where the
    # service needs none. The serving services have memory and process bounds, so one cannot starve the host.
    added = {"door": {"CHOWN", "SETGID", "SETUID"}, "locust-master": {"DAC_OVERRIDE"}}
    for name, service in compose["services"].items():
        assert service.get("cap_drop") == ["ALL"], name
        assert set(service.get("cap_add", [])) == added.get(name, set()), name
    users = {"gate": "nobody"}  # its image's USER
    users |= {name: compose["services"][name].get("user") for name in ("triton", "gradio", "locust-worker")}
    assert all(user and not str(user).startswith("0") and user != "root" for user in users.values()), users
    assert "USER nobody" in _dockerfile_lines(ROOT / "docker" / "gate.Dockerfile")
    for name in ("triton", "gate", "door", "gradio"):
        service = compose["services"][name]
        assert service["mem_limit"] and service["pids_limit"] > 0, name
    # Read-only root filesystems where nothing but /tmp is written, as the KServe runtime's securityContext.
    triton = compose["services"]["triton"]
    assert triton["read_only"] is True and "/tmp" in triton["tmpfs"] and triton["environment"]["HOME"] == "/tmp"
    assert compose["services"]["gate"]["read_only"] is True


def test_triton_image_runs_unprivileged_and_can_fill_its_cache_volume(compose_cpu):
    lines = _dockerfile_lines(ROOT / "docker" / "triton.Dockerfile")
    user = [line for line in lines if line.startswith("USER ")]
    assert user == ["USER 1000:1000"]  # a plain `docker run` is not root either
    # The named cache volume is initialised from the image's folder, owner included, before the USER line.
    cache = compose_cpu["services"]["triton"]["environment"]["AGEGENDER_OV_CACHE"]
    chown = next(i for i, line in enumerate(lines) if "chown 1000:1000 /var/cache/agegender" in line)
    assert cache.startswith("/var/cache/agegender/") and chown < lines.index("USER 1000:1000")


def test_the_python_models_find_the_project_in_the_working_directory(compose):
    # The 2.51 stub's Python runs isolated and ignores PYTHONPATH (serving/runtime/server.py); a stub like it finds
    # `common` and `serving` only through sys.path's '', Triton's working directory: the image's WORKDIR, where they
    # are copied, and which neither compose nor the KServe runtime replaces.
    lines = _dockerfile_lines(ROOT / "docker" / "triton.Dockerfile")
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    (workdir,) = [line.split()[1] for line in final if line.startswith("WORKDIR ")]
    copied = {line.split()[2].rstrip("/") for line in final if line.startswith("COPY ") and "--from" not in line}
    assert {"common", "serving/pipeline", "serving/runtime"} <= copied and workdir == "/opt/agegender"
    assert "working_dir" not in compose["services"]["triton"]
    runtime = yaml.safe_load((ROOT / "deploy" / "kserve" / "base" / "servingruntime.yaml").read_text())
    assert all("workingDir" not in c for c in runtime["spec"]["containers"])


def test_the_triton_images_pip_pins_are_the_projects_base_and_serve_pins():
    # The image's pip pins are written out by hand (its Python is 3.12, the project's 3.11): a package added to the
    # project (simplejpeg, which refuses JPEGs with part of the picture missing) and not to the image would fail
    # every request in production and nowhere here.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["serve"]:
        name, version = requirement.split("==")
        wanted[name.split("[")[0]] = version
    del wanted["nvidia-pytriton"]  # the local Triton binary; the image is Triton
    text = (ROOT / "docker" / "triton.Dockerfile").read_text()
    pinned = {name.split("[")[0]: version for name, version in re.findall(r'"([\w.\-\[\],]+)==([\w.]+)"', text)}
    assert {name: pinned.get(name) for name in wanted} == wanted


def test_the_gates_byte_budget_fits_its_container(compose):
    """The gate holds up to --held-bytes of request bodies at once, each up to about twice while it is read
    (serving/runtime/gate_relay.py): over its container's mem_limit that is an OOM kill, not a 503 (docs review,
    2026-12-07: the 520 MiB default under a 512 MiB limit)."""
    dockerfile = (ROOT / "docker" / "gate.Dockerfile").read_text().replace("\\\n", "")
    command = json.loads(re.search(r"^CMD (\[.*?\])", dockerfile, re.M | re.S).group(1))
    held = int(command[command.index("--held-bytes") + 1])
    limit = compose["services"]["gate"]["mem_limit"]
    assert limit.endswith("m")
    baseline = 96 * 2**20  # the gate's own RSS, idle: 52-78 MiB measured
    assert 2 * held + baseline <= int(limit[:-1]) * 2**20

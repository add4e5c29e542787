"""The KServe manifests in deploy/kserve: every document validates, the kustomizations build, and the
fields that make the deployment serverless, secure and pinned are what they should be.

KServe kinds are checked against the CRDs' openAPIV3Schema (tests/kserve_crds, copied from the
kserve repository) with unknown fields rejected, as the API server's pruning would silently drop them;
core kinds with kubernetes-validate in strict mode (its bundled schemas, offline).
"""

from __future__ import annotations

import copy
import functools
import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from serving.runtime import edge, security

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
KSERVE = ROOT / "deploy" / "kserve"
#: The KServe CRDs, committed (gzipped, unchanged) so a fresh clone validates against them: tests/kserve_crds/.
SCHEMAS = Path(__file__).with_name("kserve_crds")
BUILDS = ("base", "overlays/cpu", "overlays/grpc", "overlays/cpu-grpc")
K8S_VERSION = "1.32.0"  # a Kubernetes that current KServe and Knative releases support
CRDS = {
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
}
RESTRICTED = "shared-memory,model-repository,statistics,trace,logging"


@functools.cache
def build(path: str) -> tuple[dict, ...]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (needed for `kubectl kustomize`)")
    out = subprocess.run(["kubectl", "kustomize", str(KSERVE / path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def docs_of(kind: str, path: str = "base") -> list[dict]:
    return [d for d in build(path) if d["kind"] == kind]


def _closed(schema):
    """The schema with unknown fields rejected wherever Kubernetes would prune them."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@functools.cache
def crd_validator(kind: str, version: str):
    text = gzip.decompress((SCHEMAS / f"{CRDS[kind]}.gz").read_bytes()).decode()
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2 MB: libyaml if there
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _closed(copy.deepcopy(entry["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is checked by the API server, not the CRD
    return jsonschema.Draft7Validator(schema)


def validate(doc: dict) -> None:
    group, _, version = doc["apiVersion"].rpartition("/")
    if group == "serving.kserve.io":
        errors = sorted(crd_validator(doc["kind"], version).iter_errors(doc), key=str)
        assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])
    else:
        kv = pytest.importorskip("kubernetes_validate")
        kv.validate(doc, K8S_VERSION, strict=True)


def all_files() -> list[Path]:
    return sorted(p for p in KSERVE.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", all_files(), ids=lambda p: str(p.relative_to(KSERVE)))
def test_every_manifest_file_validates(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("path", BUILDS)
def test_kustomization_builds_and_validates(path):
    docs = build(path)
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ServingRuntime", "InferenceService", "NetworkPolicy"}
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["namespace"] == "agegender"
    # References KServe's CRDs cannot express: the runtime and service account the predictor names exist.
    (isvc,), (runtime,), (sa,) = (docs_of(k, path) for k in ("InferenceService", "ServingRuntime", "ServiceAccount"))
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert isvc["spec"]["predictor"]["serviceAccountName"] == sa["metadata"]["name"]


def test_the_validator_rejects_what_the_cluster_would_drop_or_refuse():
    isvc = copy.deepcopy(docs_of("InferenceService")[0])
    isvc["spec"]["predictor"]["scaleTarge"] = 8  # a typo the API server would prune silently
    with pytest.raises(AssertionError, match="scaleTarge"):
        validate(isvc)
    isvc = copy.deepcopy(docs_of("InferenceService")[0])
    isvc["spec"]["predictor"]["scaleMetric"] = "latency"
    with pytest.raises(AssertionError, match="scaleMetric"):
        validate(isvc)
    sa = copy.deepcopy(docs_of("ServiceAccount")[0])
    sa["automountToken"] = False
    with pytest.raises(Exception, match="automountToken"):
        validate(sa)


def test_serverless_fields():
    (isvc,) = docs_of("InferenceService")
    meta, predictor = isvc["metadata"], isvc["spec"]["predictor"]
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert predictor["minReplicas"] == 0 and predictor["maxReplicas"] >= 1
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] > 0
    assert 0 < predictor["scaleTarget"] <= predictor["containerConcurrency"]
    for knob in ("scale-down-delay", "initial-scale", "window"):
        assert f"autoscaling.knative.dev/{knob}" in meta["annotations"]
    model = predictor["model"]
    # With its trailing slash: KServe lists the prefix as written, so releases/r1 would take releases/r10 too.
    assert re.fullmatch(r"s3://[a-z0-9.-]+/\S+/", model["storageUri"])
    assert model["protocolVersion"] == "v2" and model["modelFormat"] == {"name": "triton", "version": "2"}
    assert model["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert model["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert model["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--model-config-name=cpu" not in model.get("args", [])


def test_runtime_image_args_and_security():
    (runtime,) = docs_of("ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    image = container["image"]
    assert re.search(r"(:\d+\.\d+\.\d+|@sha256:[0-9a-f]{64})$", image), f"image not pinned: {image}"
    assert "latest" not in image
    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:25.02-py3" in dockerfile
    # The gate holds KServe's ports, Triton listens on loopback only: read by edge.py's own parser and check.
    assert container["command"] == ["python3", "-m", "serving.runtime.edge"]
    gate, args = edge.parse_args(container["args"])
    edge.check_triton(args, triton_http=gate.triton_http, triton_grpc=gate.triton_grpc, preload=gate.triton_preload)
    assert (gate.http, gate.grpc) == ("0.0.0.0:8080", "0.0.0.0:9000")
    assert args[0] == "tritonserver" and "--model-repository=/mnt/models" in args
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-port=8002"} <= set(args)
    assert {"--model-control-mode=explicit", "--load-model=*"} <= set(args)
    assert "COPY serving/runtime/ serving/runtime/" in dockerfile and "tritonclient[grpc,http]==" in dockerfile
    # The key stays off the command line: a placeholder the preloaded argv_secret.so fills in (docs/security.md).
    assert f"--http-restricted-api={RESTRICTED}:admin-key=@TRITON_ADMIN_KEY@" in args
    assert f"--grpc-restricted-protocol={RESTRICTED}:admin-key=@TRITON_ADMIN_KEY@" in args
    assert "@ARGV_SECRET_CHECK@" in args and not any("$(" in a for a in args)
    env = {e["name"]: e for e in container["env"]}
    secret = {"name": "agegender-triton-admin", "key": "admin-key"}
    assert env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == secret
    # Preloaded into Triton alone: set for the whole container it would wipe the key from the gate's environment.
    assert "LD_PRELOAD" not in env and gate.triton_preload == "/opt/agegender/lib/argv_secret.so"
    assert "COPY --from=argv-secret /tmp/argv_secret.so /opt/agegender/lib/argv_secret.so" in dockerfile
    assert env["ARGV_SECRETS"]["value"] == "TRITON_ADMIN_KEY,ARGV_SECRET_CHECK"
    assert env["ARGV_SECRET_CHECK"]["value"] == "--exit-on-error=true"
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in runtime["spec"]["volumes"]}
    assert {"/tmp", "/dev/shm"} <= mounts and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    # KServe's webhook (metrics_aggregate_injector.go) sets prometheus.io/port to queue-proxy's 9091 unless
    # metric aggregation is on, when 9088 serves queue-proxy's metrics and prometheus.kserve.io/port's together.
    ann = runtime["spec"]["annotations"]
    assert ann["prometheus.kserve.io/port"] == "8002" and ann["prometheus.kserve.io/path"] == "/metrics"
    assert ann["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert ann["serving.kserve.io/enable-metric-aggregation"] == "true"
    assert not [key for key in ann if key.startswith("prometheus.io/")]  # the webhook's to set


#: Knative's queue-proxy (knative.dev/networking: BackendHTTPPort, BackendHTTP2Port, QueueAdminPort,
#: AutoscalingQueueMetricsPort, UserQueueMetricsPort), KServe's metric aggregation port and Istio's merged metrics
#: (15020): what callers outside the pod may reach.
QUEUE_PROXY_PORTS = {8012, 8013, 8022, 9090, 9091, 9088, 15020}


@pytest.mark.parametrize("path", BUILDS)
def test_only_queue_proxy_is_reachable_from_outside_the_pod(path):
    """The gate's two ports and Triton's metrics listen on the pod's address (edge.py); the NetworkPolicy lets only
    Knative's, the ingress layer's and Prometheus's namespaces in, and only to queue-proxy's ports."""
    (policy,) = docs_of("NetworkPolicy", path)
    spec = policy["spec"]
    (isvc,) = docs_of("InferenceService", path)
    (selector,) = spec["podSelector"]["matchExpressions"]
    assert selector["key"] == "serving.kserve.io/inferenceservice" and selector["operator"] == "In"
    assert isvc["metadata"]["name"] in selector["values"]  # every build's predictor pods are selected
    assert spec["policyTypes"] == ["Ingress"]
    allowed = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert allowed <= QUEUE_PROXY_PORTS, allowed - QUEUE_PROXY_PORTS
    (runtime,) = docs_of("ServingRuntime", path)
    gate, args = edge.parse_args(runtime["spec"]["containers"][0]["args"])
    pod_ports = {int(gate.http.rsplit(":", 1)[1]), int(gate.grpc.rsplit(":", 1)[1])}
    pod_ports |= {int(a.split("=", 1)[1]) for a in args if a.startswith("--metrics-port=")}
    assert pod_ports == {8080, 9000, 8002} and not pod_ports & allowed
    for rule in spec["ingress"]:  # always from named namespaces: an empty `from` would admit every source
        assert rule["from"] and all(set(peer) == {"namespaceSelector"} for peer in rule["from"])
    namespaces = {
        v
        for rule in spec["ingress"]
        for peer in rule["from"]
        for e in peer["namespaceSelector"]["matchExpressions"]
        for v in e["values"]
    }
    assert "knative-serving" in namespaces  # the activator, which holds requests while a pod starts


def test_restricted_apis_match_the_launcher():
    assert ",".join(security.RESTRICTED_APIS) == RESTRICTED
    assert security.ADMIN_HEADER == "admin-key" and security.ADMIN_KEY_ENV == "TRITON_ADMIN_KEY"


@pytest.mark.parametrize(("path", "name"), [("overlays/cpu", "agegender"), ("overlays/cpu-grpc", "agegender-grpc")])
def test_cpu_overlays(path, name):
    # Both services run without a GPU: a GPU request on a CPU-only cluster leaves the pod Pending for good.
    (isvc,) = docs_of("InferenceService", path)
    model = isvc["spec"]["predictor"]["model"]
    assert isvc["metadata"]["name"] == name and model["args"] == ["--model-config-name=cpu"]
    assert "nvidia.com/gpu" not in str(model["resources"])
    assert isvc["spec"]["predictor"]["minReplicas"] == 0


@pytest.mark.parametrize("path", ["overlays/grpc", "overlays/cpu-grpc"])
def test_grpc_overlays(path):
    (isvc,) = docs_of("InferenceService", path)
    model = isvc["spec"]["predictor"]["model"]
    assert isvc["metadata"]["name"] == "agegender-grpc" and model["protocolVersion"] == "grpc-v2"
    assert model["ports"] == [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert model[probe]["grpc"] == {"port": 9000}
    # That port is the gate's gRPC side, which relays the health check (tests/test_edge.py).
    (runtime,) = docs_of("ServingRuntime", path)
    assert edge.parse_args(runtime["spec"]["containers"][0]["args"])[0].grpc.endswith(":9000")


def test_secrets_are_templates_outside_the_build():
    for path in BUILDS:
        assert "Secret" not in {d["kind"] for d in build(path)}, "applying the build must not overwrite credentials"
    (sa,) = docs_of("ServiceAccount")
    s3 = yaml.safe_load((KSERVE / "secrets" / "s3-credentials.example.yaml").read_text())
    admin = yaml.safe_load((KSERVE / "secrets" / "admin-key.example.yaml").read_text())
    assert sa["secrets"] == [{"name": s3["metadata"]["name"]}]
    assert s3["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"]
    assert admin["metadata"]["name"] == "agegender-triton-admin"
    for secret in (s3, admin):
        assert all(v.startswith("REPLACE_WITH_") for v in secret["stringData"].values()), "no real secret committed"

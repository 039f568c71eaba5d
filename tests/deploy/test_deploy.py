"""deploy/: the Dockerfile passes hadolint; the Kubernetes manifests (the base kustomization and the
csi-driver-spiffe overlay) validate against the Kubernetes schemas, run the sidecar as a native
sidecar with readiness on /ready, and carry mesh-configs that `sidecar check` accepts once the
certificates they name exist."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.certs import init_ca, issue_workload
from sidecar.cli import main as sidecar_main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BASE = DEPLOY / "kubernetes" / "base"
CSI = DEPLOY / "kubernetes" / "csi-spiffe"
KUBERNETES_VERSION = "1.31.0"  # native sidecars (restartPolicy: Always on an init container) are GA since 1.29


def render_base() -> list[dict[str, Any]]:
    """The base kustomization rendered the way kustomize does for what it uses: its resources, then a
    ConfigMap per configMapGenerator entry holding the named files (stable names, no hash suffix)."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        docs += [doc for doc in yaml.safe_load_all((BASE / resource).read_text()) if doc]
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    for generator in kustomization["configMapGenerator"]:
        data = {Path(file).name: (BASE / file).read_text() for file in generator["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return docs


def rendered(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if directory == BASE:
            return render_base()
        pytest.skip("kubectl (kustomize) is not installed: the overlay cannot be rendered")
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001" in text and "/live" in text.split("HEALTHCHECK", 1)[1]


@pytest.mark.parametrize("directory", [BASE, CSI], ids=["base", "csi-spiffe"])
def test_manifests_validate_against_the_kubernetes_schemas(directory: Path) -> None:
    docs = rendered(directory)
    assert {doc["kind"] for doc in docs} == {"ServiceAccount", "Service", "Deployment", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_base_renders_alike_with_and_without_kubectl() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    names = sorted((d["kind"], d["metadata"]["name"]) for d in rendered(BASE))
    assert names == sorted((d["kind"], d["metadata"]["name"]) for d in render_base())


@pytest.mark.parametrize("directory", [BASE, CSI], ids=["base", "csi-spiffe"])
def test_each_pod_runs_the_sidecar_as_a_native_sidecar_ready_on_ready(directory: Path) -> None:
    deployments = [doc for doc in rendered(directory) if doc["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"orders", "frontend"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        (sidecar,) = pod["initContainers"]
        assert sidecar["restartPolicy"] == "Always"  # starts before the app, stops after it
        assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
        assert sidecar["livenessProbe"]["httpGet"]["path"] == "/live"
        assert "preStop" in pod["containers"][0]["lifecycle"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["mesh-config"]["configMap"]["name"] == f"{deployment['metadata']['name']}-mesh-config"
        if directory == CSI:
            assert volumes["mesh-certs"]["csi"]["driver"] == "spiffe.csi.cert-manager.io"
        else:
            assert volumes["mesh-certs"]["secret"]["secretName"] == f"{deployment['metadata']['name']}-mesh-certs"


@pytest.mark.parametrize(
    ("directory", "names"),
    [(BASE, ("cert.pem", "key.pem", "ca.pem")), (CSI, ("tls.crt", "tls.key", "ca.crt"))],
    ids=["base", "csi-spiffe"],
)
def test_the_configmaps_mesh_config_passes_sidecar_check(
    directory: Path, names: tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca"
    init_ca("mesh.local", ca)
    configmaps = [doc for doc in rendered(directory) if doc["kind"] == "ConfigMap"]
    assert {c["metadata"]["name"] for c in configmaps} == {"orders-mesh-config", "frontend-mesh-config"}
    for configmap in configmaps:
        workload = configmap["metadata"]["name"].removesuffix("-mesh-config")
        pod = tmp_path / workload  # the pod's filesystem: /etc/sidecar/{config,certs}
        (pod / "config").mkdir(parents=True)
        for name, text in configmap["data"].items():
            (pod / "config" / name).write_text(text)
        issued = tmp_path / f"issued-{workload}"
        issue_workload(ca, f"spiffe://mesh.local/ns/default/sa/{workload}", issued)
        (pod / "certs").mkdir()
        for source, target in zip(("cert.pem", "key.pem", "ca.pem"), names, strict=True):
            shutil.copy(issued / source, pod / "certs" / target)
        assert sidecar_main(["check", "-c", str(pod / "config")]) == 0, capsys.readouterr()


COMPOSE = DEPLOY / "docker-compose.yaml"


def test_the_compose_file_wires_apps_sidecars_collector_and_jaeger() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {
        "certs",
        "orders-sidecar",
        "orders",
        "frontend-sidecar",
        "frontend",
        "otel-collector",
        "jaeger",
    }
    for app in ("orders", "frontend"):
        assert services[app]["network_mode"] == f"service:{app}-sidecar"  # one network namespace, as a pod
        assert services[app]["depends_on"][f"{app}-sidecar"]["condition"] == "service_healthy"
        sidecar = services[f"{app}-sidecar"]
        assert sidecar["depends_on"]["certs"]["condition"] == "service_completed_successfully"
        mounted = dict(volume.rsplit(":", 2)[:2] for volume in sidecar["volumes"])
        assert mounted[f"./compose/{app}"] == "/etc/sidecar/config" and (DEPLOY / "compose" / app).is_dir()
        assert mounted["certs"] == "/etc/sidecar/certs"
    collector = yaml.safe_load((DEPLOY / "compose" / "otel-collector.yaml").read_text())
    assert collector["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_the_compose_mesh_configs_pass_sidecar_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "certs" / "ca"
    init_ca("mesh.local", ca)
    for workload in ("orders", "frontend"):
        issue_workload(ca, f"spiffe://mesh.local/ns/default/sa/{workload}", tmp_path / "certs" / workload)
        config = tmp_path / "config"  # /etc/sidecar/config next to /etc/sidecar/certs
        shutil.rmtree(config, ignore_errors=True)
        shutil.copytree(DEPLOY / "compose" / workload, config)
        assert sidecar_main(["check", "-c", str(config)]) == 0, capsys.readouterr()
        sidecar_doc = next(d for d in yaml.safe_load_all((config / "sidecar.yaml").read_text()) if d)
        assert sidecar_doc["tracing"]["endpoint"] == "http://otel-collector:4318"

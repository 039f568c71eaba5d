"""deploy/: the Dockerfile passes hadolint; the Kubernetes manifests (the base kustomization, the
csi-driver-spiffe overlay and the transparent-capture overlay) validate against the Kubernetes
schemas, run the sidecar as a native sidecar with readiness on /ready, and carry mesh-configs that
`sidecar check` accepts once the certificates they name exist. The transparent overlay installs its
capture from an init container before the sidecar, runs the sidecar as the capture's proxy_uid, and
leaves the apps dialing their peers by name with no probe the capture would break."""

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
TRANSPARENT = DEPLOY / "kubernetes" / "transparent"
KUSTOMIZATIONS = pytest.mark.parametrize(
    "directory", [BASE, CSI, TRANSPARENT], ids=["base", "csi-spiffe", "transparent"]
)
PEM = ("cert.pem", "key.pem", "ca.pem")
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


@KUSTOMIZATIONS
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


@KUSTOMIZATIONS
def test_each_pod_runs_the_sidecar_as_a_native_sidecar_ready_on_ready(directory: Path) -> None:
    deployments = [doc for doc in rendered(directory) if doc["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"orders", "frontend"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        # transparent: the capture's init container runs to completion first, then the sidecar
        expected = ["sidecar-iptables", "sidecar"] if directory == TRANSPARENT else ["sidecar"]
        assert [c["name"] for c in pod["initContainers"]] == expected
        sidecar = pod["initContainers"][-1]
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
    [(BASE, PEM), (CSI, ("tls.crt", "tls.key", "ca.crt")), (TRANSPARENT, PEM)],
    ids=["base", "csi-spiffe", "transparent"],
)
def test_the_configmaps_mesh_config_passes_sidecar_check(
    directory: Path, names: tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for pod in pod_filesystems(directory, names, tmp_path).values():
        assert sidecar_main(["check", "-c", str(pod / "config")]) == 0, capsys.readouterr()


def pod_filesystems(directory: Path, names: tuple[str, str, str], tmp_path: Path) -> dict[str, Path]:
    """Each workload's /etc/sidecar as its pod sees it: `config/` from the rendered ConfigMap, `certs/`
    a freshly issued certificate for its ServiceAccount under the file names the overlay uses."""
    ca = tmp_path / "ca"
    init_ca("mesh.local", ca)
    configmaps = [doc for doc in rendered(directory) if doc["kind"] == "ConfigMap"]
    assert {c["metadata"]["name"] for c in configmaps} == {"orders-mesh-config", "frontend-mesh-config"}
    pods = {}
    for configmap in configmaps:
        workload = configmap["metadata"]["name"].removesuffix("-mesh-config")
        pod = pods[workload] = tmp_path / workload  # the pod's filesystem: /etc/sidecar/{config,certs}
        (pod / "config").mkdir(parents=True)
        for name, text in configmap["data"].items():
            (pod / "config" / name).write_text(text)
        issued = tmp_path / f"issued-{workload}"
        issue_workload(ca, f"spiffe://mesh.local/ns/default/sa/{workload}", issued)
        (pod / "certs").mkdir()
        for source, target in zip(PEM, names, strict=True):
            shutil.copy(issued / source, pod / "certs" / target)
    return pods


def mesh_config(docs: list[dict[str, Any]], workload: str, name: str = "sidecar.yaml") -> dict[str, Any]:
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{workload}-mesh-config"]
    document: dict[str, Any] = yaml.safe_load(configmap["data"][name])
    return document


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def test_the_transparent_pods_capture_from_an_init_container_and_run_the_sidecar_as_proxy_uid() -> None:
    docs = rendered(TRANSPARENT)
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        workload = deployment["metadata"]["name"]
        config = mesh_config(docs, workload)
        capture = config["capture"]
        assert capture["mode"] == "transparent"
        pod = deployment["spec"]["template"]["spec"]
        init, sidecar = pod["initContainers"]
        # a plain init container: done before the sidecar starts, so the rules predate every connection
        assert "restartPolicy" not in init and init["image"] == sidecar["image"]
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        assert init["args"] == ["iptables", "-c", mounts["mesh-config"]]
        assert mounts == {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]} | {"xtables-lock": "/run"}
        context = init["securityContext"]
        assert context["runAsUser"] == 0 and context["runAsNonRoot"] is False
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
        # the sidecar's own connections escape the capture by its UID, and it needs no privilege
        context = sidecar["securityContext"]
        assert context["runAsUser"] == capture["proxy_uid"] == 1337 and context["runAsGroup"] == 1337
        assert context["runAsNonRoot"] is True and context["capabilities"] == {"drop": ["ALL"]}
        # its probes go to the admin port, which the capture never redirects
        ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
        assert ports["admin"] == port_of(config["admin"]["listen"])
        assert {sidecar[probe]["httpGet"]["port"] for probe in PROBES} == {"admin"}
        for app in pod["containers"]:
            # an app running as proxy_uid would escape the capture; a proxy setting would bypass it
            assert app.get("securityContext", {}).get("runAsUser") != capture["proxy_uid"]
            assert not [e["name"] for e in app.get("env", []) if e["name"].lower().endswith("_proxy")]
            assert not [a for a in app.get("command", []) + app.get("args", []) if "15001" in a]
            # an app probe over the network would be captured (and refused in strict mode) unless its
            # port is excluded: these run in the app's container over loopback, which is never captured
            for probe in (app[name] for name in PROBES if name in app):
                port = probe.get("httpGet", probe.get("tcpSocket", probe.get("grpc", {}))).get("port")
                assert "exec" in probe or port in capture.get("exclude_inbound_ports", [])
                if "exec" in probe:
                    assert "http://127.0.0.1:" in " ".join(probe["exec"]["command"])


def test_the_transparent_apps_dial_by_name_and_the_sidecars_find_the_peers_app_ports() -> None:
    docs = rendered(TRANSPARENT)
    services = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Service"}
    orders = mesh_config(docs, "orders")
    frontend = mesh_config(docs, "frontend")
    app_port = port_of(orders["inbound"]["app"])
    # the frontend app calls http://orders:8080 with Host: orders, as it would without a mesh
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "frontend"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--sidecar") + 1] == f"orders:{app_port}"
    assert services["orders"].get("clusterIP") != "None"
    assert [(p["port"], p["targetPort"]) for p in services["orders"]["ports"]] == [(app_port, app_port)]
    # its sidecar matches that by Host, and sends it to the orders pods' app port (captured there)
    route = mesh_config(docs, "frontend", "services.yaml")
    assert "orders" in route["hosts"]
    ((host, port),) = [e["address"].rsplit(":", 1) for e in route["endpoints"]]
    assert host == "orders-mesh.default.svc.cluster.local" and int(port) == app_port
    assert services["orders-mesh"]["clusterIP"] == "None"
    assert [p["targetPort"] for p in services["orders-mesh"]["ports"]] == [app_port]
    # every Service targets an app port: the inbound listener is reached through the capture only
    inbound = {port_of(orders["inbound"]["listen"]), port_of(frontend["inbound"]["listen"])}
    for spec in services.values():
        assert not inbound & {p["targetPort"] for p in spec["ports"]}
    assert [p["targetPort"] for p in services["frontend"]["ports"]] == [port_of(frontend["inbound"]["app"])]
    # orders' inbound is strict (mutual TLS, the allow list), frontend's permissive (callers from outside)
    assert orders["inbound"].get("mode", "strict") == "strict" and frontend["inbound"]["mode"] == "permissive"
    assert app_port not in orders["capture"].get("exclude_inbound_ports", [])


def test_the_transparent_mesh_configs_give_sidecar_iptables_its_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the init container's `sidecar iptables` would install (`--dry-run`: no privilege needed,
    and without the iptables tools it shows the full rules): the app's port captured, the admin port
    not, the sidecar's UID not."""
    for workload, pod in pod_filesystems(TRANSPARENT, PEM, tmp_path).items():
        config = yaml.safe_load((pod / "config" / "sidecar.yaml").read_text())
        try:
            code = sidecar_main(["iptables", "-c", str(pod / "config"), "--dry-run"])
        except SystemExit:
            if "invalid choice" in capsys.readouterr().err:
                pytest.skip("this build has no `sidecar iptables` yet")
            raise
        out, err = capsys.readouterr()
        assert code == 0, err
        rules = out.splitlines()
        assert "-A PREROUTING -p tcp -j SIDECAR_INBOUND" in rules and "-A OUTPUT -p tcp -j SIDECAR_OUTPUT" in rules
        inbound, outbound, admin = (port_of(config[s]["listen"]) for s in ("inbound", "outbound", "admin"))
        assert f"-A SIDECAR_INBOUND -p tcp -j REDIRECT --to-ports {inbound}" in rules, workload
        assert f"-A SIDECAR_OUTPUT -p tcp -j REDIRECT --to-ports {outbound}" in rules, workload
        assert f"-A SIDECAR_INBOUND -p tcp -m tcp --dport {admin} -j RETURN" in rules, workload
        assert f"-A SIDECAR_OUTPUT -m owner --uid-owner {config['capture']['proxy_uid']} -j RETURN" in rules
        app = port_of(config["inbound"]["app"])
        assert not [rule for rule in rules if f"--dport {app} " in rule], workload  # behind mutual TLS


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

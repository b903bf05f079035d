"""Reading the deployment files, and the checks that every rendering of the service's
Kubernetes objects must pass, whoever renders them: the Kustomize overlays
(tests/deploy/test_manifests.py) and the Helm chart (tests/deploy/test_helm.py).

A check takes the rendered objects (a list of dicts, one per Kubernetes object) and a
label for its messages, and asserts; none needs a cluster.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from starlette.routing import Match

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
TRAIN = K8S / "train"
QDRANT = K8S / "qdrant"  # the service in Qdrant mode: instead of K8S, not beside it
KUSTOMIZATIONS = (K8S, TRAIN, QDRANT)
SERVICE_KUSTOMIZATIONS = (K8S, QDRANT)  # the service's two modes
PREFIX = "CONTRASTIVE_"
SETTING_ENV_NAMES = {PREFIX + name.upper() for name in Settings.model_fields}
SUBSTITUTION = re.compile(r"\$\((\w+)\)")  # Kubernetes' $(VAR) in command/args
QDRANT_COMPOSE = "compose.qdrant.yaml"
COMPONENTS = K8S / "components"  # autoscaling without KEDA, for either service overlay
AUTOSCALING_COMPONENTS = (COMPONENTS / "hpa-queue-depth", COMPONENTS / "hpa-cpu")
CHART = DEPLOY / "helm" / "contrastive"
PROMETHEUS = DEPLOY / "prometheus"
# the gauge the autoscalers read: items waiting or running in a pod's batchers
QUEUE_METRIC = "contrastive_queue_depth"


# -- reading the files ---------------------------------------------------------------------


def yaml_files() -> list[Path]:
    """Every YAML file under deploy/, but the Helm chart's templates (Go templates that
    render YAML: helm parses them, tests/deploy/test_helm.py renders them)."""
    return sorted(
        p
        for p in DEPLOY.rglob("*")
        if p.suffix in (".yaml", ".yml") and not p.is_relative_to(CHART / "templates")
    )


@cache
def load(path: Path) -> tuple[Any, ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def resources(folder: Path) -> list[Path]:
    (kustomization,) = load(folder / "kustomization.yaml")
    return [folder / r for r in kustomization["resources"]]


def env_file(path: Path) -> Path:
    """A secretGenerator's env file, or its committed example where it is absent."""
    return path if path.exists() else path.with_name(path.name + ".example")


def generated_secrets(folder: Path) -> list[dict[str, Any]]:
    """The Secrets that the kustomization's secretGenerator makes from its env files."""
    (kustomization,) = load(folder / "kustomization.yaml")
    secrets = []
    for gen in kustomization.get("secretGenerator", []):
        data: dict[str, str] = {}
        for name in gen.get("envs", []):
            for line in env_file(folder / name).read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    key, _, value = line.partition("=")
                    data[key.strip()] = base64.b64encode(value.encode()).decode()
        labels = gen.get("options", {}).get("labels")
        metadata = {"name": gen["name"], **({"labels": labels} if labels else {})}
        secrets.append({"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
                        "type": "Opaque", "data": data})  # fmt: skip
    return secrets


def deleted_by(component: Path) -> set[tuple[str, str]]:
    """(kind, name) of the objects that a Component's `$patch: delete` patches remove."""
    (kustomization,) = load(component / "kustomization.yaml")
    out = set()
    for patch in kustomization.get("patches", []):
        doc = yaml.safe_load(patch["patch"])
        if doc.get("$patch") == "delete":
            out.add((doc["kind"], doc["metadata"]["name"]))
    return out


def objects(folder: Path, components: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The objects that `kustomize build` makes of `folder`, with `components` listed in
    its kustomization (their resources added, their `$patch: delete` objects removed)."""
    files = [doc for path in resources(folder) for doc in load(path)]
    for component in components:
        gone = deleted_by(component)
        files = [o for o in files if (o["kind"], o["metadata"]["name"]) not in gone]
        files += [doc for path in resources(component) for doc in load(path)]
    return files + generated_secrets(folder)


def named(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def workloads(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployments and Jobs by name (the images of this project; Qdrant's StatefulSet is
    checked on its own)."""
    return {o["metadata"]["name"]: o for o in objs if o["kind"] in ("Deployment", "Job")}


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = workload["spec"]["template"]
    return template


def folder_label(folder: Path) -> str:
    return str(folder.relative_to(DEPLOY))


def secret_value(objs: list[dict[str, Any]], name: str, key: str) -> str:
    secret = named(objs, "Secret")[name]
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    return base64.b64decode(secret["data"][key]).decode()


def container_env(objs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's env as the process sees it (secret references resolved)."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_value(objs, ref["name"], ref["key"])
    return env


def service_containers(
    folders: tuple[Path, ...] = SERVICE_KUSTOMIZATIONS,
) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """(kustomization, deployment name, container) for every container of the service's
    Deployments, in both modes."""
    for folder in folders:
        for name, dep in named(objects(folder), "Deployment").items():
            for container in pod_template(dep)["spec"]["containers"]:
                yield folder, name, container


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def selected(selector: dict[str, str], works: dict[str, Any]) -> list[dict[str, Any]]:
    """The workloads whose pods carry every label of `selector`."""
    return [w for w in works.values() if selects(selector, pod_template(w)["metadata"]["labels"])]


@cache
def dockerfile() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) per logical line: comments dropped, continuations joined."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.endswith("\\"):
            current += raw[:-1]
            continue
        current += raw
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
        current = ""
    return tuple(lines)


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for word, rest in dockerfile():
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, rest))
    return out


def final_stage(word: str) -> list[str]:
    return [rest for w, rest in stages()[-1] if w == word]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for rest in final_stage("ENV"):
        for token in shlex.split(rest):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def compose(name: str = "compose.yaml") -> dict[str, Any]:
    (doc,) = load(DEPLOY / name)
    return dict(doc)


class UnsetVariableError(ValueError):
    """${VAR:?message} with VAR unset: compose refuses to start."""


def interpolate(value: str, shell: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR} / ${VAR:?message}, with only the
    variables in `shell` set."""
    shell = shell or {}

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if shell.get(name):
            return shell[name]
        if "?" in op:
            raise UnsetVariableError(f"{name}: {arg}")
        return arg

    return re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", one, value)


def compose_env(qdrant: bool = False, shell: dict[str, str] | None = None) -> dict[str, str]:
    """The service's environment in compose.yaml, or with compose.qdrant.yaml layered on
    (compose merges `environment` maps key by key)."""
    env = dict(compose()["services"]["contrastive"]["environment"])
    if qdrant:
        env.update(compose(QDRANT_COMPOSE)["services"]["contrastive"]["environment"])
    return {k: interpolate(str(v), shell) for k, v in env.items()}


def prometheus_job() -> dict[str, Any]:
    (config,) = load(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "contrastive"]
    return dict(job)


def settings_from(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Settings as the service builds them from this environment (and nothing else)."""
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def serves_get(app: Any, path: str) -> bool:
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


def duration_seconds(text: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def the_job() -> tuple[dict[str, Any], dict[str, Any]]:
    (job,) = named(objects(TRAIN), "Job").values()
    (container,) = pod_template(job)["spec"]["containers"]
    return job, container


def expand(args: list[str], value: str = "1") -> list[str]:
    """Replace $(VAR) by `value`, as the kubelet would with the variable's value."""
    return [SUBSTITUTION.sub(value, a) for a in args]


def deployment_containers(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(Deployment name, container) for every container of the service's Deployments."""
    for name, dep in named(objs, "Deployment").items():
        for container in pod_template(dep)["spec"]["containers"]:
            yield name, container


def image_settings_env() -> dict[str, str]:
    """The image's CONTRASTIVE_* defaults (not PATH and the like)."""
    return {k: v for k, v in dockerfile_env().items() if k.startswith(PREFIX)}


def pod_settings(
    monkeypatch: pytest.MonkeyPatch, objs: list[dict[str, Any]], container: dict[str, Any]
) -> Settings:
    """The settings a container's process runs with: the image's env, then the pod's."""
    return settings_from(monkeypatch, {**dockerfile_env(), **container_env(objs, container)})


# -- autoscaling -----------------------------------------------------------------------------


def autoscalers(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The object that scales each Deployment, by the Deployment's name: a KEDA
    ScaledObject or a HorizontalPodAutoscaler."""
    out: dict[str, dict[str, Any]] = {}
    for obj in objs:
        if obj["kind"] in ("ScaledObject", "HorizontalPodAutoscaler"):
            target = obj["spec"]["scaleTargetRef"]["name"]
            assert target not in out, f"two autoscalers for {target}"
            out[target] = obj
    return out


def replica_range(scaler: dict[str, Any]) -> tuple[int, int]:
    spec = scaler["spec"]
    if scaler["kind"] == "ScaledObject":
        return int(spec["minReplicaCount"]), int(spec["maxReplicaCount"])
    return int(spec["minReplicas"]), int(spec["maxReplicas"])


def scaling_behavior(scaler: dict[str, Any]) -> dict[str, Any]:
    if scaler["kind"] == "ScaledObject":
        behavior = scaler["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    else:
        behavior = scaler["spec"]["behavior"]
    return dict(behavior)


def min_replicas(objs: list[dict[str, Any]], dep: dict[str, Any]) -> int:
    """The fewest pods a Deployment runs: its autoscaler's minimum, else spec.replicas."""
    scaler = autoscalers(objs).get(dep["metadata"]["name"])
    return replica_range(scaler)[0] if scaler else int(dep["spec"].get("replicas", 1))


@cache
def exported_metrics() -> dict[str, str]:
    """Every metric name the service's /metrics shows, sample names and family names
    alike, with its family's type: read from a running app (over a stand-in model, so
    the batchers and their gauges exist), as Prometheus would scrape it."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from tests.helpers import FakeEncoder, wait_ready

    # the defaults, whatever a test has put in the environment (API keys, a model)
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(PREFIX)}
    try:
        app = create_app(Settings(collections=False), encoder=FakeEncoder())
        with TestClient(app) as client:
            wait_ready(client)
            response = client.get("/metrics")
    finally:
        os.environ.update(saved)
    assert response.status_code == 200, response.text
    text = response.text
    out = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = family.type
        for sample in family.samples:
            out[sample.name] = family.type
    return out


PROMQL_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
PROMQL_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def promql_selectors(query: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, operator, value)]) of every `name{...}` in a query."""
    return [
        (m.group(1), PROMQL_MATCHER.findall(m.group(2))) for m in PROMQL_SELECTOR.finditer(query)
    ]


def pod_name(deployment: str) -> str:
    """A name the ReplicaSet controller gives a Deployment's pod: NAME-HASH-SUFFIX."""
    return f"{deployment}-5d8c7f9b6d-x7k2p"


def check_queue_query(
    query: str, objs: list[dict[str, Any]], target: str, namespace: str, label: str
) -> None:
    """A KEDA query: one number (a sum) of the queue gauge the service exports, over the
    pods of `target` in `namespace` and of no other Deployment."""
    assert query.startswith("sum("), f"{label}: KEDA needs one number, not a vector"
    selectors = promql_selectors(query)
    assert selectors, f"{label}: no metric in {query!r}"
    for metric, matchers in selectors:
        assert metric in exported_metrics(), f"{label}: /metrics has no {metric}"
        assert metric == QUEUE_METRIC and exported_metrics()[metric] == "gauge", label
        by_label = {name: (op, value) for name, op, value in matchers}
        assert by_label["namespace"] == ("=", namespace), label
        op, pattern = by_label["pod"]
        assert op == "=~", label
        # PromQL anchors a regex at both ends, like fullmatch
        assert re.fullmatch(pattern, pod_name(target)), f"{label}: misses {target}'s pods"
        for other in named(objs, "Deployment"):
            if other != target:
                assert not re.fullmatch(pattern, pod_name(other)), f"{label}: counts {other}"
    # averaged over a window, so one scrape's spike does not add pods
    assert re.search(r"avg_over_time\(" + QUEUE_METRIC + r"\{[^}]*\}\[\d+m\]\)", query), label


@cache
def adapter_rule() -> dict[str, Any]:
    """The prometheus-adapter rule that serves the queue gauge to an HPA."""
    (values,) = load(PROMETHEUS / "adapter-values.yaml")
    (rule,) = [r for r in values["rules"]["custom"] if QUEUE_METRIC in r["seriesQuery"]]
    return dict(rule)


def check_autoscaling(objs: list[dict[str, Any]], label: str, namespace: str = "default") -> None:
    """Only stateless Deployments scale; each autoscaler owns its Deployment's count, scales
    up at once and down slowly, and reads a metric that the service exports."""
    deployments = named(objs, "Deployment")
    for target, scaler in autoscalers(objs).items():
        where = f"{label} {scaler['kind']} {scaler['metadata']['name']}"
        ref = scaler["spec"]["scaleTargetRef"]
        assert ref.get("apiVersion", "apps/v1") == "apps/v1", where
        assert ref.get("kind", "Deployment") == "Deployment" and target in deployments, where
        dep = deployments[target]
        assert "replicas" not in dep["spec"], f"{where}: the autoscaler owns the replica count"
        lowest, highest = replica_range(scaler)
        assert 1 < lowest <= highest, where
        # scale up at once, down slowly: a new replica loads its model before it helps
        behavior = scaling_behavior(scaler)
        up, down = behavior["scaleUp"], behavior["scaleDown"]
        assert up["stabilizationWindowSeconds"] == 0, where
        assert down["stabilizationWindowSeconds"] >= 300, where
        assert max(p["value"] for p in up["policies"] if p["type"] == "Percent") >= 100, where
        assert all(p["type"] == "Pods" for p in down["policies"]), where
        assert max(p["value"] for p in down["policies"]) == 1, f"{where}: one pod at a time"
        assert down["selectPolicy"] == "Min" and up["selectPolicy"] == "Max", where

        if scaler["kind"] == "ScaledObject":
            assert scaler["apiVersion"] == "keda.sh/v1alpha1", where
            hpa_name = scaler["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"]
            assert hpa_name == scaler["metadata"]["name"], where
            (trigger,) = scaler["spec"]["triggers"]
            assert trigger["type"] == "prometheus", where
            assert trigger["metricType"] == "AverageValue", f"{where}: a share per replica"
            meta = trigger["metadata"]
            assert all(isinstance(v, str) for v in meta.values()), f"{where}: strings only"
            url = urlsplit(meta["serverAddress"])
            assert url.scheme in ("http", "https") and url.hostname, where
            assert float(meta["threshold"]) > 0, where
            assert meta["ignoreNullValues"] == "false", f"{where}: no series is an error"
            check_queue_query(meta["query"], objs, target, namespace, where)
            fallback = scaler["spec"]["fallback"]
            assert fallback["failureThreshold"] >= 1, where
            assert lowest <= fallback["replicas"] <= highest, where
        else:
            assert scaler["apiVersion"] == "autoscaling/v2", where
            (metric,) = scaler["spec"]["metrics"]
            if metric["type"] == "Pods":
                name = metric["pods"]["metric"]["name"]
                # the adapter serves the gauge under this name (see adapter-values.yaml)
                assert name == adapter_rule()["name"]["as"] == QUEUE_METRIC, where
                assert exported_metrics()[QUEUE_METRIC] == "gauge", where
                assert metric["pods"]["target"]["type"] == "AverageValue", where
                assert float(metric["pods"]["target"]["averageValue"]) > 0, where
            else:
                assert metric["type"] == "Resource", where
                assert metric["resource"]["name"] == "cpu", where
                for container in pod_template(dep)["spec"]["containers"]:
                    assert container["resources"]["requests"]["cpu"], "utilization needs a request"


# -- the checks of every rendering -------------------------------------------------------------


def check_service_env(
    objs: list[dict[str, Any]], label: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, dict[str, str]]:
    """Every CONTRASTIVE_* name is a setting, every value a string that parses, host and
    port as the image listens, API keys set. Returns each Deployment's env, image first."""
    image = image_settings_env()
    envs = {}
    for name, container in deployment_containers(objs):
        where = f"{label} {name}"
        # Kubernetes env values must be strings ("8000", not 8000)
        assert all(isinstance(v.get("value", ""), str) for v in container["env"]), where
        env = {**image, **container_env(objs, container)}
        used = {n for n in env if n.startswith(PREFIX)}
        assert used - SETTING_ENV_NAMES == set(), f"{where}: not a field of Settings"
        settings = settings_from(monkeypatch, env)  # raises on a value that does not parse
        assert settings.host == "0.0.0.0", where
        assert settings.port == 8000, where
        assert settings.api_keys != [], where
        envs[where] = env
    return envs


def check_ports(objs: list[dict[str, Any]], label: str, port: int) -> None:
    """The container port, the probes', the scrape annotation's, the Services' targets and
    the Ingress's backends all lead to the port the service listens on."""
    deployments = named(objs, "Deployment")
    for name, container in deployment_containers(objs):
        where = f"{label} {name}"
        env_port = int(container_env(objs, container).get("CONTRASTIVE_PORT", port))
        assert env_port == port, where
        assert container_port(container, "http") == port, where
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container_port(container, container[probe]["httpGet"]["port"]) == port
        annotations = pod_template(deployments[name])["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), where

    qdrant_pods = named(objs, "StatefulSet")  # Qdrant's port: check_qdrant_mode
    services = named(objs, "Service")
    for svc_name, svc in services.items():
        (svc_port,) = svc["spec"]["ports"]
        pods = selected(svc["spec"]["selector"], {**deployments, **qdrant_pods})
        assert len(pods) == 1, f"{label}: Service {svc_name} selects {len(pods)} workloads"
        if pods[0]["kind"] == "Deployment":
            (container,) = pod_template(pods[0])["spec"]["containers"]
            assert container_port(container, svc_port["targetPort"]) == port, svc_name
    for ingress in named(objs, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                (_,) = selected(services[backend["name"]]["spec"]["selector"], deployments)
                port_names = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in port_names, label


def probe_paths(objs: list[dict[str, Any]], label: str) -> dict[str, str]:
    """The paths the kubelet and Prometheus call, by who calls them (checked to be the
    health routes here; the caller checks that the app serves them)."""
    paths = {}
    deployments = named(objs, "Deployment")
    for name, container in deployment_containers(objs):
        where = f"{label} {name}"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz", where
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            paths[f"{where} {probe}"] = container[probe]["httpGet"]["path"]
        annotations = pod_template(deployments[name])["metadata"]["annotations"]
        paths[f"{where} annotation"] = annotations["prometheus.io/path"]
    return paths


def check_command_lines(objs: list[dict[str, Any]], label: str) -> None:
    """Every service container keeps the image's ENTRYPOINT and runs `serve` with
    arguments that the contrastive CLI accepts."""
    from contrastkit.service.cli import build_parser
    from contrastkit.service.commands.serve import settings_from_args

    parser = build_parser()
    for name, container in deployment_containers(objs):
        assert "command" not in container, f"{label} {name}: keep the image's ENTRYPOINT"
        args = parser.parse_args(container["args"])
        assert args.command == "serve", f"{label} {name}"
        settings_from_args(args)


def check_references(objs: list[dict[str, Any]], label: str) -> None:
    """Selectors select, claims, Secrets and their keys exist, mounts name volumes; the
    PodDisruptionBudgets never guard a single pod; Ingress backends are Services."""
    claims = named(objs, "PersistentVolumeClaim")
    secrets = named(objs, "Secret")
    for name, work in workloads(objs).items():
        where = f"{label} {name}"
        pod = pod_template(work)["spec"]
        if work["kind"] == "Deployment":
            assert selected(work["spec"]["selector"]["matchLabels"], {name: work}), where
        # a Service named contrastive* would inject CONTRASTIVE_PORT=tcp://... otherwise
        assert pod["enableServiceLinks"] is False, where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: mount {mount['name']}"
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"{where}: {var['name']}"
                    secret = secrets[ref["name"]]
                    keys = {*secret.get("stringData", {}), *secret.get("data", {})}
                    assert ref["key"] in keys, f"{where}: {var['name']}"

    deployments = named(objs, "Deployment")
    for pdb in named(objs, "PodDisruptionBudget").values():
        (matched,) = selected(pdb["spec"]["selector"]["matchLabels"], deployments)
        assert min_replicas(objs, matched) > 1, "a budget on a single pod blocks every drain"
    for ingress in named(objs, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] in named(objs, "Service"), label


def check_shutdown(objs: list[dict[str, Any]], label: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL comes after the drain and the graceful wait, with room to flush; a load
    balancer that checks /readyz notices the drain within one probe period."""
    deployments = named(objs, "Deployment")
    for name, container in deployment_containers(objs):
        s = pod_settings(monkeypatch, objs, container)
        grace = pod_template(deployments[name])["spec"]["terminationGracePeriodSeconds"]
        assert grace > s.drain_seconds + s.graceful_timeout + 10, f"{label} {name}"
        assert s.drain_seconds >= container["readinessProbe"]["periodSeconds"], f"{label} {name}"


def check_pods_non_root(objs: list[dict[str, Any]], label: str) -> None:
    """The service's pods run as the image's non-root user, locked down; a read-only root
    filesystem comes with a writable /tmp and HOME there."""
    (user,) = final_stage("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid"
    for name, work in workloads(objs).items():
        where = f"{label} {name}"
        pod = pod_template(work)["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert context["runAsUser"] == int(uid), where
        assert context["runAsGroup"] == int(gid or uid), where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            if security.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: writable /tmp"
                env = {v["name"]: v.get("value") for v in container["env"]}
                assert env["HOME"] == "/tmp", f"{where}: HOME on the writable /tmp"


def check_collection_modes(
    objs: list[dict[str, Any]], label: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """FAISS is one writer process per folder: its pod never scales and owns the volume;
    with Qdrant the pods hold no collections and scale out. Returns the backend of each
    Deployment that serves collections."""
    modes: dict[str, str] = {}
    deployments = named(objs, "Deployment")
    scaled = set(autoscalers(objs))
    for name, container in deployment_containers(objs):
        where = f"{label} {name}"
        dep = deployments[name]
        s = pod_settings(monkeypatch, objs, container)
        if not s.collections:
            continue  # embeddings only: stateless in either mode
        modes[name] = s.collections_backend
        pod = pod_template(dep)["spec"]
        claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        if s.collections_backend == "faiss":
            assert min_replicas(objs, dep) == 1, where
            assert dep["spec"]["replicas"] == 1, where
            assert name not in scaled, f"{where}: no autoscaler may scale the single writer"
            assert dep["spec"]["strategy"]["type"] == "Recreate", where
            assert claims, f"{where}: the collections need their volume"
        else:
            assert min_replicas(objs, dep) > 1, f"{where}: Qdrant mode scales out"
            assert dep["spec"]["strategy"]["type"] == "RollingUpdate", where
            assert claims == [], f"{where}: a Qdrant-mode pod keeps no collection state"
            assert s.qdrant_url and s.qdrant_api_key, where
    return modes


def ingress_routes(
    objs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> dict[str, tuple[dict[str, Any], Settings]]:
    """Each Ingress path, with the Deployment it reaches and that pod's settings."""
    services = named(objs, "Service")
    (ingress,) = named(objs, "Ingress").values()
    routed = {}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["pathType"] == "Prefix"
            svc = services[path["backend"]["service"]["name"]]
            (dep,) = selected(svc["spec"]["selector"], named(objs, "Deployment"))
            (container,) = pod_template(dep)["spec"]["containers"]
            routed[path["path"]] = (dep, pod_settings(monkeypatch, objs, container))
    return routed


def check_faiss_split(
    objs: list[dict[str, Any]], label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAISS mode: the Ingress sends every /v1/collections request, and nothing else, to
    the single writer, which owns a ReadWriteOnce volume; the autoscaler scales the
    stateless replicas that get the rest."""
    routed = ingress_routes(objs, monkeypatch)
    assert {p: s.collections for p, (_, s) in routed.items()} == {
        "/v1/collections": True,
        "/": False,
    }, label

    # every collections route (of the writer's app) is under the prefix, and nothing else is
    app = create_app(Settings(collections=True))  # the store opens only in the lifespan
    api_paths = list(app.openapi()["paths"])
    under = [p for p in api_paths if p == "/v1/collections" or p.startswith("/v1/collections/")]
    assert len(under) >= 5
    assert [p for p in api_paths if p.startswith("/v1/collections") and p not in under] == []

    writer, settings = routed["/v1/collections"]
    assert writer["spec"]["replicas"] == 1, label
    assert writer["spec"]["strategy"]["type"] == "Recreate", label
    pod = pod_template(writer)["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    store = Path(settings.collections_dir)
    (store_mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) in store.parents]
    claim = volumes[store_mount["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = named(objs, "PersistentVolumeClaim")[claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"], label

    readers, _ = routed["/"]
    assert not any("persistentVolumeClaim" in v for v in pod_template(readers)["spec"]["volumes"])
    assert set(autoscalers(objs)) <= {readers["metadata"]["name"]}, label


def check_qdrant_routes(
    objs: list[dict[str, Any]], label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qdrant mode: every path, /v1/collections included, reaches replicas that keep their
    collections in Qdrant."""
    routed = ingress_routes(objs, monkeypatch)
    assert list(routed) == ["/"], label
    for path, (_, s) in routed.items():
        assert (s.collections, s.collections_backend) == (True, "qdrant"), f"{label} {path}"


def check_qdrant_mode(
    objs: list[dict[str, Any]], label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qdrant mode with its own Qdrant: the service's URL and key lead to the StatefulSet
    (one node, storage on a claim, locked down, probes on Qdrant's health routes)."""
    from contrastkit.service.index.factory import QdrantConfig

    (dep,) = named(objs, "Deployment").values()
    (container,) = pod_template(dep)["spec"]["containers"]
    s = pod_settings(monkeypatch, objs, container)
    assert s.qdrant_url is not None, label
    url = urlsplit(s.qdrant_url)
    assert url.scheme == "http" and url.port is not None, label

    # the url names the Service in front of the StatefulSet, and that Service's port
    svc = named(objs, "Service")[url.hostname or ""]
    (qdrant,) = selected(svc["spec"]["selector"], named(objs, "StatefulSet"))
    assert selected(svc["spec"]["selector"], named(objs, "Deployment")) == [], label
    (svc_port,) = [p for p in svc["spec"]["ports"] if p["port"] == url.port]
    (qc,) = pod_template(qdrant)["spec"]["containers"]
    assert container_port(qc, svc_port["targetPort"]) == 6333, "Qdrant's REST port"
    # nothing from outside reaches Qdrant
    backends = {
        path["backend"]["service"]["name"]
        for ingress in named(objs, "Ingress").values()
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert svc["metadata"]["name"] not in backends and svc["spec"]["type"] == "ClusterIP"

    # one key, from one Secret: what Qdrant requires is what the service sends
    qenv = container_env(objs, qc)
    assert qenv["QDRANT__SERVICE__API_KEY"] == s.qdrant_api_key, label
    assert s.qdrant_api_key, "an empty key would leave Qdrant open"
    refs = {
        var["valueFrom"]["secretKeyRef"]["name"]
        for c in (container, qc)
        for var in c["env"]
        if var["name"] in ("CONTRASTIVE_QDRANT_API_KEY", "QDRANT__SERVICE__API_KEY")
    }
    assert len(refs) == 1 and refs <= set(named(objs, "Secret")), label
    # the service builds a valid client config from these settings (as state.py does)
    QdrantConfig(url=s.qdrant_url, api_key=s.qdrant_api_key, timeout=s.qdrant_timeout,
                 prefix=s.qdrant_prefix)  # fmt: skip

    # one node, its storage on a claim of its own; every path it writes is a volume
    spec = qdrant["spec"]
    assert spec["replicas"] == 1, "a cluster needs Qdrant's cluster config: use its Helm chart"
    assert spec["serviceName"] == svc["metadata"]["name"], label
    assert selects(spec["selector"]["matchLabels"], pod_template(qdrant)["metadata"]["labels"])
    pod = pod_template(qdrant)["spec"]
    templates = {t["metadata"]["name"]: t for t in spec["volumeClaimTemplates"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in qc["volumeMounts"]}
    assert set(mounts.values()) <= set(volumes) | set(templates), label
    assert mounts["/qdrant/storage"] in templates, label
    assert templates[mounts["/qdrant/storage"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert str(Path(qenv["QDRANT_INIT_FILE_PATH"]).parent) in mounts, label
    assert qc["securityContext"]["readOnlyRootFilesystem"] is True, label
    assert qc["securityContext"]["allowPrivilegeEscalation"] is False, label
    assert qc["securityContext"]["capabilities"]["drop"] == ["ALL"], label
    assert pod["securityContext"]["runAsNonRoot"] is True, label
    assert pod["securityContext"]["runAsUser"] != 0, label
    assert pod["enableServiceLinks"] is False, label
    # probes: Qdrant's health routes (they need no key), on its REST port
    assert qc["readinessProbe"]["httpGet"]["path"] == "/readyz", label
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert qc[probe]["httpGet"]["path"] in ("/livez", "/readyz", "/healthz"), probe
        assert container_port(qc, qc[probe]["httpGet"]["port"]) == 6333, probe
    # a pinned image, the same one the compose overlay runs
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", qc["image"]), label
    assert qc["image"] == compose(QDRANT_COMPOSE)["services"]["qdrant"]["image"], label


def check_service_objects(
    objs: list[dict[str, Any]],
    label: str,
    monkeypatch: pytest.MonkeyPatch,
    namespace: str = "default",
) -> dict[str, str]:
    """Every check above that applies to one rendering of the service (either mode).
    Returns the collection backends (check_collection_modes)."""
    for obj in objs:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"], label
    check_service_env(objs, label, monkeypatch)
    check_ports(objs, label, 8000)
    app = create_app(Settings(collections=False))  # the model loads only in the lifespan
    paths = probe_paths(objs, label)
    assert {k: p for k, p in paths.items() if not serves_get(app, p)} == {}, label
    check_command_lines(objs, label)
    check_references(objs, label)
    check_autoscaling(objs, label, namespace)
    check_shutdown(objs, label, monkeypatch)
    check_pods_non_root(objs, label)
    modes = check_collection_modes(objs, label, monkeypatch)
    faiss = "faiss" in modes.values()
    if named(objs, "Ingress"):
        (check_faiss_split if faiss else check_qdrant_routes)(objs, label, monkeypatch)
    if not faiss and named(objs, "StatefulSet"):
        check_qdrant_mode(objs, label, monkeypatch)
    return modes

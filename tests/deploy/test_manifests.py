"""The deployment files agree with the code.

Dockerfile, deploy/compose.yaml (and its Qdrant overlay compose.qdrant.yaml),
deploy/prometheus and deploy/k8s (FAISS mode; Qdrant mode in deploy/k8s/qdrant) are
parsed (no container engine or cluster needed) and checked against what they name in the
project: settings, the port, the routes that probes and scrapers call, the command lines
(parsed by the real parsers), and the references between Kubernetes objects.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from starlette.routing import Match

from service.app import create_app
from service.settings import Settings

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


# -- reading the files ---------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


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


def objects(folder: Path) -> list[dict[str, Any]]:
    files = [doc for path in resources(folder) for doc in load(path)]
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


def all_workloads() -> dict[str, dict[str, Any]]:
    """Every folder's workloads, as "k8s/qdrant contrastive" (the modes share names)."""
    return {
        f"{folder_label(folder)} {name}": w
        for folder in KUSTOMIZATIONS
        for name, w in workloads(objects(folder)).items()
    }


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


# -- the checks ----------------------------------------------------------------------------


def test_every_yaml_file_parses_and_every_manifest_is_in_its_kustomization() -> None:
    files = yaml_files()
    assert DEPLOY / "compose.yaml" in files
    assert all(load(p) for p in files), "a YAML file under deploy/ holds no document"
    for folder in KUSTOMIZATIONS:
        listed = set(resources(folder))
        here = {p for p in folder.glob("*.y*ml") if p.name != "kustomization.yaml"}
        assert listed == here, f"{folder}: kustomization resources vs files"
        for obj in objects(folder):
            assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]
    # the training Job is not applied with the service, nor the service with the Job; the
    # Qdrant mode is applied instead of the FAISS mode, never with it
    assert not {p.parent for p in resources(K8S)} & {TRAIN, QDRANT}
    assert {o["kind"] for o in objects(TRAIN)} == {"Job", "Service", "PersistentVolumeClaim"}
    assert DEPLOY / QDRANT_COMPOSE in files


def test_every_contrastive_env_name_is_a_setting_and_every_value_parses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = {k: v for k, v in dockerfile_env().items() if k.startswith(PREFIX)}
    sources = {"Dockerfile": image, "compose": {**image, **compose_env()}}
    shell = {"CONTRASTIVE_QDRANT_API_KEY": "k"}
    sources["compose qdrant"] = {**image, **compose_env(qdrant=True, shell=shell)}
    for folder, name, container in service_containers():
        env = container_env(objects(folder), container)
        sources[f"{folder_label(folder)} {name}"] = {**image, **env}
    _, trainer = the_job()
    sources["k8s train"] = {**image, **container_env(objects(TRAIN), trainer)}

    used = {n for env in sources.values() for n in env if n.startswith(PREFIX)}
    assert used - SETTING_ENV_NAMES == set(), "not a field of service.settings.Settings"
    # Kubernetes env values must be strings ("8000", not 8000)
    for _, _, container in service_containers():
        assert all(isinstance(v.get("value", ""), str) for v in container["env"])
    for label, env in sources.items():
        settings = settings_from(monkeypatch, env)  # raises on a value that does not parse
        assert settings.host == "0.0.0.0", label
        assert settings.port == 8000, label
    # the image's defaults are what the volume expects
    assert settings_from(monkeypatch, image).collections_dir == "/data/collections"
    # an empty CONTRASTIVE_API_KEYS (compose without keys) means no keys, not one empty key
    assert settings_from(monkeypatch, sources["compose"]).api_keys == []
    for folder, name, _ in service_containers():
        label = f"{folder_label(folder)} {name}"
        assert settings_from(monkeypatch, sources[label]).api_keys != [], label


def test_ports_agree_with_contrastive_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = settings_from(monkeypatch, dockerfile_env()).port
    assert final_stage("EXPOSE") == [str(port)]
    assert compose_env()["CONTRASTIVE_PORT"] == str(port)
    published = [str(p).rsplit(":", 1)[-1] for p in compose()["services"]["contrastive"]["ports"]]
    assert published == [str(port)]
    assert prometheus_job()["static_configs"][0]["targets"] == [f"contrastive:{port}"]

    for folder, name, container in service_containers():
        objs = objects(folder)
        env_port = int(container_env(objs, container).get("CONTRASTIVE_PORT", port))
        assert env_port == port, name
        assert container_port(container, "http") == port, name
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container_port(container, container[probe]["httpGet"]["port"]) == port
        annotations = pod_template(named(objs, "Deployment")[name])["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), name

    for folder in SERVICE_KUSTOMIZATIONS:
        objs = objects(folder)
        deployments = named(objs, "Deployment")
        qdrant_pods = named(objs, "StatefulSet")  # Qdrant's port: test_qdrant_mode_...
        services = named(objs, "Service")
        for svc_name, svc in services.items():
            (svc_port,) = svc["spec"]["ports"]
            pods = selected(svc["spec"]["selector"], {**deployments, **qdrant_pods})
            assert len(pods) == 1, f"Service {svc_name} selects {len(pods)} workloads"
            if pods[0]["kind"] == "Deployment":
                (container,) = pod_template(pods[0])["spec"]["containers"]
                assert container_port(container, svc_port["targetPort"]) == port, svc_name
        for rule in named(objs, "Ingress")["contrastive"]["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                (svc,) = selected(services[backend["name"]]["spec"]["selector"], deployments)
                port_names = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in port_names


def test_probes_healthcheck_and_scrape_paths_are_routes_of_the_app() -> None:
    app = create_app(Settings(collections=False))  # the model loads only in the lifespan
    paths = {}
    for folder, name, container in service_containers():
        label = f"{folder_label(folder)} {name}"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", label
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", label
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz", label
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            paths[f"{label} {probe}"] = container[probe]["httpGet"]["path"]
        dep = named(objects(folder), "Deployment")[name]
        paths[f"{label} annotation"] = pod_template(dep)["metadata"]["annotations"][
            "prometheus.io/path"
        ]

    (healthcheck,) = final_stage("HEALTHCHECK")
    argv = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "HEALTHCHECK", "exec")  # valid Python
    (url_path,) = re.findall(r"'(/\w+)'", argv[2])
    assert url_path == "/healthz"
    paths["HEALTHCHECK"] = url_path
    paths["prometheus metrics_path"] = prometheus_job()["metrics_path"]
    assert paths["prometheus metrics_path"] == "/metrics"

    not_routes = {k: p for k, p in paths.items() if not serves_get(app, p)}
    assert not_routes == {}
    assert not serves_get(app, "/no-such-path")  # the matcher can say no


def test_service_command_lines_parse_with_the_contrastive_cli() -> None:
    from service.cli import build_parser
    from service.commands.serve import settings_from_args

    parser = build_parser()
    (entrypoint,) = final_stage("ENTRYPOINT")
    (cmd,) = final_stage("CMD")
    assert json.loads(entrypoint) == ["tini", "--", "contrastive"]  # tini: PID 1, forwards signals
    assert pyproject()["project"]["scripts"]["contrastive"] == "service.cli:main"
    assert parser.parse_args(json.loads(cmd)).command == "serve"

    service = compose()["services"]["contrastive"]
    compose_args = service.get("command", json.loads(cmd))
    assert "entrypoint" not in service
    assert parser.parse_args(compose_args).command == "serve"

    for _, name, container in service_containers():
        assert "command" not in container, f"{name}: keep the image's ENTRYPOINT"
        args = parser.parse_args(container["args"])
        assert args.command == "serve", name
        settings_from_args(args)


def test_training_job_command_line_parses_with_torchrun_and_the_training_cli(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from torch.distributed.run import get_args_parser

    from service.cli import build_parser as contrastive_parser
    from training.cli import build_training_parser as training_parser
    from training.commands.train import resolve

    job, container = the_job()
    spec = job["spec"]
    pod = pod_template(job)["spec"]
    declared = {v["name"] for v in container.get("env", [])}
    substituted = {m for a in container["args"] for m in SUBSTITUTION.findall(a)}
    assert substituted <= declared, "a $(VAR) in args that the container does not define"
    assert all(isinstance(a, str) for a in container["args"])

    assert container["command"] == ["tini", "--", "torchrun"]  # tini: PID 1, reaps workers
    run = get_args_parser().parse_args(expand(container["args"]))
    # torchrun's wait for its workers after SIGTERM ends within the pod's grace period
    assert 30 <= int(run.shutdown_timeout) < pod["terminationGracePeriodSeconds"]
    assert run.module and run.training_script == "training"
    # one pod per node, rank = completion index, rendezvous at pod 0's DNS name
    assert spec["completionMode"] == "Indexed"
    assert int(run.nnodes) == spec["completions"] == spec["parallelism"]
    assert container["args"][container["args"].index("--node_rank") + 1] == (
        "$(JOB_COMPLETION_INDEX)"
    )
    assert run.rdzv_backend == "static"
    headless = named(objects(TRAIN), "Service")[pod["subdomain"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], pod_template(job)["metadata"]["labels"])
    assert run.master_addr == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    (rendezvous,) = headless["spec"]["ports"]
    assert run.master_port == rendezvous["port"]
    assert container_port(container, rendezvous["targetPort"]) == run.master_port
    assert int(run.nproc_per_node) == int(container["resources"]["limits"]["nvidia.com/gpu"])

    train_argv = run.training_script_args
    args = training_parser().parse_args(train_argv)
    assert args.command == "train"
    assert contrastive_parser().parse_args(train_argv).command == "train"
    assert args.resume == "auto", "--resume auto: a restarted pod must continue the run"
    # the first start: --resume auto on a run folder without a checkpoint starts the run
    args.out = str(tmp_path / "fresh-run")
    with caplog.at_level(logging.INFO, "contrastive.train"):
        cfg, _, checkpoint = resolve(args)  # every setting given is a known, valid one
    assert checkpoint is None
    assert "starting the run" in caplog.text

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    out = training_parser().parse_args(train_argv).out
    runs = [m for path, m in mounts.items() if Path(path) in Path(out).parents]
    assert len(runs) == 1 and not runs[0].get("readOnly"), "--out must be on a mounted volume"
    claim = volumes[runs[0]["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = named(objects(TRAIN), "PersistentVolumeClaim")[claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every node reads last.pt"
    data_dir = cfg.data.split(":", 1)[1]
    assert any(Path(path) in Path(data_dir).parents for path in mounts), "--data not mounted"
    shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm["medium"] == "Memory"


def test_kubernetes_references_resolve() -> None:
    for folder in KUSTOMIZATIONS:
        objs = objects(folder)
        claims = named(objs, "PersistentVolumeClaim")
        secrets = named(objs, "Secret")
        for name, work in workloads(objs).items():
            template = pod_template(work)
            pod = template["spec"]
            if work["kind"] == "Deployment":
                assert selected(work["spec"]["selector"]["matchLabels"], {name: work}), name
            # a Service named contrastive* would inject CONTRASTIVE_PORT=tcp://... otherwise
            assert pod["enableServiceLinks"] is False, name
            volumes = {v["name"]: v for v in pod["volumes"]}
            for volume in volumes.values():
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, name
            for container in pod["containers"]:
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes, f"{name}: mount {mount['name']}"
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] in secrets, f"{name}: {var['name']}"
                        secret = secrets[ref["name"]]
                        keys = {*secret.get("stringData", {}), *secret.get("data", {})}
                        assert ref["key"] in keys, f"{name}: {var['name']}"

    for folder in SERVICE_KUSTOMIZATIONS:
        objs = objects(folder)
        deployments = named(objs, "Deployment")
        hpas = named(objs, "HorizontalPodAutoscaler")
        for hpa in hpas.values():
            assert hpa["apiVersion"] == "autoscaling/v2"
            target = hpa["spec"]["scaleTargetRef"]
            assert target["kind"] == "Deployment" and target["name"] in deployments
            dep = deployments[target["name"]]
            assert "replicas" not in dep["spec"], "the HPA owns the replica count"
            (metric,) = hpa["spec"]["metrics"]
            assert metric["resource"]["name"] == "cpu"
            for container in pod_template(dep)["spec"]["containers"]:
                assert container["resources"]["requests"]["cpu"], "utilization needs a request"
        for pdb in named(objs, "PodDisruptionBudget").values():
            selector = pdb["spec"]["selector"]["matchLabels"]
            (matched,) = selected(selector, deployments)
            targets = {h["spec"]["scaleTargetRef"]["name"]: h for h in hpas.values()}
            hpa = targets.get(matched["metadata"]["name"])
            replicas = hpa["spec"]["minReplicas"] if hpa else matched["spec"].get("replicas", 1)
            assert replicas > 1, "a budget on a single pod would block every node drain"
        for ingress in named(objs, "Ingress").values():
            for rule in ingress["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    assert path["backend"]["service"]["name"] in named(objs, "Service")


def test_shutdown_fits_in_the_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    image = dockerfile_env()
    for folder, name, container in service_containers():
        objs = objects(folder)
        s = settings_from(monkeypatch, {**image, **container_env(objs, container)})
        grace = pod_template(named(objs, "Deployment")[name])["spec"][
            "terminationGracePeriodSeconds"
        ]
        assert grace > s.drain_seconds + s.graceful_timeout + 10, name
        # a load balancer that checks /readyz notices the drain within one probe period
        probe = container["readinessProbe"]
        assert s.drain_seconds >= probe["periodSeconds"], name
    s = settings_from(monkeypatch, {**image, **compose_env()})
    grace = duration_seconds(compose()["services"]["contrastive"]["stop_grace_period"])
    assert grace > s.drain_seconds + s.graceful_timeout + 10
    assert final_stage("STOPSIGNAL") == ["SIGTERM"]


def test_pods_run_as_the_images_non_root_user() -> None:
    (user,) = final_stage("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid"
    for name, work in all_workloads().items():
        pod = pod_template(work)["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == int(uid), name
        assert context["runAsGroup"] == int(gid or uid), name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            if security.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: writable /tmp"
                assert dict((v["name"], v.get("value")) for v in container["env"])["HOME"] == (
                    "/tmp"
                ), f"{name}: HOME on the writable /tmp"


def test_ingress_sends_collections_to_the_single_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = objects(K8S)
    image = dockerfile_env()
    deployments = named(objs, "Deployment")
    services = named(objs, "Service")
    (ingress,) = named(objs, "Ingress").values()
    routed = {}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["pathType"] == "Prefix"
            svc = services[path["backend"]["service"]["name"]]
            (dep,) = selected(svc["spec"]["selector"], deployments)
            (container,) = pod_template(dep)["spec"]["containers"]
            s = settings_from(monkeypatch, {**image, **container_env(objs, container)})
            routed[path["path"]] = (dep, s)
    assert {p: s.collections for p, (_, s) in routed.items()} == {
        "/v1/collections": True,
        "/": False,
    }

    # every collections route (of the writer's app) is under the prefix, and nothing else is
    app = create_app(Settings(collections=True))  # the store opens only in the lifespan
    api_paths = list(app.openapi()["paths"])
    under = [p for p in api_paths if p == "/v1/collections" or p.startswith("/v1/collections/")]
    assert len(under) >= 5
    assert [p for p in api_paths if p.startswith("/v1/collections") and p not in under] == []

    writer, settings = routed["/v1/collections"]
    assert writer["spec"]["replicas"] == 1
    assert writer["spec"]["strategy"]["type"] == "Recreate"
    pod = pod_template(writer)["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    store = Path(settings.collections_dir)
    (store_mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) in store.parents]
    claim = volumes[store_mount["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = named(objs, "PersistentVolumeClaim")[claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]

    readers, _ = routed["/"]
    assert not any("persistentVolumeClaim" in v for v in pod_template(readers)["spec"]["volumes"])
    (hpa,) = named(objs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == readers["metadata"]["name"]


def min_replicas(objs: list[dict[str, Any]], dep: dict[str, Any]) -> int:
    """The fewest pods a Deployment runs: its HPA's minReplicas, else spec.replicas."""
    hpas = named(objs, "HorizontalPodAutoscaler").values()
    targets = {h["spec"]["scaleTargetRef"]["name"]: h for h in hpas}
    hpa = targets.get(dep["metadata"]["name"])
    return int(hpa["spec"]["minReplicas"]) if hpa else int(dep["spec"].get("replicas", 1))


def test_replicas_above_one_only_where_collections_live_in_qdrant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FAISS is one writer process per folder; with Qdrant the pods hold no collections."""
    image = dockerfile_env()
    modes = {}
    for folder, name, container in service_containers():
        objs = objects(folder)
        dep = named(objs, "Deployment")[name]
        s = settings_from(monkeypatch, {**image, **container_env(objs, container)})
        if not s.collections:
            continue  # embeddings only: stateless in either mode
        label = f"{folder_label(folder)} {name}"
        modes[label] = s.collections_backend
        pod = pod_template(dep)["spec"]
        claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        if s.collections_backend == "faiss":
            assert min_replicas(objs, dep) == 1, label
            assert dep["spec"]["replicas"] == 1, f"{label}: no HPA may scale the writer"
            assert dep["spec"]["strategy"]["type"] == "Recreate", label
            assert claims, f"{label}: the collections need their volume"
        else:
            assert min_replicas(objs, dep) > 1, f"{label}: Qdrant mode scales out"
            assert dep["spec"]["strategy"]["type"] == "RollingUpdate", label
            assert claims == [], f"{label}: a Qdrant-mode pod keeps no collection state"
            assert s.qdrant_url and s.qdrant_api_key, label
    assert modes == {"k8s contrastive-index": "faiss", "k8s/qdrant contrastive": "qdrant"}

    # in Qdrant mode every path, /v1/collections included, reaches such replicas
    objs = objects(QDRANT)
    services = named(objs, "Service")
    (ingress,) = named(objs, "Ingress").values()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            svc = services[path["backend"]["service"]["name"]]
            (dep,) = selected(svc["spec"]["selector"], named(objs, "Deployment"))
            (container,) = pod_template(dep)["spec"]["containers"]
            s = settings_from(monkeypatch, {**image, **container_env(objs, container)})
            assert (s.collections, s.collections_backend) == (True, "qdrant"), path["path"]
    assert [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]] == ["/"]


def test_qdrant_mode_talks_to_the_qdrant_it_deploys(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.index.factory import QdrantConfig

    objs = objects(QDRANT)
    (dep,) = named(objs, "Deployment").values()
    (container,) = pod_template(dep)["spec"]["containers"]
    s = settings_from(monkeypatch, {**dockerfile_env(), **container_env(objs, container)})
    assert s.qdrant_url is not None
    url = urlsplit(s.qdrant_url)
    assert url.scheme == "http" and url.port is not None

    # the url names the Service in front of the StatefulSet, and that Service's port
    svc = named(objs, "Service")[url.hostname or ""]
    (qdrant,) = selected(svc["spec"]["selector"], named(objs, "StatefulSet"))
    assert selected(svc["spec"]["selector"], named(objs, "Deployment")) == []
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
    assert qenv["QDRANT__SERVICE__API_KEY"] == s.qdrant_api_key
    assert s.qdrant_api_key, "an empty key would leave Qdrant open"
    refs = {
        var["valueFrom"]["secretKeyRef"]["name"]
        for c in (container, qc)
        for var in c["env"]
        if var["name"] in ("CONTRASTIVE_QDRANT_API_KEY", "QDRANT__SERVICE__API_KEY")
    }
    assert len(refs) == 1 and refs <= set(named(objs, "Secret"))
    # the service builds a valid client config from these settings (as state.py does)
    QdrantConfig(url=s.qdrant_url, api_key=s.qdrant_api_key, timeout=s.qdrant_timeout,
                 prefix=s.qdrant_prefix)  # fmt: skip

    # one node, its storage on a claim of its own; every path it writes is a volume
    spec = qdrant["spec"]
    assert spec["replicas"] == 1, "a cluster needs Qdrant's cluster config: use its Helm chart"
    assert spec["serviceName"] == svc["metadata"]["name"]
    assert selects(spec["selector"]["matchLabels"], pod_template(qdrant)["metadata"]["labels"])
    pod = pod_template(qdrant)["spec"]
    templates = {t["metadata"]["name"]: t for t in spec["volumeClaimTemplates"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in qc["volumeMounts"]}
    assert set(mounts.values()) <= set(volumes) | set(templates)
    assert mounts["/qdrant/storage"] in templates
    assert templates[mounts["/qdrant/storage"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert str(Path(qenv["QDRANT_INIT_FILE_PATH"]).parent) in mounts
    assert qc["securityContext"]["readOnlyRootFilesystem"] is True
    assert qc["securityContext"]["allowPrivilegeEscalation"] is False
    assert qc["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["enableServiceLinks"] is False
    # probes: Qdrant's health routes (they need no key), on its REST port
    assert qc["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert qc[probe]["httpGet"]["path"] in ("/livez", "/readyz", "/healthz"), probe
        assert container_port(qc, qc[probe]["httpGet"]["port"]) == 6333, probe
    # a pinned image, the same one the compose overlay runs
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", qc["image"])
    assert qc["image"] == compose(QDRANT_COMPOSE)["services"]["qdrant"]["image"]


class _Readyz(BaseHTTPRequestHandler):
    """Answers GET /readyz with the server's `status` (a stand-in for Qdrant's)."""

    def do_GET(self) -> None:
        status = getattr(self.server, "status", 200) if self.path == "/readyz" else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ready" if status == 200 else b"not ready")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_compose_qdrant_overlay_configures_the_service_for_its_qdrant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    overlay = compose(QDRANT_COMPOSE)
    shell = {"CONTRASTIVE_QDRANT_API_KEY": "a-key"}
    image = {k: v for k, v in dockerfile_env().items() if k.startswith(PREFIX)}  # not PATH
    s = settings_from(monkeypatch, {**image, **compose_env(qdrant=True, shell=shell)})
    assert (s.collections, s.collections_backend) == (True, "qdrant")
    assert s.qdrant_url is not None
    url = urlsplit(s.qdrant_url)
    assert url.scheme == "http" and url.port == 6333
    qdrant = overlay["services"][url.hostname or ""]
    assert "ports" not in qdrant, "Qdrant is reached over the compose network only"
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", qdrant["image"])
    q_env = {k: interpolate(str(v), shell) for k, v in qdrant["environment"].items()}
    assert q_env["QDRANT__SERVICE__API_KEY"] == s.qdrant_api_key == "a-key"
    with pytest.raises(UnsetVariableError):  # without a key, compose refuses to start
        compose_env(qdrant=True)
    with pytest.raises(UnsetVariableError):
        interpolate(str(qdrant["environment"]["QDRANT__SERVICE__API_KEY"]))

    # the overlay only reconfigures the service, which waits for a healthy Qdrant
    service = overlay["services"]["contrastive"]
    assert set(service) == {"environment", "depends_on"}
    assert service["depends_on"] == {url.hostname: {"condition": "service_healthy"}}
    (storage,) = qdrant["volumes"]
    source, target = storage.split(":")[:2]
    assert target == "/qdrant/storage" and source in overlay["volumes"]
    assert duration_seconds(qdrant["stop_grace_period"]) >= 10

    # the healthcheck, run by bash against a stand-in for Qdrant's /readyz
    test = qdrant["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"] and "/dev/tcp/127.0.0.1/6333" in test[3]
    for key in ("interval", "timeout", "start_period"):
        duration_seconds(qdrant["healthcheck"][key])
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        script = test[3].replace("127.0.0.1/6333", f"127.0.0.1/{port}")

        def check() -> int:
            return subprocess.run([bash, "-c", script], capture_output=True, timeout=20).returncode

        assert check() == 0
        server.status = 503  # type: ignore[attr-defined]
        assert check() != 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert subprocess.run([bash, "-c", script], capture_output=True, timeout=20).returncode != 0

    docker = shutil.which("docker")
    found = docker and subprocess.run([docker, "compose", "version"], capture_output=True)
    if not found or found.returncode != 0:
        pytest.skip("docker compose is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX) and k != "VARIANT"}
    files = ["-f", str(DEPLOY / "compose.yaml"), "-f", str(DEPLOY / QDRANT_COMPOSE)]
    command = [docker, "compose", *files, "config", "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, env={**env, **shell}, timeout=60)
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)["services"]["contrastive"]
    assert {k: str(v or "") for k, v in resolved["environment"].items()} == compose_env(
        qdrant=True, shell=shell
    )
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "CONTRASTIVE_QDRANT_API_KEY" in refused.stderr


def test_dockerfile_stages_install_and_variants() -> None:
    assert len(stages()) >= 2
    assert [rest.split()[-1] for w, rest in dockerfile() if w == "FROM"] == ["build", "runtime"]
    assert "COPY --from=build /opt/venv /opt/venv" in [f"{w} {r}" for w, r in stages()[-1]]
    project = pyproject()["project"]
    labels = " ".join(final_stage("LABEL"))
    assert f'org.opencontainers.image.version="{project["version"]}"' in labels

    # The README's install command, and the image's: run the build stage's RUN lines in sh
    # with pip and python replaced by echo, for each variant.
    readme = (ROOT / "README.md").read_text()
    first_bash = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert first_bash is not None
    readme_install = shlex.split(first_bash.group(1).split("&&")[0])
    assert readme_install == ["pip", "install", "-e", "."]

    build_runs = [re.sub(r"^(--\S+\s+)*", "", rest) for w, rest in stages()[0] if w == "RUN"]
    stub = 'pip() { echo "pip $*"; }; python() { :; }; '
    pip_calls = {}
    for variant in ("cpu", "cuda"):
        calls = []
        for run in build_runs:
            script = f"{stub}VARIANT={variant}; EXTRAS=; {run}"
            done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
            calls += done.stdout.splitlines()
        pip_calls[variant] = calls
    requirements = {r.split(">=")[0]: r for r in project["dependencies"]}
    torch_specs = f"{requirements['torch']} {requirements['torchvision']}"
    assert pip_calls["cpu"] == [
        f"pip install --index-url https://download.pytorch.org/whl/cpu {torch_specs}",
        "pip install .",  # = the README's `pip install -e .`, not editable
    ]
    gpu_faiss = project["optional-dependencies"]["gpu"]
    assert pip_calls["cuda"] == [
        f"pip install {torch_specs}",
        "pip install .[gpu]",
        # faiss-cpu and faiss-gpu share the `faiss` module: the GPU build must be the one left
        "pip uninstall -y faiss-cpu",
        f"pip install --force-reinstall --no-deps {gpu_faiss[0]}",
    ]
    # ... and the sources it installs are copied in, and not excluded by .dockerignore
    copied = {p for w, rest in stages()[0] if w == "COPY" for p in rest.split()[:-1]}
    ignore = (ROOT / ".dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "service", "training"} <= copied <= allowed

    checks = [rest for w, rest in stages()[0] if w == "RUN" and "load_encoder" in rest]
    assert len(checks) == 1 and checks[0].startswith("--network=none")
    assert "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1" in checks[0]
    assert "load_encoder('builtin', None, 'cpu')" in checks[0]
    assert dockerfile_env()["HF_HUB_OFFLINE"] == "1"
    assert final_stage("VOLUME") == ["/data"]


def test_the_images_non_editable_install_carries_every_data_file() -> None:
    # The image runs `pip install .`, not `-e .`: a file the code reads beside its modules
    # reaches the image only as package data.
    package_data = pyproject()["tool"]["setuptools"]["package-data"]
    missing = []
    for package in ("service", "training"):
        for path in sorted((ROOT / package).rglob("*")):
            if not path.is_file() or path.suffix in (".py", ".pyc", ".pyo"):
                continue
            name = path.relative_to(ROOT / package).as_posix()
            if not any(fnmatch.fnmatch(name, g) for g in package_data.get(package, [])):
                missing.append(f"{package}/{name}")
    assert missing == [], "add them to [tool.setuptools.package-data] in pyproject.toml"


def test_compose_files_exist_and_compose_accepts_them() -> None:
    service = compose()["services"]["contrastive"]
    build = service["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    assert build["args"]["VARIANT"] == "${VARIANT:-cpu}"
    volumes = compose()["volumes"]
    for svc in compose()["services"].values():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), source
            else:
                assert source in volumes, source
    assert [m.split(":")[1] for m in service["volumes"]] == ["/data"]

    docker = shutil.which("docker")
    found = docker and subprocess.run([docker, "compose", "version"], capture_output=True)
    if not found or found.returncode != 0:
        pytest.skip("docker compose is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX) and k != "VARIANT"}
    command = [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)["services"]["contrastive"]
    assert resolved["build"]["args"]["VARIANT"] == "cpu"
    assert {k: str(v or "") for k, v in resolved["environment"].items()} == compose_env()


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomize_builds_what_the_files_say(folder: Path, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    # a copy, with the committed examples standing in for git-ignored env files
    work = tmp_path / folder.name
    shutil.copytree(folder, work)
    for example in work.glob("*.env.example"):
        real = example.with_name(example.name.removesuffix(".example"))
        if not real.exists():
            shutil.copy(example, real)
    command = [kubectl, "kustomize", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d is not None]

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    assert sorted(built, key=key) == sorted(objects(folder), key=key)

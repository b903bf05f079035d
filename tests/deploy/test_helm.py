"""The Helm chart, deploy/helm/contrastive: the Kustomize overlays' options as values.

Without helm: the chart's files parse, values.yaml and the ci/ values validate against
values.schema.json (which helm applies to every install), the settings it passes are the
service's, and its defaults are the overlays' values.

With helm on PATH (scripts/install-helm.sh installs it; these tests skip without it):
`helm lint`, and `helm template` of each mode and autoscaling variant, whose objects pass
the same checks as the Kustomize output (manifests.py); with the defaults the chart
renders what kustomize builds, but for Helm's own labels and annotations.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from contrastkit.service.settings import Settings
from tests.deploy.manifests import (
    CHART,
    COMPONENTS,
    K8S,
    PREFIX,
    QDRANT,
    autoscalers,
    check_service_objects,
    load,
    named,
    objects,
    pod_template,
    pyproject,
    settings_from,
    workloads,
)

CI_VALUES = {
    "faiss": CHART / "ci" / "faiss-values.yaml",
    "qdrant": CHART / "ci" / "qdrant-values.yaml",
}
# what Helm adds to the overlays' objects: its release's labels, and annotations that roll
# the pods when the chart's Secrets change or keep the collections' claim on uninstall
HELM_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
}
HELM_ANNOTATION = re.compile(r"^(checksum|helm\.sh)/")


# -- reading the chart ------------------------------------------------------------------------


def values() -> dict[str, Any]:
    (doc,) = load(CHART / "values.yaml")
    return dict(doc)


@cache
def schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text()))


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of a values file over the defaults: maps key by key, lists replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def ci_values(mode: str) -> dict[str, Any]:
    (doc,) = load(CI_VALUES[mode])
    return dict(doc)


def schema_errors(vals: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema())
    return [e.message for e in validator.iter_errors(vals)]


def reserved_settings() -> set[str]:
    """The settings the chart sets itself, as _helpers.tpl lists them."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    found = re.search(r'define "contrastive.reservedSettings".*?list ((?:"\w+" ?)+)', helpers, re.S)
    assert found, "_helpers.tpl: contrastive.reservedSettings"
    return set(re.findall(r'"(\w+)"', found.group(1)))


def kustomize_container(folder: Path, deployment: str) -> dict[str, Any]:
    (container,) = pod_template(named(objects(folder), "Deployment")[deployment])["spec"][
        "containers"
    ]
    return dict(container)


def probe_timings(container: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        kind: {k: v for k, v in container[f"{kind}Probe"].items() if k != "httpGet"}
        for kind in ("startup", "liveness", "readiness")
    }


# -- without helm -----------------------------------------------------------------------------


def test_chart_metadata_and_files() -> None:
    (chart,) = load(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2" and chart["name"] == "contrastive"
    assert chart["type"] == "application"
    # the image tag by default: the project's version, the tag the overlays deploy
    version = pyproject()["project"]["version"]
    assert chart["appVersion"] == version
    assert kustomize_container(K8S, "contrastive")["image"] == f"contrastive:{version}"
    assert values()["image"] == {
        "repository": "contrastive",
        "tag": "",
        "pullPolicy": "IfNotPresent",
    }
    templates = sorted(p.name for p in (CHART / "templates").iterdir())
    assert "_helpers.tpl" in templates and "NOTES.txt" in templates
    assert all(re.fullmatch(r"[\w-]+\.(yaml|tpl|txt)", name) for name in templates), templates
    # every template opens a `define`, an `if`, a comment or YAML: none is empty
    assert all((CHART / "templates" / name).read_text().strip() for name in templates)


def test_values_and_ci_values_validate_against_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(schema())
    assert schema_errors(values()) == []
    for mode in CI_VALUES:
        assert schema_errors(merged(values(), ci_values(mode))) == [], mode
    # ... and the schema refuses what helm should refuse before rendering
    refused: dict[str, dict[str, Any]] = {
        "mode": {"mode": "milvus"},
        "autoscaling": {"autoscaling": {"mode": "memory"}},
        "a misspelt setting": {"settings": {"max_batch": 8}},
        "a setting the chart sets": {"settings": {"port": 9000}},
        "a list as a setting": {"settings": {"models": ["a", "b"]}},
        "a key with a comma": {"apiKeys": {"keys": ["a,b"]}},
        "an unknown option": {"replicaCount": 3},
        "a Prometheus without scheme": {"autoscaling": {"keda": {"serverAddress": "prom:9090"}}},
    }
    for what, override in refused.items():
        assert schema_errors(merged(values(), override)) != [], what


def test_settings_are_the_services_and_the_chart_sets_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fields = set(Settings.model_fields)
    reserved = reserved_settings()
    assert reserved <= fields
    assert {"host", "port", "api_keys", "collections", "collections_backend"} <= reserved
    # helm accepts exactly the settings the chart does not set itself
    allowed = set(schema()["properties"]["settings"]["propertyNames"]["enum"])
    assert allowed == fields - reserved
    assert set(values()["settings"]) <= allowed
    env = {PREFIX + k.upper(): str(v) for k, v in values()["settings"].items()}
    settings_from(monkeypatch, env)  # every default parses


def test_defaults_are_the_kustomize_overlays_values() -> None:
    """What the templates take from values.yaml, the defaults give as the overlays have it
    (the rendering test below compares whole objects, where helm is installed)."""
    v = values()
    assert v["mode"] == "faiss" and v["autoscaling"]["mode"] == "keda"
    for key, folder, deployment in (
        ("api", K8S, "contrastive"),
        ("index", K8S, "contrastive-index"),
        ("api", QDRANT, "contrastive"),
    ):
        container = kustomize_container(folder, deployment)
        assert v[key]["resources"] == container["resources"], f"{key} {folder}"
        assert v[key]["probes"] == probe_timings(container), f"{key} {folder}"
        dep = named(objects(folder), "Deployment")[deployment]
        pod = pod_template(dep)
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        assert v[key]["terminationGracePeriodSeconds"] == grace, f"{key} {folder}"
        assert v["podAnnotations"] == pod["metadata"]["annotations"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        for name, value in v["settings"].items():
            assert env[PREFIX + name.upper()] == str(value), name
        assert env["OMP_NUM_THREADS"] == str(v["ompNumThreads"])
        assert container["imagePullPolicy"] == v["image"]["pullPolicy"]

    k8s = objects(K8S)
    (pvc,) = named(k8s, "PersistentVolumeClaim").values()
    persistence = v["index"]["persistence"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == persistence["size"]
    assert pvc["spec"]["accessModes"] == [persistence["accessMode"]]
    (ingress,) = named(k8s, "Ingress").values()
    assert ingress["spec"]["ingressClassName"] == v["ingress"]["className"]
    assert ingress["metadata"]["annotations"] == v["ingress"]["annotations"]
    (svc, _) = named(k8s, "Service").values()
    assert svc["spec"]["type"] == v["service"]["type"]
    assert svc["spec"]["ports"][0]["port"] == v["service"]["port"]
    (pdb,) = named(k8s, "PodDisruptionBudget").values()
    assert pdb["spec"]["maxUnavailable"] == v["pdb"]["maxUnavailable"]

    scaler = autoscalers(k8s)["contrastive"]["spec"]
    auto = v["autoscaling"]
    assert (scaler["minReplicaCount"], scaler["maxReplicaCount"]) == (
        auto["minReplicas"],
        auto["maxReplicas"],
    )
    assert scaler["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == auto["behavior"]
    (trigger,) = scaler["triggers"]
    assert float(trigger["metadata"]["threshold"]) == auto["targetQueueDepth"]
    assert trigger["metadata"]["serverAddress"] == auto["keda"]["serverAddress"]
    assert scaler["pollingInterval"] == auto["keda"]["pollingInterval"]
    assert scaler["fallback"] == auto["keda"]["fallback"]

    qdrant_objs = objects(QDRANT)
    (sts,) = named(qdrant_objs, "StatefulSet").values()
    (qc,) = pod_template(sts)["spec"]["containers"]
    image = v["qdrant"]["image"]
    assert qc["image"] == f"{image['repository']}:{image['tag']}"
    assert qc["resources"] == v["qdrant"]["resources"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == v["qdrant"]["storage"]["size"]
    env = {e["name"]: e.get("value") for e in kustomize_container(QDRANT, "contrastive")["env"]}
    assert env["CONTRASTIVE_QDRANT_TIMEOUT"] == str(v["qdrant"]["timeout"])


# -- with helm --------------------------------------------------------------------------------


def helm() -> str:
    found = shutil.which("helm")
    if found is None:
        pytest.skip("helm is not installed (bash scripts/install-helm.sh)")
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)


def render(
    vals: dict[str, Any], tmp_path: Path, release: str = "contrastive", namespace: str = "default"
) -> list[dict[str, Any]]:
    """`helm template` with these values (over the defaults), as a list of objects."""
    path = tmp_path / f"values-{len(list(tmp_path.glob('values-*')))}.yaml"
    path.write_text(yaml.safe_dump(vals))
    done = run_helm("template", release, str(CHART), "--namespace", namespace, "-f", str(path))
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


def without_helm_additions(obj: Any) -> Any:
    """The object without the labels and annotations that only Helm adds."""
    if isinstance(obj, list):
        return [without_helm_additions(o) for o in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        flat = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        if key in ("labels", "matchLabels", "selector") and flat:
            value = {k: v for k, v in value.items() if k not in HELM_LABELS}
        elif key == "annotations" and flat:
            value = {k: v for k, v in value.items() if not HELM_ANNOTATION.match(k)}
            if not value:
                continue
        out[key] = without_helm_additions(value)
    return out


def comparable(objs: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """By (kind, name); a Secret's keys, not its values (the keys are the user's)."""
    out = {}
    for obj in objs:
        obj = without_helm_additions(obj)
        if obj["kind"] == "Secret":
            obj = {**obj, "data": sorted({**obj.get("data", {}), **obj.get("stringData", {})})}
            obj.pop("stringData", None)
        out[(obj["kind"], obj["metadata"]["name"])] = obj
    return out


def stand_in_secret(name: str, key: str) -> dict[str, Any]:
    """A Secret that the user creates (apiKeys.existingSecret and the like)."""
    data = {key: base64.b64encode(b"a-key").decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}


def test_helm_lint() -> None:
    for mode, path in CI_VALUES.items():
        done = run_helm("lint", "--strict", str(CHART), "-f", str(path))
        assert done.returncode == 0, f"{mode}: {done.stdout}{done.stderr}"


SAME_AS_KUSTOMIZE = {
    "faiss keda": ("faiss", "keda", K8S, ()),
    "qdrant keda": ("qdrant", "keda", QDRANT, ()),
    "faiss hpa-queue-depth": ("faiss", "hpa-queue-depth", K8S, ("hpa-queue-depth",)),
    "qdrant cpu": ("qdrant", "cpu", QDRANT, ("hpa-cpu",)),
}


@pytest.mark.parametrize("case", SAME_AS_KUSTOMIZE)
def test_the_defaults_render_what_kustomize_builds(case: str, tmp_path: Path) -> None:
    """Each mode, and each autoscaling mode against the overlay with its component."""
    mode, autoscaling, folder, components = SAME_AS_KUSTOMIZE[case]
    rendered = render(merged(ci_values(mode), {"autoscaling": {"mode": autoscaling}}), tmp_path)
    built = objects(folder, tuple(COMPONENTS / c for c in components))
    got, want = comparable(rendered), comparable(built)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key


VARIANTS: dict[str, dict[str, Any]] = {
    "faiss keda": {"values": ci_values("faiss")},
    "qdrant keda": {"values": ci_values("qdrant")},
    "faiss hpa-queue-depth, release prod in namespace search": {
        "values": merged(ci_values("faiss"), {"autoscaling": {"mode": "hpa-queue-depth"}}),
        "release": "prod",
        "namespace": "search",
    },
    "faiss keda, release prod in namespace search, existing secret, more settings": {
        "values": {
            "apiKeys": {"existingSecret": "prod-keys"},
            "settings": {
                "max_body_bytes": 33554432,
                "max_queue_wait_ms": 1500.5,
                "access_log": True,
                "model": "open_clip:ViT-B-32",
            },
            "autoscaling": {"targetQueueDepth": 32, "maxReplicas": 20},
        },
        "release": "prod",
        "namespace": "search",
        "secrets": [("prod-keys", "api-keys")],
    },
    "qdrant cpu": {"values": merged(ci_values("qdrant"), {"autoscaling": {"mode": "cpu"}})},
    "qdrant external, its key from a secret": {
        "values": {
            "mode": "qdrant",
            "apiKeys": {"keys": ["k1", "k2"]},
            "qdrant": {
                "deploy": False,
                "url": "http://qdrant.vectors.svc:6333",
                "apiKey": {"existingSecret": "qdrant-key"},
            },
        },
        "secrets": [("qdrant-key", "api-key")],
    },
    "faiss off, 3 replicas, no ingress": {
        "values": merged(
            ci_values("faiss"),
            {"autoscaling": {"mode": "off"}, "api": {"replicas": 3}, "ingress": {"enabled": False}},
        ),
    },
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_passes_the_checks_of_the_kustomize_output(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = VARIANTS[variant]
    release, namespace = spec.get("release", "contrastive"), spec.get("namespace", "default")
    objs = render(spec["values"], tmp_path, release, namespace)
    objs += [stand_in_secret(name, key) for name, key in spec.get("secrets", [])]
    vals = merged(values(), spec["values"])
    modes = check_service_objects(objs, variant, monkeypatch, namespace)

    fullname = release if "contrastive" in release else f"{release}-contrastive"
    assert all(o["metadata"]["name"].startswith(fullname) for o in objs if o["kind"] != "Secret")
    api = named(objs, "Deployment")[fullname]
    if vals["mode"] == "faiss":
        assert modes == {f"{fullname}-index": "faiss"}
    else:
        assert modes == {fullname: "qdrant"}
        assert bool(named(objs, "StatefulSet")) == vals["qdrant"]["deploy"]
    # the autoscaling mode decides the kind of autoscaler, and only `api` is scaled
    auto = vals["autoscaling"]
    scalers = autoscalers(objs)
    kinds = {
        "keda": ("ScaledObject", "prometheus"),
        "hpa-queue-depth": ("HorizontalPodAutoscaler", "Pods"),
        "cpu": ("HorizontalPodAutoscaler", "Resource"),
    }
    if auto["mode"] == "off":
        assert scalers == {} and api["spec"]["replicas"] == vals["api"]["replicas"]
    else:
        (scaler,) = scalers.values()
        assert scaler["spec"]["scaleTargetRef"]["name"] == fullname
        if scaler["kind"] == "ScaledObject":
            (trigger,) = scaler["spec"]["triggers"]
            got = (scaler["kind"], trigger["type"])
            assert float(trigger["metadata"]["threshold"]) == auto["targetQueueDepth"]
            assert scaler["spec"]["maxReplicaCount"] == auto["maxReplicas"]
        else:
            got = (scaler["kind"], scaler["spec"]["metrics"][0]["type"])
        assert got == kinds[auto["mode"]]
    assert bool(named(objs, "Ingress")) == vals["ingress"]["enabled"]
    # the settings reach every service container as the service reads them
    for work in workloads(objs).values():
        (container,) = pod_template(work)["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        for name, value in vals["settings"].items():
            expected = str(value).lower() if isinstance(value, bool) else str(value)
            assert env[PREFIX + name.upper()] == expected, name


def test_a_single_replica_gets_no_disruption_budget(tmp_path: Path) -> None:
    one = merged(ci_values("faiss"), {"autoscaling": {"mode": "off"}, "api": {"replicas": 1}})
    assert named(render(one, tmp_path), "PodDisruptionBudget") == {}
    two = merged(one, {"api": {"replicas": 2}})
    assert list(named(render(two, tmp_path), "PodDisruptionBudget")) == ["contrastive"]


def test_helm_refuses_values_that_would_deploy_something_broken(tmp_path: Path) -> None:
    refused = {
        "apiKeys.existingSecret": {},
        "qdrant.apiKey": {"mode": "qdrant", "apiKeys": {"keys": ["k"]}},
        "set qdrant.url": {
            "mode": "qdrant",
            "apiKeys": {"keys": ["k"]},
            "qdrant": {"deploy": False, "apiKey": {"value": "q"}},
        },
        "propertyName 'port'": {"apiKeys": {"keys": ["k"]}, "settings": {"port": 9000}},
        "autoscaling/mode": {"apiKeys": {"keys": ["k"]}, "autoscaling": {"mode": "memory"}},
    }
    for message, vals in refused.items():
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(vals))
        done = run_helm("template", "contrastive", str(CHART), "-f", str(path))
        assert done.returncode != 0, message
        assert message in done.stderr, done.stderr


def test_notes_name_the_objects_and_what_autoscaling_needs(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    for mode in ("keda", "hpa-queue-depth", "cpu", "off"):
        path.write_text(yaml.safe_dump(merged(ci_values("faiss"), {"autoscaling": {"mode": mode}})))
        done = run_helm("install", "prod", str(CHART), "-f", str(path), "--dry-run=client")
        assert done.returncode == 0, done.stderr
        notes = done.stdout.split("NOTES:", 1)[1]
        assert "prod-contrastive-index" in notes and f"Autoscaling: {mode}" in notes
        needs = {"keda": "KEDA", "hpa-queue-depth": "prometheus-adapter", "cpu": "metrics-server"}
        assert needs.get(mode, "replicas") in notes

"""The deployment files agree with the code.

Dockerfile, deploy/compose.yaml (and its Qdrant overlay compose.qdrant.yaml),
deploy/prometheus and deploy/k8s (FAISS mode; Qdrant mode in deploy/k8s/qdrant; the
autoscaling components in deploy/k8s/components) are parsed (no container engine or
cluster needed) and checked against what they name in the project: settings, the port, the
routes that probes and scrapers call, the metrics that autoscalers read, the command lines
(parsed by the real parsers), and the references between Kubernetes objects. The checks of
the service's objects live in manifests.py: the Helm chart's rendering passes them too
(test_helm.py).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.deploy.manifests import (
    AUTOSCALING_COMPONENTS,
    COMPONENTS,
    DEPLOY,
    K8S,
    KUSTOMIZATIONS,
    PREFIX,
    PROMETHEUS,
    QDRANT,
    QDRANT_COMPOSE,
    QUEUE_METRIC,
    ROOT,
    SERVICE_KUSTOMIZATIONS,
    SETTING_ENV_NAMES,
    SUBSTITUTION,
    TRAIN,
    UnsetVariableError,
    adapter_rule,
    autoscalers,
    check_autoscaling,
    check_collection_modes,
    check_command_lines,
    check_faiss_split,
    check_pods_non_root,
    check_ports,
    check_qdrant_mode,
    check_qdrant_routes,
    check_references,
    check_service_env,
    check_shutdown,
    compose,
    compose_env,
    container_env,
    container_port,
    dockerfile,
    dockerfile_env,
    duration_seconds,
    expand,
    exported_metrics,
    final_stage,
    folder_label,
    image_settings_env,
    interpolate,
    load,
    named,
    objects,
    pod_template,
    probe_paths,
    prometheus_job,
    promql_selectors,
    pyproject,
    resources,
    scaling_behavior,
    selects,
    serves_get,
    settings_from,
    stages,
    the_job,
    yaml_files,
)

# -- the checks ----------------------------------------------------------------------------


def test_every_yaml_file_parses_and_every_manifest_is_in_its_kustomization() -> None:
    files = yaml_files()
    assert DEPLOY / "compose.yaml" in files
    assert all(load(p) for p in files), "a YAML file under deploy/ holds no document"
    for folder in (*KUSTOMIZATIONS, *AUTOSCALING_COMPONENTS):
        listed = set(resources(folder))
        here = {p for p in folder.glob("*.y*ml") if p.name != "kustomization.yaml"}
        assert listed == here, f"{folder}: kustomization resources vs files"
        for obj in objects(folder):
            assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]
    # every folder of components/ is a Component, the overlays' alternatives
    assert sorted(p.parent for p in COMPONENTS.glob("*/kustomization.yaml")) == sorted(
        AUTOSCALING_COMPONENTS
    )
    for component in AUTOSCALING_COMPONENTS:
        (kustomization,) = load(component / "kustomization.yaml")
        assert kustomization["kind"] == "Component", component
    # the training Job is not applied with the service, nor the service with the Job; the
    # Qdrant mode is applied instead of the FAISS mode, never with it
    assert not {p.parent for p in resources(K8S)} & {TRAIN, QDRANT}
    assert {o["kind"] for o in objects(TRAIN)} == {"Job", "Service", "PersistentVolumeClaim"}
    assert DEPLOY / QDRANT_COMPOSE in files


def test_every_contrastive_env_name_is_a_setting_and_every_value_parses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = image_settings_env()
    sources = {"Dockerfile": image, "compose": {**image, **compose_env()}}
    shell = {"CONTRASTIVE_QDRANT_API_KEY": "k"}
    sources["compose qdrant"] = {**image, **compose_env(qdrant=True, shell=shell)}
    _, trainer = the_job()
    sources["k8s train"] = {**image, **container_env(objects(TRAIN), trainer)}

    used = {n for env in sources.values() for n in env if n.startswith(PREFIX)}
    assert used - SETTING_ENV_NAMES == set(), "not a field of contrastkit.service.settings.Settings"
    for label, env in sources.items():
        settings = settings_from(monkeypatch, env)  # raises on a value that does not parse
        assert settings.host == "0.0.0.0", label
        assert settings.port == 8000, label
    # the image's defaults are what the volume expects
    assert settings_from(monkeypatch, image).collections_dir == "/data/collections"
    # an empty CONTRASTIVE_API_KEYS (compose without keys) means no keys, not one empty key
    assert settings_from(monkeypatch, sources["compose"]).api_keys == []
    # the Kubernetes Deployments: names, string values, host, port, keys set
    envs = {}
    for folder in SERVICE_KUSTOMIZATIONS:
        envs.update(check_service_env(objects(folder), folder_label(folder), monkeypatch))
    assert set(envs) == {"k8s contrastive", "k8s contrastive-index", "k8s/qdrant contrastive"}


def test_ports_agree_with_contrastive_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = settings_from(monkeypatch, dockerfile_env()).port
    assert final_stage("EXPOSE") == [str(port)]
    assert compose_env()["CONTRASTIVE_PORT"] == str(port)
    published = [str(p).rsplit(":", 1)[-1] for p in compose()["services"]["contrastive"]["ports"]]
    assert published == [str(port)]
    assert prometheus_job()["static_configs"][0]["targets"] == [f"contrastive:{port}"]
    for folder in SERVICE_KUSTOMIZATIONS:
        check_ports(objects(folder), folder_label(folder), port)


def test_probes_healthcheck_and_scrape_paths_are_routes_of_the_app() -> None:
    app = create_app(Settings(collections=False))  # the model loads only in the lifespan
    paths = {}
    for folder in SERVICE_KUSTOMIZATIONS:
        paths.update(probe_paths(objects(folder), folder_label(folder)))

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
    from contrastkit.service.cli import build_parser

    parser = build_parser()
    (entrypoint,) = final_stage("ENTRYPOINT")
    (cmd,) = final_stage("CMD")
    assert json.loads(entrypoint) == ["tini", "--", "contrastive"]  # tini: PID 1, forwards signals
    assert pyproject()["project"]["scripts"]["contrastive"] == "contrastkit.service.cli:main"
    assert parser.parse_args(json.loads(cmd)).command == "serve"

    service = compose()["services"]["contrastive"]
    compose_args = service.get("command", json.loads(cmd))
    assert "entrypoint" not in service
    assert parser.parse_args(compose_args).command == "serve"

    for folder in SERVICE_KUSTOMIZATIONS:
        check_command_lines(objects(folder), folder_label(folder))


def test_training_job_command_line_parses_with_torchrun_and_the_training_cli(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from torch.distributed.run import get_args_parser

    from contrastkit.service.cli import build_parser as contrastive_parser
    from contrastkit.training.cli import build_training_parser as training_parser
    from contrastkit.training.commands.train import resolve

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
    assert run.module and run.training_script == "contrastkit.training"
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
        check_references(objects(folder), folder_label(folder))


AUTOSCALING_VARIANTS = [
    (folder, components)
    for folder in SERVICE_KUSTOMIZATIONS
    for components in ((), *((c,) for c in AUTOSCALING_COMPONENTS))
]


def _variant_id(variant: tuple[Path, tuple[Path, ...]]) -> str:
    folder, components = variant
    return " + ".join([folder_label(folder), *(c.name for c in components)])


@pytest.mark.parametrize("variant", AUTOSCALING_VARIANTS, ids=_variant_id)
def test_autoscaling_scales_only_the_stateless_replicas_on_what_they_export(
    variant: tuple[Path, tuple[Path, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, components = variant
    objs = objects(folder, components)
    label = _variant_id(variant)
    check_autoscaling(objs, label)
    check_references(objs, label)
    check_collection_modes(objs, label, monkeypatch)
    (scaler,) = autoscalers(objs).values()
    assert scaler["spec"]["scaleTargetRef"]["name"] == "contrastive"
    # by default the queue depth through KEDA; a component swaps in an HPA of the same name
    expected = {
        (): ("ScaledObject", "prometheus"),
        ("hpa-queue-depth",): ("HorizontalPodAutoscaler", "Pods"),
        ("hpa-cpu",): ("HorizontalPodAutoscaler", "Resource"),
    }[tuple(c.name for c in components)]
    if scaler["kind"] == "ScaledObject":
        got = (scaler["kind"], scaler["spec"]["triggers"][0]["type"])
    else:
        got = (scaler["kind"], scaler["spec"]["metrics"][0]["type"])
    assert got == expected
    assert scaler["metadata"]["name"] == "contrastive"


def test_the_autoscalers_agree_with_each_other_and_with_the_adapter_rule() -> None:
    """The two overlays' ScaledObjects and the components' HPAs: the same range, the same
    behaviour and (for the queue) the same target; the prometheus-adapter rule serves the
    gauge per pod, averaged over the window the KEDA query uses."""
    faiss, qdrant = (autoscalers(objects(f))["contrastive"] for f in SERVICE_KUSTOMIZATIONS)
    assert faiss["spec"] == qdrant["spec"]
    queue_hpa, cpu_hpa = (
        autoscalers(objects(K8S, (c,)))["contrastive"] for c in AUTOSCALING_COMPONENTS
    )
    for hpa in (queue_hpa, cpu_hpa):
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
            faiss["spec"]["minReplicaCount"],
            faiss["spec"]["maxReplicaCount"],
        )
        assert scaling_behavior(hpa) == scaling_behavior(faiss)
    (trigger,) = faiss["spec"]["triggers"]
    (metric,) = queue_hpa["spec"]["metrics"]
    assert float(metric["pods"]["target"]["averageValue"]) == float(
        trigger["metadata"]["threshold"]
    )

    rule = adapter_rule()
    ((name, matchers),) = promql_selectors(rule["seriesQuery"])
    assert name == QUEUE_METRIC and exported_metrics()[name] == "gauge"
    assert {(label, op, value) for label, op, value in matchers} == {
        ("namespace", "!=", ""),
        ("pod", "!=", ""),
    }
    overrides = rule["resources"]["overrides"]
    assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert re.fullmatch(rule["name"]["matches"].strip("^$"), QUEUE_METRIC)
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    window = re.compile(r"avg_over_time\(.*\}(\[\w+\])\)")
    (keda_window,) = window.findall(trigger["metadata"]["query"])
    (adapter_window,) = window.findall(rule["metricsQuery"])
    assert keda_window == adapter_window
    assert rule["metricsQuery"].startswith("sum(") and "by (<<.GroupBy>>)" in rule["metricsQuery"]
    # the adapter asks the Prometheus that KEDA asks
    (values,) = load(PROMETHEUS / "adapter-values.yaml")
    server = urlsplit(trigger["metadata"]["serverAddress"])
    adapter = urlsplit(values["prometheus"]["url"])
    assert (adapter.hostname, values["prometheus"]["port"]) == (server.hostname, server.port)


def test_every_metric_named_in_the_deploy_files_is_exported() -> None:
    """The names in Prometheus configs, autoscaler queries, adapter rules and the chart are
    names that the service's /metrics shows."""
    names: dict[str, set[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".tpl", ".txt", ".json"):
            for name in re.findall(r"\bcontrastive_[a-z_]+\b", path.read_text()):
                names.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert QUEUE_METRIC in names
    assert {n: where for n, where in names.items() if n not in exported_metrics()} == {}


def test_shutdown_fits_in_the_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in SERVICE_KUSTOMIZATIONS:
        check_shutdown(objects(folder), folder_label(folder), monkeypatch)
    s = settings_from(monkeypatch, {**dockerfile_env(), **compose_env()})
    grace = duration_seconds(compose()["services"]["contrastive"]["stop_grace_period"])
    assert grace > s.drain_seconds + s.graceful_timeout + 10
    assert final_stage("STOPSIGNAL") == ["SIGTERM"]


def test_pods_run_as_the_images_non_root_user() -> None:
    for folder in KUSTOMIZATIONS:
        check_pods_non_root(objects(folder), folder_label(folder))


def test_ingress_sends_collections_to_the_single_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    check_faiss_split(objects(K8S), "k8s", monkeypatch)


def test_replicas_above_one_only_where_collections_live_in_qdrant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FAISS is one writer process per folder; with Qdrant the pods hold no collections."""
    modes = {}
    for folder in SERVICE_KUSTOMIZATIONS:
        label = folder_label(folder)
        for name, backend in check_collection_modes(objects(folder), label, monkeypatch).items():
            modes[f"{label} {name}"] = backend
    assert modes == {"k8s contrastive-index": "faiss", "k8s/qdrant contrastive": "qdrant"}
    # in Qdrant mode every path, /v1/collections included, reaches such replicas
    check_qdrant_routes(objects(QDRANT), "k8s/qdrant", monkeypatch)


def test_qdrant_mode_talks_to_the_qdrant_it_deploys(monkeypatch: pytest.MonkeyPatch) -> None:
    check_qdrant_mode(objects(QDRANT), "k8s/qdrant", monkeypatch)


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
            return subprocess.run([bash, "-c", script], capture_output=True, timeout=60).returncode

        assert check() == 0
        server.status = 503  # type: ignore[attr-defined]
        assert check() != 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert subprocess.run([bash, "-c", script], capture_output=True, timeout=60).returncode != 0

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

    # The README's install commands, and the image's: run the build stage's RUN lines in sh
    # with pip and python replaced by echo, for each variant.
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    cpu_torch, serve = blocks[0], blocks[1]  # the top: CPU-only torch, then the project
    assert shlex.split(cpu_torch.split("#")[0]) == [
        "pip", "install", "torch", "torchvision", "--index-url",
        "https://download.pytorch.org/whl/cpu",
    ]  # fmt: skip
    assert "contrastive serve" in serve
    readme_install = shlex.split(serve.split("&&")[0])
    assert readme_install == ["pip", "install", "-e", ".[cpu]"]

    build_runs = [re.sub(r"^(--\S+\s+)*", "", rest) for w, rest in stages()[0] if w == "RUN"]
    stub = 'pip() { echo "pip $*"; }; python() { :; }; '
    pip_calls = {}
    for variant, extras in [("cpu", ""), ("cuda", ""), ("cuda", "onnx,otel")]:
        calls = []
        for run in build_runs:
            script = f"{stub}VARIANT={variant}; EXTRAS={extras}; {run}"
            done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
            calls += done.stdout.splitlines()
        pip_calls[variant + (f"+{extras}" if extras else "")] = calls
    requirements = {r.split(">=")[0]: r for r in project["dependencies"]}
    torch_specs = f"{requirements['torch']} {requirements['torchvision']}"
    assert pip_calls["cpu"] == [
        f"pip install --index-url https://download.pytorch.org/whl/cpu {torch_specs}",
        "pip install .[cpu]",  # = the README's `pip install -e '.[cpu]'`, not editable
    ]
    # faiss-gpu instead of faiss-cpu: no FAISS in the base, so nothing to remove by hand
    assert pip_calls["cuda"] == [f"pip install {torch_specs}", "pip install .[gpu]"]
    assert pip_calls["cuda+onnx,otel"][1] == "pip install .[gpu,onnx,otel]"
    # ... and the sources it installs are copied in, and not excluded by .dockerignore
    copied = {p for w, rest in stages()[0] if w == "COPY" for p in rest.split()[:-1]}
    ignore = (ROOT / ".dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert {"pyproject.toml", "setup.py", "README.md", "service", "training"} <= copied <= allowed

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
    for folder in ("service", "training"):
        globs = package_data.get(f"contrastkit.{folder}", [])  # the folder's import name
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or path.suffix in (".py", ".pyc", ".pyo"):
                continue
            name = path.relative_to(ROOT / folder).as_posix()
            if not any(fnmatch.fnmatch(name, g) for g in globs):
                missing.append(f"{folder}/{name}")
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


KUSTOMIZE_BUILDS = [(folder, ()) for folder in KUSTOMIZATIONS] + [
    v for v in AUTOSCALING_VARIANTS if v[1]
]


@pytest.mark.parametrize("variant", KUSTOMIZE_BUILDS, ids=_variant_id)
def test_kustomize_builds_what_the_files_say(
    variant: tuple[Path, tuple[Path, ...]], tmp_path: Path
) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    folder, components = variant
    # a copy of deploy/k8s (the components are beside the overlays), with the committed
    # examples standing in for git-ignored env files, and the components listed
    shutil.copytree(K8S, tmp_path / "k8s")
    work = tmp_path / folder.relative_to(DEPLOY)
    for example in work.glob("*.env.example"):
        real = example.with_name(example.name.removesuffix(".example"))
        if not real.exists():
            shutil.copy(example, real)
    if components:
        kustomization = work / "kustomization.yaml"
        listed = [os.path.relpath(tmp_path / c.relative_to(DEPLOY), work) for c in components]
        text = kustomization.read_text() + yaml.safe_dump({"components": listed})
        kustomization.write_text(text)
    command = [kubectl, "kustomize", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d is not None]

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    assert sorted(built, key=key) == sorted(objects(folder, components), key=key)

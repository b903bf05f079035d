"""deploy/k8s/ray: the RayJob's command and the Indexed Job's parse with `contrastive
embed`, and the cluster agrees with them (one actor per GPU worker; the input at the same
path on the head and on every worker; the output only where the driver runs)."""

from __future__ import annotations

import shlex
from typing import Any

from contrastkit.service.cli import build_parser
from tests.deploy.manifests import K8S, load

RAY = K8S / "ray"


def _mounts(pod: dict[str, Any]) -> dict[str, str]:
    """claim name -> mount path in the pod's first container."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    return {claims[m["name"]]: m["mountPath"] for m in mounts if m["name"] in claims}


def test_the_rayjob_runs_embed_on_one_actor_per_gpu_worker() -> None:
    (job,) = load(RAY / "rayjob-embed.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "contrastive"
    args = build_parser(["embed"]).parse_args(argv[1:])
    assert args.command == "embed" and args.ray == "auto"

    cluster = job["spec"]["rayClusterSpec"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"]
    assert args.actors == workers["replicas"]
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no actor there

    head = _mounts(cluster["headGroupSpec"]["template"])
    on_workers = _mounts(workers["template"])
    assert args.input.startswith(head["contrastive-embed-input"] + "/")
    assert on_workers["contrastive-embed-input"] == head["contrastive-embed-input"]
    assert args.out.startswith(head["contrastive-embed-output"] + "/")
    assert "contrastive-embed-output" not in on_workers  # the driver is the one writer


def test_the_indexed_job_gives_each_index_its_shards_and_folder() -> None:
    (job,) = load(RAY / "job-embed-indexed.yaml")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 10
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"] for e in container["env"]}
    assert "JOB_COMPLETION_INDEX" in env
    outs = set()
    for index in range(10):
        argv = [a.replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in container["args"]]
        args = build_parser(["embed"]).parse_args(argv)
        assert args.command == "embed" and args.ray is None
        assert args.input.endswith(f"*{index}.tar")  # the shards whose number ends in it
        outs.add(args.out)
    assert len(outs) == 10  # a folder (a manifest) per index
    claims = {(c["metadata"]["name"]) for c in load(RAY / "pvc.yaml")}
    assert set(_mounts(job["spec"]["template"])) == claims

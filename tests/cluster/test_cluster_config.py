"""serve_app/configs/cluster.yaml and the cluster manifests that run it: placement by custom
resources, the token from a secret on every serving or writing pod, one index definition."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "serve_app" / "configs" / "cluster.yaml"
LOCAL_YAML = ROOT / "serve_app" / "configs" / "local.yaml"
RAYSERVICE = ROOT / "cluster" / "rayservice.yaml"
LAUNCHER = ROOT / "cluster" / "ray-cluster.yaml"
INGEST_JOB = ROOT / "cluster" / "ingest-job.yaml"
SECRET = {"secretKeyRef": {"name": "irene-api", "key": "token"}}


@pytest.fixture(scope="module")
def cluster_cfg() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


def _args(cfg: dict):
    from serve_app.app import resolve_args

    (app,) = cfg["applications"]
    return resolve_args(app["args"], environ={})  # unknown keys would raise


def test_cluster_yaml_is_a_serve_config_for_many_nodes(cluster_cfg):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(cluster_cfg)
    assert cluster_cfg["proxy_location"] == "EveryNode"
    assert cluster_cfg["http_options"]["host"] == "0.0.0.0"
    (app,) = cluster_cfg["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    args = _args(cluster_cfg)
    # shared storage: a shard actor restarted on another node restores from there
    assert args.bundle.startswith("s3://") and args.index_uri.startswith("s3://")
    assert args.index.n_owners > 1 and args.index.num_cpus > 0
    assert args.index.resources == {"index": 1}
    # the token comes from each node's environment, never from the file
    assert args.auth.token is None and args.auth.token_env == "IRENE_API_TOKEN"
    assert "token" not in app["args"]["auth"]
    assert not args.auth.allow_unauthenticated_writes


def test_cluster_yaml_places_the_request_path_on_encoder_nodes(cluster_cfg):
    args = _args(cluster_cfg)
    (app,) = cluster_cfg["applications"]
    deps = {d["name"]: d for d in app["deployments"]}
    assert args.encoder_placement == "deployment"
    assert set(deps) == {"Ingress", "Encoder", "Generator"}
    for name, dep in deps.items():
        assert dep["ray_actor_options"]["resources"] == {"encoder": 1}, name
        assert dep["max_ongoing_requests"] >= 64
    assert deps["Encoder"]["ray_actor_options"]["num_gpus"] > 0
    # ShardReader replicas (a copy of one shard each) on the index nodes
    assert args.index.shard_readers
    reader = args.deployment_options["ShardReader"]
    assert reader["ray_actor_options"]["resources"] == {"index_reader": 1}


def test_cluster_yaml_keeps_the_args_schema_of_local_yaml(cluster_cfg):
    local = yaml.safe_load(LOCAL_YAML.read_text())
    (c_app,) = cluster_cfg["applications"]
    (l_app,) = local["applications"]
    assert c_app["import_path"] == l_app["import_path"]
    assert c_app["name"] == l_app["name"] and c_app["route_prefix"] == l_app["route_prefix"]
    # the same keys for the same things (a cluster adds keys; it renames none)
    assert set(c_app["args"]) >= set(l_app["args"]) - {"threads"}
    assert set(c_app["args"]["index"]) >= set(l_app["args"]["index"]) - {"lease_s"}


def test_rayservice_serves_cluster_yaml(rayservice, cluster_cfg):
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == cluster_cfg


def _containers(rayservice: dict) -> dict[str, dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]["spec"]["containers"][0]}
    for g in cluster["workerGroupSpecs"]:
        out[g["groupName"]] = g["template"]["spec"]["containers"][0]
    return out


def _token_env(container: dict) -> dict | None:
    return next((e for e in container.get("env", []) if e["name"] == "IRENE_API_TOKEN"), None)


def test_every_pod_gets_the_token_from_the_secret(rayservice):
    containers = _containers(rayservice)
    assert set(containers) == {"head", "gpu", "index"}
    for name, c in containers.items():
        env = _token_env(c)
        assert env is not None, f"{name} pods lack IRENE_API_TOKEN"
        assert env["valueFrom"] == SECRET and "value" not in env, name
    job = yaml.safe_load(INGEST_JOB.read_text())
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = _token_env(c)
    assert env is not None and env["valueFrom"] == SECRET and "value" not in env


def test_node_groups_advertise_the_resources_the_app_asks_for(rayservice, cluster_cfg):
    args = _args(cluster_cfg)
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["rayStartParams"]
    assert "resources" not in head and head["num-cpus"] == "0"  # controller + proxy only
    groups = {
        g["groupName"]: (g, json.loads(json.loads(g["rayStartParams"]["resources"])))
        for g in cluster["workerGroupSpecs"]
    }
    gpu, gpu_res = groups["gpu"]
    index, index_res = groups["index"]
    assert set(gpu_res) == {"encoder"} and gpu_res["encoder"] >= 1
    assert set(index_res) == {"index", "index_reader"}
    # every shard actor fits on the index pods that always run, with one pod to spare for
    # the shard actors of a lost pod
    per_pod = index_res["index"]
    assert index["minReplicas"] * per_pod >= args.index.n_owners + per_pod
    assert index_res["index_reader"] * index["minReplicas"] >= args.index.n_owners


def test_launcher_node_types_advertise_the_resources_and_export_the_token(cluster_cfg):
    launcher = yaml.safe_load(LAUNCHER.read_text())
    types = launcher["available_node_types"]
    assert types[launcher["head_node_type"]]["resources"] == {}
    assert types["gpu_worker"]["resources"]["encoder"] >= 1
    assert {"index", "index_reader"} <= set(types["index_worker"]["resources"])
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    for cmd in (c for c in starts if "ray start" in c):
        assert cmd.index("export IRENE_API_TOKEN=") < cmd.index("ray start"), cmd
    assert "~/.irene/api_token" in launcher["file_mounts"]


def test_ingest_job_writes_the_index_the_app_serves(cluster_cfg):
    """The Job's `--set ingest.index=...` is the app's args.index + index_uri exactly (a shard
    actor found running with other settings is an error)."""
    from irene.config import load_config

    job = yaml.safe_load(INGEST_JOB.read_text())
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert any(e["name"] == "RAY_ADDRESS" for e in c["env"])
    script = c["args"][0].replace("\\\n", " ")
    line = next(ln for ln in script.splitlines() if "pipelines.ingest" in ln)
    words = shlex.split(line)
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    index_set = [s for s in sets if s.startswith("ingest.index=")]
    assert len(index_set) == 1
    cfg = load_config(None, index_set, bundle=words[words.index("--bundle") + 1])
    args = _args(cluster_cfg)
    assert cfg.ingest.index == args.index
    assert cfg.bundle == args.bundle

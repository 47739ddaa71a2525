"""The cluster launcher YAML against Ray's autoscaler schema; the RayService's structure."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "cluster" / "ray-cluster.yaml"
RAYSERVICE = ROOT / "cluster" / "rayservice.yaml"


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


def test_launcher_matches_ray_json_schema(launcher):
    import jsonschema
    import ray.autoscaler

    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(schema_path) as f:
        schema = json.load(f)
    jsonschema.validate(launcher, schema)


def test_launcher_passes_ray_validate_config_after_defaults(launcher):
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(launcher))  # merges the AWS provider defaults
    validate_config(full)
    assert full["provider"]["type"] == "aws"


def test_launcher_has_head_and_autoscaling_gpu_group(launcher):
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    workers = [t for name, t in types.items() if name != launcher["head_node_type"]]
    gpu = [t for t in workers if "index" not in t["resources"]]
    assert len(gpu) == 1
    group = gpu[0]
    assert 0 <= group["min_workers"] <= group["max_workers"] <= launcher["max_workers"]
    assert group["max_workers"] > group["min_workers"]  # it can scale
    assert group["node_config"]["InstanceType"].startswith(("g4", "g5", "g6", "p3", "p4", "p5"))
    (index,) = [t for t in workers if "index" in t["resources"]]  # shard actors' nodes
    assert index["max_workers"] > index["min_workers"] and index["resources"]["index"] >= 1
    setup = " ".join(launcher["setup_commands"])
    assert "irene[gpu]" in setup
    assert any("ray start --head" in c for c in launcher["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP" in c for c in launcher["worker_start_ray_commands"])


def test_launcher_schema_rejects_a_broken_config(launcher):
    """The schema check is real: a wrong type is caught."""
    import jsonschema
    import ray.autoscaler

    bad = copy.deepcopy(launcher)
    bad["available_node_types"]["gpu_worker"]["min_workers"] = "one"
    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(schema_path) as f, pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.load(f))


def test_rayservice_structure(rayservice):
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert rayservice["kind"] == "RayService"
    assert rayservice["metadata"]["name"]
    spec = rayservice["spec"]
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = cluster["workerGroupSpecs"]
    assert {g["groupName"] for g in groups} == {"gpu", "index"}
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert g["maxReplicas"] > g["minReplicas"]
        c = g["template"]["spec"]["containers"][0]
        assert c["image"] == head["template"]["spec"]["containers"][0]["image"]
        if g["groupName"] == "gpu":
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        else:  # the shard actors' pods advertise the resource the actors ask for
            res = json.loads(json.loads(g["rayStartParams"]["resources"]))
            assert res["index"] >= 1 and res["index_reader"] >= 1  # + ShardReaders


def test_rayservice_serve_config_is_a_valid_serve_config(rayservice):
    from ray.serve.schema import ServeDeploySchema

    from serve_app.app import resolve_args

    serve_cfg = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_cfg)  # Ray's own Serve config schema
    apps = serve_cfg["applications"]
    assert [a["import_path"] for a in apps] == ["serve_app.app:build_app"]
    args = resolve_args(apps[0]["args"], environ={})  # unknown keys would raise
    assert args.bundle.startswith("s3://") and args.index_uri.startswith("s3://")
    deps = {d["name"]: d for d in apps[0]["deployments"]}
    assert set(deps) == {"Ingress", "Encoder", "Generator"}
    for name in ("Encoder", "Generator"):
        auto = deps[name]["autoscaling_config"]
        assert auto["min_replicas"] >= 1 and auto["min_replicas"] < auto["max_replicas"]
    assert deps["Encoder"]["ray_actor_options"]["num_gpus"] > 0
    assert args.index.n_owners > 1 and args.index.resources == {"index": 1}
    # queries fan out to one copy of each shard: ShardReader replicas on the index nodes
    assert args.index.shard_readers and not args.index.copies_in_replica
    reader = args.deployment_options["ShardReader"]
    assert reader["ray_actor_options"]["resources"] == {"index_reader": 1}
    assert (
        reader["autoscaling_config"]["max_replicas"] > reader["autoscaling_config"]["min_replicas"]
    )
    assert all(d["max_ongoing_requests"] >= 64 for d in deps.values())

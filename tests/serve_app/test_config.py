"""App args, limits and auth rules, without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.app import resolve_args
from serve_app.auth import AuthError, TokenAuth
from serve_app.schemas import (
    AuthSettings,
    IngestRequest,
    InputError,
    QueryRequest,
    ServeLimits,
    check_ingest,
    check_query,
)

LOCAL_YAML = Path(__file__).resolve().parents[2] / "serve_app" / "configs" / "local.yaml"


def test_local_yaml_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    cfg = yaml.safe_load(LOCAL_YAML.read_text())
    ServeDeploySchema.model_validate(cfg)
    assert cfg["http_options"] == {"host": "127.0.0.1", "port": 8000}
    (app,) = cfg["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    args = resolve_args(app["args"], environ={})
    assert args.bundle.endswith("runs/bundle") and Path(args.bundle).is_absolute()
    deps = {d["name"]: d for d in app["deployments"]}
    # the encoder runs in the Ingress here, so there is no Encoder deployment to configure
    assert args.encoder_placement == "ingress" and set(deps) == {"Ingress", "Generator"}
    for name in ("Ingress", "Generator"):
        auto = deps[name]["autoscaling_config"]
        assert auto["min_replicas"] == 1 and 2 <= auto["max_replicas"] <= 4
        assert 0 < deps[name]["ray_actor_options"]["num_cpus"] < 1
    assert all(d["max_ongoing_requests"] >= 64 for d in deps.values())


def test_irene_bundle_env_overrides_args():
    args = resolve_args({"bundle": "runs/bundle"}, environ={"IRENE_BUNDLE": "s3://b/bundle"})
    assert args.bundle == "s3://b/bundle"
    assert resolve_args({}, environ={}).bundle.endswith("runs/bundle")


def test_unknown_args_are_errors():
    with pytest.raises(ValidationError):
        resolve_args({"bundel": "x"}, environ={})
    with pytest.raises(ValidationError):
        resolve_args({"limits": {"max_kk": 3}}, environ={})
    with pytest.raises(ValidationError):
        ServeLimits(max_k=5, default_k=10)


def test_auth_rules():
    env_auth = TokenAuth(AuthSettings(token="from-config"), environ={"IRENE_API_TOKEN": "from-env"})
    env_auth.check("from-env", write=True)  # the environment wins over the config
    with pytest.raises(AuthError) as e:
        env_auth.check("from-config", write=True)
    assert e.value.status == 403
    with pytest.raises(AuthError) as e:
        env_auth.check(None, write=True)
    assert e.value.status == 401
    env_auth.check(None, write=False)  # reads are open by default

    protected = TokenAuth(AuthSettings(token="t", protect_reads=True), environ={})
    with pytest.raises(AuthError) as e:
        protected.check(None, write=False)
    assert e.value.status == 401
    protected.check("t", write=False)

    no_token = TokenAuth(AuthSettings(), environ={})
    with pytest.raises(AuthError) as e:
        no_token.check("anything", write=True)
    assert e.value.status == 403 and "no API token is configured" in e.value.message
    no_token.check(None, write=False)
    TokenAuth(AuthSettings(allow_unauthenticated_writes=True), environ={}).check(None, write=True)


def test_limit_checks():
    limits = ServeLimits(
        max_text_chars=10, max_items_per_request=2, max_texts_per_query=2, max_k=5, default_k=5
    )

    def ingest(items):
        return IngestRequest(items=[{"id": i, "text": t} for i, t in items])

    check_ingest(ingest([("a", "x"), ("b", "y")]), limits)
    cases = [
        (ingest([]), 422),
        (ingest([("a", "x"), ("b", "y"), ("c", "z")]), 413),
        (ingest([("a", " ")]), 422),
        (ingest([("a", "x" * 11)]), 413),
        (ingest([("a", "x"), ("a", "y")]), 422),
    ]
    for req, status in cases:
        with pytest.raises(InputError) as e:
            check_ingest(req, limits)
        assert e.value.status == status

    assert check_query(QueryRequest(text="hi"), limits) == (["hi"], 5)
    assert check_query(QueryRequest(texts=["a", "b"], k=2), limits) == (["a", "b"], 2)
    bad = [
        (QueryRequest(), 422),
        (QueryRequest(text="a", texts=["b"]), 422),
        (QueryRequest(texts=[]), 422),
        (QueryRequest(texts=["a", "b", "c"]), 413),
        (QueryRequest(text=""), 422),
        (QueryRequest(text="a", k=0), 422),
        (QueryRequest(text="a", k=6), 422),
    ]
    for req, status in bad:
        with pytest.raises(InputError) as e:
            check_query(req, limits)
        assert e.value.status == status

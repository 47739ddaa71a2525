"""Running on a multi-node Ray cluster: shared storage for training, deploying a Serve config.

``check_shared_storage(uri)``: on a cluster of more than one alive node, a location every
stage writes and reads (``irene train``'s ``work_dir``, Ray Train's storage) must be one that
every node sees. ``s3://`` is; a local path is accepted only if each alive node reads back
the marker this driver wrote there (a tiny task pinned to each node with
``NodeAffinitySchedulingStrategy``); otherwise :class:`SharedStorageError` names the nodes
that cannot see it. One node: nothing is checked.

``deploy_serve_config(config)``: what ``serve run CONFIG`` / ``serve deploy CONFIG`` do with
a Serve config file (start Serve with its ``http_options`` and ``proxy_location``, submit
its applications), for ``irene serve``; ``wait_serve_ready`` waits until each application
is RUNNING and its ``/readyz`` answers.

Ray is imported inside the functions (``import irene.ray.cluster`` does not import it).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from irene import io

log = logging.getLogger(__name__)

MARKER_PREFIX = ".irene-shared-"
SHARED_STORAGE_HINT = (
    "pass --work-dir on storage every node sees: an s3:// prefix, or a shared filesystem "
    "(NFS, EFS, ...) mounted at the same path on every node"
)


class SharedStorageError(ValueError):
    """A location that the stages of a multi-node run would not all see."""


@dataclass(frozen=True)
class Node:
    node_id: str
    ip: str
    is_head: bool

    def describe(self) -> str:
        return f"{self.ip} ({'head, ' if self.is_head else ''}node {self.node_id[:12]})"


def alive_nodes() -> list[Node]:
    """The cluster's alive nodes (the connected Ray), head first."""
    import ray

    nodes = [
        Node(n["NodeID"], n.get("NodeManagerAddress", "?"), _is_head(n))
        for n in ray.nodes()
        if n.get("Alive")
    ]
    return sorted(nodes, key=lambda n: (not n.is_head, n.ip, n.node_id))


def _is_head(node: dict) -> bool:
    return any(k == "node:__internal_head__" for k in node.get("Resources", {}))


def _probe(path: str, token: str) -> tuple[str, str | None]:
    """On one node: (this node's id, None if ``path`` holds ``token``, else why not)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    try:
        with open(path, encoding="utf-8") as f:
            found = f.read().strip()
    except FileNotFoundError:
        return node, "the path does not exist there"
    except OSError as e:
        return node, f"cannot read it there: {e.strerror or e}"
    if found != token:
        return node, "a different file is at that path there (a disk of its own, not shared)"
    return node, None


def probe_nodes(
    path: str, token: str, nodes: list[Node], timeout_s: float
) -> dict[str, str | None]:
    """Run :func:`_probe` once on each of ``nodes`` (a task pinned to it, no CPU asked);
    node id -> None (it read ``token`` at ``path``) or the reason it did not."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(_probe)
    refs = {
        probe.options(
            num_cpus=0,
            max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False),
        ).remote(path, token): n
        for n in nodes
    }
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in late:  # a node that never ran its probe: do not leave the task queued
        ray.cancel(ref, force=True)
    out: dict[str, str | None] = {n.node_id: f"no answer within {timeout_s:.0f} s" for n in nodes}
    for ref in ready:
        node = refs[ref]
        try:
            ran_on, reason = ray.get(ref)
        except Exception as e:  # the node died, the task could not run there
            out[node.node_id] = f"the check failed there: {type(e).__name__}: {e}"
            continue
        if ran_on != node.node_id:  # cannot happen with a hard affinity; never pass silently
            reason = f"the check ran on node {ran_on[:12]} instead"
        out[node.node_id] = reason
    return out


def check_shared_storage(
    uri: str, what: str = "work_dir", hint: str = SHARED_STORAGE_HINT, timeout_s: float = 60.0
) -> int:
    """Raise :class:`SharedStorageError` unless every alive node of the connected Ray cluster
    sees ``uri`` (see the module docstring); returns the number of nodes checked (0: one
    node or ``s3://``, nothing to check). ``uri`` must exist and be writable here."""
    if io.is_s3(uri):
        return 0
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return 0
    token = uuid.uuid4().hex
    marker = io.join(uri, f"{MARKER_PREFIX}{token[:12]}")
    io.makedirs(uri)
    io.write_text(marker, token + "\n")
    try:
        t0 = time.perf_counter()
        verdict = probe_nodes(marker, token, nodes, timeout_s)
    finally:
        io.delete(marker)
    blind = [(n, verdict[n.node_id]) for n in nodes if verdict[n.node_id] is not None]
    if blind:
        listed = "; ".join(f"{n.describe()}: {why}" for n, why in blind)
        raise SharedStorageError(
            f"{what} {uri} is not on shared storage: {len(blind)} of the cluster's "
            f"{len(nodes)} nodes cannot see it ({listed}); {hint}"
        )
    log.info(
        "%s %s is seen by all %d nodes (checked in %.1f s)",
        what,
        uri,
        len(nodes),
        time.perf_counter() - t0,
    )
    return len(nodes)


# ---------------------------------------------------------------------------------- serving
def deploy_serve_config(config: dict[str, Any]) -> list[str]:
    """Deploy a Serve config (the dict of a ``serve run`` / ``serve deploy`` YAML file) on the
    connected Ray: start Serve with the file's ``http_options``, ``proxy_location``,
    ``grpc_options`` and ``controller_options`` (a running Serve keeps its own), then submit
    its applications; returns their names. Raises ``pydantic.ValidationError`` on a bad
    file (Ray's own ``ServeDeploySchema``)."""
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        controller_options=schema.controller_options,
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema, _blocking=False)
    return [app.name for app in schema.applications]


def serve_urls(config: dict[str, Any]) -> dict[str, str]:
    """Application name -> its base URL (``http://HOST:PORT/PREFIX``); a wildcard host
    (0.0.0.0 / ::) is shown as the head node's address (every node answers with EveryNode)."""
    http = config.get("http_options") or {}
    host = http.get("host") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        heads = [n for n in alive_nodes() if n.is_head]
        host = heads[0].ip if heads else "127.0.0.1"
    port = int(http.get("port") or 8000)
    out = {}
    for app in config.get("applications") or []:
        prefix = (app.get("route_prefix") or "/").rstrip("/")
        out[app.get("name") or "default"] = f"http://{host}:{port}{prefix}"
    return out


class ServeDeployError(RuntimeError):
    pass


def wait_serve_ready(
    names: list[str],
    urls: dict[str, str] | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 1.0,
) -> None:
    """Wait until every application in ``names`` is RUNNING and, for those in ``urls``,
    ``GET URL/readyz`` answers 200 (404: the app has no such route, RUNNING is enough).
    Raises :class:`ServeDeployError` when one fails to deploy, ``TimeoutError`` after
    ``timeout_s``."""
    import httpx
    from ray import serve

    deadline = time.monotonic() + timeout_s
    pending = list(names)
    while pending:
        apps = serve.status().applications
        for name in list(pending):
            st = apps.get(name)
            status = str(getattr(st, "status", "")) if st else ""
            if "DEPLOY_FAILED" in status:
                raise ServeDeployError(f"application {name!r} {status}: {st.message}")
            if "RUNNING" in status and _ready(httpx, (urls or {}).get(name)):
                pending.remove(name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"applications {pending} not ready after {timeout_s:.0f} s")
        time.sleep(poll_s)


def _ready(httpx, url: str | None) -> bool:
    if not url:
        return True
    try:
        r = httpx.get(f"{url}/readyz", timeout=5.0)
    except httpx.HTTPError:
        return False
    return r.status_code in (200, 404)


def delete_serve_apps(names: list[str], wait_s: float = 60.0) -> bool:
    """Delete these Serve applications (their replicas; detached actors such as the index's
    shard actors stay), waiting at most ``wait_s`` for Serve to confirm; whether it did (a
    cluster that is going down with this process may never answer)."""
    import threading

    from ray import serve

    def delete() -> None:
        for name in names:
            try:
                serve.delete(name)
            except Exception as e:  # already gone, Serve shut down
                log.warning("could not delete application %s: %s", name, e)

    thread = threading.Thread(target=delete, daemon=True)
    thread.start()
    thread.join(wait_s)
    if thread.is_alive():
        log.warning("Serve did not confirm deleting %s within %.0f s", names, wait_s)
        return False
    return True


def check_work_dirs(cfg, hint: str = SHARED_STORAGE_HINT) -> None:
    """On a Ray cluster of more than one node, ``cfg.work_dir`` (and Ray Train's storage) must
    be storage every node sees (:func:`check_shared_storage`); raises ``SharedStorageError``
    (a ValueError) naming the nodes that cannot see it. Connects to ``ray.address`` (or the
    job's cluster, or starts a local Ray) as the executor would."""
    from irene.ray import ensure_ray

    ensure_ray(cfg.ray.address or None)
    check_shared_storage(cfg.work_dir, "work_dir", hint)
    storage = cfg.storage()
    if not io.is_s3(storage) and not storage.startswith(cfg.work_dir.rstrip("/") + "/"):
        check_shared_storage(
            storage, "ray.storage_path", "set ray.storage_path to an s3:// prefix or a shared mount"
        )

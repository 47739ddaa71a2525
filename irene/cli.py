"""The ``irene`` command line (typer). Every command reads the one :class:`irene.config.Config`
(``--config FILE.yaml`` plus ``--set key=value`` overrides; options are shorthands for keys)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="IRENE: classifiers for novel items."
)
data_app = typer.Typer(no_args_is_help=True, help="Build datasets in the XC raw text format.")
app.add_typer(data_app, name="data")
oracle_app = typer.Typer(no_args_is_help=True, help="LLM relevance oracle and its distillation.")
app.add_typer(oracle_app, name="oracle")
token_app = typer.Typer(
    no_args_is_help=True, help="API tokens of the serving app: new tokens and their hashed entries."
)
app.add_typer(token_app, name="token")

CONFIG_HELP = "YAML config (irene.config.Config; local or s3://)"
SET_HELP = "override, e.g. train.generator.epochs=3 (repeatable)"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _config(config: str | None, overrides: list[str], dotted: dict | None = None, **values):
    """The Config of a command: file, ``--set`` overrides, option shorthands (``dotted``:
    key -> value, None = not given), then top-level ``values``. Exit code 2 on a bad config."""
    from irene.config import ConfigError, load_config

    extra = [f"{k}={json.dumps(v)}" for k, v in (dotted or {}).items() if v is not None]
    try:
        return load_config(config, [*extra, *overrides], **values)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


@data_app.command("wordnet")
def data_wordnet(
    out_dir: str = typer.Argument(..., help="output directory (local or s3://)"),
    wordnet_dir: str = typer.Option("/usr/share/wordnet", help="wordnet-base database dir"),
    seed: int = typer.Option(0),
    max_queries: int | None = typer.Option(None, help="seeded subsample of queries"),
    new_items: int = typer.Option(2000, help="non-label synsets written to new_items.jsonl"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Build the WordNet noun-hypernym dataset (queries: synsets, labels: hypernyms <= 2 hops):
    the XC files plus catalogue.parquet, interactions.parquet, eval_interactions.parquet,
    Y_ids.txt and new_items.jsonl."""
    _setup_logging(verbose)
    from irene.data.wordnet import write_wordnet

    ds = write_wordnet(
        out_dir, new_items=new_items, wordnet_dir=wordnet_dir, seed=seed, max_queries=max_queries
    )
    typer.echo(json.dumps(ds.stats(), indent=2))


@app.command()
def benchmark(
    data_dir: str = typer.Argument(..., help="XC-format dataset directory (local or s3://)"),
    out: str = typer.Option(..., "--out", help="output directory (results, artifacts)"),
    config: str | None = typer.Option(None, help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    seed: int | None = typer.Option(None, help="seed of the split and of every stage"),
    seeds: str | None = typer.Option(None, help="comma-separated seeds: mean and spread"),
    validation: float | None = typer.Option(
        None, help="run on a validation slice of train (fraction of the train queries)"
    ),
    setting: str = typer.Option(
        "zero-shot", help="zero-shot (seen/novel split, five arms) | ezxmc (no training labels)"
    ),
    executor: str = typer.Option("local", help="local | ray"),
    max_docs: int | None = typer.Option(None, help="ezxmc: training documents to label"),
    shortlist: int | None = typer.Option(None, help="ezxmc: labels per document for the oracle"),
    oracle_cache: str | None = typer.Option(None, help="ezxmc: sqlite answer cache path"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """The zero-shot protocol (five arms + the seen diagnostic) or, with --setting ezxmc, the
    no-label protocol (encoder, pseudo_labels, llm_oracle); writes results.json + results.md."""
    _setup_logging(verbose)
    from irene.config import with_seed

    dotted = {
        "train.split.validation_fraction": validation,
        "distill.max_docs": max_docs,
        "distill.shortlist": shortlist,
        "oracle.cache_path": oracle_cache,
    }
    cfg = _config(config, set_, dotted, data=data_dir, executor=executor)
    if seed is not None:
        cfg = with_seed(cfg, seed)
    if setting == "ezxmc":
        from irene.oracle.ezxmc import ezxmc_markdown, run_ezxmc

        typer.echo(ezxmc_markdown(run_ezxmc(cfg, out)))
        return
    if setting != "zero-shot":
        raise typer.BadParameter(f"unknown setting {setting!r}: zero-shot | ezxmc")
    from irene.benchmark import run_benchmark, run_seeds, summary_markdown
    from irene.eval.protocol import results_markdown

    if seeds:
        summary = run_seeds(cfg, out, [int(s) for s in seeds.split(",")])
        typer.echo(summary_markdown(summary))
    else:
        typer.echo(results_markdown(run_benchmark(cfg, out)))


@app.command()
def train(
    data_dir: str = typer.Argument(
        ...,
        help="dataset directory (local or s3://): catalogue.{parquet,csv,jsonl} + "
        "interactions.* (+ eval_interactions.*), or the XC raw files",
    ),
    bundle: str = typer.Option(..., "--bundle", help="bundle output (local dir or s3:// prefix)"),
    config: str | None = typer.Option(None, help=CONFIG_HELP),
    work_dir: str | None = typer.Option(
        None,
        help="artifacts location; default: a temp dir on this machine (one-node Ray only: on "
        "a multi-node cluster give shared storage, e.g. s3://)",
    ),
    catalogue: str | None = typer.Option(None, help="catalogue table (default DATA/catalogue.*)"),
    interactions: str | None = typer.Option(
        None, help="interactions table (default DATA/interactions.*)"
    ),
    queries: str | None = typer.Option(None, help="queries table, when interactions use query_id"),
    eval_fraction: float | None = typer.Option(
        None, help="share of the queries held out for the quality report (default 0)"
    ),
    min_interactions: int | None = typer.Option(
        None, help="training queries an item needs for a trained classifier (default 1)"
    ),
    drop_unknown: bool = typer.Option(
        False, "--drop-unknown", help="drop interactions naming items not in the catalogue"
    ),
    num_workers: int | None = typer.Option(None, help="Ray Train workers per stage"),
    address: str | None = typer.Option(None, help="Ray address; default: a local Ray"),
    executor: str = typer.Option("ray", help="ray | local"),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Train a production bundle on your catalogue: every item with interactions gets a trained
    classifier, every other item a generated one; nothing is held out (quality is reported on
    held-out queries: --eval-fraction or eval_interactions.*). prepare -> train_classifiers ->
    train_generator -> build_bundle, on Ray."""
    _setup_logging(verbose)
    from irene.config import replace
    from irene.data.catalogue import DataError
    from irene.data.production import read_training_data
    from irene.pipeline import PipelineError, make_executor, preflight_all, run

    dotted = {
        "ray.num_workers": num_workers,
        "ray.address": address,
        "catalogue.items": catalogue,
        "catalogue.interactions": interactions,
        "catalogue.queries": queries,
        "catalogue.eval_fraction": eval_fraction,
        "catalogue.min_interactions": min_interactions,
        "catalogue.drop_unknown": drop_unknown or None,
    }
    cfg = _config(
        config, set_, dotted, data=data_dir, bundle=bundle, work_dir=work_dir, executor=executor
    )
    temp_work_dir = None
    try:  # the whole input is read and checked before anything is written
        if cfg.protocol == "production":
            read_training_data(cfg.data, cfg.catalogue)
        if not cfg.work_dir:
            temp_work_dir = tempfile.mkdtemp(prefix="irene-train-")
            cfg = replace(cfg, work_dir=temp_work_dir)
        preflight_all(cfg)
        if cfg.executor == "ray":
            _check_cluster_storage(cfg, temp_work_dir is not None)
    except (DataError, PipelineError, FileNotFoundError, ValueError) as e:
        if temp_work_dir:
            shutil.rmtree(temp_work_dir, ignore_errors=True)
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    logging.getLogger(__name__).info("work_dir: %s", cfg.work_dir)
    manifest = run(cfg, make_executor(cfg))
    prep = manifest["metrics"]["prepare"]
    summary = {
        "bundle": cfg.bundle,
        "version": manifest.get("version"),
        "work_dir": cfg.work_dir,
        "config_hash": manifest["config_hash"],
        "num_items": manifest.get("num_items"),
        "num_trained_items": manifest["num_seen_items"],
        "num_generated_items": manifest.get("num_generated_items"),
        "train_queries": prep["num_train_queries"],
        "eval_queries": prep["num_test_queries"],
        "stage_seconds": manifest["stage_seconds"],
    }
    ev = manifest["metrics"].get("eval", {})
    irene = ev.get("arms", {}).get("irene")
    if irene:
        summary["irene_" + ev["setting"].replace(" ", "_")] = {
            "full": irene["full"],
            "generated_items_only": irene["zero_shot"],
        }
    typer.echo(json.dumps(summary, indent=2))


def _check_cluster_storage(cfg, temp_work_dir: bool) -> None:
    """``irene.ray.cluster.check_work_dirs``, naming the temp dir default in the hint."""
    from irene.ray.cluster import SHARED_STORAGE_HINT, check_work_dirs

    hint = SHARED_STORAGE_HINT
    if temp_work_dir:
        hint += " (without --work-dir, irene train uses a temp dir on this machine)"
    check_work_dirs(cfg, hint)


@app.command()
def ingest(
    items: str = typer.Argument(
        ..., help="Parquet / JSONL (id, text, metadata + extra columns) or TSV (id<TAB>text)"
    ),
    bundle: str = typer.Option(..., "--bundle", help="bundle (local dir or s3:// prefix)"),
    index: str = typer.Option(..., "--index", help="index log + snapshots (dir or s3://)"),
    config: str | None = typer.Option(None, help=CONFIG_HELP),
    executor: str = typer.Option("local", help="local (in-process) | ray (Ray Data + actors)"),
    n_owners: int | None = typer.Option(None, help="shard actors of the index"),
    address: str | None = typer.Option(None, help="Ray address; default: a local Ray"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. ingest.batch_size=256"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Bulk-ingest novel items: encode -> select + generate -> durable index writes. Ids already
    in the index are skipped, so a rerun after a failure resumes where it stopped."""
    _setup_logging(verbose)
    from irene.ingest import IngestError, run

    dotted = {
        "ingest.items": items,
        "ingest.index.uri": index,
        "ingest.index.n_owners": n_owners,
        "ray.address": address,
    }
    cfg = _config(config, set_, dotted, bundle=bundle, executor=executor)
    try:
        report = run(cfg)
    except IngestError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(json.dumps(report.to_dict(), indent=2))


@app.command()
def serve(
    config: str = typer.Argument(..., help="Serve config YAML (serve_app/configs/*.yaml)"),
    address: str | None = typer.Option(
        None,
        help="Ray cluster to deploy onto (auto, HOST:6379, ray://HOST:10001); default: "
        "$RAY_ADDRESS, else a new local Ray that lives as long as this command",
    ),
    bundle: str | None = typer.Option(
        None,
        help="bundle of the irene app (local or s3://); default: $IRENE_BUNDLE, else the file's",
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="return once the app is ready and leave it running (like `serve deploy`); "
        "needs --address / $RAY_ADDRESS",
    ),
    timeout: float = typer.Option(600.0, help="seconds to wait for the app to become ready"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Deploy a Serve config file (like `serve run CONFIG`): start Serve with the file's HTTP
    options and proxies, deploy its applications, wait until each is ready, print its URL,
    then stay in the foreground until Ctrl-C / SIGTERM, which deletes the applications (the
    index's shard actors are detached and keep their data). With --address the app goes onto
    that running cluster; --detach returns at once once it is ready."""
    _setup_logging(verbose)
    import yaml

    from irene.ray import ensure_ray
    from irene.ray.cluster import (
        ServeDeployError,
        delete_serve_apps,
        deploy_serve_config,
        serve_urls,
        wait_serve_ready,
    )

    try:
        with open(config) as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        typer.echo(f"error: cannot read {config}: {e}", err=True)
        raise typer.Exit(2) from e
    if not isinstance(cfg, dict) or not cfg.get("applications"):
        typer.echo(f"error: {config} is not a Serve config (no 'applications')", err=True)
        raise typer.Exit(2)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if detach and not address:
        typer.echo("error: --detach needs a running cluster (--address or RAY_ADDRESS)", err=True)
        raise typer.Exit(2)
    bundle = bundle or os.environ.get("IRENE_BUNDLE")
    for app_cfg in cfg["applications"]:  # the replicas may not share this shell's environment
        if bundle and app_cfg.get("import_path") == "serve_app.app:build_app":
            app_cfg.setdefault("args", {})["bundle"] = bundle
    ensure_ray(address)
    try:
        names = deploy_serve_config(cfg)
    except Exception as e:  # a file Serve's schema rejects
        typer.echo(f"error: {config}: {e}", err=True)
        raise typer.Exit(2) from e
    urls = serve_urls(cfg)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM = Ctrl-C from here
    try:
        wait_serve_ready(names, urls, timeout_s=timeout)
    except KeyboardInterrupt:
        if not detach:
            typer.echo("interrupted: deleting " + ", ".join(names), err=True)
            delete_serve_apps(names, wait_s=60.0 if address else 10.0)
        raise typer.Exit(130) from None
    except (ServeDeployError, TimeoutError) as e:
        typer.echo(f"error: {e}", err=True)
        if not detach:
            delete_serve_apps(names)
        raise typer.Exit(1) from e
    finally:
        signal.signal(signal.SIGTERM, previous)
    for name in names:
        typer.echo(f"{name}: {urls[name]}")
    if detach:
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    typer.echo("serving; Ctrl-C to stop")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    typer.echo("deleting " + ", ".join(names))
    # a local Ray started here may be going down with this process (Ctrl-C reaches its whole
    # process group): wait a little only; a cluster (--address) gets a minute
    delete_serve_apps(names, wait_s=60.0 if address else 10.0)


APP_CONFIG_HELP = "the app's Serve config YAML (its irene application's args.index / bundle)"
ADDRESS_HELP = "Ray cluster of the app (auto, HOST:6379); default: $RAY_ADDRESS, else local"


@app.command()
def upgrade(
    config: str = typer.Argument(..., help=APP_CONFIG_HELP),
    bundle: str = typer.Option(..., "--bundle", help="the retrained bundle to serve"),
    executor: str = typer.Option("local", help="regenerate items: local | ray (Ray Data)"),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
    rounds: int = typer.Option(5, help="sync rounds at most before the final one"),
    settle: int = typer.Option(100, help="stop the rounds once one changes at most this many"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Serve a retrained bundle without downtime: build a new index generation (the bundle's
    trained items + every API / bulk-ingested item regenerated from its stored text and
    metadata), sync the writes that arrive meanwhile, seal the old generation, switch the
    alias; the app's replicas follow. A rerun resumes. The old generation stays for
    `irene rollback`."""
    _setup_logging(verbose)
    from irene.ray.upgrade import upgrade_app

    report = upgrade_app(
        config, bundle, executor, address or os.environ.get("RAY_ADDRESS"), rounds, settle
    )
    typer.echo(json.dumps(report, indent=2))


@app.command()
def rollback(
    config: str = typer.Argument(..., help=APP_CONFIG_HELP),
    executor: str = typer.Option("local", help="regenerate items: local | ray (Ray Data)"),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Serve the previous index generation again (the writes it missed regenerated by its
    own bundle), the same way `irene upgrade` switches."""
    _setup_logging(verbose)
    from irene.ray.upgrade import rollback_app

    report = rollback_app(config, executor, address or os.environ.get("RAY_ADDRESS"))
    typer.echo(json.dumps(report, indent=2))


@app.command()
def export(
    config: str = typer.Argument(..., help=APP_CONFIG_HELP),
    out: str = typer.Option(..., "--out", help="JSONL file (local or s3://)"),
    filter_: str | None = typer.Option(None, "--filter", help="a filter (JSON), as in queries"),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Write the serving index's items (id, text, metadata, source, version) as JSONL: the
    catalogue for the next `irene train` (items that were novel and have since gained
    interactions become trained items there)."""
    _setup_logging(verbose)
    from irene.ray.upgrade import export_app

    flt = json.loads(filter_) if filter_ else None
    n = export_app(config, out, flt, address or os.environ.get("RAY_ADDRESS"))
    typer.echo(f"{n} items -> {out}")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@app.command()
def query(
    url: str = typer.Argument(..., help="the app's base URL, e.g. http://127.0.0.1:8000"),
    texts: list[str] = typer.Argument(..., help="one or more query texts"),
    k: int = typer.Option(10, "--k", "-k", help="hits per text"),
    with_payload: bool = typer.Option(
        False, "--with-payload", help="each hit's text and metadata too"
    ),
    token: str | None = typer.Option(
        None, help="bearer token, for apps that protect reads; default: $IRENE_API_TOKEN"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the answer as JSON"),
    timeout: float = typer.Option(30.0, help="seconds per request"),
) -> None:
    """Query a running app (POST /v1/query through irene.client): the top-k items of each
    text with id, score, source (trained | generated) and, with --with-payload, text and
    metadata; a table, or JSON with --json."""
    from irene.client import IreneClient, IreneHTTPError

    token = token or os.environ.get("IRENE_API_TOKEN") or None
    try:
        with IreneClient(url, token, timeout_s=timeout, concurrency=1) as client:
            rows = client.query(list(texts), k, with_payload=with_payload)
    except IreneHTTPError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    except Exception as e:  # connection refused, timeouts: no answer at all
        typer.echo(f"error: {url}: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(1) from e
    if as_json:
        typer.echo(json.dumps({"results": rows}, indent=2, ensure_ascii=False))
        return
    for n, (text, hits) in enumerate(zip(texts, rows, strict=True)):
        if n:
            typer.echo("")
        typer.echo(f"query: {text}")
        typer.echo(_hits_table(hits, with_payload))


def _hits_table(hits: list[dict], with_payload: bool, width: int = 40) -> str:
    """Hits as aligned text: rank, score, id, source (+ text, metadata)."""
    if not hits:
        return "  (no hits)"
    cols = ["#", "score", "id", "source"] + (["text", "metadata"] if with_payload else [])
    rows = []
    for i, h in enumerate(hits, 1):
        row = [str(i), f"{h['score']:.4f}", str(h["id"]), str(h.get("source") or "-")]
        if with_payload:
            text = h.get("text") or ""
            row.append(text if len(text) <= width else text[: width - 3] + "...")
            meta = h.get("metadata")
            row.append(json.dumps(meta, ensure_ascii=False, sort_keys=True) if meta else "")
        rows.append(row)
    widths = [max(len(r[c]) for r in [cols, *rows]) for c in range(len(cols))]
    right = {0, 1}  # rank and score align right

    def line(r: list[str]) -> str:
        cells = [
            v.rjust(w) if c in right else v.ljust(w)
            for c, (v, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  " + "  ".join(cells).rstrip()

    return "\n".join([line(cols), *(line(r) for r in rows)])


TOKEN_NAME_HELP = "who holds the token (named in logs and 403 messages)"
TOKEN_SCOPES_HELP = "comma-separated, from read, write, admin (none implies another)"
TOKEN_TENANT_HELP = "the only tenant it may see and write (needs auth.tenant_field)"


def _token_entry_line(token: str, name: str, scopes: str, tenant: str | None) -> str:
    from irene.tokens import AuthConfigError, token_entry

    try:
        return json.dumps(token_entry(token, name, scopes, tenant))
    except AuthConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


@token_app.command("new")
def token_new(
    name: str = typer.Option(..., help=TOKEN_NAME_HELP),
    scopes: str = typer.Option(..., help=TOKEN_SCOPES_HELP),
    tenant: str | None = typer.Option(None, help=TOKEN_TENANT_HELP),
) -> None:
    """Make a random API token. Line 1: the token (hand it to the client; it is not stored
    anywhere); line 2: its JSON entry, with the token's sha256 only (add it to the list in
    auth.tokens_file / $IRENE_API_TOKENS)."""
    from irene.tokens import new_token

    token = new_token()
    entry = _token_entry_line(token, name, scopes, tenant)
    typer.echo(token)
    typer.echo(entry)


@token_app.command("hash")
def token_hash(
    name: str = typer.Option(..., help=TOKEN_NAME_HELP),
    scopes: str = typer.Option(..., help=TOKEN_SCOPES_HELP),
    tenant: str | None = typer.Option(None, help=TOKEN_TENANT_HELP),
) -> None:
    """The JSON entry of an existing token read from stdin (its first line), e.g. to move the
    legacy $IRENE_API_TOKEN into auth.tokens_file without changing the clients."""
    token = typer.get_text_stream("stdin").readline().strip()
    if not token:
        typer.echo("error: no token on stdin", err=True)
        raise typer.Exit(2)
    typer.echo(_token_entry_line(token, name, scopes, tenant))


@oracle_app.command("distill")
def oracle_distill(
    data_dir: str = typer.Argument(..., help="XC-format dataset (its training labels are unused)"),
    out: str = typer.Option(..., "--out", help="output dir: bundle/, summary.json, scores"),
    config: str | None = typer.Option(None, help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. oracle.backend=http"),
    max_docs: int | None = typer.Option(None, help="training documents to label (0 = all)"),
    shortlist: int | None = typer.Option(None, help="labels per document scored by the oracle"),
    actors: int | None = typer.Option(None, help="oracle replicas in the Ray Data stage"),
    executor: str = typer.Option("ray", help="ray (Ray Data + Ray Train) | local"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Shortlist labels, score them with the oracle, fine-tune the encoder, write a bundle."""
    _setup_logging(verbose)
    from irene.oracle.distill import run_distill

    dotted = {
        "distill.max_docs": max_docs,
        "distill.shortlist": shortlist,
        "ray.oracle_actors": actors,
    }
    cfg = _config(config, set_, dotted, data=data_dir, executor=executor)
    summary = run_distill(cfg, out)
    typer.echo(
        json.dumps({k: summary[k] for k in ("pairs_scored", "positives", "oracle")}, indent=2)
    )


@oracle_app.command("score")
def oracle_score(
    document: str = typer.Argument(...),
    labels: list[str] = typer.Argument(..., help="one or more label texts"),
    config: str | None = typer.Option(None, help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. oracle.backend=http"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Score (document, label) pairs with the configured oracle (a quick endpoint check)."""
    _setup_logging(verbose)
    from irene.oracle import make_oracle

    oracle = make_oracle(_config(config, set_).oracle)
    rel = oracle.score([(document, lab) for lab in labels])
    for lab, r in zip(labels, rel.tolist(), strict=True):
        typer.echo(f"{r:.4f}\t{lab}")
    typer.echo(json.dumps(oracle.stats.as_dict()))


if __name__ == "__main__":
    app()

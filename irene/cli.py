"""The ``irene`` command line (typer). Every command reads the one :class:`irene.config.Config`
(``--config FILE.yaml`` plus ``--set key=value`` overrides; options are shorthands for keys)."""

from __future__ import annotations

import json
import logging
import tempfile

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="IRENE: classifiers for novel items."
)
data_app = typer.Typer(no_args_is_help=True, help="Build datasets in the XC raw text format.")
app.add_typer(data_app, name="data")
oracle_app = typer.Typer(no_args_is_help=True, help="LLM relevance oracle and its distillation.")
app.add_typer(oracle_app, name="oracle")

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
    work_dir: str | None = typer.Option(None, help="artifacts location; default: a temp dir"),
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
    try:  # the whole input is read and checked before anything is written
        if cfg.protocol == "production":
            read_training_data(cfg.data, cfg.catalogue)
        if not cfg.work_dir:
            cfg = replace(cfg, work_dir=tempfile.mkdtemp(prefix="irene-train-"))
        preflight_all(cfg)
    except (DataError, PipelineError, FileNotFoundError, ValueError) as e:
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

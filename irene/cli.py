"""The ``irene`` command line (typer)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="IRENE: classifiers for novel items."
)
data_app = typer.Typer(no_args_is_help=True, help="Build datasets in the XC raw text format.")
app.add_typer(data_app, name="data")
oracle_app = typer.Typer(no_args_is_help=True, help="LLM relevance oracle and its distillation.")
app.add_typer(oracle_app, name="oracle")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _load_config(config: Path | None, seed: int | None, overrides: list[str]):
    import yaml

    from irene.benchmark import BenchmarkConfig
    from irene.config import from_dict

    data = yaml.safe_load(config.read_text()) if config else {}
    data = data or {}
    for item in overrides:  # dotted.key=value
        key, _, raw = item.partition("=")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    if seed is not None:
        train = data.setdefault("train", {})
        train.setdefault("split", {})["seed"] = seed
        for part in ("classifiers", "generator"):
            train.setdefault(part, {})["seed"] = seed
    return from_dict(BenchmarkConfig, data)


@data_app.command("wordnet")
def data_wordnet(
    out_dir: str = typer.Argument(..., help="output directory (local or s3://)"),
    wordnet_dir: str = typer.Option("/usr/share/wordnet", help="wordnet-base database dir"),
    seed: int = typer.Option(0),
    max_queries: int | None = typer.Option(None, help="seeded subsample of queries"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Build the WordNet noun-hypernym dataset (queries: synsets, labels: hypernyms <= 2 hops)."""
    _setup_logging(verbose)
    from irene.data.wordnet import write_wordnet

    ds = write_wordnet(out_dir, wordnet_dir=wordnet_dir, seed=seed, max_queries=max_queries)
    typer.echo(json.dumps(ds.stats(), indent=2))


@app.command()
def benchmark(
    data_dir: str = typer.Argument(..., help="XC-format dataset directory (local or s3://)"),
    out: str = typer.Option(..., "--out", help="output directory for results.json/results.md"),
    seed: int | None = typer.Option(None, help="seed for the split and training"),
    config: Path | None = typer.Option(None, help="YAML BenchmarkConfig (ezxmc: EzxmcConfig)"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. train.generator.epochs=3"),
    setting: str = typer.Option(
        "zero-shot", help="zero-shot (seen/novel split, five arms) | ezxmc (no training labels)"
    ),
    max_docs: int | None = typer.Option(None, help="ezxmc: training documents to label"),
    shortlist: int | None = typer.Option(None, help="ezxmc: labels per document for the oracle"),
    oracle_backend: str | None = typer.Option(None, help="ezxmc: local | http"),
    oracle_model: str | None = typer.Option(None, help="ezxmc: HF path, .gguf, model name"),
    oracle_base_url: str | None = typer.Option(None, help="ezxmc: OpenAI-compatible base URL"),
    oracle_cache: str | None = typer.Option(None, help="ezxmc: sqlite answer cache path"),
    use_ray: bool = typer.Option(False, "--ray", help="ezxmc: score as a Ray Data stage"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Run the zero-shot protocol (five arms) or, with --setting ezxmc, the no-label protocol
    (arms encoder, pseudo_labels, llm_oracle); writes results.json + results.md."""
    _setup_logging(verbose)
    if setting == "ezxmc":
        from irene.oracle.ezxmc import EzxmcConfig, ezxmc_markdown, run_ezxmc

        dotted = [
            f"distill.{k}={v}"
            for k, v in {
                "distill.max_docs": max_docs,
                "distill.shortlist": shortlist,
                "oracle.backend": oracle_backend,
                "oracle.model": oracle_model,
                "oracle.base_url": oracle_base_url,
                "oracle.cache_path": oracle_cache,
            }.items()
            if v is not None
        ]
        if use_ray:
            dotted.append("distill.use_ray=true")
        if seed is not None:
            dotted += [f"distill.{p}.seed={seed}" for p in ("distill", "pseudo")]
        cfg = _load_dataclass(EzxmcConfig, config, [*dotted, *set_])
        typer.echo(ezxmc_markdown(run_ezxmc(data_dir, out, cfg)))
        return
    if setting != "zero-shot":
        raise typer.BadParameter(f"unknown setting {setting!r}: zero-shot | ezxmc")
    from irene.benchmark import run_benchmark

    results = run_benchmark(data_dir, out, _load_config(config, seed, set_))
    from irene.benchmark import results_markdown

    typer.echo(results_markdown(results))


def _load_dataclass(cls, config: Path | None, overrides: list[str]):
    """A config dataclass from an optional YAML file plus dotted.key=value overrides."""
    import yaml

    from irene.config import from_dict

    data = (yaml.safe_load(config.read_text()) if config else {}) or {}
    for item in overrides:
        key, _, raw = item.partition("=")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return from_dict(cls, data)


@oracle_app.command("distill")
def oracle_distill(
    data_dir: str = typer.Argument(..., help="XC-format dataset (its training labels are unused)"),
    out: str = typer.Option(..., "--out", help="output dir: bundle/, summary.json, scores"),
    config: Path | None = typer.Option(None, help="YAML OracleDistillConfig"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. oracle.backend=http"),
    max_docs: int | None = typer.Option(None, help="training documents to label (0 = all)"),
    shortlist: int | None = typer.Option(None, help="labels per document scored by the oracle"),
    actors: int | None = typer.Option(None, help="oracle replicas in the Ray Data stage"),
    use_ray: bool = typer.Option(True, "--ray/--no-ray", help="Ray Data stage or in-process"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Shortlist labels, score them with the oracle, fine-tune the encoder, write a bundle."""
    _setup_logging(verbose)
    from irene.oracle.distill import OracleDistillConfig
    from pipelines.oracle_distill import run

    dotted = [
        f"{k}={v}"
        for k, v in {
            "distill.max_docs": max_docs,
            "distill.shortlist": shortlist,
            "oracle_actors": actors,
        }.items()
        if v is not None
    ]
    dotted.append(f"use_ray={str(use_ray).lower()}")
    summary = run(data_dir, out, _load_dataclass(OracleDistillConfig, config, [*dotted, *set_]))
    typer.echo(
        json.dumps({k: summary[k] for k in ("pairs_scored", "positives", "oracle")}, indent=2)
    )


@oracle_app.command("score")
def oracle_score(
    document: str = typer.Argument(...),
    labels: list[str] = typer.Argument(..., help="one or more label texts"),
    config: Path | None = typer.Option(None, help="YAML OracleConfig"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. backend=http"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Score (document, label) pairs with the configured oracle (a quick endpoint check)."""
    _setup_logging(verbose)
    from irene.oracle import OracleConfig, make_oracle

    oracle = make_oracle(_load_dataclass(OracleConfig, config, set_))
    rel = oracle.score([(document, lab) for lab in labels])
    for lab, r in zip(labels, rel.tolist(), strict=True):
        typer.echo(f"{r:.4f}\t{lab}")
    typer.echo(json.dumps(oracle.stats.as_dict()))


@app.command()
def train(
    data_dir: str = typer.Argument(..., help="XC-format dataset directory (local or s3://)"),
    bundle: str = typer.Option(..., "--bundle", help="bundle output (local dir or s3:// prefix)"),
    config: str | None = typer.Option(None, help="YAML PipelineConfig (local or s3://)"),
    work_dir: str | None = typer.Option(None, help="artifacts location; default: a temp dir"),
    num_workers: int | None = typer.Option(None, help="Ray Train workers per stage"),
    address: str | None = typer.Option(None, help="Ray address; default: a local Ray"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. train.generator.epochs=3"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Run prepare -> train_classifiers -> train_generator -> build_bundle on Ray."""
    _setup_logging(verbose)
    import tempfile

    from irene.config import ConfigError
    from irene.pipeline import PipelineError, preflight_all, run_all
    from irene.pipeline_config import load_pipeline_config, replace

    try:
        cfg = load_pipeline_config(
            config, set_, data=data_dir, bundle=bundle, work_dir=work_dir, num_workers=num_workers
        )
        if not cfg.work_dir:
            cfg = replace(cfg, work_dir=tempfile.mkdtemp(prefix="irene-train-"))
        preflight_all(cfg)
    except (ConfigError, PipelineError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    logging.getLogger(__name__).info("work_dir: %s", cfg.work_dir)
    manifest = run_all(cfg, address)
    summary = {"bundle": cfg.bundle, "work_dir": cfg.work_dir}
    summary["config_hash"] = manifest["config_hash"]
    summary["num_seen_items"] = manifest["num_seen_items"]
    irene = manifest["metrics"].get("eval", {}).get("arms", {}).get("irene")
    if irene:
        summary["irene_zero_shot"] = irene["zero_shot"]
    typer.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app()

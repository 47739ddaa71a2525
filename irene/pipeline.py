"""The pipeline, written once: prepare -> train_classifiers -> train_generator -> build_bundle.

"Local or Ray" is only the executor (:mod:`irene.executor`) at three seams:

    encode(texts, encoder)          the encoder in this process | Ray Data encoder actors
    fit(stage, config, table, name) the stage's train_func here | the same in a TorchTrainer
    score(pairs)                    the oracle in this process  | Ray Data oracle actors

(``irene.executor.LocalExecutor``, ``irene.ray.executor.RayExecutor`` for Ray). Every stage reads
and writes ``work_dir`` (local or s3://, layout in :mod:`irene.train.artifacts`), so each can
run as its own ``ray job`` (``pipelines/<stage>.py``) and every stage checks its inputs and
the storage it writes to *before* any work starts (:class:`PipelineError`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import faiss  # noqa: F401,I001  (before torch)
import numpy as np

from irene import io
from irene.config import Config, ConfigError, EncoderConfig, config_hash, load_config, to_dict
from irene.data import xc
from irene.data.catalogue import DataError
from irene.data.production import (
    TrainingData,
    is_catalogue_dir,
    production_split,
    read_training_data,
    read_xc_data,
)
from irene.data.split import ZeroShotSplit, validation_dataset, zero_shot_split
from irene.executor import (  # noqa: F401  (LocalExecutor, FitResult: re-exported)
    Executor,
    FitResult,
    LocalExecutor,
    fit_encoder,
    make_executor,
)
from irene.train import artifacts
from irene.train.artifacts import ITEMS_PER_FILE, PAIRS_PER_FILE
from irene.train.result import sub_state

log = logging.getLogger(__name__)

STAGE_NAMES = ("prepare", "train_classifiers", "train_generator", "build_bundle")
EXIT_CONFIG = 2  # bad config / missing input / unreachable storage
XC_FILES = (xc.TRN_X, xc.TST_X, xc.Y_TXT, xc.TRN_X_Y, xc.TST_X_Y)


class PipelineError(RuntimeError):
    """A pipeline input, output or storage location is unusable."""


# ----------------------------------------------------------------------------------------------
# fail-fast checks


def check_data(cfg: Config) -> None:
    """The dataset is there: catalogue tables (production) or the XC files."""
    data = cfg.data
    if not data and not cfg.catalogue.items:
        raise PipelineError(
            "no dataset given: set 'data' (a directory with catalogue + interactions tables, "
            "or an XC directory; local or s3://)"
        )
    try:
        if cfg.protocol == "production" and is_catalogue_dir(data, cfg.catalogue):
            return
        missing = [f for f in XC_FILES if not io.exists(io.join(data, f))]
    except OSError as e:
        raise PipelineError(f"dataset location {data} is unreachable: {e}") from e
    except DataError as e:
        raise PipelineError(str(e)) from e
    if missing:
        raise PipelineError(
            f"dataset {data} has neither catalogue tables (catalogue.parquet|csv|jsonl + "
            f"interactions.*) nor the XC files: no {', '.join(missing)}"
        )


def check_writable(uri: str, what: str) -> None:
    """Write and delete a probe object under ``uri``; PipelineError if that fails."""
    if not uri:
        raise PipelineError(f"no {what} location given")
    probe = io.join(uri, f".irene-probe-{uuid.uuid4().hex[:8]}")
    try:
        io.makedirs(uri)
        io.write_text(probe, "probe\n")
        io.delete(probe)
    except (OSError, ValueError) as e:
        raise PipelineError(f"{what} location {uri} is unreachable or not writable: {e}") from e


def check_inputs(work_dir: str, names: list[str], produced_by: str) -> None:
    try:
        missing = [n for n in names if not io.exists(io.join(work_dir, n))]
    except OSError as e:
        raise PipelineError(f"work_dir {work_dir} is unreachable: {e}") from e
    if missing:
        raise PipelineError(
            f"work_dir {work_dir} lacks {', '.join(missing)}: run `{produced_by}` first"
        )


PREPARED = [
    artifacts.PREPARE_META,
    artifacts.PAIRS_DIR,
    artifacts.ITEM_QUERIES_DIR,
    artifacts.ITEMS,
    artifacts.SPLIT_DIR,
]
STAGE_TABLES = {"classifiers": artifacts.PAIRS_DIR, "generator": artifacts.ITEM_QUERIES_DIR}


def preflight(stage: str, cfg: Config) -> None:
    """Every check a stage needs before it starts work."""
    ray_storage = cfg.executor == "ray"
    if stage == "prepare":
        check_data(cfg)
        check_writable(cfg.work_dir, "work_dir")
    elif stage in ("train_classifiers", "train_generator"):
        check_inputs(cfg.work_dir, PREPARED, "pipelines.prepare")
        if stage == "train_generator":
            check_inputs(cfg.work_dir, [artifacts.CLASSIFIERS_DIR], "pipelines.train_classifiers")
        check_writable(cfg.work_dir, "work_dir")
        if ray_storage:
            check_writable(cfg.storage(), "storage_path")
    elif stage == "build_bundle":
        check_inputs(cfg.work_dir, PREPARED, "pipelines.prepare")
        check_inputs(cfg.work_dir, [artifacts.CLASSIFIERS_DIR], "pipelines.train_classifiers")
        check_inputs(cfg.work_dir, [artifacts.GENERATOR_DIR], "pipelines.train_generator")
        if cfg.evaluate:
            check_data(cfg)
        if cfg.bundle:
            check_writable(cfg.bundle, "bundle")
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGE_NAMES}")


def preflight_all(cfg: Config) -> None:
    """Checks for the whole chain: data, work_dir, storage, bundle."""
    check_data(cfg)
    check_writable(cfg.work_dir, "work_dir")
    if cfg.executor == "ray":
        check_writable(cfg.storage(), "storage_path")
    if cfg.bundle:
        check_writable(cfg.bundle, "bundle")


# ----------------------------------------------------------------------------------------------
# prepare


def load_data(cfg: Config) -> tuple[TrainingData, ZeroShotSplit]:
    """(training data, split). ``production``: the catalogue (or XC directory) whole, items
    with interactions trained, the others generated (:mod:`irene.data.production`).
    ``zero-shot``: the benchmark protocol on an XC directory -- the real test split, or with
    ``train.split.validation_fraction`` > 0 the validation dataset (training side only) and
    its own split."""
    if cfg.protocol == "production":
        data = read_training_data(cfg.data, cfg.catalogue)
        return data, production_split(data.ds, cfg.catalogue.min_interactions)
    s = cfg.train.split
    data = read_xc_data(cfg.data)
    split = zero_shot_split(data.ds, s.novel_fraction, s.seed)
    if s.validation_fraction <= 0:
        return data, split
    val = validation_dataset(data.ds, split, s.validation_fraction, s.seed)
    ids = [data.ids[i] for i in val.labels]
    val_data = TrainingData(val.ds, ids, [data.metadata[i] for i in val.labels], data.trained_on)
    return val_data, zero_shot_split(val.ds, s.novel_fraction, s.seed)


def dataset_and_split(cfg: Config):
    """(dataset, split) of :func:`load_data`."""
    data, split = load_data(cfg)
    return data.ds, split


def encoder_config(cfg: Config) -> EncoderConfig:
    """The encoder every stage after ``prepare`` uses: the fine-tuned one when it exists."""
    enc = cfg.train.encoder
    if cfg.train.finetune.enabled:
        return dataclasses.replace(enc, model=io.join(cfg.work_dir, artifacts.ENCODER_DIR))
    return enc


def prepare(cfg: Config, ex: Executor) -> dict[str, Any]:
    """Split, [fine-tune the encoder], encode, mine negatives, write the pair table and the
    leave-one-out neighbour table."""
    from irene.train.batches import (
        cluster_order,
        drop_likely_positives,
        group_columns,
        item_columns,
        mine_hard_negatives,
        pair_columns,
        pair_rows,
    )
    from irene.train.stages import leave_one_out_neighbours

    preflight("prepare", cfg)
    t0 = time.perf_counter()
    tc, w = cfg.train, cfg.work_dir
    data, split = load_data(cfg)
    ds = data.ds
    split.save(io.join(w, artifacts.SPLIT_DIR))
    trn_texts = [ds.trn_X[i] for i in split.trn_rows]
    Y_seen = split.Y_trn.tocsc()[:, split.seen].tocsr()  # (n_trn, S)
    finetune = None
    if tc.finetune.enabled:
        finetune = finetune_encoder(cfg, ex, [ds.Y[i] for i in split.seen], trn_texts, Y_seen)
    texts = list(ds.Y) + trn_texts + list(ds.tst_X)
    t_enc = time.perf_counter()
    emb = ex.encode(texts, encoder_config(cfg))  # (L + n_trn + n_tst, d)
    encode_s = time.perf_counter() - t_enc
    L, n_trn = len(ds.Y), len(trn_texts)
    item_emb, trn_emb, tst_emb = emb[:L], emb[L : L + n_trn], emb[L + n_trn :]
    artifacts.write_items(
        io.join(w, artifacts.ITEMS), item_emb, split.seen, data.ids, ds.Y, data.metadata
    )
    artifacts.write_embeddings(io.join(w, artifacts.QUERIES_TRN), split.trn_rows, trn_emb)
    artifacts.write_embeddings(io.join(w, artifacts.QUERIES_TST), np.arange(len(ds.tst_X)), tst_emb)
    seen_emb = item_emb[split.seen]  # (S, d)
    c = tc.classifiers
    hard_neg = mine_hard_negatives(trn_emb, seen_emb, c.mined_negatives)
    if c.drop_likely_positives:
        hard_neg = drop_likely_positives(hard_neg, trn_emb, seen_emb, Y_seen)
    dropped = int((hard_neg < 0).sum())
    columns = pair_columns(trn_emb, Y_seen, hard_neg, c.max_positives)
    num_pairs, rows_per_file, table = len(columns["pos"]), PAIRS_PER_FILE, columns
    if c.cluster_size:  # NGAME's clustered batches: rows = clusters of similar queries' pairs
        rank = np.empty(n_trn, dtype=np.int64)
        rank[cluster_order(trn_emb, c.cluster_size, c.seed)] = np.arange(n_trn)
        table = group_columns(columns, rank[pair_rows(Y_seen)[0]], c.cluster_size)
        rows_per_file = max(1, PAIRS_PER_FILE // c.cluster_size)
    n_files = artifacts.write_table_parts(
        io.join(w, artifacts.PAIRS_DIR), table, rows_per_file, tc.split.seed
    )
    g = tc.generator
    items = item_columns(trn_emb, Y_seen, c.max_positives, g.max_queries_per_item, g.seed)
    artifacts.write_table_parts(
        io.join(w, artifacts.ITEM_QUERIES_DIR), items, ITEMS_PER_FILE, tc.split.seed
    )
    nbr_idx, nbr_bucket = leave_one_out_neighbours(seen_emb, tc.generator.num_neighbors)
    artifacts.write_neighbours(io.join(w, artifacts.NEIGHBOURS), nbr_idx, nbr_bucket)
    meta = {
        "prepare_id": uuid.uuid4().hex,  # new inputs => new training runs (no stale resume)
        "dataset": ds.name,
        "data": cfg.data,
        "protocol": cfg.protocol,
        "trained_on": data.trained_on,
        "executor": ex.name,
        "config_hash": config_hash(tc),
        "dim": int(emb.shape[1]),
        "num_items": L,
        "num_seen": int(len(split.seen)),
        "num_novel": int(len(split.novel)),
        "num_train_queries": n_trn,
        "num_test_queries": len(ds.tst_X),
        "num_pairs": int(num_pairs),
        "mined_negatives_dropped": dropped,  # of n_trn x mined_negatives (likely positives)
        "num_trained_items": int(len(items["item"])),
        "pair_files": n_files,
        "encode_s": round(encode_s, 3),
        "encode_texts_per_s": round(len(texts) / max(encode_s, 1e-9), 1),
        "finetune": finetune,
        "prepare_s": round(time.perf_counter() - t0, 3),
    }
    artifacts.write_json(io.join(w, artifacts.PREPARE_META), meta)
    log.info("prepared %s: %s", w, meta)
    return meta


def finetune_encoder(
    cfg: Config, ex: Executor, item_texts: list[str], query_texts: list[str], Y_seen
) -> dict[str, Any]:
    """NGAME's first stage: contrastive fine-tuning of the encoder on the train pairs (query
    anchor, item candidate, the query's nearest non-positive items by the base encoder as
    hard negatives) -> ``work_dir/encoder``."""
    from irene.train.batches import mine_hard_negatives

    f, w = cfg.train.finetune, cfg.work_dir
    t0 = time.perf_counter()
    base = cfg.train.encoder
    item_emb = ex.encode(item_texts, base)
    q_emb = ex.encode(query_texts, base)
    coo = Y_seen.tocoo()
    rows, cols = coo.row, coo.col
    if f.max_pairs and f.max_pairs < len(rows):
        keep = np.sort(np.random.default_rng(f.seed).permutation(len(rows))[: f.max_pairs])
        rows, cols = rows[keep], cols[keep]
    pool = mine_hard_negatives(q_emb, item_emb, f.hard_negatives + 8) if f.hard_negatives else None
    Y = Y_seen.tocsr()
    hard = []
    for r in rows.tolist():
        if pool is None:
            hard.append([])
            continue
        positives = set(Y.indices[Y.indptr[r] : Y.indptr[r + 1]].tolist())
        hard.append([item_texts[j] for j in pool[r] if j not in positives][: f.hard_negatives])
    table = {
        "anchor": [query_texts[i] for i in rows],
        "candidate": [item_texts[j] for j in cols],
        "hard": hard,
    }
    params = {
        "epochs": f.epochs,
        "batch_size": f.batch_size,
        "lr": f.lr,
        "temperature": f.temperature,
        "seed": f.seed,
        "hard_negatives": f.hard_negatives,
    }
    _, run = fit_encoder(ex, base, table, params, w, cfg.run_name("encoder", cfg.data))
    return {
        "pairs": int(len(rows)),
        "seconds": round(time.perf_counter() - t0, 3),
        "train_seconds": round(run.seconds, 3),
        "epochs": run.history,
    }


# ----------------------------------------------------------------------------------------------
# training stages


def _prepare_lineage(cfg: Config) -> str:
    uri = io.join(cfg.work_dir, artifacts.PREPARE_META)
    return artifacts.read_json(uri)["prepare_id"] if io.exists(uri) else cfg.data


def _lineage(cfg: Config, stage: str) -> str:
    """Ids of the outputs a training stage consumes (see Config.run_name)."""
    ids = [_prepare_lineage(cfg)]
    if stage == "generator":
        uri = io.join(cfg.work_dir, artifacts.history_file("classifiers"))
        ids.append(artifacts.read_json(uri)["output_id"] if io.exists(uri) else "")
    return "/".join(ids)


def _fit(cfg: Config, ex: Executor, stage: str, seed: int) -> FitResult:
    loop_config = {
        "stage": stage,
        "work_dir": cfg.work_dir,
        "train": to_dict(cfg.train),
        "seed": seed,
        "checkpoint_every": cfg.ray.checkpoint_every,
    }
    table = io.join(cfg.work_dir, STAGE_TABLES[stage])
    return ex.fit(stage, loop_config, table, cfg.run_name(stage, _lineage(cfg, stage)))


def _write_history(cfg: Config, ex: Executor, stage: str, run: FitResult) -> dict[str, Any]:
    record = {
        "stage": stage,
        "output_id": uuid.uuid4().hex,
        "run_name": run.run_name,
        "executor": ex.name,
        "num_workers": cfg.ray.num_workers if ex.name == "ray" else 1,
        "seconds": round(run.seconds, 3),
        "epochs": run.history,
        # epochs of the checkpoints Ray Train kept (a restart from zero would repeat some)
        "checkpoint_epochs": run.checkpoint_epochs,
    }
    artifacts.write_json(io.join(cfg.work_dir, artifacts.history_file(stage)), record)
    return record


def train_classifiers(cfg: Config, ex: Executor) -> dict[str, Any]:
    """The classifier train_func over the pair table -> ``work_dir/classifiers``."""
    from irene.model.classifiers import OVAClassifiers

    preflight("train_classifiers", cfg)
    run = _fit(cfg, ex, "classifiers", cfg.train.classifiers.seed)
    state = sub_state(run.state["model"], "classifiers")
    clf = OVAClassifiers(state["base"])
    clf.load_state_dict(state)
    artifacts.save_dir(io.join(cfg.work_dir, artifacts.CLASSIFIERS_DIR), clf.save)
    return _write_history(cfg, ex, "classifiers", run)


def train_generator(cfg: Config, ex: Executor) -> dict[str, Any]:
    """The generator train_func over the item table -> ``work_dir/generator``."""
    from irene.model.generator import IreneGenerator

    preflight("train_generator", cfg)
    meta = artifacts.read_json(io.join(cfg.work_dir, artifacts.PREPARE_META))
    run = _fit(cfg, ex, "generator", cfg.train.generator.seed)
    gen = IreneGenerator(int(meta["dim"]), cfg.train.generator)
    gen.load_state_dict(sub_state(run.state["model"], "generator"))
    artifacts.save_dir(io.join(cfg.work_dir, artifacts.GENERATOR_DIR), gen.save)
    return _write_history(cfg, ex, "generator", run)


# ----------------------------------------------------------------------------------------------
# evaluation and the bundle


def load_trained(cfg: Config):
    """(seen item ids, Trained) from ``work_dir``."""
    from irene.eval.protocol import Trained
    from irene.model.classifiers import OVAClassifiers
    from irene.model.generator import IreneGenerator
    from irene.model.selector import Selector

    w = cfg.work_dir
    item_ids, seen_emb = artifacts.read_seen_items(w)
    clf = artifacts.load_dir(io.join(w, artifacts.CLASSIFIERS_DIR), OVAClassifiers.load)
    gen = artifacts.load_dir(io.join(w, artifacts.GENERATOR_DIR), IreneGenerator.load)
    return item_ids, Trained(clf.weights().numpy(), gen.eval(), Selector(seen_emb))


def evaluate(cfg: Config) -> dict[str, Any]:
    """Every arm on the split's test queries (or the validation queries) and the seen
    diagnostic -> ``work_dir/results.json``."""
    from irene.eval.protocol import EvalData, evaluate_arms, novel_vectors, seen_diagnostic

    w = cfg.work_dir
    ds, _ = dataset_and_split(cfg)
    split = ZeroShotSplit.load(io.join(w, artifacts.SPLIT_DIR))
    if cfg.protocol == "production":
        setting = "held-out queries"
    else:
        setting = "validation" if cfg.train.split.validation_fraction > 0 else "test"
    if not len(ds.tst_X):  # production without held-out queries: nothing to measure
        results = {"dataset": ds.name, "setting": "none", "arms": {}, "seen": {}}
        results["stats"] = {**ds.stats(), **split.stats()}
        results["timings"] = {}
        artifacts.write_json(io.join(w, artifacts.RESULTS), results)
        return results
    _, _, item_emb = artifacts.read_items(io.join(w, artifacts.ITEMS))
    _, tst_emb = artifacts.read_embeddings(io.join(w, artifacts.QUERIES_TST))
    _, trained = load_trained(cfg)
    data = EvalData(ds, split, item_emb, tst_emb)
    t0 = time.perf_counter()
    novel = novel_vectors(data, trained, cfg.train.generator.num_neighbors)
    gen_ms = 1000 * (time.perf_counter() - t0) / max(len(split.novel), 1)
    results = {
        "dataset": ds.name,
        "setting": setting,
        "stats": {**ds.stats(), **split.stats()},
        "config": to_dict(cfg.train),
        "arms": evaluate_arms(data, trained, novel, cfg.eval),
        "seen": seen_diagnostic(data, trained.classifiers, cfg.eval),
        "timings": {"synthesize_ms_per_novel_item": round(gen_ms, 4)},
    }
    artifacts.write_json(io.join(w, artifacts.RESULTS), results)
    return results


def build_bundle(cfg: Config) -> dict[str, Any]:
    """Evaluate (``cfg.evaluate``) and write encoder + classifiers + generator + selector +
    seen ids (+ metrics) to ``cfg.bundle``; returns the manifest."""
    from irene.bundle import save_bundle
    from irene.model.classifiers import OVAClassifiers
    from irene.model.encoder import TextEncoder

    preflight("build_bundle", cfg)
    w = cfg.work_dir
    metrics: dict[str, Any] = {
        "prepare": artifacts.read_json(io.join(w, artifacts.PREPARE_META)),
        "training": {},
    }
    for stage in ("classifiers", "generator"):
        uri = io.join(w, artifacts.history_file(stage))
        if io.exists(uri):
            metrics["training"][stage] = artifacts.read_json(uri)
    if cfg.evaluate:
        res = evaluate(cfg)
        metrics["eval"] = {k: res[k] for k in ("setting", "arms", "seen", "stats", "timings")}
    if not cfg.bundle:
        return {"metrics": metrics}
    item_ids, trained = load_trained(cfg)
    classifiers = artifacts.load_dir(io.join(w, artifacts.CLASSIFIERS_DIR), OVAClassifiers.load)
    encoder = TextEncoder.from_config(encoder_config(cfg))
    items = bundle_items(cfg, trained) if cfg.protocol == "production" else None
    return save_bundle(
        cfg.bundle,
        encoder,
        classifiers.eval(),
        trained.generator,
        trained.selector,
        item_ids,
        cfg.train,
        metrics,
        items,
        metrics["prepare"].get("trained_on"),
    )


def bundle_items(cfg: Config, trained):
    """Every catalogue item with its record (``irene.bundle.BundleItems``); the items without
    (enough) interactions get their classifiers generated now (cold start on day one)."""
    from irene.bundle import BundleItems
    from irene.model.synthesis import synthesize

    uri = io.join(cfg.work_dir, artifacts.ITEMS)
    ids, seen_pos, emb = artifacts.read_items(uri)
    texts, metadata = artifacts.read_item_payloads(uri)
    cold = np.flatnonzero(seen_pos < 0)
    generated = synthesize(
        trained.generator,
        trained.selector,
        trained.classifiers,
        emb[cold],
        cfg.train.generator.num_neighbors,
    )
    return BundleItems(ids, texts, metadata, seen_pos, generated)


# ----------------------------------------------------------------------------------------------
# the whole chain and the drivers

STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare": prepare,
    "train_classifiers": train_classifiers,
    "train_generator": train_generator,
    "build_bundle": lambda cfg, ex=None: build_bundle(cfg),
}


def run(cfg: Config, ex: Executor | None = None) -> dict[str, Any]:
    """The whole chain; returns ``build_bundle``'s manifest plus per-stage seconds."""
    preflight_all(cfg)
    ex = ex or make_executor(cfg)
    seconds: dict[str, float] = {}
    out: dict[str, Any] = {}
    for name in STAGE_NAMES:
        t0 = time.perf_counter()
        out = STAGES[name](cfg, ex)
        seconds[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        log.info("stage %s done in %.1f s", name, seconds[f"{name}_s"])
    out["stage_seconds"] = seconds
    return out


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=f"irene pipeline stage {prog}")
    p.add_argument("--config", help="Config YAML (local or s3://)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    p.add_argument("--data", help="XC dataset directory (overrides the config)")
    p.add_argument("--work-dir", help="artifacts location (overrides the config)")
    p.add_argument("--bundle", help="bundle output location (overrides the config)")
    p.add_argument("--executor", choices=("local", "ray"), default="ray")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def driver_main(stage: str, argv: list[str] | None = None) -> int:
    """``python -m pipelines.<stage> --config CONFIG.yaml``; returns the exit code."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGE_NAMES}")
    args = _parser(f"pipelines.{stage}").parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = load_config(
            args.config,
            args.overrides,
            data=args.data,
            work_dir=args.work_dir,
            bundle=args.bundle,
            executor=args.executor,
        )
        preflight(stage, cfg)
    except (ConfigError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if cfg.executor == "ray" and stage != "build_bundle":  # every node must see the work dir
        from irene.ray.cluster import SharedStorageError, check_work_dirs

        try:
            check_work_dirs(cfg)
        except SharedStorageError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_CONFIG
    ex = None if stage == "build_bundle" else make_executor(cfg)
    result = STAGES[stage](cfg, ex)
    log.info("stage %s finished: %s", stage, _summary(result))
    return 0


def _summary(result: dict[str, Any]) -> str:
    keys = ("num_pairs", "num_seen", "seconds", "config_hash", "num_seen_items")
    out = {k: result[k] for k in keys if k in result}
    if result.get("epochs"):
        last = result["epochs"][-1]
        out.update(loss=round(last["loss"], 4), pairs_per_s=round(last["pairs_per_s"], 1))
    return str(out)

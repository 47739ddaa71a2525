"""The distributed pipeline: prepare -> train_classifiers -> train_generator -> build_bundle.

Each stage reads and writes ``work_dir`` (local or s3://, layout in :mod:`irene.train.artifacts`)
so it can run as its own Ray job (``pipelines/<stage>.py``); :func:`run_all` chains them for
``irene train``. Every stage checks its inputs and the storage it writes to *before* any Ray
worker starts (:class:`PipelineError`, exit code 2 from the drivers).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import faiss  # noqa: F401,I001  (before torch)
import numpy as np

from irene import io
from irene.config import ConfigError, EncoderConfig, config_hash, from_dict, to_dict
from irene.data import xc
from irene.pipeline_config import PipelineConfig, load_pipeline_config
from irene.train import artifacts
from irene.train.pairs import PairBatches, mine_hard_negatives
from irene.train.stages import leave_one_out_neighbours

log = logging.getLogger(__name__)

STAGE_NAMES = ("prepare", "train_classifiers", "train_generator", "build_bundle")
EXIT_CONFIG = 2  # bad config / missing input / unreachable storage
EXIT_FAILED = 1  # the stage itself failed
XC_FILES = (xc.TRN_X, xc.TST_X, xc.Y_TXT, xc.TRN_X_Y, xc.TST_X_Y)


class PipelineError(RuntimeError):
    """A pipeline input, output or storage location is unusable."""


# ----------------------------------------------------------------------------------------------
# fail-fast checks (no Ray needed)


def check_data(data: str) -> None:
    if not data:
        raise PipelineError("no dataset given: set 'data' (an XC directory, local or s3://)")
    try:
        missing = [f for f in XC_FILES if not io.exists(io.join(data, f))]
    except OSError as e:
        raise PipelineError(f"dataset location {data} is unreachable: {e}") from e
    if missing:
        raise PipelineError(f"dataset {data} is missing or incomplete: no {', '.join(missing)}")


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


def preflight(stage: str, cfg: PipelineConfig) -> None:
    """Every check a stage needs before it starts Ray work."""
    if stage == "prepare":
        check_data(cfg.data)
        check_writable(cfg.work_dir, "work_dir")
        return
    if stage in ("train_classifiers", "train_generator"):
        needs = [artifacts.PREPARE_META, artifacts.PAIRS_DIR, artifacts.ITEMS]
        check_inputs(cfg.work_dir, needs, "pipelines.prepare")
        if stage == "train_generator":
            needs = [artifacts.CLASSIFIERS_DIR, artifacts.NEIGHBOURS]
            check_inputs(cfg.work_dir, needs, "pipelines.train_classifiers")
        check_writable(cfg.work_dir, "work_dir")
        check_writable(cfg.storage(), "storage_path")
        return
    if stage == "build_bundle":
        needs = [artifacts.PREPARE_META, artifacts.ITEMS, artifacts.SPLIT_DIR]
        check_inputs(cfg.work_dir, needs, "pipelines.prepare")
        check_inputs(cfg.work_dir, [artifacts.CLASSIFIERS_DIR], "pipelines.train_classifiers")
        check_inputs(cfg.work_dir, [artifacts.GENERATOR_DIR], "pipelines.train_generator")
        if cfg.evaluate:
            check_data(cfg.data)
        check_writable(cfg.bundle, "bundle")
        return
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGE_NAMES}")


def preflight_all(cfg: PipelineConfig) -> None:
    """Checks for the whole chain (``irene train``): data, work_dir, storage, bundle."""
    check_data(cfg.data)
    check_writable(cfg.work_dir, "work_dir")
    check_writable(cfg.storage(), "storage_path")
    check_writable(cfg.bundle, "bundle")


# ----------------------------------------------------------------------------------------------
# Ray


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or the job's cluster), or start a local Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or None)


# ----------------------------------------------------------------------------------------------
# prepare


class EncodeBatch:
    """Ray Data UDF (one encoder per actor): {"i", "text"} -> {"i", "emb" (B, d)}."""

    def __init__(self, encoder: dict[str, Any], batch_size: int) -> None:
        from irene.model.encoder import TextEncoder

        self.encoder = TextEncoder.from_config(from_dict(EncoderConfig, encoder))
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = self.encoder.encode([str(t) for t in batch["text"]], batch_size=self.batch_size)
        return {"i": batch["i"], "emb": emb}


def auto_encode_actors(use_gpu: bool) -> int:
    """One encoder actor per GPU of the cluster, else per CPU (each actor runs 1 torch thread:
    Ray sets OMP_NUM_THREADS to the actor's num_cpus, so a single actor would use one core)."""
    import ray

    res = ray.cluster_resources()
    return max(1, int(res.get("GPU" if use_gpu else "CPU", 1)))


def encode_texts(texts: list[str], cfg: PipelineConfig, use_gpu: bool) -> np.ndarray:
    """(n, d) embeddings of ``texts`` with Ray Data ``map_batches`` on an encoder actor pool."""
    import pyarrow as pa
    import ray.data

    n = len(texts)
    chunk = cfg.encode_batch_size * 4
    # length-sorted globally (rows keep their index "i"), so each actor batch pads to similar
    # lengths, as TextEncoder.encode does in-process; sorting only within a batch pads far more
    order = np.argsort([-len(t) for t in texts], kind="stable").astype(np.int64)
    tables = [
        pa.table({"i": order[s : s + chunk], "text": [texts[i] for i in order[s : s + chunk]]})
        for s in range(0, n, chunk)
    ]
    enc = to_dict(cfg.train.encoder)
    enc["device"] = "cuda" if use_gpu else "cpu"
    actors = cfg.encode_actors or auto_encode_actors(use_gpu)
    log.info("encoding %d texts with %d encoder actor(s)", n, actors)
    ds = ray.data.from_arrow(tables).map_batches(
        EncodeBatch,
        fn_constructor_kwargs={"encoder": enc, "batch_size": cfg.encode_batch_size},
        batch_size=cfg.encode_batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        num_gpus=1 if use_gpu else 0,
    )
    out: np.ndarray | None = None
    seen = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if out is None:
            out = np.empty((n, batch["emb"].shape[1]), dtype=np.float32)
        out[batch["i"]] = batch["emb"]
        seen += len(batch["i"])
    if out is None or seen != n:
        raise RuntimeError(f"encoding returned {seen} of {n} embeddings")
    return out


def prepare(cfg: PipelineConfig) -> dict[str, Any]:
    """Split, encode (Ray Data), mine negatives, write the pair table and neighbour table."""
    from irene.data.split import zero_shot_split
    from irene.train.ray_train import resolve_use_gpu

    preflight("prepare", cfg)
    t0 = time.perf_counter()
    tc = cfg.train
    ds = xc.read_xc(cfg.data)
    split = zero_shot_split(ds, tc.split.novel_fraction, tc.split.seed)
    split.save(io.join(cfg.work_dir, artifacts.SPLIT_DIR))
    trn_texts = [ds.trn_X[i] for i in split.trn_rows]
    texts = list(ds.Y) + trn_texts + list(ds.tst_X)
    t_enc = time.perf_counter()
    emb = encode_texts(texts, cfg, resolve_use_gpu(cfg.use_gpu))  # (L + n_trn + n_tst, d)
    encode_s = time.perf_counter() - t_enc
    L, n_trn = len(ds.Y), len(trn_texts)
    item_emb, trn_emb, tst_emb = emb[:L], emb[L : L + n_trn], emb[L + n_trn :]
    w = cfg.work_dir
    artifacts.write_items(io.join(w, artifacts.ITEMS), item_emb, split.seen)
    artifacts.write_embeddings(io.join(w, artifacts.QUERIES_TRN), split.trn_rows, trn_emb)
    artifacts.write_embeddings(io.join(w, artifacts.QUERIES_TST), np.arange(len(ds.tst_X)), tst_emb)
    seen_emb = item_emb[split.seen]  # (S, d)
    Y_seen = split.Y_trn.tocsc()[:, split.seen].tocsr()  # (n_trn, S)
    hard_neg = mine_hard_negatives(trn_emb, seen_emb, tc.classifiers.num_hard_negatives)
    columns = PairBatches(trn_emb, Y_seen, hard_neg, 1, tc.classifiers.max_positives).to_columns()
    n_files = artifacts.write_pairs(
        io.join(w, artifacts.PAIRS_DIR), columns, cfg.pairs_per_file, tc.split.seed
    )
    nbr_idx, nbr_bucket = leave_one_out_neighbours(seen_emb, tc.generator.num_neighbors)
    artifacts.write_neighbours(io.join(w, artifacts.NEIGHBOURS), nbr_idx, nbr_bucket)
    meta = {
        "prepare_id": uuid.uuid4().hex,  # new inputs => new training runs (no stale resume)
        "dataset": ds.name,
        "data": cfg.data,
        "config_hash": config_hash(tc),
        "dim": int(emb.shape[1]),
        "num_items": L,
        "num_seen": int(len(split.seen)),
        "num_novel": int(len(split.novel)),
        "num_train_queries": n_trn,
        "num_test_queries": len(ds.tst_X),
        "num_pairs": int(len(columns["pos"])),
        "pair_files": n_files,
        "encode_s": round(encode_s, 3),
        "encode_texts_per_s": round(len(texts) / max(encode_s, 1e-9), 1),
        "prepare_s": round(time.perf_counter() - t0, 3),
    }
    artifacts.write_json(io.join(w, artifacts.PREPARE_META), meta)
    log.info("prepared %s: %s", w, meta)
    return meta


# ----------------------------------------------------------------------------------------------
# training stages


def _lineage(cfg: PipelineConfig, stage: str) -> str:
    """Ids of the outputs a training stage consumes (see PipelineConfig.name_for)."""
    ids = [artifacts.read_json(io.join(cfg.work_dir, artifacts.PREPARE_META))["prepare_id"]]
    if stage == "generator":
        uri = io.join(cfg.work_dir, artifacts.history_file("classifiers"))
        ids.append(artifacts.read_json(uri)["output_id"] if io.exists(uri) else "")
    return "/".join(ids)


def _write_history(cfg: PipelineConfig, stage: str, run) -> dict[str, Any]:
    record = {
        "stage": stage,
        "output_id": uuid.uuid4().hex,
        "run_name": run.run_name,
        "num_workers": cfg.num_workers,
        "seconds": round(run.seconds, 3),
        "epochs": run.history,
        # epochs of the checkpoints Ray Train kept (a restart from zero would repeat some)
        "checkpoint_epochs": [m.get("epoch") for m in run.checkpoint_metrics],
    }
    artifacts.write_json(io.join(cfg.work_dir, artifacts.history_file(stage)), record)
    return record


def train_classifiers(cfg: PipelineConfig) -> dict[str, Any]:
    """TorchTrainer over the streamed pair table -> ``work_dir/classifiers``."""
    from irene.train.ray_train import FaultInjection, fit_stage, sub_state

    preflight("train_classifiers", cfg)
    run = fit_stage(
        "classifiers",
        cfg,
        FaultInjection.from_env(),
        cfg.name_for("classifiers", _lineage(cfg, "classifiers")),
    )
    from irene.model.classifiers import OVAClassifiers

    clf_state = sub_state(run.state["model"], "classifiers")
    clf = OVAClassifiers(clf_state["base"])
    clf.load_state_dict(clf_state)
    artifacts.save_dir(io.join(cfg.work_dir, artifacts.CLASSIFIERS_DIR), clf.save)
    return _write_history(cfg, "classifiers", run)


def train_generator(cfg: PipelineConfig) -> dict[str, Any]:
    """TorchTrainer over the streamed pair table -> ``work_dir/generator``."""
    from irene.model.generator import IreneGenerator
    from irene.train.ray_train import FaultInjection, fit_stage, sub_state

    preflight("train_generator", cfg)
    meta = artifacts.read_json(io.join(cfg.work_dir, artifacts.PREPARE_META))
    run = fit_stage(
        "generator",
        cfg,
        FaultInjection.from_env(),
        cfg.name_for("generator", _lineage(cfg, "generator")),
    )
    gen = IreneGenerator(int(meta["dim"]), cfg.train.generator)
    gen.load_state_dict(sub_state(run.state["model"], "generator"))
    artifacts.save_dir(io.join(cfg.work_dir, artifacts.GENERATOR_DIR), gen.save)
    return _write_history(cfg, "generator", run)


# ----------------------------------------------------------------------------------------------
# bundle


def evaluate_bundle_parts(cfg: PipelineConfig, classifiers, generator, selector) -> dict:
    """Zero-shot and full metrics of every arm, with the benchmark's own functions."""
    from irene.benchmark import (
        BenchmarkConfig,
        Prepared,
        Timer,
        Trained,
        evaluate_arms,
        novel_vectors,
    )
    from irene.data.split import ZeroShotSplit

    w = cfg.work_dir
    ds = xc.read_xc(cfg.data)
    split = ZeroShotSplit.load(io.join(w, artifacts.SPLIT_DIR))
    _, _, item_emb = artifacts.read_items(io.join(w, artifacts.ITEMS))
    _, trn_emb = artifacts.read_embeddings(io.join(w, artifacts.QUERIES_TRN))
    _, tst_emb = artifacts.read_embeddings(io.join(w, artifacts.QUERIES_TST))
    Y_seen = split.Y_trn.tocsc()[:, split.seen].tocsr()
    prep = Prepared(ds, split, item_emb, trn_emb, tst_emb, Y_seen)
    trained = Trained(classifiers.weights().numpy(), generator, selector)
    timer = Timer()
    novel = novel_vectors(prep, trained, cfg.train, timer)
    arms = evaluate_arms(prep, trained, novel, BenchmarkConfig(train=cfg.train))
    return {"arms": arms, "timings": timer.t, "stats": {**ds.stats(), **split.stats()}}


def build_bundle(cfg: PipelineConfig) -> dict[str, Any]:
    """Encoder + classifiers + generator + selector + seen ids (+ metrics) -> ``cfg.bundle``."""
    from irene.bundle import save_bundle
    from irene.model.classifiers import OVAClassifiers
    from irene.model.encoder import TextEncoder
    from irene.model.generator import IreneGenerator
    from irene.model.selector import Selector

    preflight("build_bundle", cfg)
    w = cfg.work_dir
    item_ids, seen_emb = artifacts.read_seen_items(w)
    classifiers = artifacts.load_dir(io.join(w, artifacts.CLASSIFIERS_DIR), OVAClassifiers.load)
    generator = artifacts.load_dir(io.join(w, artifacts.GENERATOR_DIR), IreneGenerator.load)
    selector = Selector(seen_emb)
    metrics: dict[str, Any] = {
        "prepare": artifacts.read_json(io.join(w, artifacts.PREPARE_META)),
        "training": {},
    }
    for stage in ("classifiers", "generator"):
        uri = io.join(w, artifacts.history_file(stage))
        if io.exists(uri):
            metrics["training"][stage] = artifacts.read_json(uri)
    if cfg.evaluate:
        metrics["eval"] = evaluate_bundle_parts(cfg, classifiers.eval(), generator, selector)
    encoder = TextEncoder.from_config(cfg.train.encoder)
    return save_bundle(
        cfg.bundle, encoder, classifiers.eval(), generator, selector, item_ids, cfg.train, metrics
    )


# ----------------------------------------------------------------------------------------------
# the whole chain and the drivers

STAGES: dict[str, Callable[[PipelineConfig], dict[str, Any]]] = {
    "prepare": prepare,
    "train_classifiers": train_classifiers,
    "train_generator": train_generator,
    "build_bundle": build_bundle,
}
NEEDS_RAY = {"prepare", "train_classifiers", "train_generator"}


def run_all(cfg: PipelineConfig, address: str | None = None) -> dict[str, Any]:
    """prepare -> train_classifiers -> train_generator -> build_bundle; returns the manifest."""
    preflight_all(cfg)
    ensure_ray(address)
    for name in ("prepare", "train_classifiers", "train_generator"):
        t0 = time.perf_counter()
        STAGES[name](cfg)
        log.info("stage %s done in %.1f s", name, time.perf_counter() - t0)
    return build_bundle(cfg)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=f"irene pipeline stage {prog}")
    p.add_argument("--config", help="PipelineConfig YAML (local or s3://)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    p.add_argument("--data", help="XC dataset directory (overrides the config)")
    p.add_argument("--work-dir", help="artifacts location (overrides the config)")
    p.add_argument("--bundle", help="bundle output location (overrides the config)")
    p.add_argument("--address", help="Ray address; default: the job's cluster or a local Ray")
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
        cfg = load_pipeline_config(
            args.config, args.overrides, data=args.data, work_dir=args.work_dir, bundle=args.bundle
        )
        preflight(stage, cfg)
    except (ConfigError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if stage in NEEDS_RAY:
        ensure_ray(args.address)
    result = STAGES[stage](cfg)
    log.info("stage %s finished: %s", stage, _summary(result))
    return 0


def _summary(result: dict[str, Any]) -> str:
    keys = ("num_pairs", "num_seen", "seconds", "config_hash", "num_seen_items")
    out = {k: result[k] for k in keys if k in result}
    if "epochs" in result and result["epochs"]:
        last = result["epochs"][-1]
        out.update(loss=round(last["loss"], 4), pairs_per_s=round(last["pairs_per_s"], 1))
    return str(out)

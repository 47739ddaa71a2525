"""The executor seam: where the pipeline's work runs. "Local or Ray" is only this, at three
seams:

    encode(texts, encoder)          the encoder in this process | Ray Data encoder actors
    fit(stage, config, table, name) the stage's train_func here | the same in a TorchTrainer
    score(pairs)                    the oracle in this process  | Ray Data oracle actors

:class:`Executor` is the protocol, :class:`LocalExecutor` runs everything in this process,
``irene.ray.executor.RayExecutor`` on a Ray cluster, and :func:`make_executor` picks one from
the config. :func:`fit_encoder` (contrastive fine-tuning of an encoder through an executor) is
shared by the pipeline's ``prepare`` and oracle distillation.

Layering: this module imports the library below it (config, io, train, model, oracle) and,
only inside :func:`make_executor`, ``irene.ray.executor``, which itself never imports this
module (it returns :class:`irene.train.result.FitResult` too).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

import numpy as np

from irene import io
from irene.config import Config, EncoderConfig, config_hash, to_dict
from irene.oracle import make_oracle
from irene.oracle.base import score_pairs
from irene.train import artifacts
from irene.train.result import FitResult, sub_state

__all__ = [
    "Executor",
    "FitResult",
    "LocalExecutor",
    "fit_encoder",
    "make_executor",
    "sub_state",
]


class Executor(Protocol):
    name: str

    def encode(self, texts: list[str], encoder: EncoderConfig) -> np.ndarray:
        """(n, d) float32 L2-normalised embeddings."""

    def fit(self, stage: str, config: dict[str, Any], table: str, run_name: str) -> FitResult:
        """Run ``irene.train.stages.TRAIN_FUNCS[stage](config, ctx)`` over the Parquet table
        at ``table``; ``config["seed"]`` seeds the batch order."""

    def score(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, dict]:
        """(relevance (P,), oracle stats) of (document, label) pairs."""


class LocalExecutor:
    """Everything in this process (``irene benchmark``, tests, laptops).

    Embeddings are memoised per (encoder config, text) for the executor's lifetime, so runs
    that share one executor (``irene benchmark --seeds``: same texts, other splits) encode
    each text once; an encoder that changes (fine-tuning) has another config: another key.
    """

    name = "local"

    def __init__(self, cfg: Config, show_progress: bool = True, oracle_factory=None) -> None:
        self.cfg = cfg
        self.show_progress = show_progress
        self._oracle_factory = oracle_factory
        self._oracle = None
        self._encoders: dict[str, Any] = {}
        self._memo: dict[str, dict[str, np.ndarray]] = {}

    def encode(self, texts: list[str], encoder: EncoderConfig) -> np.ndarray:
        from irene.model.encoder import TextEncoder

        key = config_hash(encoder)
        memo = self._memo.setdefault(key, {})
        todo = list(dict.fromkeys(t for t in texts if t not in memo))  # unique, in order
        if todo:
            if key not in self._encoders:
                self._encoders[key] = TextEncoder.from_config(encoder)
            emb = self._encoders[key].encode(todo, show_progress=self.show_progress)
            memo.update(zip(todo, emb, strict=True))
        return np.stack([memo[t] for t in texts]).astype(np.float32, copy=False)

    def fit(self, stage: str, config: dict[str, Any], table: str, run_name: str) -> FitResult:
        from irene.train.batches import TableBatches
        from irene.train.loop import LocalContext
        from irene.train.stages import TRAIN_FUNCS

        t0 = time.perf_counter()
        batches = TableBatches(artifacts.read_table_parts(table), int(config.get("seed", 0)))
        ctx = LocalContext(batches, show_progress=self.show_progress)
        TRAIN_FUNCS[stage](config, ctx)
        if ctx.state is None:
            raise RuntimeError(f"training stage {stage} ended without a final state")
        return FitResult(run_name, ctx.state, ctx.history, time.perf_counter() - t0)

    def score(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, dict]:
        if self._oracle is None:
            self._oracle = (self._oracle_factory or (lambda: make_oracle(self.cfg.oracle)))()
        rel = score_pairs(self._oracle, pairs, self.cfg.oracle.batch_size)
        return rel, self._oracle.stats.as_dict()


def make_executor(cfg: Config, **kwargs: Any) -> Executor:
    """``cfg.executor``'s executor: ``ray`` (``irene.ray.executor``, imported here only, so the
    library never imports Ray code unless asked to) or ``local``."""
    if cfg.executor == "ray":
        from irene.ray.executor import RayExecutor

        return RayExecutor(cfg, **kwargs)
    return LocalExecutor(cfg, **kwargs)


def fit_encoder(
    ex: Executor,
    encoder: EncoderConfig,
    table: dict[str, Any],
    params: dict[str, Any],
    out_dir: str,
    run_name: str | None = None,
) -> tuple[EncoderConfig, FitResult]:
    """Contrastive fine-tuning of ``encoder`` on a text-pair table (``anchor``, ``candidate``,
    optional ``weight`` and ``hard``) through the executor; the table is written to
    ``out_dir/text_pairs`` and the tuned encoder to ``out_dir/encoder``, which the returned
    EncoderConfig points to. ``params``: epochs, batch_size, lr, temperature, seed,
    hard_negatives."""
    from irene.model.encoder import TextEncoder

    uri = io.join(out_dir, artifacts.TEXT_PAIRS_DIR)
    artifacts.write_table_parts(uri, table, artifacts.PAIRS_PER_FILE, params["seed"])
    loop_config = {"encoder": to_dict(encoder), "contrastive": params, "seed": params["seed"]}
    name = run_name or f"irene-encoder-{config_hash([loop_config, out_dir])}"
    run = ex.fit("encoder", loop_config, uri, name)
    tuned = TextEncoder.from_config(dataclasses.replace(encoder, device="cpu"))
    tuned.load_state_dict(sub_state(run.state["model"], "encoder"))
    target = io.join(out_dir, artifacts.ENCODER_DIR)
    artifacts.save_dir(target, tuned.save)
    return dataclasses.replace(encoder, model=target), run

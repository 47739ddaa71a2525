"""save()/load() helpers shared by every model part: safetensors tensors + a JSON config."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_part(
    path: str, name: str, tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> None:
    os.makedirs(path, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
        os.path.join(path, f"{name}.safetensors"),
    )
    with open(os.path.join(path, f"{name}.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def load_part(path: str, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = load_file(os.path.join(path, f"{name}.safetensors"))
    with open(os.path.join(path, f"{name}.json")) as f:
        config = json.load(f)
    return tensors, config

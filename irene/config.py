"""Typed, frozen configuration for every stage, loaded from YAML or dicts.

Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_ENCODER = "packaged:all-MiniLM-L6-v2"


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


@dataclass(frozen=True)
class EncoderConfig:
    model: str = DEFAULT_ENCODER  # HF name, local path, or the packaged default
    max_length: int = 64
    batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class SplitConfig:
    novel_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class ClassifierConfig:
    epochs: int = 5
    batch_size: int = 256
    lr: float = 2e-3
    num_hard_negatives: int = 10  # kNN-mined negatives per query (from item embeddings)
    max_positives: int = 64  # positives per query kept in the pair table (padded)
    logit_scale: float = 20.0
    seed: int = 0


@dataclass(frozen=True)
class GeneratorConfig:
    num_neighbors: int = 3
    num_heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.1
    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    negatives_per_query: int = 2  # mined negatives sampled per query and step (generated too)
    pos_weight: float = 1.0  # C: up-weights positive pairs in the one-vs-all BCE
    cosine_weight: float = 1.0  # weight of 1 - cos(generated, own trained classifier)
    # Fraction of train queries held out of classifier training and used (alone) to train the
    # generator, so neighbour classifiers have not memorised the generator's training queries
    # (as at test time). 0 = both stages use all queries. In-process benchmark only for now.
    holdout_fraction: float = 0.0
    logit_scale: float = 20.0
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    classifiers: ClassifierConfig = field(default_factory=ClassifierConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build a (nested) frozen dataclass from a dict, rejecting unknown keys."""
    data = dict(data or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f" in '{path}'" if path else ""
        raise ConfigError(f"unknown config key(s){where}: {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = from_dict(type(default), value, f"{path}.{name}".strip("."))
        else:
            kwargs[name] = _coerce(value, default, f"{path}.{name}".strip("."))
    return cls(**kwargs)


def _coerce(value: Any, default: Any, path: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"'{path}' must be true/false, got {value!r}")
        return value
    if isinstance(default, int | float) and not isinstance(value, int | float):
        raise ConfigError(f"'{path}' must be a number, got {value!r}")
    if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"'{path}' must be an integer, got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"'{path}' must be a string, got {value!r}")
    return type(default)(value)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Any) -> str:
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_yaml(cls: type[T], text_or_path: str) -> T:
    """Load ``cls`` from a YAML file path (local or s3://) or a YAML string."""
    from irene import io

    text = text_or_path
    if "\n" not in text_or_path and (
        io.is_s3(text_or_path) or text_or_path.endswith((".yaml", ".yml"))
    ):
        if not io.exists(text_or_path):
            raise ConfigError(f"config file not found: {text_or_path}")
        text = io.read_text(text_or_path)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError("config must be a YAML mapping")
    return from_dict(cls, data)


def override(cfg: T, **changes: Any) -> T:
    return dataclasses.replace(cfg, **changes)

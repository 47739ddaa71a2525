"""Index generations and the alias that names the serving one.

An index (``IndexConfig.uri``) may hold several *generations*, each a complete index made by
one bundle: its own shard actors (``<name>.<generation>``), log and snapshots
(``<uri>/generations/<generation>/``). The alias file ``<uri>/alias.json`` says which one
serves (``current``), which one served before (``previous``, kept for ``irene rollback``) and,
per generation, the bundle that made it::

    {"current": "g2-1a2b3c4d", "previous": "g1-9f8e7d6c",
     "generations": {"g1-9f8e7d6c": {"bundle": "runs/bundle-v1", "version": "9f8e...",
                                     "created": 1765000000.0}, ...}}

Switching generations is one atomic write of that file (a rename locally, one PUT on S3);
the Serve app's replicas watch it and move to the new generation together with its bundle.
An index without an alias file is the single unnamed generation ``""`` stored at ``uri``
itself (every index made before generations existed).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace

from irene import io as iio
from irene.config import IndexConfig

ALIAS_FILE = "alias.json"


@dataclass(frozen=True)
class Generation:
    bundle: str  # the bundle (dir or s3:// prefix) that made this generation's vectors
    version: str  # its bundle version (what the items' records name)
    created: float = 0.0


@dataclass(frozen=True)
class Alias:
    current: str
    previous: str | None = None
    generations: dict[str, Generation] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Alias:
        d = json.loads(text)
        gens = {k: Generation(**v) for k, v in d.get("generations", {}).items()}
        return cls(d["current"], d.get("previous"), gens)

    def switch(self, to: str) -> Alias:
        """The alias with ``to`` serving and the current generation kept as ``previous``."""
        if to not in self.generations:
            raise KeyError(f"no generation {to!r} (have {sorted(self.generations)})")
        return replace(self, current=to, previous=self.current)

    def with_generation(self, name: str, gen: Generation) -> Alias:
        return replace(self, generations={**self.generations, name: gen})


def alias_uri(index: IndexConfig) -> str:
    return iio.join(index.uri, ALIAS_FILE)


def load_alias(index: IndexConfig) -> Alias | None:
    """The alias of ``index`` (None: no generations yet)."""
    uri = alias_uri(index)
    return Alias.from_json(iio.read_text(uri)) if iio.exists(uri) else None


def save_alias(index: IndexConfig, alias: Alias) -> None:
    """Write the alias atomically (the switch)."""
    iio.write_text(alias_uri(index), alias.to_json())


def generation_config(index: IndexConfig, generation: str) -> IndexConfig:
    """The index config of one generation (``""``: the unnamed one at ``index.uri``)."""
    if not generation:
        return index
    return replace(
        index,
        uri=iio.join(index.uri, "generations", generation),
        name=f"{index.name}.{generation}",
    )


def current(index: IndexConfig) -> tuple[str, IndexConfig, Generation | None]:
    """(name, config, its Generation or None) of the serving generation of ``index``."""
    alias = load_alias(index)
    if alias is None:
        return "", index, None
    return (
        alias.current,
        generation_config(index, alias.current),
        alias.generations.get(alias.current),
    )


def new_generation_name(version: str, alias: Alias | None) -> str:
    """``g<n>-<version prefix>``: numbered after the generations the alias knows."""
    n = 1 + (len(alias.generations) if alias is not None else 1)
    return f"g{n}-{(version or 'none')[:8]}-{int(time.time())}"

"""Smoke tests of the bench/ drivers (tiny sizes, the real code paths)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load_bench(name: str):
    """The module ``bench/<name>.py`` (bench/ is not a package; its modules import each other
    by name, so bench/ goes on sys.path)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)

"""Device and thread selection: CUDA when present, else CPU. Never required."""

from __future__ import annotations

import os


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{requested}' requested but CUDA is not available")
    return requested


def set_threads(n: int | None = None) -> int:
    """Set torch and faiss thread counts in the *calling* thread (both bundle OpenMP)."""
    import faiss  # noqa: I001  (faiss before torch)
    import torch

    n = n or int(os.environ.get("IRENE_NUM_THREADS", 0)) or (os.cpu_count() or 1)
    faiss.omp_set_num_threads(n)
    torch.set_num_threads(n)
    return n

"""Throughput of ``prepare``'s Ray Data encoding (``irene.ray.encode.encode_texts``) on WordNet.

    python bench/prepare_encode.py [--data data/wordnet] [--n 10000] [--save emb.npy]

Encodes a seeded sample of train queries + labels with the default Config (one encoder
actor per CPU) on a local Ray and prints texts/s. ``--save`` keeps the embeddings, e.g. to check
that two versions of the code produce the same vectors.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="data/wordnet")
    p.add_argument("--n", type=int, default=10000, help="texts (80%% queries, 20%% labels)")
    p.add_argument("--save", help="write the (n, d) embeddings here (.npy)")
    a = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from irene.config import Config
    from irene.data.xc import read_xc
    from irene.ray.encode import encode_texts

    ds = read_xc(a.data)
    rng = np.random.default_rng(0)
    n_q = int(a.n * 0.8)
    texts = [ds.trn_X[i] for i in rng.permutation(len(ds.trn_X))[:n_q]]
    texts += list(ds.Y[: a.n - n_q])
    ray.init(include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="pe-"), log_to_driver=False)
    try:
        t0 = time.perf_counter()
        cfg = Config()
        emb = encode_texts(
            texts, cfg.train.encoder, cfg.ray.encode_actors, cfg.ray.encode_batch_size, False
        )
        dt = time.perf_counter() - t0
    finally:
        ray.shutdown()
    if a.save:
        np.save(a.save, emb)
    print(f"{len(texts)} texts in {dt:.1f}s: {len(texts) / dt:.1f} texts/s")


if __name__ == "__main__":
    main()

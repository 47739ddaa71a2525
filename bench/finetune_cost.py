"""What the optional fine-tuned encoder base (``train.finetune``) costs per pair, measured.

Runs the product's encoder stage (``irene.pipeline.fit_encoder``: the contrastive
``train_func`` on the local executor) on ``--pairs`` (query, item) pairs of an XC dataset with
the default FinetuneConfig (batch 64, 1 mined hard negative per pair; here a random item text
stands in for the mined one, which costs the same), and times the plain encoding of the same
texts side by side. Prints pairs/s, texts/s, and the extrapolated cost of one fine-tuning epoch
over every train pair plus the re-encoding of the whole dataset.

    python bench/finetune_cost.py data/wordnet --pairs 1280
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from irene.config import Config, EncoderConfig, FinetuneConfig
from irene.data.xc import read_xc
from irene.pipeline import LocalExecutor, fit_encoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data")
    p.add_argument("--pairs", type=int, default=1280)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    ds = read_xc(args.data)
    coo = ds.trn_X_Y.tocoo()
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(coo.row), size=args.pairs, replace=False)
    f = FinetuneConfig()
    table = {
        "anchor": [ds.trn_X[i] for i in coo.row[pick]],
        "candidate": [ds.Y[j] for j in coo.col[pick]],
        "hard": [[ds.Y[j]] for j in rng.integers(len(ds.Y), size=args.pairs)],
    }
    params = {
        "epochs": 1,
        "batch_size": f.batch_size,
        "lr": f.lr,
        "temperature": f.temperature,
        "seed": f.seed,
        "hard_negatives": f.hard_negatives,
    }
    enc = EncoderConfig()
    ex = LocalExecutor(Config(data=args.data), show_progress=False)
    texts = table["anchor"] + table["candidate"] + [h[0] for h in table["hard"]]
    ex.encode(texts[:64], enc)  # load the model once before timing
    t0 = time.perf_counter()
    ex.encode(texts[64:], enc)
    encode_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fit_encoder(ex, enc, table, params, tmp)
        train_s = time.perf_counter() - t0
    n_pairs, n_texts = int(ds.trn_X_Y.nnz), len(ds.trn_X) + len(ds.tst_X) + len(ds.Y)
    pairs_s = args.pairs / train_s
    texts_s = (len(texts) - 64) / encode_s
    out = {
        "pairs": args.pairs,
        "fine-tune pairs/s": round(pairs_s, 1),
        "encode texts/s (same texts)": round(texts_s, 1),
        "fine-tune seconds per pair / encode seconds per text": round(texts_s / pairs_s, 2),
        "train pairs in the dataset": n_pairs,
        "texts in the dataset": n_texts,
        "one epoch over every train pair, minutes": round(n_pairs / pairs_s / 60, 1),
        "re-encoding every text with the tuned encoder, minutes": round(n_texts / texts_s / 60, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

import json

import numpy as np

from irene.benchmark import run_benchmark, run_seeds
from irene.config import load_config
from irene.data.xc import write_xc
from irene.eval.protocol import ARMS, REPORT_METRICS, SEEN_ARMS
from tests.helpers import make_tiny_encoder, synthetic_xc

TINY = [
    "protocol=zero-shot",
    "train.encoder.max_length=16",
    "train.split.novel_fraction=0.2",
    "train.split.seed=1",
    "train.classifiers.epochs=3",
    "train.classifiers.batch_size=64",
    "train.classifiers.mined_negatives=5",
    "train.generator.epochs=3",
    "train.generator.batch_size=16",
    "train.generator.num_heads=2",
]


def tiny_config(tmp_path, *extra: str):
    ds = synthetic_xc(n_labels=40, n_train=300, n_test=80)
    write_xc(ds, str(tmp_path / "data"))
    enc = make_tiny_encoder(str(tmp_path / "enc"))
    return load_config(
        None, [f"train.encoder.model={enc}", *TINY, *extra], data=str(tmp_path / "data")
    )


def test_tiny_end_to_end_benchmark(tmp_path):
    res = run_benchmark(tiny_config(tmp_path), str(tmp_path / "out"))
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["arms"].keys() == set(ARMS) and on_disk["setting"] == "test"
    for arm in ARMS:
        for setting in ("zero_shot", "full"):
            m = on_disk["arms"][arm][setting]
            for name in REPORT_METRICS:
                assert 0.0 <= m[name] <= 100.0
        assert 0.0 <= on_disk["arms"][arm]["full"]["novel_at_1"] <= 100.0
    assert on_disk["seen"].keys() == set(SEEN_ARMS)
    # identical novel vectors => identical zero-shot results for encoder and ova_fallback
    assert res["arms"]["encoder"]["zero_shot"] == res["arms"]["ova_fallback"]["zero_shot"]
    # the seen diagnostic's encoder arm ranks with the item embeddings: equal to the full
    # ranking restricted to seen items only when there is nothing to learn, so just bounds
    t = on_disk["timings"]
    assert t["encode_texts_per_s"] > 0 and t["synthesize_ms_per_novel_item"] > 0
    assert t["peak_rss_mb"] > 0 and t["total_s"] >= t["train_generator_s"] > 0
    hist = on_disk["training"]
    assert [h["epoch"] for h in hist["classifiers"]] == [0, 1, 2]
    assert hist["classifiers"][-1]["loss"] < hist["classifiers"][0]["loss"]
    assert [h["epoch"] for h in hist["generator"]] == [0, 1, 2]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| irene |" in md and "seen items only" in md


def test_validation_setting_never_reads_the_test_queries(tmp_path):
    """With a validation fraction the protocol runs on the training side only: the test
    queries are not part of any evaluated set."""
    from irene.data.split import zero_shot_split
    from irene.data.xc import read_xc
    from irene.pipeline import dataset_and_split

    cfg = tiny_config(tmp_path, "train.split.validation_fraction=0.25")
    res = run_benchmark(cfg, str(tmp_path / "val"))
    assert res["setting"] == "validation" and res["dataset"].endswith("-validation")
    real = read_xc(cfg.data)
    real_split = zero_shot_split(real, 0.2, 1)
    val_ds, _ = dataset_and_split(cfg)
    st = res["stats"]
    assert st["n_labels"] == len(real_split.seen)  # only the seen items of the real split
    assert st["n_test"] == round(0.25 * len(real_split.trn_rows)) == len(val_ds.tst_X)
    train_texts = {real.trn_X[i] for i in real_split.trn_rows}
    assert set(val_ds.tst_X) <= train_texts and set(val_ds.trn_X) <= train_texts
    assert not set(val_ds.tst_X) & set(real.tst_X) - train_texts


def test_seeds_summary(tmp_path):
    cfg = tiny_config(tmp_path, "train.classifiers.epochs=1", "train.generator.epochs=1")
    summary = run_seeds(cfg, str(tmp_path / "seeds"), [0, 1])
    assert summary["seeds"] == [0, 1]
    for setting in ("zero_shot", "full"):
        m = summary[setting]["irene"]["R@10"]
        assert 0 <= m["mean"] <= 100 and m["std"] >= 0
    assert (tmp_path / "seeds" / "seed-1" / "results.json").exists()
    assert "±" in (tmp_path / "seeds" / "summary.md").read_text()


def test_finetuned_encoder_base(tmp_path):
    """train.finetune.enabled: the encoder is fine-tuned on the train pairs first (NGAME's
    first stage) and every later stage, the arms and the bundle use the tuned encoder."""
    from irene.model.encoder import TextEncoder

    cfg = tiny_config(
        tmp_path,
        "train.finetune.enabled=true",
        "train.finetune.epochs=2",
        "train.finetune.batch_size=32",
        "train.finetune.lr=1e-3",
        "train.classifiers.epochs=1",
        "train.generator.epochs=1",
    )
    from irene.config import replace

    out = tmp_path / "ft"
    cfg = replace(cfg, bundle=str(tmp_path / "bundle"))
    res = run_benchmark(cfg, str(out))
    prep = json.loads((out / "prepare.json").read_text())
    assert prep["finetune"]["pairs"] > 0 and len(prep["finetune"]["epochs"]) == 2
    tuned = TextEncoder.from_config(
        type(cfg.train.encoder)(model=str(out / "encoder"), max_length=16)
    )
    base = TextEncoder.from_config(cfg.train.encoder)
    assert not np.allclose(tuned.encode(["w1 w2"]), base.encode(["w1 w2"]), atol=1e-4)
    from irene.bundle import load_bundle

    b = load_bundle(str(tmp_path / "bundle"))
    np.testing.assert_allclose(b.encoder.encode(["w1 w2"]), tuned.encode(["w1 w2"]), atol=1e-5)
    assert res["arms"]["irene"]["zero_shot"]["n_eval"] > 0


def test_clustered_batches_and_the_likely_positive_filter(tmp_path):
    """cluster_size: the pair table's rows are groups of similar queries' pairs, trained as
    whole groups; drop_likely_positives (default): mined items the encoder scores above every
    positive of the query are no negatives (-1 in the table), and none are dropped when off."""
    from dataclasses import replace

    from irene.pipeline import make_executor, prepare
    from irene.train import artifacts

    g = 16
    cfg = tiny_config(
        tmp_path,
        f"train.classifiers.cluster_size={g}",
        "train.classifiers.epochs=2",
        "train.generator.epochs=1",
    )
    res = run_benchmark(cfg, str(tmp_path / "out"))
    prep = json.loads((tmp_path / "out" / "prepare.json").read_text())
    table = artifacts.read_table_parts(str(tmp_path / "out" / artifacts.PAIRS_DIR))
    n_groups = -(-prep["num_pairs"] // g)
    assert table["pos"].shape == (n_groups, g) and table["q_emb"][0].shape[0] == g
    assert np.concatenate(list(table["neg"])).min() == -1 and prep["mined_negatives_dropped"] > 0
    hist = res["training"]["classifiers"]
    assert all(h["pairs"] == n_groups * g for h in hist)  # every pair once + the padding
    assert hist[-1]["loss"] < hist[0]["loss"]
    seen = res["seen"]
    assert seen["classifiers"]["R@10"] > seen["encoder"]["R@10"]  # it learns
    off = tiny_config(tmp_path, "train.classifiers.drop_likely_positives=false")
    meta = prepare(replace(off, work_dir=str(tmp_path / "off")), make_executor(off))
    assert meta["mined_negatives_dropped"] == 0
    neg = artifacts.read_table_parts(str(tmp_path / "off" / artifacts.PAIRS_DIR))["neg"]
    assert neg.min() >= 0

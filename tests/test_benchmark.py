import json

from irene.benchmark import ARMS, REPORT_METRICS, BenchmarkConfig, run_benchmark
from irene.config import ClassifierConfig, EncoderConfig, GeneratorConfig, SplitConfig, TrainConfig
from irene.data.xc import write_xc
from tests.helpers import make_tiny_encoder, synthetic_xc


def test_tiny_end_to_end_benchmark(tmp_path):
    ds = synthetic_xc(n_labels=40, n_train=300, n_test=80)
    write_xc(ds, str(tmp_path / "data"))
    enc = make_tiny_encoder(str(tmp_path / "enc"))
    cfg = BenchmarkConfig(
        train=TrainConfig(
            encoder=EncoderConfig(model=enc, max_length=16),
            split=SplitConfig(novel_fraction=0.2, seed=1),
            classifiers=ClassifierConfig(epochs=3, batch_size=64, num_hard_negatives=5),
            generator=GeneratorConfig(epochs=3, batch_size=64, num_heads=2),
        )
    )
    res = run_benchmark(str(tmp_path / "data"), str(tmp_path / "out"), cfg)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["arms"].keys() == set(ARMS)
    for arm in ARMS:
        for setting in ("zero_shot", "full"):
            m = on_disk["arms"][arm][setting]
            for name in REPORT_METRICS:
                assert 0.0 <= m[name] <= 100.0
        assert 0.0 <= on_disk["arms"][arm]["full"]["novel_at_1"] <= 100.0
    # identical novel vectors => identical zero-shot results for encoder and ova_fallback
    assert res["arms"]["encoder"]["zero_shot"] == res["arms"]["ova_fallback"]["zero_shot"]
    t = on_disk["timings"]
    assert (
        t["encode_texts_per_s"] > 0 and t["generate_ms_per_item_batch"] > 0 and t["peak_rss_mb"] > 0
    )
    hist = on_disk["training"]
    assert (
        len(hist["classifiers"]) == 3
        and hist["classifiers"][-1]["loss"] < hist["classifiers"][0]["loss"]
    )
    assert len(hist["generator"]) == 3
    assert "| irene |" in (tmp_path / "out" / "results.md").read_text()

import numpy as np
import pytest
import torch

from irene.config import EncoderConfig, GeneratorConfig
from irene.model.classifiers import OVAClassifiers
from irene.model.encoder import TextEncoder
from irene.model.generator import IreneGenerator
from irene.model.selector import Selector, score_buckets
from irene.model.synthesis import generate, mean_synthesis
from tests.helpers import make_tiny_encoder


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    path = make_tiny_encoder(str(tmp_path_factory.mktemp("enc")))
    return TextEncoder.from_config(EncoderConfig(model=path, max_length=16, batch_size=4))


def test_encoder_normalised_order_preserving_and_batch_invariant(tiny_encoder):
    texts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10", "w1 w2 w3"]
    a = tiny_encoder.encode(texts, batch_size=2)
    b = tiny_encoder.encode(texts[::-1], batch_size=3)[::-1]
    assert a.shape == (4, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # padding/batching does not change results
    np.testing.assert_allclose(a[0], a[3], atol=1e-6)
    assert not np.allclose(a[0], a[1])


def test_encoder_save_load_round_trip(tiny_encoder, tmp_path):
    tiny_encoder.save(str(tmp_path / "e"))
    loaded = TextEncoder.load(str(tmp_path / "e"))
    assert loaded.cfg.max_length == 16
    x = ["w3 w4", "w9"]
    np.testing.assert_allclose(loaded.encode(x), tiny_encoder.encode(x), atol=1e-6)


def test_packaged_default_encoder_loads_offline():
    enc = TextEncoder.from_config(EncoderConfig())
    e = enc.encode(["a dog", "a puppy", "a tax form"])
    assert e.shape == (3, 384)
    assert e[0] @ e[1] > e[0] @ e[2]  # real semantics, not random weights


def test_contrastive_finetune_reduces_loss(tmp_path):
    from irene.config import Config
    from irene.pipeline import LocalExecutor, fit_encoder

    cfg = EncoderConfig(model=make_tiny_encoder(str(tmp_path / "e")), max_length=8)
    q = [f"w{i} w{i + 1}" for i in range(0, 40, 2)]
    d = [f"w{i + 100}" for i in range(0, 40, 2)]
    ex = LocalExecutor(Config(), show_progress=False)
    params = dict(epochs=8, batch_size=10, lr=3e-3, temperature=0.05, seed=0)
    _, run = fit_encoder(ex, cfg, {"anchor": q, "candidate": d}, params, str(tmp_path / "a"))
    assert run.history[-1]["loss"] < run.history[0]["loss"] * 0.7
    # oracle-style weights: zero-weight pairs contribute nothing
    w = np.array([1.0] * 10 + [0.0] * 10, np.float32)
    table = {"anchor": q, "candidate": d, "weight": w}
    _, run = fit_encoder(ex, cfg, table, {**params, "epochs": 1, "lr": 0.0}, str(tmp_path / "b"))
    assert run.history[0]["loss"] > 0


def test_classifiers_init_equals_embeddings_and_round_trip(tmp_path):
    emb = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    clf = OVAClassifiers(emb)
    torch.testing.assert_close(clf(), emb)
    with torch.no_grad():
        clf.delta.add_(0.3)
    clf.save(str(tmp_path))
    torch.testing.assert_close(OVAClassifiers.load(str(tmp_path))(), clf())
    assert torch.allclose(clf().norm(dim=-1), torch.ones(10))


def test_selector_leave_one_out_and_buckets():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sel = Selector(emb)
    idx, scores = sel.search(emb, 3, exclude=np.arange(50))
    assert idx.shape == (50, 3) and not (idx == np.arange(50)[:, None]).any()
    brute = emb @ emb.T
    np.fill_diagonal(brute, -np.inf)
    np.testing.assert_array_equal(idx, np.argsort(-brute, axis=1)[:, :3])
    idx2, _ = sel.search(emb, 1)
    np.testing.assert_array_equal(idx2[:, 0], np.arange(50))  # without exclusion: itself
    assert score_buckets(np.array([-0.3, 0.0, 0.44, 0.46, 0.99, 1.2])).tolist() == [
        0,
        0,
        4,
        5,
        10,
        10,
    ]
    hnsw = Selector(emb, kind="hnsw")
    h_idx, _ = hnsw.search(emb, 3, exclude=np.arange(50))
    assert (h_idx == idx).mean() > 0.9


def test_selector_pads_when_fewer_items_than_k(tmp_path):
    emb = np.eye(2, 4, dtype=np.float32)
    idx, scores = Selector(emb).search(emb, 3, exclude=np.arange(2))
    assert idx.tolist() == [[1, -1, -1], [0, -1, -1]]
    Selector(emb).save(str(tmp_path))
    np.testing.assert_array_equal(Selector.load(str(tmp_path)).item_emb, emb)


def test_generator_shapes_masking_and_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = GeneratorConfig(num_neighbors=3, num_heads=4, dropout=0.0)
    gen = IreneGenerator(16, cfg).eval()
    z = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    nbr = torch.randn(5, 3, 16)
    # untrained, the generator is the mean_synthesis_self arm: normalize(z + sum of neighbours)
    torch.testing.assert_close(
        gen(z, nbr, torch.zeros(5, 3, dtype=torch.long)),
        torch.nn.functional.normalize(z + nbr.sum(1), dim=-1),
    )
    with torch.no_grad():  # as if trained: residual branches active
        gen.attn.out_proj.weight.normal_(std=0.3)
        gen.ff[3].weight.normal_(std=0.3)
    W = torch.nn.functional.normalize(torch.randn(5, 3, 16), dim=-1)
    b = torch.randint(0, 11, (5, 3))
    valid = torch.tensor([[True, True, False]] * 5)
    u = gen(z, W, b, valid)
    assert u.shape == (5, 16)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(5))
    # a masked neighbour has no influence on the output
    W2 = W.clone()
    W2[:, 2] = torch.randn(5, 16)
    torch.testing.assert_close(gen(z, W2, b, valid), u)
    # neighbours do influence it when valid
    assert not torch.allclose(gen(z, W2, b, None), gen(z, W, b, None))
    gen.save(str(tmp_path))
    torch.testing.assert_close(IreneGenerator.load(str(tmp_path))(z, W, b, valid), u)


def test_generate_and_mean_synthesis():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(6, 8)).astype(np.float32)
    nbr = np.array([[0, 1, -1], [2, 3, 4]])
    m = mean_synthesis(W, nbr)
    expect0 = (W[0] + W[1]) / np.linalg.norm(W[0] + W[1])
    np.testing.assert_allclose(m[0], expect0, rtol=1e-5)
    e = rng.normal(size=(2, 8)).astype(np.float32)
    ms = mean_synthesis(W, nbr, e)
    np.testing.assert_allclose(
        ms[1], (W[2] + W[3] + W[4] + e[1]) / np.linalg.norm(W[2] + W[3] + W[4] + e[1]), rtol=1e-5
    )
    gen = IreneGenerator(8, GeneratorConfig(num_heads=2, dropout=0.0))
    out = generate(gen, e, nbr, np.full((2, 3), 0.5, np.float32), W, batch_size=1)
    assert out.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, ms, rtol=1e-5, atol=1e-6)  # untrained == mean_synthesis_self


def test_generator_is_a_pre_norm_transformer_layer_with_mean_pooling():
    """The generator computes nn.TransformerEncoderLayer(norm_first=True) over the K+1 slots,
    then the mean over the valid slots, L2-normalised."""
    torch.manual_seed(3)
    cfg = GeneratorConfig(num_heads=4, ff_mult=2, dropout=0.0)
    gen = IreneGenerator(16, cfg).eval()
    with torch.no_grad():
        gen.attn.out_proj.weight.normal_(std=0.3)
        gen.ff[3].weight.normal_(std=0.3)
        gen.type_emb.weight.normal_()
        gen.score_emb.weight.normal_()
    ref = torch.nn.TransformerEncoderLayer(
        16, 4, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=True
    ).eval()
    ref.self_attn.load_state_dict(gen.attn.state_dict())
    ref.linear1.load_state_dict(gen.ff[0].state_dict())
    ref.linear2.load_state_dict(gen.ff[3].state_dict())
    ref.norm1.load_state_dict(gen.norm1.state_dict())
    ref.norm2.load_state_dict(gen.norm2.state_dict())
    z, W = torch.randn(4, 16), torch.randn(4, 3, 16)
    b = torch.randint(0, 11, (4, 3))
    valid = torch.tensor([[True, False, True]] * 4)
    x = (
        torch.cat([z[:, None], W], 1)
        + gen.type_emb(torch.tensor([0, 1, 1, 1]))
        + gen.score_emb(torch.cat([torch.full((4, 1), 11), b], 1))
    )
    keep = torch.cat([torch.ones(4, 1, dtype=torch.bool), valid], 1)
    out = ref(x, src_key_padding_mask=~keep)  # (4, 4, 16)
    w = keep.unsqueeze(-1).float()
    expect = torch.nn.functional.normalize((out * w).sum(1) / w.sum(1), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(gen(z, W, b, valid), expect, atol=1e-5, rtol=1e-5)


def test_neighbours_with_non_positive_cosine_are_masked():
    from irene.train.stages import leave_one_out_neighbours

    emb = np.array([[1, 0], [0.8, 0.6], [-1, 0], [-0.8, -0.6]], dtype=np.float32)
    idx, _ = leave_one_out_neighbours(emb, 3)
    assert idx[0].tolist() == [1, -1, -1]  # items 2 and 3 point away from item 0
    gen = IreneGenerator(2, GeneratorConfig(num_heads=1, dropout=0.0))
    W = emb.copy()
    u = generate(gen, emb[:1], np.array([[1, 2]]), np.array([[0.8, -1.0]], np.float32), W)
    expect = generate(gen, emb[:1], np.array([[1, -1]]), np.array([[0.8, 0.0]], np.float32), W)
    np.testing.assert_allclose(u, expect, atol=1e-6)


def test_explain_shows_what_synthesize_does():
    """explain returns synthesize's classifiers, the selector's neighbours and the attention
    each slot receives (a distribution over the item and its unmasked neighbours), computed
    by hand from the attention layer."""
    from irene.model.synthesis import explain, synthesize

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(12, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    W = rng.normal(size=(12, 8)).astype(np.float32)
    gen = IreneGenerator(8, GeneratorConfig(num_heads=2, dropout=0.0))
    torch.manual_seed(0)
    for p in gen.parameters():  # a "trained" generator: non-zero residual branches
        torch.nn.init.normal_(p, std=0.3)
    sel = Selector(emb)
    q = emb[:3] + 0.1 * rng.normal(size=(3, 8)).astype(np.float32)
    clf, idx, cos, att = explain(gen, sel, W, q, 4)
    np.testing.assert_allclose(clf, synthesize(gen, sel, W, q, 4), rtol=1e-5, atol=1e-6)
    want_idx, want_cos = sel.search(q, 4)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(cos, want_cos)
    assert att.shape == (3, 5) and (att >= 0).all()
    np.testing.assert_allclose(att.sum(1), 1.0, rtol=1e-5)
    assert (att[:, 1:][cos <= 0] == 0).all()  # masked neighbours receive nothing
    # by hand: the attention matrix averaged over heads, then over the valid query slots
    valid = np.concatenate([np.ones((3, 1), bool), cos > 0], axis=1)
    with torch.no_grad():
        x = torch.cat([torch.as_tensor(q).unsqueeze(1), torch.as_tensor(W[idx])], 1)
        types = torch.ones((3, 5), dtype=torch.long)
        types[:, 0] = 0
        scores = torch.cat([torch.full((3, 1), 11), torch.as_tensor(score_buckets(cos))], 1)
        h = gen.norm1(x + gen.type_emb(types) + gen.score_emb(scores))
        _, a = gen.attn(h, h, h, key_padding_mask=~torch.as_tensor(valid))
    w = valid[:, :, None].astype(np.float32)
    np.testing.assert_allclose(att, (a.numpy() * w).sum(1) / w.sum(1), rtol=1e-4, atol=1e-6)

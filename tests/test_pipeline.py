"""The pipeline module on the local executor: memoised encoding, preflight checks."""

from __future__ import annotations

import numpy as np

from irene.config import Config, EncoderConfig
from irene.executor import LocalExecutor
from tests.helpers import make_tiny_encoder


def test_local_executor_encodes_each_text_once_per_encoder(tmp_path, monkeypatch):
    from irene.model.encoder import TextEncoder

    enc = EncoderConfig(model=make_tiny_encoder(str(tmp_path / "e")), max_length=8)
    ex = LocalExecutor(Config(), show_progress=False)
    calls: list[list[str]] = []
    real = TextEncoder.encode
    monkeypatch.setattr(
        TextEncoder,
        "encode",
        lambda self, texts, **kw: (calls.append(list(texts)), real(self, texts, **kw))[1],
    )
    a = ex.encode(["w1 w2", "w3", "w1 w2"], enc)
    b = ex.encode(["w3", "w4"], enc)
    assert calls == [["w1 w2", "w3"], ["w4"]]  # duplicates and repeats are not re-encoded
    np.testing.assert_array_equal(a[0], a[2])
    np.testing.assert_array_equal(a[1], b[0])
    direct = TextEncoder.from_config(enc)
    np.testing.assert_allclose(b, real(direct, ["w3", "w4"]), atol=1e-6)
    other = EncoderConfig(model=enc.model, max_length=4)  # another config: its own cache
    ex.encode(["w3"], other)
    assert calls[-1] == ["w3"]

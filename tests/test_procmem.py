"""process_memory reads this process's resident, peak and private bytes."""

from __future__ import annotations

import numpy as np

from irene.procmem import process_memory


def test_process_memory_sees_an_allocation():
    before = process_memory()
    assert 0 < before["private"] <= before["rss"] <= before["peak_rss"]
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
    after = process_memory()
    assert after["rss"] - before["rss"] > 48 << 20
    assert after["private"] - before["private"] > 48 << 20
    assert after["peak_rss"] >= after["rss"]
    del block

"""process_memory reads this process's resident, peak and private bytes."""

from __future__ import annotations

import json
import subprocess
import sys

from irene.procmem import process_memory

# In a fresh interpreter: the pytest process of a whole suite run holds ~2 GB whose pages
# other threads free and reclaim while the test runs, which hides a 64 MiB step.
_PROBE = """
import json
import numpy as np
from irene.procmem import process_memory
before = process_memory()
block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
after = process_memory()
print(json.dumps({"before": before, "after": after}))
"""


def test_process_memory_sees_an_allocation():
    now = process_memory()
    assert 0 < now["private"] <= now["rss"] <= now["peak_rss"]
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    before, after = seen["before"], seen["after"]
    assert after["rss"] - before["rss"] > 48 << 20
    assert after["private"] - before["private"] > 48 << 20
    assert after["peak_rss"] >= after["rss"]

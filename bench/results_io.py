"""Write a benchmark's report: ``<stem>.json`` (the figures) and ``<stem>.md`` (the table)."""

from __future__ import annotations

import json
import os


def write_report(out: str, name: str, report: dict, md: str) -> str:
    """``report`` as JSON and ``md`` as Markdown under ``out``; prints ``md``; returns the stem."""
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, name)
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    return stem

"""This process's memory, as Linux reports it (``/proc/self``): current, peak and private."""

from __future__ import annotations


def process_memory() -> dict[str, int]:
    """Bytes: ``rss`` (resident), ``peak_rss`` (VmHWM) and ``private`` (resident pages not
    shared with other processes, such as Ray's object store pages); 0 where unavailable."""
    out = {"rss": 0, "peak_rss": 0, "private": 0}
    fields = {"VmRSS:": "rss", "VmHWM:": "peak_rss"}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = fields.get(line.split(":", 1)[0] + ":")
                if key:
                    out[key] = int(line.split()[1]) * 1024
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    out["private"] += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out

"""``irene benchmark``: the pipeline on the local executor, every arm evaluated, a report.

Writes ``OUT/results.json`` and ``OUT/results.md`` (the artifacts of every stage stay in
``OUT`` too). ``--seeds 0,1,2`` repeats the whole run per seed and adds the mean and spread
(``summary.json``, ``summary.md``). The protocol itself lives in :mod:`irene.eval.protocol`.
"""

from __future__ import annotations

import json
import logging
import resource
import time

import numpy as np

from irene import io
from irene.config import Config, replace, with_seed
from irene.device import set_threads
from irene.eval.protocol import ARMS, REPORT_METRICS, SEEN_ARMS, results_markdown
from irene.pipeline import make_executor, run

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("P@1", "R@10")


def peak_memory_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def run_benchmark(cfg: Config, out_dir: str, executor=None) -> dict:
    """One run of the pipeline with ``work_dir = out_dir``; returns results.json's content."""
    set_threads()
    cfg = replace(cfg, work_dir=out_dir, protocol="zero-shot")
    t0 = time.perf_counter()
    manifest = run(cfg, executor or make_executor(cfg))
    results = json.loads(io.read_text(io.join(out_dir, "results.json")))
    prep = json.loads(io.read_text(io.join(out_dir, "prepare.json")))
    results["timings"] = {
        **manifest["stage_seconds"],
        "encode_s": prep["encode_s"],
        "encode_texts_per_s": prep["encode_texts_per_s"],
        **results.get("timings", {}),
        "total_s": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": peak_memory_mb(),
    }
    results["training"] = {
        stage: json.loads(io.read_text(io.join(out_dir, f"history_{stage}.json")))["epochs"]
        for stage in ("classifiers", "generator")
    }
    io.write_text(io.join(out_dir, "results.json"), json.dumps(results, indent=2))
    io.write_text(io.join(out_dir, "results.md"), results_markdown(results))
    return results


def run_seeds(cfg: Config, out_dir: str, seeds: list[int]) -> dict:
    """``run_benchmark`` per seed under ``out_dir/seed-<s>``, plus mean and spread. The seeds
    share one executor: each text is encoded once (the encoder does not depend on the seed)."""
    ex = make_executor(cfg)
    runs = {}
    for s in seeds:
        runs[s] = run_benchmark(with_seed(cfg, s), io.join(out_dir, f"seed-{s}"), ex)
    summary = summarize(runs)
    io.write_text(io.join(out_dir, "summary.json"), json.dumps(summary, indent=2))
    io.write_text(io.join(out_dir, "summary.md"), summary_markdown(summary))
    return summary


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2)}


def summarize(runs: dict[int, dict]) -> dict:
    """Mean and standard deviation over seeds of P@1 / R@10 of every arm and setting."""
    first = next(iter(runs.values()))
    out: dict = {"dataset": first["dataset"], "setting": first.get("setting"), "seeds": list(runs)}
    for setting in ("zero_shot", "full"):
        out[setting] = {
            arm: {
                m: _stats([r["arms"][arm][setting][m] for r in runs.values()])
                for m in SUMMARY_METRICS
            }
            for arm in ARMS
        }
    out["seen"] = {
        arm: {m: _stats([r["seen"][arm][m] for r in runs.values()]) for m in SUMMARY_METRICS}
        for arm in SEEN_ARMS
    }
    out["novel_at_1"] = _stats([r["arms"]["irene"]["full"]["novel_at_1"] for r in runs.values()])
    out["total_s"] = _stats([r["timings"]["total_s"] for r in runs.values()])
    return out


def summary_markdown(summary: dict) -> str:
    lines = [
        f"# irene benchmark: {summary['dataset']} ({summary['setting']}), seeds {summary['seeds']}",
        "",
    ]
    for setting in ("zero_shot", "full", "seen"):
        lines += [f"## {setting}", "", "| arm | P@1 | R@10 |", "|---|---|---|"]
        for arm, m in summary[setting].items():
            cells = [f"{m[k]['mean']:.2f} ± {m[k]['std']:.2f}" for k in SUMMARY_METRICS]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    n = summary["novel_at_1"]
    lines.append(
        f"irene novel@1 (full): {n['mean']:.2f} ± {n['std']:.2f}; "
        f"seconds per run: {summary['total_s']['mean']:.0f} ± {summary['total_s']['std']:.0f}"
    )
    return "\n".join(lines) + "\n"


__all__ = ["REPORT_METRICS", "run_benchmark", "run_seeds", "summarize"]

"""In-process text-encoder throughput of every encoder runtime, side by side in one run: same
texts, same thread count, with the accuracy guard (1 - cos against torch fp32) and its tier.

    python bench/encoder_bench.py [--texts 2000] [--guard-texts 5000] [--threads 2]
        [--runtimes torch,torch-bf16,...] [--out bench/results] [--smoke]

``bench/prepare_encode.py`` times ``prepare``'s *Ray Data* encoding; this script times the
encoder itself in one process, without Ray. Texts: a seeded WordNet sample (80% train
queries, 20% label texts). Rows:

1. ``bare``: AutoTokenizer + AutoModel fp32, mean pooling, L2-normalise, length-sorted
   batches -- the fp32 reference every 1 - cos is measured against;
2. one row per ``encoder.runtime`` (``TextEncoder.encode`` with ``EncoderConfig(runtime=..)``,
   the path of prepare, ingest and Serve), ``auto`` (the default: what it resolves to here),
   and ``serving`` (``serve_app.encoding.BatchedEncoder`` on concurrent one-text requests, on
   a minimal bundle holding the encoder: the runtime the bundle was saved with);
3. candidates that are no runtime (yet): ORT int8 per-channel, ORT BERT-fused graph, torch
   dynamic int8, bf16 weights, ``torch.compile``;
4. length bucketing: every runtime without the length sort (input order, each batch padded to
   its longest text), and batch-size sweeps of ``torch`` and ``auto``.

Timed rows run ``--repeats`` interleaved rounds (the machine may be shared: the best round is
reported, the load average recorded); ratios are to the ``torch`` row (TextEncoder fp32).
The guard: each runtime/candidate also encodes ``--guard-texts`` other sampled texts (untimed)
and reports mean and max 1 - cos against ``bare``. Tier ``exact`` (mean <= 1e-3) makes a
runtime eligible for ``auto``; ``quantised`` (int8) ones are eligible only after the WordNet
benchmark guard (every arm within 0.5 points over 3 seeds), which this script does not run.
Writes ``encoder.json`` and ``encoder.md`` under ``--out``. ``--smoke``: 64 texts, only
bare/torch/torch-bf16/auto/serving, one round, no guard pass (seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WORDNET_NOUN = "/usr/share/wordnet/data.noun"  # Makefile's WORDNET
EXACT_BAR = 1e-3  # mean(1 - cos) vs fp32 for the "exact" tier (irene.model.runtime)
SERVE_MAX_BATCH = 32  # serve_app.schemas.BatchSettings.max_batch_size default
SERVE_CLIENTS = 32  # concurrent one-text requests in the serving variant
SWEEP = (16, 32, 64, 128)
SWEEP_STEP = 2  # the sweep encodes every second text (same length distribution, half the time)
RUNTIMES = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-bf16")
SMOKE_RUNTIMES = ("torch", "torch-bf16")
GUARDED = ("reference", "runtime", "main", "candidate")  # rows with a guard verdict
ONCE = {"bf16-weights", "torch-int8-dynamic", "torch-compile"}  # one round only


def sample_texts(data: str, n: int, seed: int = 0) -> list[str]:
    """A seeded sample: 80% train queries, 20% label texts, both drawn at random.
    Without ``data`` (``make data`` not run; ``data/`` is not in git): seeded WordNet noun
    synset texts parsed from ``/usr/share/wordnet/data.noun`` (the label texts' source)."""
    rng = np.random.default_rng(seed)
    if not os.path.exists(os.path.join(data, "Y.txt")):
        from irene.data.wordnet import parse_data_noun

        syn = list(parse_data_noun(WORDNET_NOUN).values())
        return [syn[i].text for i in rng.permutation(len(syn))[:n]]
    from irene.data.xc import read_xc

    ds = read_xc(data)
    n_q = int(n * 0.8)
    texts = [ds.trn_X[i] for i in rng.permutation(len(ds.trn_X))[:n_q]]
    return texts + [ds.Y[i] for i in rng.permutation(len(ds.Y))[: n - n_q]]


def one_minus_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.maximum(0.0, 1.0 - np.sum(a * b, axis=1))


def max_one_minus_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(one_minus_cos(a, b)))


@dataclass
class Variant:
    name: str
    group: str  # reference | runtime | main | candidate | bucketing | sweep
    description: str
    runtime: str = ""  # the resolved encoder runtime ("" for non-runtime rows)
    tier: str = ""  # reference | exact | quantised | (candidates: by their guard)
    encode: Callable[[list[str]], np.ndarray] | None = None
    setup_s: float = 0.0
    status: str = "ok"  # ok | skipped: ... | failed: ...
    seconds: list[float] = field(default_factory=list)
    emb: np.ndarray | None = None
    guard: np.ndarray | None = None  # 1 - cos per guard text
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- encoders
def bare_encode(tok, model, texts: list[str], bs: int, max_length: int, sort: bool) -> np.ndarray:
    """Plain transformers: tokenise, forward, mean-pool over the mask, L2-normalise."""
    import torch
    import torch.nn.functional as F

    n = len(texts)
    order = np.argsort([-len(t) for t in texts], kind="stable") if sort else np.arange(n)
    out = np.empty((n, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            b = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            h = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            h = h.last_hidden_state  # (B, T, d)
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = F.normalize(e.float(), dim=-1).numpy()
    return out


def unsorted_encode(enc, texts: list[str], bs: int) -> np.ndarray:
    """``enc.encode`` without length bucketing: batches in input order (a sort within one
    batch does not change its padding)."""
    return np.concatenate([enc.encode(texts[s : s + bs]) for s in range(0, len(texts), bs)])


def make_bundle(enc, root: str) -> str:
    """A minimal bundle directory (manifest + encoder/) that ``irene.bundle.load_encoder``
    accepts: what ``BatchedEncoder`` loads. The other parts are not needed to encode."""
    from irene.bundle import FORMAT, FORMAT_VERSION

    enc.save(os.path.join(root, "encoder"))
    files = {}
    for d, _, names in os.walk(os.path.join(root, "encoder")):
        for nm in sorted(names):
            full = os.path.join(d, nm)
            with open(full, "rb") as f:
                files[os.path.relpath(full, root)] = hashlib.sha256(f.read()).hexdigest()
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files}
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return root


def serving_encode(be, texts: list[str], clients: int) -> np.ndarray:
    """``clients`` concurrent loops, each sending one-text ``encode`` requests."""

    async def run() -> np.ndarray:
        out = np.empty((len(texts), be.dim), dtype=np.float32)

        async def client(c: int) -> None:
            for i in range(c, len(texts), clients):
                out[i] = (await be.encode([texts[i]]))[0]

        await asyncio.gather(*(client(c) for c in range(clients)))
        return out

    return asyncio.run(run())


def onnx_file_encoder(enc, path: str, threads: int) -> Callable[[list[str]], np.ndarray]:
    """``enc`` (a TextEncoder) with its ONNX Runtime backend replaced by the graph ``path``
    (same tokenisation and length-sorted batching as ``TextEncoder.encode``)."""
    from irene.model import runtime as rt

    backend = rt.ort_backend(path, threads)
    e = copy.copy(enc)  # shares model and tokenizer; its own backend slot
    e.cfg = dataclasses.replace(enc.cfg, runtime="onnx")
    e._backend = ("onnx", e._weights_stamp(), backend)
    return e.encode


# ----------------------------------------------------------------------------- variants
def build_variants(a, texts: list[str]) -> tuple[list[Variant], dict]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from irene.config import DEFAULT_ENCODER, EncoderConfig
    from irene.model import runtime as rt
    from irene.model.encoder import TextEncoder, resolve_model_path

    path = resolve_model_path(DEFAULT_ENCODER)
    bs = a.batch_size or EncoderConfig().batch_size
    cfg = EncoderConfig(device="cpu", batch_size=bs)
    ml = cfg.max_length
    keep: dict[str, Any] = {"tmp": tempfile.TemporaryDirectory(prefix="encoder-bench-")}
    vs: list[Variant] = []

    def add(name, group, desc, setup: Callable[[], Callable], when=True, why="", **kw):
        v = Variant(name, group, desc, **kw)
        vs.append(v)
        if not when:
            v.status = f"skipped: {why}"
            return v
        t0 = time.perf_counter()
        try:
            v.encode = setup()
        except Exception as e:  # a runtime that does not work here is a result, not a crash
            msg = str(e).splitlines()[0][:200] if str(e) else ""
            v.status = f"failed: {type(e).__name__}: {msg}"
        v.setup_s = time.perf_counter() - t0
        return v

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    base = TextEncoder.from_config(dataclasses.replace(cfg, runtime="torch")).eval()
    keep["enc"] = base
    add(
        "bare",
        "reference",
        f"transformers AutoModel fp32, mean pool + normalise, length-sorted, bs={bs}",
        lambda: lambda x: bare_encode(tok, model, x, bs, ml, sort=True),
        runtime="torch",
        tier="reference",
    )

    # one TextEncoder per runtime, all sharing base's model (eval mode: encode() would put a
    # training-mode wrapper's *shared* model back into train mode afterwards)
    encs: dict[str, Any] = {}

    def runtime_encoder(name: str) -> Callable:
        e = TextEncoder(dataclasses.replace(cfg, runtime=name), base.model, base.tokenizer)
        e = e.eval()
        e.encode(texts[:8])  # export / load / compile: setup
        encs[name] = e
        return e.encode

    wanted = SMOKE_RUNTIMES if a.smoke else tuple(a.runtimes.split(","))
    for name in RUNTIMES:
        why = "--smoke" if a.smoke else "not in --runtimes"
        if name in wanted and not rt.installed(name):
            why = f"{rt.PACKAGES[name]} not installed (pip install 'irene[cpu-runtimes]')"
        add(
            name,
            "runtime",
            f"TextEncoder.encode, encoder.runtime={name}",
            lambda name=name: runtime_encoder(name),
            name in wanted and rt.installed(name),
            why,
            runtime=name,
            tier=rt.TIERS[name],
        )
    auto = rt.resolve("auto", "cpu", base.num_params)
    keep["auto"] = auto
    add(
        "auto",
        "main",
        f"TextEncoder.encode, encoder.runtime=auto (the default) -> {auto} here",
        lambda: runtime_encoder("auto"),
        runtime=auto,
        tier=rt.TIERS[auto],
    )

    def setup_serving():
        from serve_app.encoding import BatchedEncoder

        root = make_bundle(encs["auto"], os.path.join(keep["tmp"].name, "bundle"))
        be = BatchedEncoder(root, max_batch=SERVE_MAX_BATCH, threads=a.threads, device="cpu")
        keep["serving"] = be
        keep["serving_runtime"] = getattr(be, "_encoder", None) and be._encoder.runtime
        return lambda x: serving_encode(be, x, SERVE_CLIENTS)

    add(
        "serving",
        "main",
        f"serve_app BatchedEncoder.encode on a bundle saved by the auto encoder, "
        f"{SERVE_CLIENTS} concurrent 1-text requests, max_batch={SERVE_MAX_BATCH}, "
        f"threads={a.threads}",
        setup_serving,
        "auto" in encs,
        "auto failed",
        runtime=auto,
        tier=rt.TIERS[auto],
    )

    # ------------------------------------------------------------------ candidates
    cheap, why = not a.smoke, "--smoke"
    ort_ok = rt.installed("onnx")

    def onnx_fp32_path() -> str:
        if "onnx_fp32" not in keep:
            p = os.path.join(keep["tmp"].name, "fp32")
            os.makedirs(p)
            rt._export(base, "onnx", p)
            keep["onnx_fp32"] = os.path.join(p, "model.onnx")
        return keep["onnx_fp32"]

    def ort_int8_per_channel():
        dst = os.path.join(keep["tmp"].name, "int8-pc.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rt.quantize_onnx(onnx_fp32_path(), dst, per_channel=True)
        return onnx_file_encoder(base, dst, a.threads)

    add(
        "onnx-int8-per-channel",
        "candidate",
        "ORT dynamic int8, per-channel weight scales",
        ort_int8_per_channel,
        cheap and ort_ok,
        why if not cheap else "onnxruntime not installed",
        tier="quantised",
    )

    def ort_fused():
        from onnxruntime.transformers.optimizer import optimize_model

        c = model.config
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = optimize_model(
                onnx_fp32_path(), "bert", num_heads=c.num_attention_heads, hidden_size=c.hidden_size
            )
        keep["ort_fusions"] = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
        fused = os.path.join(keep["tmp"].name, "fused.onnx")
        m.save_model_to_file(fused)
        return onnx_file_encoder(base, fused, a.threads)

    add(
        "onnx-fused",
        "candidate",
        "ORT fp32, graph fused by onnxruntime.transformers.optimizer (bert)",
        ort_fused,
        cheap and ort_ok,
        why if not cheap else "onnxruntime not installed",
    )

    def bf16_weights():
        m = copy.deepcopy(model).to(torch.bfloat16)
        return TextEncoder(dataclasses.replace(cfg, runtime="torch"), m, tok).eval().encode

    add("bf16-weights", "candidate", "torch, weights cast to bf16", bf16_weights, cheap, why)

    def int8():
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
        return TextEncoder(dataclasses.replace(cfg, runtime="torch"), q, tok).eval().encode

    add(
        "torch-int8-dynamic",
        "candidate",
        "torch.ao quantize_dynamic(Linear, qint8)",
        int8,
        cheap,
        why,
        tier="quantised",
    )

    def compiled():
        m = torch.compile(copy.deepcopy(model), dynamic=True)
        e = TextEncoder(dataclasses.replace(cfg, runtime="torch"), m, tok).eval()
        e.encode(texts[: 2 * bs])  # compile (and its first recompiles) count as setup
        return e.encode

    add(
        "torch-compile",
        "candidate",
        "torch.compile(model, dynamic=True), inductor CPU; setup_s includes compilation",
        compiled,
        cheap and a.compile,
        why if not cheap else "--no-compile",
    )

    # ------------------------------------------------------------------ bucketing, sweeps
    if not a.smoke:
        for name in [*RUNTIMES, "auto"]:
            if name in encs:
                add(
                    f"{name} unsorted",
                    "bucketing",
                    f"as {name}, no length sort (input order, bs={bs})",
                    lambda name=name: lambda x: unsorted_encode(encs[name], x, bs),
                    runtime=encs[name].runtime,
                    tier=rt.TIERS[encs[name].runtime],
                )
        for name in ("torch", "auto"):
            for b in SWEEP:
                if name in encs:
                    add(
                        f"{name} bs={b}",
                        "sweep",
                        f"as {name}, length-sorted, bs={b}",
                        lambda name=name, b=b: lambda x: encs[name].encode(x, batch_size=b),
                        runtime=encs[name].runtime,
                        tier=rt.TIERS[encs[name].runtime],
                    )
    return vs, keep


def time_variant(v: Variant, texts: list[str]) -> None:
    t0 = time.perf_counter()
    emb = v.encode(texts)
    v.seconds.append(time.perf_counter() - t0)
    if v.emb is None:
        v.emb = np.asarray(emb, dtype=np.float32)


def fail(v: Variant, e: Exception) -> None:
    v.status, v.encode = f"failed: {type(e).__name__}: {str(e)[:200]}", None


def guard_tier(v: Variant) -> tuple[str, bool]:
    """(guard verdict, eligible for ``auto``) from the mean 1 - cos on the guard texts."""
    if v.guard is None:
        return "", False
    mean = float(np.mean(v.guard))
    if v.tier == "reference":
        return "reference", False
    if v.tier == "quantised":
        return "quantised: needs the WordNet 3-seed guard (not run)", False
    ok = mean <= EXACT_BAR
    return ("exact: pass" if ok else "exact: FAIL (mean > 1e-3)"), ok and v.group == "runtime"


def run(a) -> dict:
    from irene.device import set_threads

    set_threads(a.threads)
    import torch

    texts = sample_texts(a.data, a.texts)
    guard_n = 0 if a.smoke else a.guard_texts
    guard_texts = sample_texts(a.data, guard_n, seed=1) if guard_n else []
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    vs, keep = build_variants(a, texts)
    warm = texts[: min(len(texts), 256)]
    for v in vs:
        if v.encode is not None:
            try:
                v.encode(warm)
            except Exception as e:
                fail(v, e)
    timed = [v for v in vs if v.encode is not None]
    for r in range(a.repeats):  # interleaved rounds; ONCE, bucketing and sweeps: one round
        for v in timed:
            once = v.group in ("sweep", "bucketing") or v.name in ONCE
            if v.encode is not None and (r == 0 or not once):
                try:
                    time_variant(v, texts[:: SWEEP_STEP if v.group == "sweep" else 1])
                except Exception as e:
                    fail(v, e)
    bare = next(v for v in vs if v.name == "bare")
    if guard_texts:  # untimed: every runtime and candidate on the guard texts
        ref = bare.encode(guard_texts)
        for v in vs:
            if v.encode is not None and v.group in GUARDED and v.name != "serving":
                try:
                    v.guard = one_minus_cos(np.asarray(v.encode(guard_texts)), ref)
                except Exception as e:
                    fail(v, e)
    ref_full = bare.emb
    torch_row = next((v for v in vs if v.name == "torch" and v.seconds), bare)
    torch_tps = len(texts) / min(torch_row.seconds)
    rows = []
    for v in vs:
        row: dict[str, Any] = {
            "variant": v.name,
            "group": v.group,
            "runtime": v.runtime,
            "tier": v.tier,
            "description": v.description,
            "status": v.status if v.seconds or v.status != "ok" else "failed",
        }
        if v.seconds:
            step = SWEEP_STEP if v.group == "sweep" else 1
            ref = ref_full[::step]
            tps = len(ref) / min(v.seconds)
            c = one_minus_cos(v.emb, ref)
            if v.guard is None and v.group in GUARDED:
                v.guard = c  # --smoke / --guard-texts 0: the timed texts are the guard
            verdict, eligible = guard_tier(v)
            row.update(
                texts_per_s=round(tps, 1),
                texts=len(ref),
                texts_per_s_rounds=[round(len(ref) / s, 1) for s in v.seconds],
                ratio_to_torch=round(tps / torch_tps, 3),
                max_1_minus_cos_timed=float(np.max(c)),
                mean_1_minus_cos=float(np.mean(v.guard if v.guard is not None else c)),
                max_1_minus_cos=float(np.max(v.guard if v.guard is not None else c)),
                guard_texts=len(v.guard) if v.guard is not None else len(c),
                guard=verdict,
                eligible_for_auto=eligible,
                setup_s=round(v.setup_s, 2),
            )
        rows.append(row)
    ok_rows = [r for r in rows if "texts_per_s" in r]
    eligible = [r for r in ok_rows if r["eligible_for_auto"]]
    fastest = max(eligible, key=lambda r: r["texts_per_s"]) if eligible else None
    fastest_any = max(
        (r for r in ok_rows if r["group"] == "runtime"), key=lambda r: r["texts_per_s"]
    )
    auto_row = next((r for r in ok_rows if r["variant"] == "auto"), None)
    out = {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "smoke": a.smoke,
        "texts": len(texts),
        "guard_texts": len(guard_texts) or len(texts),
        "data": a.data if os.path.exists(os.path.join(a.data, "Y.txt")) else WORDNET_NOUN,
        "threads": a.threads,
        "torch_threads": torch.get_num_threads(),
        "batch_size": keep["enc"].cfg.batch_size,
        "max_length": keep["enc"].cfg.max_length,
        "repeats": a.repeats,
        "exact_bar": EXACT_BAR,
        "auto": {
            "runtime": keep["auto"],
            "ratio_to_torch": auto_row["ratio_to_torch"] if auto_row else None,
            "serving_runtime": keep.get("serving_runtime"),
        },
        "fastest_eligible": (
            {"runtime": fastest["variant"], "ratio_to_torch": fastest["ratio_to_torch"]}
            if fastest
            else None
        ),
        "fastest_any": {
            "runtime": fastest_any["variant"],
            "tier": fastest_any["tier"],
            "ratio_to_torch": fastest_any["ratio_to_torch"],
        },
        "machine": machine(keep),
        "ort_fusions": keep.get("ort_fusions"),
        "total_s": round(time.perf_counter() - t_start, 1),
        "rows": rows,
    }
    out["machine"]["loadavg_start"] = [round(x, 2) for x in load0]
    if "serving" in keep:
        out["serving_stats"] = keep["serving"].stats()
    keep["tmp"].cleanup()
    return out


def machine(keep: dict) -> dict:
    import importlib.metadata as md

    import torch

    from irene.model.runtime import cpu_flags

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512_bf16", "amx", "avx512_vnni")))
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": flags,
        "torch": torch.__version__,
        "onnxruntime": version("onnxruntime"),
        "openvino": version("openvino"),
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


def to_markdown(r: dict) -> str:
    m = r["machine"]
    auto, fe = r["auto"], r["fastest_eligible"]
    lines = [
        "# Encoder throughput",
        "",
        f"Written by `python bench/encoder_bench.py{' --smoke' if r['smoke'] else ''}` "
        f"({r['measured_at']}): {r['texts']} WordNet texts timed (80% train queries, 20% "
        f"labels), max_length {r['max_length']}, batch size {r['batch_size']}, "
        f"{r['threads']} threads, best of {r['repeats']} interleaved round(s) (bucketing, "
        f"sweeps and {', '.join(sorted(ONCE))}: 1 round; sweeps on every {SWEEP_STEP}nd "
        f"text). x torch: texts/s over the `torch` row's (TextEncoder fp32), same texts and "
        f"threads. 1 - cos: against `bare` (fp32) on {r['guard_texts']} other sampled texts "
        f"(the guard; bucketing/sweep rows: on their timed texts). Tier `exact`: mean 1 - cos "
        f"<= {r['exact_bar']:g}, eligible for `auto`; `quantised` (int8): eligible only after "
        "the WordNet benchmark guard (every arm within 0.5 points over 3 seeds), not run here.",
        "",
        f"- machine: {m['platform']}, {m['cpus']} CPUs, flags {' '.join(m['cpu_flags'])}, "
        f"torch {m['torch']} (CPU capability {m['cpu_capability']}), onnxruntime "
        f"{m['onnxruntime']}, openvino {m['openvino']}",
        f"- load average at start / end: {m['loadavg_start']} / {m['loadavg_end']} "
        "(the machine may be shared: rounds are interleaved and the best one is kept)",
        f"- `auto` (the default) resolves to **{auto['runtime']}** here: "
        f"{auto['ratio_to_torch']}x torch fp32; serving loads `{auto['serving_runtime']}`",
        f"- fastest eligible runtime: **{fe['runtime'] if fe else '-'}** "
        f"({fe['ratio_to_torch'] if fe else '-'}x); fastest of all runtimes: "
        f"{r['fastest_any']['runtime']} ({r['fastest_any']['tier']}, "
        f"{r['fastest_any']['ratio_to_torch']}x)",
        f"- total: {r['total_s']} s",
        "",
        "| variant | runtime | texts/s | x torch | mean 1-cos | max 1-cos | guard | setup s |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in r["rows"]:
        if "texts_per_s" in row:
            lines.append(
                f"| {row['variant']} | {row['runtime']} | {row['texts_per_s']:.1f} | "
                f"{row['ratio_to_torch']:.2f} | {row['mean_1_minus_cos']:.1e} | "
                f"{row['max_1_minus_cos']:.1e} | {row['guard']} | {row['setup_s']:.1f} |"
            )
        else:
            lines.append(
                f"| {row['variant']} | {row['runtime']} | - | - | - | - | {row['status']} | - |"
            )
    lines += ["", "Variants:", ""]
    lines += [f"- `{row['variant']}`: {row['description']}" for row in r["rows"]]
    if r.get("serving_stats"):
        lines += ["", f"Serving coalescer stats: {r['serving_stats']}"]
    if r.get("ort_fusions"):
        lines += ["", f"ORT fused operators: {r['ort_fusions']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="data/wordnet")
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--guard-texts", type=int, default=5000, help="0: the timed texts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=0, help="0: EncoderConfig's default")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the main rows")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--out", default="bench/results", help="directory for encoder.json/.md")
    p.add_argument("--smoke", action="store_true", help="64 texts, cheap variants, 1 round")
    a = p.parse_args(argv)
    if a.smoke:
        a.texts, a.repeats = min(a.texts, 64), 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    r = run(a)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "encoder.json"), "w") as f:
        json.dump(r, f, indent=2)
    md = to_markdown(r)
    with open(os.path.join(a.out, "encoder.md"), "w") as f:
        f.write(md)
    print(md)
    return r


if __name__ == "__main__":
    main()

"""In-process text-encoder throughput, side by side in one run: same texts, same thread count.

    python bench/encoder_bench.py [--texts 2000] [--threads 2] [--out bench/results] [--smoke]

``bench/prepare_encode.py`` times ``prepare``'s *Ray Data* encoding (actor pool, one torch
thread per actor); this script times the encoder itself in one process, without Ray, and
checks candidate faster runtimes against the fp32 embeddings. Variants (all on the same seeded
WordNet sample: 80% train queries, 20% label texts, as in ``prepare_encode.py``):

1. ``bare``: AutoTokenizer + AutoModel, mean pooling, L2-normalise, the same length-sorted
   batches as ``TextEncoder.encode`` -- the compute limit, and the fp32 reference;
2. ``ours``: ``TextEncoder.encode`` (the benchmark / ``prepare`` path);
3. ``serving``: ``serve_app.encoding.BatchedEncoder.encode`` on concurrent one-text requests
   (its Coalescer merges them, ``max_batch`` 32 as in ``serve_app.schemas``), on a minimal
   bundle holding only the encoder; ``threads`` passed explicitly, so no Ray is needed;
4. candidates: ``inference_mode``, bf16 autocast, bf16 weights, dynamic int8 quantisation,
   ``torch.compile``, ONNX Runtime (plain export, and BERT-fused graph), each with its
   ``max(1 - cos)`` against ``bare`` over all texts (bar: 1e-3);
5. a batch-size sweep of ``ours`` (length-sorted) and of ``bare`` without length sorting.

Main variants run ``--repeats`` interleaved rounds (this machine may be shared: the best round
is reported, the load average is recorded). Writes ``encoder.json`` and ``encoder.md`` under
``--out``. ``--smoke``: 64 texts, only bare/ours/serving/bf16-autocast, one round (seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
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
COS_BAR = 1e-3  # max(1 - cos) vs fp32 for a runtime to count as "equal embeddings"
WIN = 1.10  # a candidate must beat ``ours`` by this factor to be proposed
SERVE_MAX_BATCH = 32  # serve_app.schemas.BatchSettings.max_batch_size default
SERVE_CLIENTS = 32  # concurrent one-text requests in the serving variant
SWEEP = (16, 32, 64, 128)
SWEEP_STEP = 2  # the sweep encodes every second text (same length distribution, half the time)
ONCE = {"inference-mode", "bf16-weights", "int8-dynamic", "torch-compile"}  # one round only


def sample_texts(data: str, n: int, seed: int = 0) -> list[str]:
    """A seeded sample: 80% train queries, 20% label texts (``bench/prepare_encode.py``'s).
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
    return texts + list(ds.Y[: n - n_q])


def one_minus_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - np.sum(a * b, axis=1)


def max_one_minus_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(max(0.0, float(np.max(one_minus_cos(a, b)))))


@dataclass
class Variant:
    name: str
    group: str  # main | candidate | sweep
    description: str
    encode: Callable[[list[str]], np.ndarray] | None = None
    setup_s: float = 0.0
    status: str = "ok"  # ok | skipped: ... | failed: ...
    seconds: list[float] = field(default_factory=list)
    emb: np.ndarray | None = None
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


def onnx_export(enc, path: str) -> None:
    import torch

    tok = enc.tokenize(["a short text", "and a slightly longer second text"])
    args = (tok["input_ids"], tok["attention_mask"])
    kw: dict[str, Any] = dict(
        input_names=["input_ids", "attention_mask"],
        output_names=["emb"],
        opset_version=17,
    )
    dyn = {"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}, "emb": {0: "b"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # TorchScript exporter: fast, no onnxscript needed
            torch.onnx.export(enc.eval(), args, path, dynamic_axes=dyn, dynamo=False, **kw)
        except Exception:
            b, t = torch.export.Dim("b"), torch.export.Dim("t", max=512)
            shapes = {"input_ids": {0: b, 1: t}, "attention_mask": {0: b, 1: t}}
            torch.onnx.export(enc.eval(), args, path, dynamic_shapes=shapes, dynamo=True, **kw)


def ort_encoder(enc, path: str, threads: int, bs: int) -> Callable[[list[str]], np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    max_length = enc.cfg.max_length

    def encode(texts: list[str], batch_size: int = bs) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), enc.dim), dtype=np.float32)
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            b = enc.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="np",
            )
            feed = {k: b[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
            out[idx] = sess.run(None, feed)[0]
        return out

    return encode


# ----------------------------------------------------------------------------- variants
def build_variants(a, texts: list[str]) -> tuple[list[Variant], dict]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from irene.config import DEFAULT_ENCODER, EncoderConfig
    from irene.model.encoder import TextEncoder, resolve_model_path

    path = resolve_model_path(DEFAULT_ENCODER)
    cfg = EncoderConfig(device="cpu")
    bs, ml = a.batch_size or cfg.batch_size, cfg.max_length
    cfg = EncoderConfig(device="cpu", batch_size=bs)
    keep: dict[str, Any] = {"tmp": tempfile.TemporaryDirectory(prefix="encoder-bench-")}
    vs: list[Variant] = []

    def add(name, group, desc, setup: Callable[[], Callable], when: bool = True, why: str = ""):
        v = Variant(name, group, desc)
        vs.append(v)
        if not when:
            v.status = f"skipped: {why}"
            return v
        t0 = time.perf_counter()
        try:
            v.encode = setup()
        except Exception as e:  # a runtime that does not work here is a result, not a crash
            v.status = (
                f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            )
        v.setup_s = time.perf_counter() - t0
        return v

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    enc = TextEncoder.from_config(cfg).eval()

    add(
        "bare",
        "main",
        f"transformers AutoModel fp32, mean pool + normalise, length-sorted, bs={bs}",
        lambda: lambda x: bare_encode(tok, model, x, bs, ml, sort=True),
    )
    add("ours", "main", f"TextEncoder.encode fp32 (bs={bs})", lambda: enc.encode)

    def setup_serving():
        from serve_app.encoding import BatchedEncoder

        root = make_bundle(enc, os.path.join(keep["tmp"].name, "bundle"))
        be = BatchedEncoder(root, max_batch=SERVE_MAX_BATCH, threads=a.threads, device="cpu")
        keep["serving"] = be
        return lambda x: serving_encode(be, x, SERVE_CLIENTS)

    add(
        "serving",
        "main",
        f"serve_app BatchedEncoder.encode, {SERVE_CLIENTS} concurrent 1-text requests, "
        f"max_batch={SERVE_MAX_BATCH}, threads={a.threads}",
        setup_serving,
    )

    # one wrapper, built once and eval()'d: a TextEncoder starts in training mode, and its
    # encode() would put the *shared* enc.model back into train mode (dropout) afterwards
    enc_bf16 = TextEncoder(cfg, enc.model, enc.tokenizer, bf16_autocast=True).eval()
    add(
        "bf16-autocast",
        "candidate",
        "TextEncoder(bf16_autocast=True).encode: torch.autocast(bf16), fp32 weights",
        lambda: enc_bf16.encode,
    )
    cheap_only, why = a.smoke, "--smoke"

    def inference_mode():
        def f(x):
            with torch.inference_mode():
                return enc.encode(x)

        return f

    add(
        "inference-mode",
        "candidate",
        "TextEncoder.encode under torch.inference_mode",
        inference_mode,
        not cheap_only,
        why,
    )

    def bf16_weights():
        e = TextEncoder(cfg, copy.deepcopy(model).to(torch.bfloat16), tok).eval()
        return e.encode

    add(
        "bf16-weights",
        "candidate",
        "model weights cast to bf16 (pooling in bf16)",
        bf16_weights,
        not cheap_only,
        why,
    )

    def int8():
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
        return TextEncoder(cfg, q, tok).eval().encode

    add(
        "int8-dynamic",
        "candidate",
        "torch.ao quantize_dynamic(Linear, qint8)",
        int8,
        not cheap_only,
        why,
    )

    def compiled():
        e = TextEncoder(cfg, torch.compile(copy.deepcopy(model), dynamic=True), tok).eval()
        e.encode(texts[: 2 * bs])  # compile (and its first recompiles) count as setup
        return e.encode

    add(
        "torch-compile",
        "candidate",
        "torch.compile(model, dynamic=True), inductor CPU; setup_s includes compilation",
        compiled,
        not cheap_only and a.compile,
        why if cheap_only else "--no-compile",
    )
    try:
        import onnxruntime

        ort_ok, ort_why = True, f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort_ok, ort_why = False, "onnxruntime not installed (pip install onnxruntime)"
    keep["ort"] = ort_why
    onnx_path = os.path.join(keep["tmp"].name, "encoder.onnx")

    def ort_plain():
        onnx_export(enc, onnx_path)
        return ort_encoder(enc, onnx_path, a.threads, bs)

    v = add(
        "onnxruntime",
        "candidate",
        "torch.onnx.export (TorchScript exporter, pooling in the graph) + ORT CPU, ORT_ENABLE_ALL",
        ort_plain,
        ort_ok and not cheap_only,
        why if cheap_only else ort_why,
    )
    keep["ort_encode"] = v.encode

    def ort_fused():
        from onnxruntime.transformers.optimizer import optimize_model

        if not os.path.exists(onnx_path):
            onnx_export(enc, onnx_path)
        fused = os.path.join(keep["tmp"].name, "encoder-fused.onnx")
        c = model.config
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = optimize_model(
                onnx_path, "bert", num_heads=c.num_attention_heads, hidden_size=c.hidden_size
            )
        keep["ort_fusions"] = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
        m.save_model_to_file(fused)
        return ort_encoder(enc, fused, a.threads, bs)

    add(
        "onnxruntime-fused",
        "candidate",
        "as onnxruntime, graph fused by onnxruntime.transformers.optimizer (bert)",
        ort_fused,
        ort_ok and not cheap_only,
        why if cheap_only else ort_why,
    )
    if not a.smoke:
        for b in SWEEP:
            add(
                f"ours bs={b}",
                "sweep",
                f"TextEncoder.encode, length-sorted, bs={b}",
                lambda b=b: lambda x: enc.encode(x, batch_size=b),
            )
        for b in (32, bs):
            add(
                f"bare bs={b} unsorted",
                "sweep",
                f"bare, input order (no length sort), bs={b}",
                lambda b=b: lambda x: bare_encode(tok, model, x, b, ml, sort=False),
            )
        if keep_ort := keep["ort_encode"]:  # onnxruntime at smaller batch sizes
            for b in (16, 32):
                add(
                    f"onnxruntime bs={b}",
                    "sweep",
                    f"as onnxruntime, bs={b}",
                    lambda b=b: lambda x: keep_ort(x, batch_size=b),
                )
        for b in (16, 32):
            add(
                f"bf16-autocast bs={b}",
                "sweep",
                f"as bf16-autocast, bs={b}",
                lambda b=b: lambda x: enc_bf16.encode(x, batch_size=b),
            )
    keep["enc"] = enc
    return vs, keep


def time_variant(v: Variant, texts: list[str]) -> None:
    t0 = time.perf_counter()
    emb = v.encode(texts)
    v.seconds.append(time.perf_counter() - t0)
    if v.emb is None:
        v.emb = np.asarray(emb, dtype=np.float32)


def run(a) -> dict:
    from irene.device import set_threads

    set_threads(a.threads)
    import torch

    texts = sample_texts(a.data, a.texts)
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    vs, keep = build_variants(a, texts)
    warm = texts[: min(len(texts), 256)]
    for v in vs:
        if v.encode is not None:
            try:
                v.encode(warm)
            except Exception as e:
                v.status, v.encode = f"failed: {type(e).__name__}: {str(e)[:200]}", None
    timed = [v for v in vs if v.encode is not None]
    for r in range(a.repeats):  # interleaved rounds; ONCE and the sweep run one round
        for v in timed:
            if v.encode is not None and (r == 0 or (v.group != "sweep" and v.name not in ONCE)):
                try:
                    time_variant(v, texts[:: SWEEP_STEP if v.group == "sweep" else 1])
                except Exception as e:
                    v.status, v.encode = f"failed: {type(e).__name__}: {str(e)[:200]}", None
    ref_full = next(v for v in vs if v.name == "bare").emb
    ours = next(v for v in vs if v.name == "ours")
    ours_tps = len(texts) / min(ours.seconds) if ours.seconds else 0.0
    bare_tps = len(texts) / min(next(v for v in vs if v.name == "bare").seconds)
    rows = []
    for v in vs:
        row: dict[str, Any] = {
            "variant": v.name,
            "group": v.group,
            "description": v.description,
            "status": v.status if v.seconds or v.status != "ok" else "failed",
        }
        if v.seconds:
            step = SWEEP_STEP if v.group == "sweep" else 1
            ref = ref_full[::step]
            tps = len(ref) / min(v.seconds)
            cos = max_one_minus_cos(v.emb, ref)
            row.update(
                texts_per_s=round(tps, 1),
                texts=len(ref),
                texts_per_s_rounds=[round(len(ref) / s, 1) for s in v.seconds],
                ratio_to_bare=round(tps / bare_tps, 3),
                ratio_to_ours=round(tps / ours_tps, 3) if ours_tps else None,
                max_1_minus_cos=cos,
                n_over_bar=int(np.sum(one_minus_cos(v.emb, ref) > COS_BAR)),
                within_bar=cos <= COS_BAR,
                setup_s=round(v.setup_s, 2),
            )
            if v.name == "ours":
                row["adopted"] = "current default"
            elif v.group == "candidate":
                row["adopted"] = verdict(v.name, tps, ours_tps, cos)
        rows.append(row)
    out = {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "smoke": a.smoke,
        "texts": len(texts),
        "data": a.data if os.path.exists(os.path.join(a.data, "Y.txt")) else WORDNET_NOUN,
        "threads": a.threads,
        "torch_threads": torch.get_num_threads(),
        "batch_size": a.batch_size or keep["enc"].cfg.batch_size,
        "max_length": keep["enc"].cfg.max_length,
        "repeats": a.repeats,
        "cos_bar": COS_BAR,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "onnxruntime": keep["ort"],
            "loadavg_start": [round(x, 2) for x in load0],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "ort_fusions": keep.get("ort_fusions"),
        "total_s": round(time.perf_counter() - t_start, 1),
        "rows": rows,
    }
    if "serving" in keep:
        out["serving_stats"] = keep["serving"].stats()
    keep["tmp"].cleanup()
    return out


def verdict(name: str, tps: float, ours_tps: float, cos: float) -> str:
    if cos > COS_BAR:
        return "no: embeddings differ (> 1e-3)"
    if not ours_tps or tps < WIN * ours_tps:
        return "no: not >10% faster"
    if name == "bf16-autocast":
        return "opt-in proposed (needs CPU bf16: avx512_bf16/AMX)"
    if name.startswith("onnxruntime"):
        return "proposed for inference-only encoders (extra dependency)"
    return "candidate"


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Encoder throughput",
        "",
        f"Written by `python bench/encoder_bench.py{' --smoke' if r['smoke'] else ''}` "
        f"({r['measured_at']}): {r['texts']} WordNet texts (80% train queries, 20% labels), "
        f"max_length {r['max_length']}, {r['threads']} torch threads, best of {r['repeats']} "
        f"interleaved round(s) (the sweep and {', '.join(sorted(ONCE))}: 1 round; the sweep "
        f"on every {SWEEP_STEP}nd text: compare sweep rows with its own `ours bs=...`). max 1-cos is against `bare` (fp32) over "
        f"all texts; bar {r['cos_bar']:g}.",
        "",
        f"- machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']} "
        f"(CPU capability {m['cpu_capability']}), {m['onnxruntime']}",
        f"- load average at start / end: {m['loadavg_start']} / {m['loadavg_end']} "
        "(the machine may be shared: rounds are interleaved and the best one is kept)",
        f"- total: {r['total_s']} s",
        "",
        "| variant | texts/s | ratio to bare | ratio to ours | max 1-cos | setup s | adopted? |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in r["rows"]:
        if "texts_per_s" in row:
            lines.append(
                f"| {row['variant']} | {row['texts_per_s']:.1f} | {row['ratio_to_bare']:.2f} | "
                f"{row['ratio_to_ours']:.2f} | {row['max_1_minus_cos']:.1e} | "
                f"{row['setup_s']:.1f} | {row.get('adopted', '')} |"
            )
        else:
            lines.append(f"| {row['variant']} | - | - | - | - | - | {row['status']} |")
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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=0, help="0: EncoderConfig's default")
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

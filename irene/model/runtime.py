"""Encoder runtimes: what runs :class:`~irene.model.encoder.TextEncoder` 's model inside
``TextEncoder.encode`` on CPU -- torch (fp32 or bf16 autocast), ONNX Runtime or OpenVINO.

``resolve`` turns ``encoder.runtime`` (``auto`` or a name) into the runtime used on this
machine; ``export_backend`` builds a non-torch one from the loaded torch model (offline: no
download), cached on disk under the hash of the model's weights so that other processes
(Ray actors, Serve replicas, the next run) load it instead of exporting again. CUDA always
runs torch. Tiers: ``reference`` (torch fp32), ``exact`` (mean 1 - cos <= 1e-3 against it on
real texts; eligible for ``auto``), ``quantised`` (int8: eligible only after the benchmark
guard, so never picked by ``auto``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from irene.config import ENCODER_RUNTIMES

log = logging.getLogger(__name__)

TORCH_RUNTIMES = ("torch", "torch-bf16")
TIERS = {
    "torch": "reference",
    "torch-bf16": "exact",
    "onnx": "exact",
    "openvino": "exact",
    "openvino-bf16": "exact",
    "onnx-int8": "quantised",
}
PACKAGES = {"onnx": "onnxruntime", "onnx-int8": "onnxruntime", "openvino": "openvino"}
PACKAGES["openvino-bf16"] = "openvino"
# below this many parameters ``auto`` keeps torch fp32: exporting (seconds) does not pay off
# and tiny matmuls gain little from bf16 (the random test encoders stay bit-for-bit torch)
AUTO_MIN_PARAMS = 5_000_000
EXACT_BAR = 1e-3  # mean(1 - cos) vs torch fp32 on real texts for the "exact" tier
ONNX_OPSET = 17
CACHE_ENV = "IRENE_ENCODER_CACHE"

# (input_ids (B, T) int64, attention_mask (B, T) int64) -> (B, d) float32, L2-normalised
Backend = Callable[[np.ndarray, np.ndarray], np.ndarray]


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX): where bf16 runtimes are ~2-4x fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def installed(runtime: str) -> bool:
    pkg = PACKAGES.get(runtime)
    return pkg is None or importlib.util.find_spec(pkg) is not None


def auto_order() -> list[str]:
    """``auto``'s preference on this CPU, fastest first (bench/results/encoder.md)."""
    if cpu_has_bf16():
        return ["openvino-bf16", "torch-bf16", "openvino", "torch"]
    return ["openvino", "torch"]


def resolve(
    requested: str,
    device: str = "cpu",
    n_params: int | None = None,
    exclude: frozenset[str] = frozenset(),
) -> str:
    """The runtime ``encode`` uses for ``requested`` on ``device`` (``cuda``: torch). ``auto``:
    the first installed of :func:`auto_order` (torch for models under ``AUTO_MIN_PARAMS``).
    A named runtime whose package is missing falls back to ``auto``'s pick when it is of the
    exact tier (a warning); a quantised one is an error (its embeddings are not fp32's).
    ``exclude``: runtimes ``auto`` skips (their export failed for this model)."""
    if requested not in ENCODER_RUNTIMES:
        raise ValueError(f"unknown encoder runtime {requested!r}; one of {ENCODER_RUNTIMES}")
    if not str(device).startswith("cpu"):
        return "torch"
    if requested == "auto":
        if n_params is not None and n_params < AUTO_MIN_PARAMS:
            return "torch"
        return next(r for r in auto_order() if installed(r) and r not in exclude)
    if installed(requested):
        return requested
    if TIERS[requested] == "quantised":
        raise RuntimeError(
            f"encoder runtime {requested!r} needs the package {PACKAGES[requested]!r} "
            "(pip install 'irene[cpu-runtimes]'); it is not interchangeable with fp32"
        )
    fallback = next(r for r in auto_order() if installed(r))
    log.warning(
        "encoder runtime %r needs %r, not installed: using %r (same tier)",
        requested,
        PACKAGES[requested],
        fallback,
    )
    return fallback


# ----------------------------------------------------------------------------- export cache
def cache_root() -> str:
    """``$IRENE_ENCODER_CACHE``, else ``$XDG_CACHE_HOME/irene/encoder-runtimes``
    (``~/.cache/...``): read-only model directories (site-packages, a bundle's copy) stay
    untouched, and every process of the machine shares one export per model."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "irene", "encoder-runtimes")


def weights_hash(model: nn.Module) -> str:
    """A content hash of the state dict (names, dtypes, shapes, bytes): the export cache key,
    so a fine-tuned encoder never reuses its base model's export."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def _format(runtime: str) -> str:
    """The on-disk export a runtime loads (bf16 is a compile option of the fp32 IR)."""
    return {"openvino-bf16": "openvino"}.get(runtime, runtime)


def _tag(fmt: str) -> str:
    if fmt == "openvino":
        import openvino

        return f"openvino-{openvino.__version__.split('-')[0]}"
    import onnxruntime

    return f"{fmt}-opset{ONNX_OPSET}-ort{onnxruntime.__version__}"


def cached_export(encoder: nn.Module, fmt: str, key: str) -> str:
    """The directory holding ``encoder``'s export in ``fmt``: made once per weights hash,
    written to a temp dir and renamed into place (atomic; a concurrent exporter's copy wins)."""
    root = cache_root()
    final = os.path.join(root, key, _tag(fmt))
    if os.path.exists(os.path.join(final, "DONE")):
        return final
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(final))
    except OSError:  # read-only cache: a per-process export
        log.warning("encoder runtime cache %s not writable: exporting to a temp dir", root)
        final = tmp = tempfile.mkdtemp(prefix="irene-encoder-export-")
    _export(encoder, fmt, tmp)
    open(os.path.join(tmp, "DONE"), "w").close()
    if tmp != final:
        try:
            os.rename(tmp, final)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("encoder export (%s) at %s", fmt, final)
    return final


def _example(encoder) -> tuple[torch.Tensor, torch.Tensor]:
    tok = encoder.tokenizer(
        ["a short text", "and a slightly longer second text"], padding=True, return_tensors="pt"
    )
    return tok["input_ids"].cpu(), tok["attention_mask"].cpu()


def _export(encoder: nn.Module, fmt: str, out: str) -> None:
    """Trace ``encoder.forward`` (model + mean pooling + L2 norm) in eval mode on CPU."""
    was_training, device = encoder.training, next(encoder.parameters()).device
    encoder.eval().cpu()
    args = _example(encoder)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if fmt == "openvino":
                import openvino as ov

                dyn = ov.PartialShape([-1, -1])
                m = ov.convert_model(
                    encoder,
                    example_input=args,
                    input=[("input_ids", dyn, ov.Type.i64), ("attention_mask", dyn, ov.Type.i64)],
                )
                ov.save_model(m, os.path.join(out, "model.xml"), compress_to_fp16=False)
            else:
                fp32 = os.path.join(out, "model-fp32.onnx")
                dyn_axes = {"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}}
                torch.onnx.export(
                    encoder,
                    args,
                    fp32,
                    input_names=["input_ids", "attention_mask"],
                    output_names=["emb"],
                    dynamic_axes={**dyn_axes, "emb": {0: "b"}},
                    opset_version=ONNX_OPSET,
                    dynamo=False,  # the TorchScript exporter: no onnxscript, seconds
                )
                if fmt == "onnx-int8":
                    quantize_onnx(fp32, os.path.join(out, "model.onnx"))
                    os.remove(fp32)
                else:
                    os.rename(fp32, os.path.join(out, "model.onnx"))
    finally:
        encoder.to(device).train(was_training)


def quantize_onnx(src: str, dst: str, per_channel: bool = False) -> None:
    """Dynamic int8 quantisation of the MatMul weights (activations quantised per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel)


# ----------------------------------------------------------------------------- backends
def ort_backend(path: str, threads: int) -> Backend:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        return sess.run(None, feed)[0]

    return run


def openvino_backend(path: str, threads: int, bf16: bool) -> Backend:
    import openvino as ov

    core = ov.Core()
    cm = core.compile_model(
        path,
        "CPU",
        {
            # bf16 only where the CPU has it natively (a bundle saved as openvino-bf16 on an
            # AMX machine, served on an older CPU: f32, the same tier)
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 and cpu_has_bf16() else "f32",
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,  # shared machines, Ray actors: no core pinning
        },
    )

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        req = cm.create_infer_request()  # one per call: thread-safe, cheap
        res = req.infer({"input_ids": input_ids, "attention_mask": attention_mask})
        return np.asarray(res[0], dtype=np.float32)

    return run


def export_backend(encoder: nn.Module, runtime: str, threads: int | None = None) -> Backend:
    """A ``Backend`` running ``encoder`` (a TextEncoder) in ``runtime`` (not torch) with
    ``threads`` (default: torch's thread count in the calling thread)."""
    threads = threads or torch.get_num_threads()
    fmt = _format(runtime)
    path = cached_export(encoder, fmt, weights_hash(encoder))
    if fmt == "openvino":
        return openvino_backend(os.path.join(path, "model.xml"), threads, runtime.endswith("bf16"))
    return ort_backend(os.path.join(path, "model.onnx"), threads)

"""Codec benchmark: encode/decode throughput, bits per element and relative L2 error of every codec.

Throughput is measured in GB/s of the *uncompressed* tensor (input bytes / time), median of --reps timed
runs after one warm-up run (which also triggers torch.compile on the first use; compiled kernels are cached on
disk, so a second process starts fast). Encode writes into a preallocated payload buffer and decode into a
preallocated output wherever the codec allows, like the memcpy baseline.

Baselines measured in the same run, on the same data:
  memcpy         copy into a preallocated buffer (the ceiling for any codec that reads its input once)
  eager_int8     plain eager torch blockwise absmax int8 (block 128), no fused kernel, no buffer reuse
  bnb_int8       bitsandbytes quantize_blockwise/dequantize_blockwise (block 4096) when installed ([bench])
  torch_topk     torch.topk of |x| at the approximate top-k ratio (for the atopk speed-up and recall)

Data: N(0,1) ("normal") and hidden states of a small transformer on real text ("real", MiniLM-L6 when the [hf]
extra is installed). Example: layeredge bench codecs --size-mb 64 --json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from layeredge_dist.bench import output
from layeredge_dist.bench.data import normal_data, real_activations
from layeredge_dist.codecs import Codec, CodecError, parse_codec

DEFAULT_CODECS = (
    "fp16", "bf16", "fp8e4m3", "fp8e5m2", "int8", "int4", "int3", "int2", "int4/rht", "int2/rht", "int8/sr",
    "topk:0.01", "atopk:0.01", "randk:0.01", "topk:0.05+int8", "atopk:0.05+int4", "klt:3", "klt:2",
)


@dataclass(frozen=True)
class CodecResult:
    """One codec on one data set. Speeds in GB/s of uncompressed input; rel_error = ||x - x̂|| / ||x||."""

    codec: str
    data: str
    encode_gbps: float
    decode_gbps: float
    bits_per_element: float
    rel_error: float
    recall: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    """Median wall time of ``reps`` calls of ``fn`` after one untimed warm-up call (seconds)."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rel_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """||x - y||_2 / ||x||_2 computed in float64."""
    x64, y64 = x.double(), y.double()
    return float(torch.linalg.vector_norm(x64 - y64) / torch.linalg.vector_norm(x64))


def topk_recall(x: torch.Tensor, decoded: torch.Tensor, ratio: float) -> float:
    """Fraction of the exact top-k (by |x|, k = ceil(ratio·n)) positions that are non-zero in ``decoded``."""
    k = max(1, math.ceil(ratio * x.numel()))
    exact = torch.topk(x.abs().reshape(-1), k, sorted=False).indices
    return float((decoded.reshape(-1)[exact] != 0).sum()) / k


def bench_codec(codec: Codec, x: torch.Tensor, data: str, reps: int) -> CodecResult:
    """Measure one codec on ``x`` (fp32, flat or rows of features)."""
    gbytes = x.numel() * x.element_size() / 1e9
    try:
        buf = torch.empty(codec.payload_nbytes(x.numel()), dtype=torch.uint8, device=x.device)
        enc = codec.encode(x, out=buf)
        encode = lambda: codec.encode(x, out=buf)  # noqa: E731
    except CodecError:  # data-dependent payload size: no preallocated buffer
        enc = codec.encode(x)
        encode = lambda: codec.encode(x)  # noqa: E731
    t_enc = median_seconds(encode, reps, x.device)
    out = torch.empty_like(x)
    t_dec = median_seconds(lambda: codec.decode(enc, out=out), reps, x.device)
    decoded = codec.decode(enc)
    recall = None
    name = codec.spec.split("+")[0]
    if name.startswith(("topk:", "atopk:")):
        recall = topk_recall(x, decoded, float(name.split(":")[1]))
    return CodecResult(codec.spec, data, gbytes / t_enc, gbytes / t_dec, enc.bits_per_element,
                       rel_error(x, decoded), recall)


def memcpy_gbps(x: torch.Tensor, reps: int) -> float:
    """Copy into a preallocated buffer, GB/s."""
    dst = torch.empty_like(x)
    return x.numel() * x.element_size() / 1e9 / median_seconds(lambda: dst.copy_(x), reps, x.device)


def _eager_int8(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain eager blockwise absmax int8 (no fusion, fresh buffers)."""
    n = x.numel()
    pad = (-n) % block
    xb = torch.nn.functional.pad(x, (0, pad)).reshape(-1, block)  # (nblocks, block)
    scale = xb.abs().amax(dim=1, keepdim=True) / 127.0
    q = torch.round(xb / scale.clamp_min(1e-30)).to(torch.int8)
    return q, scale


def _eager_int8_decode(q: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    return (q.float() * scale).reshape(-1)[:n]


def eager_int8_baseline(x: torch.Tensor, reps: int, block: int = 128) -> dict[str, float]:
    """The naive eager torch int8 blockwise codec: encode/decode GB/s and relative error."""
    gbytes = x.numel() * 4 / 1e9
    q, s = _eager_int8(x, block)
    t_enc = median_seconds(lambda: _eager_int8(x, block), reps, x.device)
    t_dec = median_seconds(lambda: _eager_int8_decode(q, s, x.numel()), reps, x.device)
    return {"encode_gbps": gbytes / t_enc, "decode_gbps": gbytes / t_dec,
            "rel_error": rel_error(x, _eager_int8_decode(q, s, x.numel()))}


def bnb_baseline(x: torch.Tensor, reps: int) -> dict[str, float] | None:
    """bitsandbytes blockwise 8-bit at its default block (4096); None when not installed or unsupported."""
    try:
        import bitsandbytes.functional as bnbf
    except Exception:  # not installed, or no backend for this device
        return None
    gbytes = x.numel() * 4 / 1e9
    try:
        q, state = bnbf.quantize_blockwise(x)
        t_enc = median_seconds(lambda: bnbf.quantize_blockwise(x), reps, x.device)
        # bitsandbytes has no CPU kernel for the out= variant, so decode allocates its output
        t_dec = median_seconds(lambda: bnbf.dequantize_blockwise(q, state), reps, x.device)
    except (RuntimeError, NotImplementedError) as e:
        _log(f"bitsandbytes baseline unavailable on {x.device}: {str(e).splitlines()[0]}")
        return None
    return {"encode_gbps": gbytes / t_enc, "decode_gbps": gbytes / t_dec,
            "rel_error": rel_error(x, bnbf.dequantize_blockwise(q, state)), "block": 4096}


def torch_topk_gbps(x: torch.Tensor, ratio: float, reps: int) -> float:
    """torch.topk of |x| at ``ratio``, GB/s of input."""
    k = max(1, math.ceil(ratio * x.numel()))
    return x.numel() * 4 / 1e9 / median_seconds(lambda: torch.topk(x.abs(), k, sorted=False), reps, x.device)


def _find(results: list[CodecResult], codec: str, data: str) -> CodecResult | None:
    return next((r for r in results if r.codec == codec and r.data == data), None)


def summarize(results: list[CodecResult], baselines: dict) -> dict[str, float | None]:
    """The issue's target ratios from this run's numbers (None where a part was not measured)."""
    int8 = _find(results, "int8", "normal")
    at = _find(results, "atopk:0.01", "normal")
    bnb = baselines.get("bnb_int8")
    s: dict[str, float | None] = {
        "int8_encode_vs_memcpy": int8.encode_gbps / baselines["memcpy_gbps"] if int8 else None,
        "int8_encode_vs_bnb": int8.encode_gbps / bnb["encode_gbps"] if int8 and bnb else None,
        "int8_decode_vs_bnb": int8.decode_gbps / bnb["decode_gbps"] if int8 and bnb else None,
        "int8_rel_error_minus_bnb": int8.rel_error - bnb["rel_error"] if int8 and bnb else None,
        "atopk_vs_torch_topk": at.encode_gbps / baselines["torch_topk_gbps"] if at else None,
        "atopk_recall": at.recall if at else None,
    }
    return s


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI flags of ``layeredge bench codecs``."""
    p.add_argument("--size-mb", type=float, default=64.0, help="fp32 tensor size in MiB (default 64 = 16M elements)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--codecs", default=",".join(DEFAULT_CODECS),
                   help="comma-separated codec specs (default: a representative set of every family)")
    p.add_argument("--data", default="normal,real", help="comma-separated data sets: normal, real (default both)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per measurement, median reported")
    p.add_argument("--no-baselines", action="store_true", help="skip memcpy/eager/bitsandbytes/topk baselines")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit code (2 for bad arguments)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.size_mb <= 0 or args.reps < 1:
        print("error: --size-mb must be > 0 and --reps >= 1", file=sys.stderr)
        return 2
    try:
        codecs = [parse_codec(s) for s in args.codecs.split(",") if s]
    except CodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    datasets = [d for d in args.data.split(",") if d]
    unknown = set(datasets) - {"normal", "real"}
    if unknown:
        print(f"error: unknown data set(s) {sorted(unknown)}; choose from normal, real", file=sys.stderr)
        return 2
    numel = max(1, int(args.size_mb * (1 << 20)) // 4)  # MB = 2**20 bytes of fp32
    device = torch.device(args.device)
    data: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for d in datasets:
        _log(f"preparing {d} data ({numel * 4 / 1e6:.1f} MB fp32)...")
        if d == "normal":
            data[d], sources[d] = normal_data(numel, args.device), "N(0,1), seed 0"
        else:  # one token per row, as activations cross a cut; only shape-aware codecs (klt) look at the rows
            acts = real_activations(numel, args.device)
            data[d], sources[d] = acts.values.view(-1, acts.width), f"{acts.source}, rows of {acts.width}"

    baselines: dict = {}
    x0 = next(iter(data.values())).reshape(-1)  # the baselines work on flat tensors
    baselines["memcpy_gbps"] = memcpy_gbps(x0, args.reps)
    if not args.no_baselines:
        _log("baselines: eager torch int8, bitsandbytes int8, torch.topk ...")
        baselines["eager_int8"] = eager_int8_baseline(x0, args.reps)
        baselines["bnb_int8"] = bnb_baseline(x0, args.reps)
        baselines["torch_topk_gbps"] = torch_topk_gbps(x0, 0.01, args.reps)

    results: list[CodecResult] = []
    for d, x in data.items():
        for c in codecs:
            _log(f"  {d:6s} {c.spec} ...")
            results.append(bench_codec(c, x, d, args.reps))

    doc = {
        "config": {"size_bytes": numel * 4, "device": str(device), "threads": torch.get_num_threads(),
                   "reps": args.reps, "torch": torch.__version__, "data_sources": sources},
        "results": [asdict(r) for r in results],
        "baselines": baselines,
        "summary": summarize(results, baselines) if "torch_topk_gbps" in baselines else {},
    }
    if not output.emit(doc, args, indent=2):
        _print_table(doc)
    return 0


def _print_table(doc: dict) -> None:
    print(f"{'codec':22s} {'data':7s} {'enc GB/s':>9s} {'dec GB/s':>9s} {'bits/el':>8s} {'rel err':>9s} {'recall':>7s}")
    for r in doc["results"]:
        rec = f"{r['recall']:.3f}" if r["recall"] is not None else ""
        print(f"{r['codec']:22s} {r['data']:7s} {r['encode_gbps']:9.2f} {r['decode_gbps']:9.2f} "
              f"{r['bits_per_element']:8.3f} {r['rel_error']:9.2e} {rec:>7s}")
    b = doc["baselines"]
    print(f"\nmemcpy (preallocated): {b['memcpy_gbps']:.2f} GB/s")
    for name in ("eager_int8", "bnb_int8"):
        v = b.get(name)
        if v:
            print(f"{name}: encode {v['encode_gbps']:.2f} GB/s, decode {v['decode_gbps']:.2f} GB/s, "
                  f"rel err {v['rel_error']:.2e}")
        elif name in b:
            print(f"{name}: not available (install the [bench] extra)")
    if "torch_topk_gbps" in b:
        print(f"torch.topk 1%: {b['torch_topk_gbps']:.3f} GB/s")
    for k, v in doc["summary"].items():
        print(f"{k}: {'n/a' if v is None else f'{v:.3f}'}")

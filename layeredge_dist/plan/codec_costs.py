"""What a codec costs on an edge: exact wire bytes (from the codec object) and encode/decode time.

Speeds are bytes per second of the *uncompressed fp32 input* (so ``elements * 4 / speed`` seconds), from the
``real`` rows (all-MiniLM-L6-v2 hidden states) of ``docs/benchmarks.md``: 64 MiB tensors, 2 torch threads, the
compiled fused kernels, on the 2-core development machines. ``fp32``/``raw`` cost a copy each way (the memcpy
baseline, 14.1 GB/s). Specs not in the table are estimated from their family (see :func:`default_speeds`).
Measured numbers for the actual machines can override the table: a mapping ``spec -> (encode_Bps, decode_Bps)``.

The time of one tensor crossing an edge (:func:`edge_time`) is
``latency + wire_bytes / bandwidth + elements * 4 / encode_Bps + elements * 4 / decode_Bps``:
encode, transfer and decode are not overlapped with each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from layeredge_dist.codecs import parse_any
from layeredge_dist.codecs.spec import Chain, Term, Wrapped, parse_spec

if TYPE_CHECKING:
    from .cluster import LinkSpec

Speeds = Mapping[str, tuple[float, float]]

#: memcpy into a preallocated buffer (bytes/s), the fp32 baseline of docs/benchmarks.md.
MEMCPY_BPS = 14.1e9
#: Bytes per element of the uncompressed tensors the speeds refer to (fp32).
INPUT_BYTES_PER_ELEMENT = 4

#: (encode, decode) bytes/s of fp32 input, docs/benchmarks.md ``real`` rows (2 cores, compiled kernels).
DEFAULT_SPEEDS: Mapping[str, tuple[float, float]] = {
    "fp32": (MEMCPY_BPS, MEMCPY_BPS),
    "raw": (MEMCPY_BPS, MEMCPY_BPS),
    "fp16": (16.1e9, 15.3e9),
    "bf16": (18.0e9, 16.9e9),
    "fp8e4m3": (1.93e9, 2.00e9),
    "fp8e5m2": (1.95e9, 6.07e9),
    "int8": (11.7e9, 14.8e9),
    "int4": (12.4e9, 16.1e9),
    "int3": (10.4e9, 15.3e9),
    "int2": (13.1e9, 16.8e9),
    "int4/rht": (0.84e9, 0.82e9),
    "int2/rht": (1.04e9, 0.98e9),
    "int8/sr": (0.80e9, 15.6e9),
    "topk:0.01": (0.19e9, 8.67e9),
    "atopk:0.01": (2.11e9, 8.96e9),
    "randk:0.01": (5.41e9, 5.46e9),
    "topk:0.05+int8": (0.19e9, 2.91e9),
    "atopk:0.05+int4": (1.60e9, 2.97e9),
}
#: Per sparsifier family: (encode, decode) alone and (encode, decode) with a value codec. Estimates for ratios
#: and value codecs that were not measured.
_SPARSE_FAMILY: Mapping[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "topk": ((0.19e9, 8.67e9), (0.19e9, 2.91e9)),
    "atopk": ((2.11e9, 8.96e9), (1.60e9, 2.97e9)),
    "randk": ((5.41e9, 5.46e9), (4.0e9, 3.0e9)),
}
#: A Hadamard rotation runs at ~1 GB/s on these CPUs whatever the bit width.
_RHT_SPEED = (0.9e9, 0.9e9)
#: ``klt:B`` on the demo's 32 K-element activations of 128 features (1 thread, these CPUs; the three e2e runs of
#: docs/benchmarks.md measured 32-50 MB/s encode, 120-190 MB/s decode): a covariance, a small eigendecomposition
#: and projections per tensor; ``layeredge bench e2e`` measures it on the model's own shape.
_KLT_SPEED = (0.04e9, 0.15e9)
#: Stochastic rounding: encode dominated by drawing noise with torch's CPU RNG.
_SR_ENCODE = 0.8e9
#: Memory passes a stateful wrapper adds (at memcpy speed): error feedback adds x + residual and the residual
#: update on encode; delta subtracts / adds the reference and stores it on both sides.
_WRAPPER_PASSES: Mapping[str, tuple[int, int]] = {"ef": (2, 0), "delta": (2, 2)}


@lru_cache(maxsize=4096)
def _codec(spec: str):  # -> Codec | ErrorFeedback | DeltaCodec
    return parse_any(spec)


def canonical_spec(spec: str) -> str:
    """The canonical form of ``spec`` (``parse_any(spec).spec``); CodecError (a ValueError) when unknown."""
    return _codec(spec).spec


def is_lossless(spec: str) -> bool:
    """True for codecs whose reconstruction is bitwise exact: ``fp32`` and ``raw``."""
    return canonical_spec(spec) in ("fp32", "raw")


@lru_cache(maxsize=65536)
def wire_bytes(spec: str, numel: int) -> int:
    """Exact payload bytes of ``numel`` fp32 elements under ``spec`` (metadata included)."""
    codec = _codec(spec)
    if canonical_spec(spec) == "raw":
        return int(codec.payload_nbytes(numel, "float32"))
    return int(codec.payload_nbytes(numel))


def _slower(speed: float, passes: int) -> float:
    """``speed`` after adding ``passes`` extra memory passes at memcpy speed (harmonic combination)."""
    return 1.0 / (1.0 / speed + passes / MEMCPY_BPS) if passes else speed


def _term_speeds(term: Term) -> tuple[float, float]:
    base = str(Term(term.name, term.arg))
    opts = set(term.options)
    if term.name in _SPARSE_FAMILY:
        return _SPARSE_FAMILY[term.name][0]
    if base in DEFAULT_SPEEDS:
        enc, dec = DEFAULT_SPEEDS[base]
    elif term.name.startswith("int"):
        enc, dec = DEFAULT_SPEEDS["int4"]
    elif term.name == "klt":
        enc, dec = _KLT_SPEED
    else:
        enc, dec = (1e9, 1e9)  # an unmeasured family: a conservative guess
    if "rht" in opts:
        enc, dec = _RHT_SPEED
    if "sr" in opts:
        enc = min(enc, _SR_ENCODE)
    return enc, dec


def default_speeds(spec: str) -> tuple[float, float]:
    """Built-in (encode, decode) bytes/s for ``spec``: the measured table when it lists the canonical spec,
    else an estimate: block-size options do not change speed; ``/rht`` runs at ~0.9 GB/s, ``/sr`` encodes at
    ~0.8 GB/s; a sparsifier at its family's speed (with a value codec: the measured composite's); ``ef(...)`` and
    ``delta(...)`` add memory passes to their inner codec."""
    canon = canonical_spec(spec)
    if canon in DEFAULT_SPEEDS:
        return DEFAULT_SPEEDS[canon]
    node = parse_spec(canon)
    if isinstance(node, Wrapped):
        enc, dec = default_speeds(str(node.inner))
        pe, pd = _WRAPPER_PASSES[node.wrapper]
        return _slower(enc, pe), _slower(dec, pd)
    assert isinstance(node, Chain)
    if len(node.terms) == 2 and node.terms[0].name in _SPARSE_FAMILY:
        return _SPARSE_FAMILY[node.terms[0].name][1]
    return _term_speeds(node.terms[0])


@dataclass(frozen=True)
class CodecCost:
    """A codec's cost model: ``spec`` (canonical), encode and decode speed in bytes/s of fp32 input."""

    spec: str
    encode_Bps: float
    decode_Bps: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", canonical_spec(self.spec))
        for name in ("encode_Bps", "decode_Bps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

    def bits_per_element(self, numel: int) -> float:
        """Exact payload bits per element for ``numel`` elements (from the codec object)."""
        return 8.0 * wire_bytes(self.spec, numel) / numel if numel else 0.0

    def wire_bytes(self, numel: int) -> int:
        """Exact payload bytes for ``numel`` elements."""
        return wire_bytes(self.spec, numel)

    def encode_s(self, numel: int) -> float:
        """Seconds to encode ``numel`` fp32 elements."""
        return 0.0 if math.isinf(self.encode_Bps) else numel * INPUT_BYTES_PER_ELEMENT / self.encode_Bps

    def decode_s(self, numel: int) -> float:
        """Seconds to decode ``numel`` elements."""
        return 0.0 if math.isinf(self.decode_Bps) else numel * INPUT_BYTES_PER_ELEMENT / self.decode_Bps


@lru_cache(maxsize=4096)
def _cost_default(spec: str) -> CodecCost:
    return CodecCost(spec, *default_speeds(spec))


def codec_cost(spec: str, speeds: Speeds | None = None) -> CodecCost:
    """The cost model of ``spec``: measured ``speeds[spec]`` (matched by canonical spec) when given, else the
    built-in table. ValueError (CodecError) for an unknown spec."""
    if speeds:
        canon = canonical_spec(spec)
        for key, (enc, dec) in speeds.items():
            if canonical_spec(key) == canon:
                return CodecCost(canon, float(enc), float(dec))
    return _cost_default(spec)


def edge_time(cost: CodecCost, elements: int, link: LinkSpec) -> float:
    """Seconds for one tensor of ``elements`` fp32 elements to cross ``link`` under ``cost``:
    ``latency + wire_bytes / bandwidth + elements*4/encode_Bps + elements*4/decode_Bps``."""
    return link.transfer_s(cost.wire_bytes(elements)) + cost.encode_s(elements) + cost.decode_s(elements)

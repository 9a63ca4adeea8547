"""Sparsifiers: keep ``k = ceil(ratio * n)`` elements of a tensor and send their positions and values.

Three families, spec ``<name>:<ratio>[+<value codec>]``:

``topk:0.05``
    exact top-k by magnitude (``torch.topk``); fixed payload size.
``atopk:0.01``
    approximate top-k: the magnitude threshold is estimated from a random sample of the tensor and every
    element at or above it is kept, so the kept count (and payload size) varies with the data around the
    nominal ``k``. Several times faster than ``torch.topk`` on large tensors.
``randk:0.1``
    ``k`` distinct uniformly random positions drawn from a 64-bit seed; only the seed travels, the receiver
    regenerates the positions (on the CPU, so CPU and CUDA agree). Fixed payload size.

A second term (``topk:0.05+int8``) encodes the kept values, as a 1-D tensor of length ``k``, with another
codec; without one they travel as raw fp32 (lossless for every input dtype, and the payload size stays a
function of ``numel`` alone).

Payload layout (little-endian)::

    topk / atopk: [u64 header = k | L << 56][values: inner.payload_nbytes(k) or 4k][Elias-Fano]
    randk:        [u64 seed][values]

where the Elias-Fano section (:mod:`.elias_fano`) codes the sorted kept indices with ``L`` low bits. The
values start 8 bytes in, so raw values and an inner codec's payload stay 8-byte aligned. Decoding validates
every field and raises :class:`CodecError` naming the problem; the result is zero except at kept positions.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from . import elias_fano
from .base import SUPPORTED_DTYPES, Codec, CodecError, Encoded
from .spec import Term, format_ratio, number_arg

HEADER_NBYTES = 8
#: Without a value codec, kept values travel as little-endian fp32 (lossless for fp32/fp16/bf16 inputs), so
#: the payload size depends only on ``numel`` whatever the input dtype.
RAW_VALUE_NBYTES = 4
_K_BITS = 56
_K_MASK = (1 << _K_BITS) - 1
#: atopk estimates its threshold from about this many sample elements expected above the threshold.
_ATOPK_TAIL_SAMPLES = 2000
_ATOPK_MIN_SAMPLE = 16384
_ATOPK_MAX_SAMPLE = 1 << 20
#: atopk falls back to exact top-k when ties make it keep more than this multiple of the nominal k.
_ATOPK_OVERSHOOT = 2
#: atopk builds its keep-mask in chunks of this many elements (keeps temporaries in cache).
_ATOPK_CHUNK = 1 << 20


class SparseCodec(Codec):
    """Keep a fraction ``ratio`` of the elements (see the module docstring for the three methods).

    ``values`` optionally encodes the kept values (e.g. ``int8``); it must be a fixed-size, non-sparse codec
    of float dtypes only (``raw`` is refused: its size depends on the dtype and raw values are the default).
    """

    NAMES: tuple[str, ...] = ("topk", "atopk", "randk")

    def __init__(self, method: str, ratio: float, values: Codec | None = None) -> None:
        if method not in self.NAMES:
            raise CodecError(f"unknown sparsifier {method!r}; expected one of {', '.join(self.NAMES)}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise CodecError(f"{method}: ratio must be a number, got {ratio!r}")
        r = float(ratio)
        if not math.isfinite(r) or not 0.0 < r <= 1.0:
            raise CodecError(f"{method}: ratio must be in (0, 1], got {ratio!r}")
        if values is not None and not isinstance(values, Codec):
            raise CodecError(f"{method}: the value codec must be a Codec, got {type(values).__name__}")
        if isinstance(values, SparseCodec):
            raise CodecError(f"{method}: the kept values cannot be sparsified again ({values.spec})")
        if values is not None and not set(values.input_dtypes) <= set(SUPPORTED_DTYPES):
            raise CodecError(
                f"{method}:{format_ratio(r)}+{values.spec}: {values.spec!r} is a standalone codec, not a value "
                f"codec; without one the kept values already travel losslessly as fp32: '{method}:{format_ratio(r)}'"
            )
        self._method = method
        self._ratio = r
        self._ratio_text = format_ratio(r)
        self._ratio_exact = Fraction(self._ratio_text)  # exact decimal, so k does not suffer float rounding
        self._values = values
        self._spec = f"{method}:{self._ratio_text}" + (f"+{values.spec}" if values is not None else "")

    @classmethod
    def from_term(cls, term: Term, values: Codec | None = None) -> SparseCodec:
        """Build from a parsed spec term like ``topk:0.05``; raises CodecError for a bad ratio or any option."""
        if term.name not in cls.NAMES:
            raise CodecError(f"unknown sparsifier {term.name!r}; expected one of {', '.join(cls.NAMES)}")
        ratio = number_arg(term, "a keep ratio", f"{term.name}:0.05", "sparsifiers")
        return cls(term.name, ratio, values)

    # ---- properties -----------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        return self._spec

    @property
    def method(self) -> str:
        """``"topk"``, ``"atopk"`` or ``"randk"``."""
        return self._method

    @property
    def ratio(self) -> float:
        """Nominal fraction of elements kept, in (0, 1]."""
        return self._ratio

    @property
    def values(self) -> Codec | None:
        """The codec of the kept values, or None for raw values (sent as fp32)."""
        return self._values

    @property
    def data_dependent(self) -> bool:
        """True when the payload size depends on the data (atopk), not only on ``numel``."""
        return self._method == "atopk"

    def nominal_k(self, numel: int) -> int:
        """``ceil(ratio * numel)`` computed exactly; at least 1 when ``numel > 0``."""
        if numel <= 0:
            return 0
        num, den = self._ratio_exact.numerator, self._ratio_exact.denominator
        return max(1, -((-numel * num) // den))

    def values_nbytes(self, k: int) -> int:
        """Bytes of the values section for ``k`` kept values (raw values travel as fp32, 4 B each)."""
        return self._values.payload_nbytes(k) if self._values is not None else RAW_VALUE_NBYTES * k

    def payload_nbytes(self, numel: int) -> int:
        """Exact payload bytes for ``numel`` elements of any input dtype (atopk: at the nominal k).

        Raises CodecError for a negative ``numel``.
        """
        if numel < 0:
            raise CodecError(f"{self.spec}: numel must be >= 0, got {numel}")
        k = self.nominal_k(numel)
        body = HEADER_NBYTES + self.values_nbytes(k)
        if self._method == "randk":
            return body
        return body + elias_fano.encoded_nbytes(numel, k)

    # ---- encode ---------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
               out: torch.Tensor | None = None) -> Encoded:
        """Sparsify ``x``; see :class:`Codec.encode`.

        Raises CodecError for an unsupported dtype, NaN/Inf anywhere in ``x``, an ``out`` buffer for atopk
        (its payload size depends on the data) or an ``out`` of the wrong size, dtype or device.
        """
        dtype_name = self._check_input(x)
        if out is not None and self.data_dependent:
            raise CodecError(f"{self.spec}: atopk payload size depends on the data; out= is not supported")
        flat = x.detach().reshape(-1)  # (n,) copies only when x is not contiguous
        n = flat.numel()
        _check_finite(flat, self.spec)
        if self._method == "randk":
            seed = _draw_seed(generator, x.device)
            idx = random_indices(n, self.nominal_k(n), seed).to(x.device)
            header = seed
        else:
            idx = self._select(flat, generator)
            k = idx.numel()
            header = k | (elias_fano.low_bits(n, k) << _K_BITS)
        k = idx.numel()
        vbytes = self.values_nbytes(k)
        ef_nbytes = 0 if self._method == "randk" else elias_fano.encoded_nbytes(n, k)
        total = HEADER_NBYTES + vbytes + ef_nbytes
        payload = self._payload_buffer(out, total, x.device)
        payload[:HEADER_NBYTES] = _u64_bytes(header).to(x.device)
        self._put_values(flat.index_select(0, idx), payload[HEADER_NBYTES : HEADER_NBYTES + vbytes], generator)
        if ef_nbytes:
            payload[HEADER_NBYTES + vbytes :] = elias_fano.encode(idx, n)
        return Encoded(self.spec, tuple(x.shape), dtype_name, payload)

    def _select(self, flat: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Sorted int64 indices of the kept elements (topk: exactly k; atopk: about k)."""
        n = flat.numel()
        k = self.nominal_k(n)
        if n == 0:
            return torch.empty(0, dtype=torch.int64, device=flat.device)
        if self._method == "topk" or k == n:
            return exact_topk_indices(flat, k)
        return approx_topk_indices(flat, k, generator)

    def _payload_buffer(self, out: torch.Tensor | None, total: int, device: torch.device) -> torch.Tensor:
        if out is None:
            return torch.empty(total, dtype=torch.uint8, device=device)
        if out.dtype != torch.uint8 or out.dim() != 1 or out.numel() != total or out.device != device:
            raise CodecError(
                f"{self.spec}: out must be a 1-D uint8 tensor of {total} B on {device}, got "
                f"{out.dtype} {tuple(out.shape)} on {out.device}"
            )
        if not out.is_contiguous():
            raise CodecError(f"{self.spec}: out must be contiguous")
        return out

    def _put_values(self, vals: torch.Tensor, dest: torch.Tensor, generator: torch.Generator | None) -> None:
        """Write the kept values (1-D, input dtype) into ``dest``, raw or through the value codec."""
        if self._values is None:
            dest.copy_(vals.to(torch.float32).view(torch.uint8))  # (4k,) little-endian fp32
            return
        enc = self._values.encode(vals, generator=generator, out=dest)
        if enc.payload.numel() != dest.numel():
            raise CodecError(
                f"{self.spec}: value codec {self._values.spec} produced {enc.payload.numel()} B for "
                f"{vals.numel()} values, its payload_nbytes says {dest.numel()} B"
            )
        if enc.payload.data_ptr() != dest.data_ptr():
            dest.copy_(enc.payload)

    # ---- decode ---------------------------------------------------------------------------------

    def decode(self, enc: Encoded, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rebuild the dense tensor (zeros except the kept positions); see :class:`Codec.decode`.

        Raises CodecError for a spec/dtype/shape mismatch, a header field out of range, a payload length
        other than the one its header implies, an invalid index set, or a NaN/Inf kept value.
        """
        idx, vals = self.decode_sparse(enc)
        dtype = vals.dtype
        res = self._prepare_out(out, enc.shape, dtype, enc.payload.device)
        res.zero_()
        if idx.numel():
            res.view(-1).index_copy_(0, idx, vals)  # (n,) view of the contiguous result
        return res

    def decode_sparse(self, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``enc`` and return its (sorted int64 indices, values at the original dtype), both 1-D."""
        dtype = self._check_encoded(enc)
        payload = enc.payload
        n = enc.numel
        if payload.numel() < HEADER_NBYTES:
            raise CodecError(f"{self.spec}: payload of {payload.numel()} B is shorter than the 8 B header")
        header = int.from_bytes(bytes(payload[:HEADER_NBYTES].tolist()), "little")
        if self._method == "randk":
            k = self.nominal_k(n)
            vbytes = self.values_nbytes(k)
            self._check_length(payload, HEADER_NBYTES + vbytes, f"k={k}")
            idx = random_indices(n, k, header).to(payload.device)
        else:
            k = self._check_header(header, n)
            vbytes = self.values_nbytes(k)
            ef_nbytes = elias_fano.encoded_nbytes(n, k)
            self._check_length(payload, HEADER_NBYTES + vbytes + ef_nbytes, f"k={k}")
            idx = elias_fano.decode(payload[HEADER_NBYTES + vbytes :], n, k)
        vals = self._get_values(payload[HEADER_NBYTES : HEADER_NBYTES + vbytes], k, dtype, enc.dtype)
        return idx, vals

    def kept_indices(self, enc: Encoded) -> torch.Tensor:
        """Sorted int64 positions (into the flattened tensor) that ``enc`` keeps; validates like decode."""
        return self.decode_sparse(enc)[0]

    def _check_header(self, header: int, n: int) -> int:
        """Validate a topk/atopk header against ``n``; return k."""
        k, nlow = header & _K_MASK, header >> _K_BITS
        if self._method == "topk":
            if k != self.nominal_k(n):
                raise CodecError(f"{self.spec}: header says k={k}, expected ceil(ratio*n)={self.nominal_k(n)}")
        elif not (1 <= k <= n or k == n == 0):
            raise CodecError(f"{self.spec}: header says k={k}, expected 1 <= k <= n={n}")
        expected_l = elias_fano.low_bits(n, k)
        if nlow != expected_l:
            raise CodecError(f"{self.spec}: header says L={nlow} low bits, expected {expected_l} for k={k} of n={n}")
        return k

    def _check_length(self, payload: torch.Tensor, expected: int, what: str) -> None:
        if payload.numel() != expected:
            raise CodecError(f"{self.spec}: payload length {payload.numel()} B, expected {expected} B for {what}")

    def _get_values(self, data: torch.Tensor, k: int, dtype: torch.dtype, dtype_name: str) -> torch.Tensor:
        """Decode the values section into a 1-D tensor of ``k`` finite values; CodecError otherwise."""
        if self._values is None:
            vals = _bytes_as(data, torch.float32).to(dtype)  # lossless: fp16/bf16 values were widened
        else:
            inner = Encoded(self._values.spec, (k,), dtype_name, data)
            vals = self._values.decode(inner)
            if tuple(vals.shape) != (k,) or vals.dtype != dtype:
                raise CodecError(
                    f"{self.spec}: value codec returned {vals.dtype} {tuple(vals.shape)}, expected {dtype} ({k},)"
                )
        if vals.numel() and not bool(torch.isfinite(vals).all()):
            raise CodecError(f"{self.spec}: payload holds a NaN or Inf kept value")
        return vals


# ---- selection helpers ------------------------------------------------------------------------------


def exact_topk_indices(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted int64 indices of the ``k`` largest-magnitude elements of the 1-D ``flat`` (``torch.topk``)."""
    if k >= flat.numel():
        return torch.arange(flat.numel(), dtype=torch.int64, device=flat.device)
    _, idx = torch.topk(flat.abs(), k, sorted=False)
    return idx.sort().values


def approx_topk_indices(flat: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Sorted int64 indices of the elements of ``flat`` (1-D, finite) whose magnitude reaches an estimated
    threshold, so that about ``k`` are kept.

    The threshold is the ``k/n`` upper quantile of ``|x|`` over a uniform random sample (with replacement,
    drawn from ``generator`` or the device's global RNG) sized so that ~2000 sample elements lie above it
    (at most 2^20 samples): the kept count is ``k`` within a few percent (std ~3 % at ``k/n = 1 %``).
    A zero threshold keeps only nonzeros; ties that would keep more than twice ``k`` fall back to exact
    top-k. At least one element is kept when ``flat`` is non-empty.
    """
    thr = _estimate_threshold(flat, k, generator)
    kept = _magnitude_mask(flat, thr).nonzero().squeeze(1)  # (count,) sorted
    if kept.numel() > _ATOPK_OVERSHOOT * k or kept.numel() == 0:
        return exact_topk_indices(flat, k)
    return kept


def _estimate_threshold(flat: torch.Tensor, k: int, generator: torch.Generator | None) -> float:
    """Estimated magnitude of the k-th largest element of ``flat`` (from a sample when it is large)."""
    n = flat.numel()
    ratio = k / n
    size = min(_ATOPK_MAX_SAMPLE, max(_ATOPK_MIN_SAMPLE, math.ceil(_ATOPK_TAIL_SAMPLES / ratio)))
    if size >= n:
        sample = flat.abs()
        m = k
    else:
        device = generator.device if generator is not None else flat.device
        pos = torch.randint(0, n, (size,), generator=generator, device=device).to(flat.device)
        sample = flat.index_select(0, pos).abs()  # (size,)
        m = max(1, round(ratio * size))
    return float(torch.topk(sample.float(), m, sorted=False).values.min())


def _magnitude_mask(flat: torch.Tensor, thr: float) -> torch.Tensor:
    """Bool mask ``|flat| >= thr`` (``!= 0`` when ``thr == 0``), built chunk-wise on the CPU to stay in cache."""
    n = flat.numel()
    if flat.device.type != "cpu":  # accelerators: one fused pass beats many small launches
        return flat.abs() >= thr if thr > 0 else flat != 0
    mask = torch.empty(n, dtype=torch.bool, device=flat.device)
    buf = torch.empty(min(n, _ATOPK_CHUNK), dtype=flat.dtype, device=flat.device)
    for start in range(0, n, _ATOPK_CHUNK):
        chunk = flat[start : start + _ATOPK_CHUNK]
        a = buf[: chunk.numel()]
        torch.abs(chunk, out=a)
        if thr > 0:
            torch.ge(a, thr, out=mask[start : start + _ATOPK_CHUNK])
        else:
            torch.gt(a, 0, out=mask[start : start + _ATOPK_CHUNK])
    return mask


def random_indices(n: int, k: int, seed: int) -> torch.Tensor:
    """``k`` distinct indices of ``[0, n)``, a uniformly random subset determined by ``seed``, sorted (int64).

    Generated on the CPU (a :class:`torch.Generator` seeded with ``seed``), so every device gets the same
    indices. Draws with replacement in rounds of exactly the number still missing, so it never overshoots and
    stops at exactly ``k`` distinct values; the result is uniform because the stopping rule depends only on
    counts. For ``k > n/2`` it draws the ``n - k`` dropped indices instead. Cost ~O(k log k), or O(n) with a
    bitmap when ``k`` is a sizeable fraction of ``n``.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    if k <= 0:
        return torch.empty(0, dtype=torch.int64)
    if k >= n:
        return torch.arange(n, dtype=torch.int64)
    if 2 * k > n:
        keep = ~_distinct_mask(n, n - k, gen)
        return keep.nonzero().squeeze(1)
    if 32 * k > n:
        return _distinct_mask(n, k, gen).nonzero().squeeze(1)
    found = torch.empty(0, dtype=torch.int64)
    while found.numel() < k:
        draw = torch.randint(0, n, (k - found.numel(),), generator=gen, dtype=torch.int64)
        found = torch.unique(torch.cat([found, draw]))  # sorted, at most k distinct
    return found


def _distinct_mask(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Bool mask of ``n`` with exactly ``k`` uniformly random positions set (``k <= n/2``)."""
    mark = torch.zeros(n, dtype=torch.bool)
    count = 0
    while count < k:
        draw = torch.randint(0, n, (k - count,), generator=gen, dtype=torch.int64)
        mark.index_fill_(0, draw, True)
        count = int(torch.count_nonzero(mark))
    return mark


def topk_recall(x: torch.Tensor, enc: Encoded, codec: SparseCodec) -> float:
    """Fraction of the exact top-``ceil(ratio*n)`` magnitudes of ``x`` that ``enc`` keeps (1.0 when empty).

    For reporting approximate top-k quality; ``enc`` must come from ``codec.encode(x)``.
    """
    flat = x.detach().reshape(-1)  # (n,)
    k = codec.nominal_k(flat.numel())
    if k == 0:
        return 1.0
    exact = exact_topk_indices(flat, k)
    kept = codec.kept_indices(enc).to(exact.device)
    return float(torch.isin(exact, kept).sum()) / k


# ---- byte helpers -----------------------------------------------------------------------------------


def _check_finite(flat: torch.Tensor, spec: str) -> None:
    """Raise CodecError when ``flat`` holds NaN or Inf (one fast reduction; exact check only on suspicion)."""
    if flat.numel() == 0:
        return
    if not math.isfinite(float(flat.sum(dtype=torch.float32))) and not bool(torch.isfinite(flat).all()):
        raise CodecError(f"{spec}: input holds NaN or Inf, which a sparsifier cannot rank")


def _draw_seed(generator: torch.Generator | None, device: torch.device) -> int:
    """A 63-bit seed from ``generator`` or the global RNG of ``device``."""
    dev = generator.device if generator is not None else device
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=dev, dtype=torch.int64))


def _u64_bytes(value: int) -> torch.Tensor:
    """``value`` as 8 little-endian bytes in a CPU uint8 tensor."""
    return torch.tensor(list(value.to_bytes(8, "little")), dtype=torch.uint8)


def _bytes_as(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret the 1-D uint8 ``data`` as ``dtype`` (copying first when it is not aligned for it)."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if (data.storage_offset() % itemsize) or (data.data_ptr() % itemsize):
        data = data.clone()
    return data.view(dtype)

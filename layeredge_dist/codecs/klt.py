"""Karhunen-Loeve transform coding, ``klt:B``: decorrelate the features, then spend the bits where the variance is.

A tensor is read as rows of features, (..., d) -> (N, d). The activations that cross a pipeline cut are strongly
anisotropic once training starts (measured on the demo model's cuts: the ratio of the arithmetic to the geometric
mean of the covariance eigenvalues is 40 after 20 steps and 200-1700 after 50-200), so a scalar quantizer that
gives every coordinate the same bits (``intN/rht`` rotates to make them alike) wastes most of them. Encoding:

1. the rows' mean ``mu`` (d,) and covariance (from at most :data:`COV_ROWS` evenly spaced rows), its eigenvectors
   ``V`` and variances ``lam``, descending;
2. bit allocation: component ``i`` gets ``w_i`` in 0..8 bits, minimizing ``sum_i lam_i * D(w_i)`` (``D``: the
   squared error of the MSE-optimal uniform quantizer of a unit Gaussian with ``2**w`` levels) while the *whole*
   payload fits ``ceil(B * numel / 8)`` bytes: header, mean, widths, the int8 basis column, basis scale and step of
   every component that gets bits, and the packed codes. Solved by bisection on the Lagrange multiplier;
3. the used basis columns are quantized to int8 (per-column absmax scale); coefficients are the least-squares fit
   on that quantized basis, so the decoder's basis is exactly the encoder's;
4. each coefficient column is quantized by a uniform mid-rise quantizer whose step is the Gaussian-optimal step
   times the factor of :data:`STEP_FACTORS` with the least squared error on that column; codes are packed per width.

Decoding is ``Y_hat @ V_q.T + mu``. The transform is pure and deterministic (a ``generator`` only draws the
fallback's rotation seed).

Wire layout, little-endian. KLT mode: ``[1, 0, 0, 0, k:u32]``, ``mu`` f32[d], basis scales f32[k], steps f32[k],
widths u8[d] (components in descending variance), basis int8[k, d], then for w = 1..8 the (N, n_w) codes of the
width-w components, row-major, bit-serial (:func:`~.packing.pack_bitstream`). Fallback mode ``[2, b, 0, 0]`` and an
``int<b>/rht`` payload (b the widest of 8/4/3/2 that fits the budget): used for tensors that are not a matrix of rows
(fewer than 2 dims, ``d > MAX_DIM``, fewer than 2 rows, values above :data:`MAX_ABS`) and when the allocation's
predicted error is above the fallback's (nearly isotropic data, or too few rows to pay for the basis: a used
component costs ``8 * (d + 8)`` bits of side information, so the transform pays off when N is well above d). The
int8 basis floors the error near 0.5 % (relative L2) however many bits are given: this codec is for low budgets.

Guarantee: the encoder computes its own reconstruction and uses the transform only when its squared error is at most
``FALLBACK_REL_ERROR[b] * ||x||^2`` (before the cast back to the input dtype); otherwise it sends the fallback,
whose error bound is ``int<b>/rht``'s.

Cost: ``2 * d`` flops per element for the covariance (of at most COV_ROWS rows), ``2 * k`` each way for the
projection, a ``d x d`` eigendecomposition; on CPU it is slower than ``intN/rht`` (see ``layeredge bench codecs``).
"""

from __future__ import annotations

import math

import torch

from .base import Codec, CodecError, Encoded
from .packing import bitstream_nbytes, pack_bitstream, unpack_bitstream
from .quant import IntQuantCodec
from .spec import Term, format_ratio, number_arg

#: Widest feature dimension coded by the transform (a d x d eigendecomposition per call); wider -> fallback.
MAX_DIM = 1024
#: Rows used for the covariance estimate at most (evenly spaced); the mean uses every row.
COV_ROWS = 8192
#: Squared error of the MSE-optimal uniform quantizer of a unit Gaussian with 2**w levels, w = 0..8 (Max 1960).
GAUSS_DISTORTION: tuple[float, ...] = (1.0, 0.3634, 0.1188, 0.03744, 0.01154, 0.00349, 0.00103, 0.000300, 0.0000851)
#: Its step in units of the standard deviation, w = 1..8 (index 0 unused).
GAUSS_STEP: tuple[float, ...] = (0.0, 1.596, 0.9957, 0.5860, 0.3352, 0.1881, 0.1041, 0.0569, 0.0308)
#: Multiples of the Gaussian-optimal step tried per column (heavier tails than Gaussian want a wider range).
STEP_FACTORS: tuple[float, ...] = (0.85, 1.0, 1.25, 1.6, 2.1)
#: Relative squared error of ``int<b>/rht`` on activations (measured on the demo model's cuts), to choose the mode.
FALLBACK_REL_ERROR: dict[int, float] = {8: 4e-5, 4: 0.011, 3: 0.052, 2: 0.30}
#: Largest allowed budget in bits per element.
MAX_BITS = 32.0
#: Inputs with a larger magnitude use the fallback (squares and sums must stay finite in fp32).
MAX_ABS = 1e15

_KLT, _FALLBACK = 1, 2
_HEADER = 8  # KLT mode: mode byte, 3 zero bytes, k as u32
_FB_HEADER = 4  # fallback mode: mode byte, bits, 2 zero bytes
_PAD_RESERVE_BITS = 8 * 8  # each of the 8 width groups may pad its last byte


def _f32(raw: torch.Tensor) -> torch.Tensor:
    """A uint8 slice of a payload viewed as float32 (copied when the slice is not 4-byte aligned)."""
    if raw.storage_offset() % 4:
        raw = raw.clone()
    return raw.view(torch.float32)


class KLTCodec(Codec):
    """``klt:B``: transform coding at ``B`` bits per element, everything included (see the module docstring)."""

    NAMES: tuple[str, ...] = ("klt",)

    def __init__(self, bits: float) -> None:
        if not (isinstance(bits, int | float) and math.isfinite(bits) and 1.0 <= bits <= MAX_BITS):
            raise CodecError(f"klt: bits per element must be a number in [1, {MAX_BITS:g}], got {bits!r}")
        self._bits = float(bits)

    @classmethod
    def from_term(cls, term: Term) -> KLTCodec:
        """Build from a parsed term such as ``klt:3`` or ``klt:2.5``; CodecError names the bad part."""
        return cls(number_arg(term, "the bits per element", "klt:3", "transform codecs"))

    @property
    def bits(self) -> float:
        """Budget in bits per element, metadata included."""
        return self._bits

    @property
    def spec(self) -> str:
        """Canonical spec: ``klt:3`` for whole bits, else the shortest decimal (``klt:2.5``)."""
        b = self._bits
        return f"klt:{int(b)}" if b == int(b) else f"klt:{format_ratio(b)}"

    # ---- sizes --------------------------------------------------------------------------------------------

    def _budget_nbytes(self, numel: int) -> int:
        return math.ceil(self._bits * numel / 8)

    def _fallback_bits(self, numel: int) -> int:
        """The widest ``int<b>/rht`` whose payload (with its 4-byte header) fits the budget; 2 when none does."""
        budget = self._budget_nbytes(numel)
        for b in (8, 4, 3, 2):
            if _FB_HEADER + IntQuantCodec(b, rht=True).payload_nbytes(numel) <= budget:
                return b
        return 2

    @property
    def data_dependent(self) -> bool:
        """Always True: the payload size depends on the data (see :meth:`payload_nbytes`)."""
        return True

    def payload_nbytes(self, numel: int) -> int:
        """Nominal payload for ``numel`` elements: the budget, ``ceil(B * numel / 8)`` bytes. A transform payload is
        never larger; a fallback payload is ``4 +`` the ``int<b>/rht`` payload, which exceeds the budget only when
        even ``int2/rht`` does not fit it (budgets below ~2.3 bits per element on tensors that fall back)."""
        if numel < 0:
            raise CodecError(f"{self.spec}: numel must be >= 0, got {numel}")
        return self._budget_nbytes(numel)

    # ---- encode -------------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
               out: torch.Tensor | None = None) -> Encoded:
        """Transform-code ``x`` (rows = its last dimension); the payload size depends on the data.

        Raises CodecError for an unsupported dtype, NaN/Inf in ``x``, or an ``out`` buffer (not supported:
        the size is data-dependent). The transform is deterministic; ``generator`` only draws the fallback's
        rotation seed.
        """
        dtype_name = self._check_input(x)
        if out is not None:
            raise CodecError(f"{self.spec}: the payload size depends on the data; 'out' is not supported")
        shape = tuple(x.shape)
        with torch.no_grad():
            xf = x.detach().float()
            absmax = float(xf.abs().max()) if xf.numel() else 0.0  # NaN when any element is NaN
            if not math.isfinite(absmax):
                bad = ~torch.isfinite(xf)
                raise CodecError(f"{self.spec}: input contains NaN or Inf ({int(bad.sum())} of {xf.numel()} "
                                 f"elements, first at flattened index {int(bad.reshape(-1).nonzero()[0, 0])})")
            transform = self._klt_shaped(shape) and absmax <= MAX_ABS
            payload = self._encode_klt(xf) if transform else None
            if payload is None:
                payload = self._encode_fallback(xf, generator)
        return Encoded(self.spec, shape, dtype_name, payload)

    @staticmethod
    def _klt_shaped(shape: tuple[int, ...]) -> bool:
        """Whether the transform applies: at least 2 dims, 1 <= d <= MAX_DIM and at least 2 rows."""
        if len(shape) < 2 or not 1 <= shape[-1] <= MAX_DIM:
            return False
        return math.prod(shape) // shape[-1] >= 2

    def _encode_fallback(self, xf: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b = self._fallback_bits(xf.numel())
        inner = IntQuantCodec(b, rht=True).encode(xf, generator=generator)
        head = torch.tensor([_FALLBACK, b, 0, 0], dtype=torch.uint8, device=xf.device)
        return torch.cat((head, inner.payload))

    def _allocate(self, lam: torch.Tensor, n_rows: int, avail_bits: float) -> tuple[torch.Tensor, float]:
        """Widths (d,) int64 in 0..8 minimizing sum(lam * D(w)) with total cost <= avail_bits, and that predicted
        squared error per row (sum(lam * D(w))).

        Lagrangian relaxation: for a multiplier ``theta`` each component takes the width minimizing
        ``lam * D(w) + theta * cost(w)``; the total cost falls as ``theta`` grows. The smallest feasible ``theta`` is
        searched on a log grid, then on a finer grid inside the bracketing cell (two vectorized passes).
        """
        d = lam.numel()
        dev = lam.device
        w = torch.arange(9, dtype=torch.float64, device=dev)
        cost = torch.where(w > 0, n_rows * w + 8.0 * (d + 8), torch.zeros_like(w))  # (9,) bits
        dist = lam.double().unsqueeze(1) * torch.tensor(GAUSS_DISTORTION, dtype=torch.float64, device=dev)  # (d, 9)
        top = float(lam.max()) if d else 0.0
        chosen = torch.zeros(d, dtype=torch.int64, device=dev)
        if top > 0.0 and avail_bits >= float(cost[1]):
            lo, hi = math.log(top * 1e-14), math.log(top)  # at theta = top no bit pays for its cost (cost >= 1)
            for _ in range(2):
                thetas = torch.linspace(lo, hi, 65, dtype=torch.float64, device=dev).exp()  # (T,)
                widths = torch.argmin(dist + thetas.view(-1, 1, 1) * cost, dim=2)  # (T, d)
                feasible = (cost[widths].sum(dim=1) <= avail_bits).nonzero().flatten()  # totals fall with theta
                first = int(feasible[0])  # the last grid point (theta = top) is always feasible
                chosen = widths[first]
                if first == 0:
                    break
                step = (hi - lo) / 64
                lo, hi = lo + (first - 1) * step, lo + first * step
        predicted = float(dist.gather(1, chosen.unsqueeze(1)).sum())
        return chosen, predicted

    def _encode_klt(self, xf: torch.Tensor) -> torch.Tensor | None:
        """The KLT payload, or None when the fallback is predicted to be more accurate."""
        d = xf.shape[-1]
        rows = xf.reshape(-1, d)  # (N, d)
        n = rows.shape[0]
        mu = rows.mean(dim=0)  # (d,)
        xc = rows - mu  # (N, d)
        sample = xc if n <= COV_ROWS else xc[torch.linspace(0, n - 1, COV_ROWS, device=xc.device).long()]
        cov = (sample.T @ sample) / sample.shape[0]  # (d, d); fp32 eigh is 2x faster than fp64 and accurate enough
        lam, vec = torch.linalg.eigh(cov)  # ascending
        lam, vec = lam.flip(0).clamp_min(0.0).double(), vec.flip(1)  # descending; (d,), (d, d) columns
        avail_bits = 8 * self._budget_nbytes(xf.numel()) - 8 * (_HEADER + 4 * d + d) - _PAD_RESERVE_BITS
        if avail_bits < 0:
            return None  # not even the mean fits
        widths, predicted = self._allocate(lam, n, avail_bits)
        energy = float(lam.sum()) + float(mu.double().pow(2).sum())  # mean squared norm of a row
        fallback_error = FALLBACK_REL_ERROR[self._fallback_bits(xf.numel())]
        if predicted > fallback_error * energy:
            return None
        used = (widths > 0).nonzero().flatten()  # (k,) component indices, descending variance
        k = used.numel()
        basis = vec[:, used]  # (d, k)
        bscale = basis.abs().amax(dim=0).clamp_min(1e-30) / 127.0  # (k,)
        bq = torch.round(basis / bscale).to(torch.int8)  # (d, k)
        vq = bq.float() * bscale  # (d, k): the basis the decoder will use
        if k:
            coef = xc @ (vq @ torch.linalg.inv(vq.T @ vq))  # (N, k) least squares on the quantized basis
        else:
            coef = xc.new_zeros((n, 0))
        w_used = widths[used]  # (k,)
        steps, codes = _quantize_columns(coef, w_used)
        rec = torch.addmm(mu, _dequantize_columns(codes, w_used, steps), vq.T)  # (N, d), exactly as decode does
        if float((rec - rows).pow(2).sum()) > fallback_error * float(rows.pow(2).sum()):
            return None  # the guarantee of the module docstring: never worse than the fallback's typical error
        parts = [
            torch.tensor([_KLT, 0, 0, 0], dtype=torch.uint8, device=xf.device),
            torch.tensor([k], dtype=torch.int32).view(torch.uint8).to(xf.device),
            mu.contiguous().view(torch.uint8),
            bscale.contiguous().view(torch.uint8),
            steps.contiguous().view(torch.uint8),
            widths.to(torch.uint8),
            bq.T.contiguous().view(torch.uint8).reshape(-1),  # (k, d) row-major: one basis column after another
        ]
        for wbits, cols in _width_groups(w_used):
            parts.append(pack_bitstream(codes[:, cols].reshape(-1), wbits))  # (N, n_w) row-major
        payload = torch.cat(parts)
        if payload.numel() > self._budget_nbytes(xf.numel()):  # the allocation counts every byte; a bug if not
            raise CodecError(f"{self.spec}: internal error: {payload.numel()} B payload over the "
                             f"{self._budget_nbytes(xf.numel())} B budget for shape {tuple(xf.shape)}")
        return payload

    # ---- decode -------------------------------------------------------------------------------------------

    def decode(self, enc: Encoded, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rebuild the tensor (into ``out`` when given). CodecError for a wrong spec, dtype or shape, a payload whose
        length does not match its own header, a width above 8, NaN/Inf/negative scales or steps, or decoded values
        that overflow the original dtype."""
        dtype = self._check_encoded(enc)
        p = enc.payload
        shape = tuple(enc.shape)
        if out is not None and out.device != p.device:
            raise CodecError(f"{self.spec}: out is on {out.device}, payload on {p.device}")
        result = self._prepare_out(out, shape, dtype, p.device)
        if p.numel() < _FB_HEADER:
            raise CodecError(f"{self.spec}: corrupt payload: {p.numel()} B is shorter than the {_FB_HEADER}-B header")
        mode = int(p[0])
        if mode == _FALLBACK:
            b = int(p[1])
            if b not in FALLBACK_REL_ERROR:
                raise CodecError(f"{self.spec}: corrupt payload: fallback width {b} (expected 8, 4, 3 or 2)")
            inner = IntQuantCodec(b, rht=True)
            return inner.decode(Encoded(inner.spec, shape, enc.dtype, p[_FB_HEADER:]), out=result)
        if mode != _KLT:
            raise CodecError(f"{self.spec}: corrupt payload: unknown mode byte {mode} (expected 1 or 2)")
        if not self._klt_shaped(shape):
            raise CodecError(f"{self.spec}: corrupt payload: transform mode for shape {shape}, which the encoder "
                             f"codes with the fallback")
        with torch.no_grad():
            rec = self._decode_klt(p, shape)
            result.copy_(rec.reshape(shape))
            if not bool(torch.isfinite(result).all()):
                raise CodecError(f"{self.spec}: corrupt payload: decoded values overflow {dtype}")
        return result

    def _decode_klt(self, p: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        d = shape[-1]
        n = math.prod(shape) // d
        if p.numel() < _HEADER:
            raise CodecError(f"{self.spec}: corrupt payload: {p.numel()} B is shorter than the {_HEADER}-B header")
        k = int(p[4:8].clone().view(torch.int32)[0])
        side = _HEADER + 4 * d + 8 * k + d
        if not 0 <= k <= d or p.numel() < side:
            raise CodecError(f"{self.spec}: corrupt payload: {k} components for d={d} in {p.numel()} B")
        off = _HEADER
        mu = _f32(p[off:off + 4 * d])
        off += 4 * d
        bscale = _f32(p[off:off + 4 * k])
        off += 4 * k
        steps = _f32(p[off:off + 4 * k])
        off += 4 * k
        widths = p[off:off + d].long()
        off += d
        if bool((widths > 8).any()) or int((widths > 0).sum()) != k:
            raise CodecError(f"{self.spec}: corrupt payload: widths {widths.tolist()[:16]}... do not give {k} "
                             f"components of 1..8 bits")
        for name, v, lo in (("mean", mu, -math.inf), ("basis scale", bscale, 0.0), ("step", steps, 0.0)):
            if not bool((torch.isfinite(v) & (v >= lo)).all()):
                raise CodecError(f"{self.spec}: corrupt payload: a {name} is NaN, Inf or negative")
        w_used = widths[widths > 0]  # (k,)
        groups = _width_groups(w_used)
        expected = side + d * k + sum(bitstream_nbytes(n * c.numel(), w) for w, c in groups)
        if p.numel() != expected:
            raise CodecError(f"{self.spec}: payload length {p.numel()} B does not match its header "
                             f"(expected {expected} B for shape {shape})")
        vq = p[off:off + d * k].view(torch.int8).reshape(k, d).T.float() * bscale  # (k, d) -> (d, k)
        off += d * k
        codes = torch.empty((n, k), dtype=torch.uint8, device=p.device)
        for w, cols in groups:
            size = bitstream_nbytes(n * cols.numel(), w)
            codes[:, cols] = unpack_bitstream(p[off:off + size], n * cols.numel(), w).view(n, cols.numel())
            off += size
        return torch.addmm(mu, _dequantize_columns(codes, w_used, steps), vq.T)  # (N, d)


def _width_groups(widths: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(w, column indices)`` for each width present in ``widths`` (k,), ascending, columns in their order."""
    order = torch.argsort(widths, stable=True)  # (k,)
    counts = torch.bincount(widths, minlength=9).tolist()
    groups, start = [], 0
    for w in range(1, 9):
        if counts[w]:
            groups.append((w, order[start:start + counts[w]]))
            start += counts[w]
    return groups


def _levels(widths: torch.Tensor) -> torch.Tensor:
    """2**w per column, float32 (k,)."""
    return torch.pow(2.0, widths.float())


def _dequantize_columns(codes: torch.Tensor, widths: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Mid-rise reconstruction ``(q + 0.5 - L/2) * step`` per column: (N, k) codes -> (N, k) float32."""
    return (codes.float() + 0.5 - _levels(widths) / 2) * steps


def _quantize_columns(coef: torch.Tensor, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps (k,) float32 and codes (N, k) uint8 of each column's uniform mid-rise quantizer with ``widths`` bits,
    the step being the Gaussian-optimal one scaled by the :data:`STEP_FACTORS` entry of least squared error."""
    k = coef.shape[1]
    if k == 0:
        return coef.new_zeros(0), torch.zeros((coef.shape[0], 0), dtype=torch.uint8, device=coef.device)
    sigma = coef.std(dim=0, correction=0)  # (k,)
    base = sigma * torch.tensor(GAUSS_STEP, device=coef.device)[widths]  # (k,)
    levels = _levels(widths)

    def codes_for(step: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.floor(coef / step) + levels / 2, torch.zeros_like(levels), levels - 1)

    best_err = torch.full((k,), math.inf, device=coef.device)
    best_step = base.clamp_min(1e-30)
    for f in STEP_FACTORS:
        step = (base * f).clamp_min(1e-30)
        err = (_dequantize_columns(codes_for(step), widths, step) - coef).pow(2).sum(dim=0)  # (k,)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_step = torch.where(better, step, best_step)
    return best_step, codes_for(best_step).to(torch.uint8)

"""Stateful wrappers around a stateless codec; the caller creates and holds their state objects.

``ef(<spec>)`` — :class:`ErrorFeedback`
    The sender adds the residual left by the previous step before encoding and keeps the new residual
    ``(x + residual) - decode(encode(x + residual))``. The receiver needs no state. Over ``T`` steps the sum of
    what was received differs from the sum of what was sent by exactly the last residual, so compression error
    does not accumulate (the classic EF-SGD argument).

``delta(<spec>)`` — :class:`DeltaCodec`
    AC-SGD style: for every key (e.g. a sample id) sender and receiver each hold a reference; the sender
    encodes ``x - ref[key]``, and both add the *decoded* delta to their reference, so the two references stay
    bit-identical and the receiver's output is ``ref[key]`` after the update. Slowly changing tensors (the
    activations of the same sample in successive epochs) then cost only the bits of a small delta.

Both keep their state at the input's dtype and device and compute in fp32. Every mismatch (a state from another
wrapper, a tensor of another shape, dtype or device than the state holds, a delta payload applied out of order)
raises :class:`~layeredge_dist.codecs.base.CodecError`; a failed call leaves the state unchanged. Both wrap float
codecs only: ``ef(raw)`` and ``delta(raw)`` raise CodecError (fp32 arithmetic cannot carry int64 exactly, and a
lossless codec leaves nothing to feed back).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping

import torch

from .base import SUPPORTED_DTYPES, Codec, CodecError, Encoded

#: Bytes of the delta payload header: the u64 number of updates the key's reference has seen.
DELTA_HEADER_NBYTES = 8


# ---- error feedback -------------------------------------------------------------------------------------


class EFState:
    """The residual of one tensor stream under error feedback; created by :meth:`ErrorFeedback.new_state`.

    Read it through the properties; only the wrapper that made it updates it. ``nbytes`` is its memory.
    """

    __slots__ = ("_spec", "_residual", "_steps")

    def __init__(self, spec: str) -> None:
        self._spec = spec
        self._residual: torch.Tensor | None = None
        self._steps = 0

    @property
    def spec(self) -> str:
        """Spec of the wrapper this state belongs to, e.g. ``ef(int2)``."""
        return self._spec

    @property
    def residual(self) -> torch.Tensor | None:
        """Residual to add to the next input (input shape/dtype/device), or None before the first step.

        Do not modify it in place.
        """
        return self._residual

    @property
    def steps(self) -> int:
        """Number of successful encodes so far."""
        return self._steps

    @property
    def nbytes(self) -> int:
        """Memory held by the state in bytes."""
        return 0 if self._residual is None else self._residual.numel() * self._residual.element_size()

    def reset(self) -> None:
        """Forget the residual (e.g. when the stream's tensor changes shape on purpose)."""
        self._residual = None
        self._steps = 0

    def __repr__(self) -> str:
        shape = None if self._residual is None else tuple(self._residual.shape)
        return f"EFState({self._spec!r}, residual={shape}, steps={self._steps})"


class _Wrapper:
    """What every stateful wrapper shares: a stateless inner codec and the spec ``NAME(<inner spec>)``."""

    NAME = ""

    def __init__(self, inner: Codec) -> None:
        if not isinstance(inner, Codec):
            raise CodecError(f"{self.NAME}(...) wraps a stateless Codec, got {type(inner).__name__}")
        if not set(inner.input_dtypes) <= set(SUPPORTED_DTYPES):
            raise CodecError(
                f"{self.NAME}({inner.spec}): wrappers compute in fp32 and wrap only float codecs; "
                f"{inner.spec!r} is lossless and carries integer dtypes, so send it unwrapped as {inner.spec!r}"
            )
        self._inner = inner

    @property
    def spec(self) -> str:
        """Canonical spec, ``NAME(<inner spec>)``."""
        return f"{self.NAME}({self._inner.spec})"

    @property
    def inner(self) -> Codec:
        """The wrapped stateless codec."""
        return self._inner

    @property
    def input_dtypes(self) -> Mapping[str, torch.dtype]:
        """The dtypes the wrapper accepts, by wire name: the inner codec's (float dtypes only)."""
        return self._inner.input_dtypes


class ErrorFeedback(_Wrapper):
    """Error feedback around a stateless codec: ``ef(<inner spec>)``."""

    NAME = "ef"

    def new_state(self) -> EFState:
        """A fresh, zero residual for one tensor stream (one per edge and tensor, held by the sender)."""
        return EFState(self.spec)

    def payload_nbytes(self, numel: int) -> int:
        """Exact payload bytes for ``numel`` elements (the inner codec's; error feedback adds none)."""
        return self._inner.payload_nbytes(numel)

    def bits_per_element(self, numel: int) -> float:
        """Exact payload bits per element, metadata included."""
        return self._inner.bits_per_element(numel)

    def encode(self, x: torch.Tensor, state: EFState, *, generator: torch.Generator | None = None) -> Encoded:
        """Encode ``x`` plus the residual in ``state`` and store the new residual.

        Returns an Encoded whose spec is this wrapper's. Raises CodecError for a state of another wrapper,
        a residual of another shape/dtype/device than ``x``, NaN/Inf in ``x + residual`` or any inner codec
        error; the state is then unchanged.
        """
        self._check_state(state)
        dtype_name = self._inner._check_input(x)
        x = x.detach()
        corrected = _add_fp32(x, _matching(state.residual, x, "residual"))  # fp32, x's shape
        _check_finite(corrected, self.spec)
        inner_enc = self._inner.encode(corrected.to(x.dtype), generator=generator)
        decoded = self._inner.decode(inner_enc)
        state._residual = (corrected - decoded.to(torch.float32)).to(x.dtype)
        state._steps += 1
        return Encoded(self.spec, tuple(x.shape), dtype_name, inner_enc.payload)

    def decode(self, enc: Encoded, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode a payload from :meth:`encode` (stateless); raises CodecError for another spec or a bad payload."""
        return self._inner.decode(_unwrap(enc, self.spec, self._inner.spec), out=out)

    def _check_state(self, state: object) -> None:
        if not isinstance(state, EFState):
            raise CodecError(f"{self.spec}: expected an EFState from new_state(), got {type(state).__name__}")
        if state.spec != self.spec:
            raise CodecError(f"{self.spec}: state belongs to {state.spec!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ErrorFeedback) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.spec))

    def __repr__(self) -> str:
        return f"ErrorFeedback({self.spec!r})"


# ---- delta (AC-SGD) -------------------------------------------------------------------------------------


class DeltaState:
    """Per-key references of a :class:`DeltaCodec`; sender and receiver each hold one.

    ``max_keys`` (None: unbounded) caps the number of references; a new key beyond it raises CodecError
    rather than evicting silently, because sender and receiver must evict identically: call :meth:`drop` on
    both sides instead. ``nbytes`` is the memory held by the references.
    """

    __slots__ = ("_spec", "_max_keys", "_refs", "_versions")

    def __init__(self, spec: str, max_keys: int | None = None) -> None:
        if max_keys is not None and (isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1):
            raise CodecError(f"{spec}: max_keys must be a positive int or None, got {max_keys!r}")
        self._spec = spec
        self._max_keys = max_keys
        self._refs: dict[Hashable, torch.Tensor] = {}
        self._versions: dict[Hashable, int] = {}

    @property
    def spec(self) -> str:
        """Spec of the wrapper this state belongs to, e.g. ``delta(int4)``."""
        return self._spec

    @property
    def max_keys(self) -> int | None:
        """Largest number of references held at once (None: no limit)."""
        return self._max_keys

    @property
    def nbytes(self) -> int:
        """Memory held by the references in bytes."""
        return sum(r.numel() * r.element_size() for r in self._refs.values())

    def __len__(self) -> int:
        return len(self._refs)

    def __contains__(self, key: object) -> bool:
        return key in self._refs

    def keys(self) -> Iterator[Hashable]:
        """The keys that have a reference, in insertion order."""
        return iter(list(self._refs))

    def reference(self, key: Hashable) -> torch.Tensor | None:
        """The current reference of ``key`` (do not modify it in place), or None for an unknown key."""
        return self._refs.get(key)

    def version(self, key: Hashable) -> int:
        """Number of updates applied to ``key``'s reference (0 for an unknown key)."""
        return self._versions.get(key, 0)

    def drop(self, key: Hashable) -> None:
        """Forget ``key`` (do the same on the other side); unknown keys are ignored."""
        self._refs.pop(key, None)
        self._versions.pop(key, None)

    def clear(self) -> None:
        """Forget every key."""
        self._refs.clear()
        self._versions.clear()

    def _reference_for(self, key: Hashable, shape: tuple[int, ...], dtype: torch.dtype,
                       device: torch.device) -> torch.Tensor:
        """The reference of ``key`` checked against shape/dtype/device, or zeros for a new key."""
        try:
            ref = self._refs.get(key)
        except TypeError:
            raise CodecError(f"{self._spec}: key {key!r} is not hashable") from None
        if ref is None:
            if self._max_keys is not None and len(self._refs) >= self._max_keys:
                raise CodecError(
                    f"{self._spec}: state is full ({self._max_keys} keys); drop() a key on both sides first"
                )
            return torch.zeros(shape, dtype=dtype, device=device)
        if tuple(ref.shape) != shape or ref.dtype != dtype or ref.device != device:
            raise CodecError(
                f"{self._spec}: key {key!r} holds a {ref.dtype} {tuple(ref.shape)} reference on {ref.device}, "
                f"got {dtype} {shape} on {device}"
            )
        return ref

    def _store(self, key: Hashable, ref: torch.Tensor) -> None:
        self._refs[key] = ref
        self._versions[key] = self._versions.get(key, 0) + 1

    def __repr__(self) -> str:
        return f"DeltaState({self._spec!r}, keys={len(self._refs)}, nbytes={self.nbytes})"


class DeltaCodec(_Wrapper):
    """Delta against a per-key reference (AC-SGD): ``delta(<inner spec>)``.

    Payload: ``[u64 version of the key's reference][inner payload]``; the receiver rejects a payload whose
    version differs from its own reference's, which catches lost, repeated or reordered messages.
    """

    NAME = "delta"

    def new_state(self, max_keys: int | None = None) -> DeltaState:
        """Empty references; the sender and the receiver each create one."""
        return DeltaState(self.spec, max_keys)

    def payload_nbytes(self, numel: int) -> int:
        """Exact payload bytes for ``numel`` elements: the 8 B version header plus the inner payload."""
        return DELTA_HEADER_NBYTES + self._inner.payload_nbytes(numel)

    def bits_per_element(self, numel: int) -> float:
        """Exact payload bits per element, metadata included."""
        return 8.0 * self.payload_nbytes(numel) / numel if numel else 0.0

    def encode(self, x: torch.Tensor, state: DeltaState, key: Hashable, *,
               generator: torch.Generator | None = None) -> Encoded:
        """Encode ``x - ref[key]`` and add the decoded delta to ``ref[key]`` (zeros for a new key).

        Raises CodecError for a state of another wrapper, a reference of another shape/dtype/device, a full
        state, NaN/Inf in the delta or an inner codec error; the state is then unchanged.
        """
        self._check_state(state)
        dtype_name = self._inner._check_input(x)
        x = x.detach()
        shape = tuple(x.shape)
        ref = state._reference_for(key, shape, x.dtype, x.device)
        delta = _sub_fp32(x, ref)  # fp32, x's shape
        _check_finite(delta, self.spec)
        inner_enc = self._inner.encode(delta.to(x.dtype), generator=generator)
        new_ref = _add_fp32(self._inner.decode(inner_enc), ref).to(x.dtype)
        version = _u64(state.version(key))
        payload = torch.cat([version.to(inner_enc.payload.device), inner_enc.payload])
        state._store(key, new_ref)
        return Encoded(self.spec, shape, dtype_name, payload)

    def decode(self, enc: Encoded, state: DeltaState, key: Hashable, *,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``ref[key] + decoded delta`` and make it the new reference.

        Raises CodecError for another spec, a bad payload, a version other than the reference's (a lost,
        repeated or reordered message), a reference of another shape/dtype/device or a full state; the state
        is then unchanged. The result is a fresh tensor (or ``out``), never the stored reference.
        """
        self._check_state(state)
        if not isinstance(enc, Encoded) or enc.spec != self.spec:
            got = enc.spec if isinstance(enc, Encoded) else type(enc).__name__
            raise CodecError(f"codec mismatch: payload was encoded with {got!r}, decoder is {self.spec!r}")
        p = enc.payload
        if not isinstance(p, torch.Tensor) or p.dtype != torch.uint8 or p.dim() != 1 or p.numel() < DELTA_HEADER_NBYTES:
            raise CodecError(f"{self.spec}: payload must be a 1-D uint8 tensor of at least {DELTA_HEADER_NBYTES} B")
        version = int.from_bytes(bytes(p[:DELTA_HEADER_NBYTES].tolist()), "little")
        if version != state.version(key):
            raise CodecError(
                f"{self.spec}: out of sync for key {key!r}: payload is update #{version}, "
                f"the receiver's reference has seen {state.version(key)} updates"
            )
        inner_enc = Encoded(self._inner.spec, enc.shape, enc.dtype, p[DELTA_HEADER_NBYTES:])
        decoded = self._inner.decode(inner_enc)
        ref = state._reference_for(key, tuple(decoded.shape), decoded.dtype, decoded.device)
        new_ref = _add_fp32(decoded, ref).to(decoded.dtype)
        result = Codec._prepare_out(out, tuple(decoded.shape), decoded.dtype, decoded.device)
        result.copy_(new_ref)
        state._store(key, new_ref)
        return result

    def _check_state(self, state: object) -> None:
        if not isinstance(state, DeltaState):
            raise CodecError(f"{self.spec}: expected a DeltaState from new_state(), got {type(state).__name__}")
        if state.spec != self.spec:
            raise CodecError(f"{self.spec}: state belongs to {state.spec!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeltaCodec) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.spec))

    def __repr__(self) -> str:
        return f"DeltaCodec({self.spec!r})"


# ---- helpers --------------------------------------------------------------------------------------------


def _matching(t: torch.Tensor | None, x: torch.Tensor, what: str) -> torch.Tensor | None:
    """``t`` after checking it has ``x``'s shape, dtype and device (None passes through)."""
    if t is not None and (t.shape != x.shape or t.dtype != x.dtype or t.device != x.device):
        raise CodecError(
            f"state mismatch: {what} is {t.dtype} {tuple(t.shape)} on {t.device}, "
            f"input is {x.dtype} {tuple(x.shape)} on {x.device}"
        )
    return t


def _add_fp32(a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``a + b`` computed and returned in fp32 (a fresh tensor; ``b`` None counts as zero)."""
    a32 = a.to(torch.float32)
    if b is None:
        return a32.clone() if a32 is a else a32
    return a32 + b.to(torch.float32)


def _sub_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a - b`` computed and returned in fp32 (a fresh tensor)."""
    return a.to(torch.float32) - b.to(torch.float32)


def _check_finite(t: torch.Tensor, spec: str) -> None:
    """Raise CodecError when ``t`` holds NaN or Inf (one fast reduction; exact check only on suspicion)."""
    if t.numel() and not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
        raise CodecError(f"{spec}: input holds NaN or Inf")


def _unwrap(enc: Encoded, spec: str, inner_spec: str) -> Encoded:
    """The inner codec's view of a wrapper's Encoded, after checking the wrapper spec."""
    if not isinstance(enc, Encoded):
        raise CodecError(f"{spec}: expected Encoded, got {type(enc).__name__}")
    if enc.spec != spec:
        raise CodecError(f"codec mismatch: payload was encoded with {enc.spec!r}, decoder is {spec!r}")
    return Encoded(inner_spec, enc.shape, enc.dtype, enc.payload)


def _u64(value: int) -> torch.Tensor:
    """``value`` as 8 little-endian bytes in a CPU uint8 tensor."""
    return torch.tensor(list(value.to_bytes(8, "little")), dtype=torch.uint8)

"""Stateful wrappers: error feedback (``ef(...)``) and AC-SGD style delta coding (``delta(...)``)."""

from __future__ import annotations

import itertools

import pytest
import torch

from layeredge_dist.codecs.base import CodecError, Encoded
from layeredge_dist.codecs.registry import parse_any, parse_codec
from layeredge_dist.codecs.stateful import DeltaCodec, DeltaState, EFState, ErrorFeedback


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _stream(steps: int, shape: tuple[int, ...], seed: int = 0,
            dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = _gen(seed)
    return [torch.randn(*shape, generator=g).to(dtype) for _ in range(steps)]


def _ref(state: DeltaState, key: object) -> torch.Tensor:
    ref = state.reference(key)
    assert ref is not None, f"no reference for {key!r}"
    return ref


def _ef(spec: str) -> ErrorFeedback:
    w = parse_any(spec)
    assert isinstance(w, ErrorFeedback)
    return w


def _delta(spec: str) -> DeltaCodec:
    w = parse_any(spec)
    assert isinstance(w, DeltaCodec)
    return w


# ---- error feedback -----------------------------------------------------------------------------------


def test_ef_spec_and_inner() -> None:
    w = _ef("ef(topk:0.01+int8)")
    assert w.spec == "ef(topk:0.01+int8)" and w.inner == parse_codec("topk:0.01+int8")
    assert w == ErrorFeedback(parse_codec("topk:0.01+int8"))
    assert w.payload_nbytes(1000) == w.inner.payload_nbytes(1000)


@pytest.mark.parametrize("spec", ["int2", "topk:0.05", "randk:0.1+int8", "fp8e5m2"])
def test_ef_sum_of_outputs_tracks_sum_of_inputs(spec: str) -> None:
    """Sum of decoded outputs = sum of inputs - current residual, at every step, so the gap stays bounded;
    without error feedback the gap grows like a random walk."""
    w = ErrorFeedback(parse_codec(spec))
    plain = w.inner
    state = w.new_state()
    g = _gen(1)
    steps = 160
    sum_x, sum_ef, sum_plain = torch.zeros(512), torch.zeros(512), torch.zeros(512)
    gaps = []
    for x in _stream(steps, (512,), seed=2):
        enc = w.encode(x, state, generator=g)
        assert enc.spec == w.spec
        sum_x += x
        sum_ef += w.decode(enc)
        sum_plain += plain.decode(plain.encode(x, generator=g))
        gap = float((sum_x - sum_ef).norm())
        assert state.residual is not None
        assert gap == pytest.approx(float(state.residual.norm()), rel=1e-3, abs=1e-3)  # exactly one residual
        gaps.append(gap)
    assert state.steps == steps
    assert max(gaps[80:]) <= 1.5 * max(gaps[40:80]), "error-feedback residual keeps growing"
    assert gaps[-1] < 0.5 * float((sum_x - sum_plain).norm()), "without EF the error should accumulate"


def test_ef_decode_is_stateless_and_checks_spec() -> None:
    w = _ef("ef(int4)")
    state = w.new_state()
    x = _stream(1, (100,))[0]
    enc = w.encode(x, state)
    assert torch.equal(w.decode(enc), w.decode(enc))
    with pytest.raises(CodecError, match="codec mismatch"):
        w.decode(Encoded("int4", enc.shape, enc.dtype, enc.payload))
    with pytest.raises(CodecError, match="codec mismatch"):
        _ef("ef(int8)").decode(enc)


def test_ef_state_mismatch() -> None:
    w = _ef("ef(int8)")
    state = w.new_state()
    w.encode(torch.randn(4, 5), state)
    with pytest.raises(CodecError, match="state mismatch"):
        w.encode(torch.randn(5, 4), state)
    with pytest.raises(CodecError, match="state mismatch"):
        w.encode(torch.randn(4, 5).half(), state)
    with pytest.raises(CodecError, match="belongs to"):
        _ef("ef(int4)").encode(torch.randn(4, 5), state)
    with pytest.raises(CodecError, match="EFState"):
        w.encode(torch.randn(4, 5), object())  # type: ignore[arg-type]
    before = state.residual
    with pytest.raises(CodecError, match="NaN or Inf"):
        w.encode(torch.full((4, 5), float("nan")), state)
    assert state.residual is before and state.steps == 1  # a failed call leaves the state alone
    state.reset()
    assert state.residual is None and state.nbytes == 0
    w.encode(torch.randn(5, 4), state)  # after a reset any shape goes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ef_low_precision_inputs(dtype: torch.dtype) -> None:
    w = _ef("ef(int2)")
    state = w.new_state()
    total, total_hat = torch.zeros(256), torch.zeros(256)
    for x in _stream(30, (256,), seed=3, dtype=dtype):
        y = w.decode(w.encode(x, state, generator=_gen()))
        assert y.dtype == dtype and state.residual is not None and state.residual.dtype == dtype
        total += x.float()
        total_hat += y.float()
    assert float((total - total_hat).norm()) < 1.5 * float(x.float().norm())
    assert state.nbytes == 256 * 2


def test_ef_non_contiguous_input_and_autograd() -> None:
    w = _ef("ef(int8)")
    state = w.new_state()
    base = torch.randn(8, 6, requires_grad=True)
    x = base.t()  # (6, 8) non-contiguous, requires grad
    y = w.decode(w.encode(x, state))
    assert y.shape == (6, 8) and not y.requires_grad
    assert float((y - x.detach()).abs().max()) < 0.05 * float(x.detach().abs().max())


# ---- delta --------------------------------------------------------------------------------------------


def test_delta_spec_and_state() -> None:
    w = _delta("delta(int4)")
    assert w.spec == "delta(int4)" and w.inner == parse_codec("int4")
    st = w.new_state(max_keys=3)
    assert isinstance(st, DeltaState) and st.max_keys == 3 and len(st) == 0 and st.nbytes == 0
    assert w.payload_nbytes(100) == 8 + parse_codec("int4").payload_nbytes(100)
    with pytest.raises(CodecError, match="max_keys"):
        w.new_state(max_keys=0)


@pytest.mark.parametrize("spec", ["delta(int4)", "delta(int2/rht)", "delta(topk:0.1+int8)", "delta(randk:0.2)"])
def test_delta_sender_and_receiver_stay_bit_identical(spec: str) -> None:
    w = _delta(spec)
    tx, rx = w.new_state(), w.new_state()
    g = _gen(4)
    keys = ["a", "b", 7]
    for step in range(12):
        for j, key in enumerate(keys):
            x = torch.randn(6, 32, generator=g) + j
            enc = w.encode(x, tx, key, generator=g)
            assert enc.spec == spec and enc.nbytes == w.payload_nbytes(x.numel())
            y = w.decode(enc, rx, key)
            assert torch.equal(y, _ref(tx, key))
            assert torch.equal(_ref(tx, key), _ref(rx, key))
            assert tx.version(key) == rx.version(key) == step + 1
    assert tx.nbytes == rx.nbytes == 3 * 6 * 32 * 4


def test_delta_repeated_similar_inputs_give_falling_error() -> None:
    w = _delta("delta(int2)")
    tx, rx = w.new_state(), w.new_state()
    g = _gen(5)
    target = torch.randn(2048, generator=g)
    errors = []
    for _ in range(8):
        x = target + 0.001 * torch.randn(2048, generator=g)
        y = w.decode(w.encode(x, tx, "sample-0", generator=g), rx, "sample-0")
        errors.append(float((y - x).norm() / x.norm()))
    assert errors[-1] < errors[0] / 10, errors
    assert all(b < a for a, b in itertools.pairwise(errors[:5])), errors
    # plain int2 on the same input stays at its (much larger) error
    plain = parse_codec("int2")
    assert float((plain.decode(plain.encode(x)) - x).norm() / x.norm()) > 5 * errors[-1]


def test_delta_low_precision_dtype() -> None:
    w = _delta("delta(int8)")
    tx, rx = w.new_state(), w.new_state()
    x = torch.randn(300).bfloat16()
    for _ in range(3):
        y = w.decode(w.encode(x, tx, 0), rx, 0)
    assert y.dtype == torch.bfloat16 and torch.equal(_ref(tx, 0), _ref(rx, 0))
    assert float((y.float() - x.float()).abs().max()) < 0.02


def test_delta_detects_out_of_order_or_lost_messages() -> None:
    w = _delta("delta(int8)")
    tx, rx = w.new_state(), w.new_state()
    e1 = w.encode(torch.randn(10), tx, "k")
    e2 = w.encode(torch.randn(10), tx, "k")
    with pytest.raises(CodecError, match="out of sync"):
        w.decode(e2, rx, "k")  # e1 was lost
    assert rx.version("k") == 0 and "k" not in rx
    w.decode(e1, rx, "k")
    with pytest.raises(CodecError, match="out of sync"):
        w.decode(e1, rx, "k")  # replayed
    w.decode(e2, rx, "k")
    assert torch.equal(_ref(tx, "k"), _ref(rx, "k"))


def test_delta_state_mismatches() -> None:
    w = _delta("delta(int8)")
    tx, rx = w.new_state(max_keys=2), w.new_state(max_keys=2)
    w.decode(w.encode(torch.randn(3, 4), tx, "a"), rx, "a")
    with pytest.raises(CodecError, match="reference"):
        w.encode(torch.randn(4, 3), tx, "a")
    with pytest.raises(CodecError, match="reference"):
        w.encode(torch.randn(3, 4).half(), tx, "a")
    w.encode(torch.randn(5), tx, "b")
    with pytest.raises(CodecError, match="full"):
        w.encode(torch.randn(5), tx, "c")
    tx.drop("b")
    w.encode(torch.randn(5), tx, "c")
    with pytest.raises(CodecError, match="belongs to"):
        _delta("delta(int4)").encode(torch.randn(5), tx, "c")
    with pytest.raises(CodecError, match="DeltaState"):
        w.encode(torch.randn(5), EFState("delta(int8)"), "c")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="hashable"):
        w.encode(torch.randn(5), tx, ["unhashable"])  # type: ignore[arg-type]
    enc = w.encode(torch.randn(3, 4), tx, "a")
    forged = Encoded(enc.spec, (4, 3), enc.dtype, enc.payload)
    with pytest.raises(CodecError, match="reference"):
        w.decode(forged, rx, "a")
    with pytest.raises(CodecError, match="codec mismatch"):
        w.decode(Encoded("int8", enc.shape, enc.dtype, enc.payload), rx, "a")
    with pytest.raises(CodecError, match="at least 8 B"):
        w.decode(Encoded(enc.spec, enc.shape, enc.dtype, enc.payload[:5]), rx, "a")


def test_delta_decode_result_does_not_alias_state() -> None:
    w = _delta("delta(int8)")
    tx, rx = w.new_state(), w.new_state()
    x = torch.randn(50)
    y = w.decode(w.encode(x, tx, 1), rx, 1)
    y.zero_()  # the caller mutates its tensor in place (e.g. ReLU_)
    assert torch.equal(_ref(tx, 1), _ref(rx, 1))
    out = torch.empty(50)
    z = w.decode(w.encode(x, tx, 1), rx, 1, out=out)
    assert z is out and torch.equal(out, _ref(rx, 1))

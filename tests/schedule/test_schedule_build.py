"""GPipe, 1F1B and interleaved 1F1B as data: complete, ordered, matched, deadlock-free; memory bound of 1F1B."""

from __future__ import annotations

import itertools

import pytest

from layeredge_dist.schedule import (Backward, Forward, OptimizerStep, RecvAct, Schedule, build, gpipe,
                                     interleaved_one_f_one_b, one_f_one_b, peak_in_flight, validate)

SIZES = [(p, m) for p in range(1, 6) for m in range(1, 10)]


def _compute_order_ok(schedule: Schedule) -> None:
    """Each (micro-batch, chunk) is forwarded and backwarded exactly once per stage, backward after forward."""
    for s, acts in enumerate(schedule.stages):
        fwd = [(a.mb, a.chunk) for a in acts if isinstance(a, Forward)]
        bwd = [(a.mb, a.chunk) for a in acts if isinstance(a, Backward)]
        units = {(mb, c) for mb in range(schedule.num_microbatches) for c in range(schedule.num_chunks)}
        assert sorted(fwd) == sorted(units) and len(set(fwd)) == len(fwd), (schedule.name, s)
        assert sorted(bwd) == sorted(units) and len(set(bwd)) == len(bwd), (schedule.name, s)
        index = {a: i for i, a in enumerate(acts)}
        for mb, c in units:
            assert index[Forward(mb, c)] < index[Backward(mb, c)]
        assert acts[-1] == OptimizerStep()


@pytest.mark.parametrize("p,m", SIZES)
def test_gpipe_and_1f1b_are_valid(p: int, m: int) -> None:
    for schedule in (gpipe(p, m), one_f_one_b(p, m)):
        validate(schedule)
        _compute_order_ok(schedule)


@pytest.mark.parametrize("p,m", SIZES)
def test_one_f_one_b_bounds_in_flight_micro_batches(p: int, m: int) -> None:
    peaks = peak_in_flight(one_f_one_b(p, m))
    assert all(peaks[s] <= p - s for s in range(p)), peaks
    assert peaks == tuple(min(m, p - s) for s in range(p))
    assert peak_in_flight(gpipe(p, m)) == (m,) * p


@pytest.mark.parametrize("p,m,v", [(p, m, v) for p, k, v in itertools.product(range(1, 5), range(1, 4), range(1, 4))
                                   for m in [p * k]])
def test_interleaved_is_valid(p: int, m: int, v: int) -> None:
    schedule = interleaved_one_f_one_b(p, m, v)
    validate(schedule)
    _compute_order_ok(schedule)
    assert schedule.num_virtual == p * v


def test_interleaved_needs_multiple_of_stages() -> None:
    with pytest.raises(ValueError, match="multiple of stages"):
        interleaved_one_f_one_b(4, 6, 2)


def test_inference_gpipe_is_forward_only() -> None:
    schedule = gpipe(3, 4, training=False)
    validate(schedule)
    assert not any(isinstance(a, (Backward, OptimizerStep)) for acts in schedule.stages for a in acts)


def test_one_f_one_b_steady_state_alternates() -> None:
    acts = one_f_one_b(4, 8).compute_only()[0]
    codes = [a.code() for a in acts]
    assert codes[:5] == ["F0", "F1", "F2", "F3", "B0"] and codes[5:7] == ["F4", "B1"]


def test_first_stage_receives_nothing_and_last_sends_no_activation() -> None:
    schedule = one_f_one_b(3, 2)
    assert not any(isinstance(a, RecvAct) for a in schedule.stages[0])
    assert [a.code() for a in schedule.stages[1][:3]] == ["ra0<0", "F0", "sa0>2"]


def test_build_by_name_and_bad_counts() -> None:
    assert build("gpipe", 2, 3) == gpipe(2, 3) and build("1f1b", 2, 3).name == "1f1b"
    with pytest.raises(ValueError, match="known"):
        build("zero-bubble", 2, 2)
    with pytest.raises(ValueError):
        gpipe(0, 2)


def test_table_is_readable() -> None:
    text = str(one_f_one_b(3, 4))
    lines = text.splitlines()
    assert lines[0] == "1f1b: 3 stages, 4 micro-batches"
    assert lines[1].split() == ["step", "|", "s0", "s1", "s2"]
    assert lines[3].split() == ["0", "|", "F0", "ra0<0", "ra0<1"]
    compact = one_f_one_b(4, 8).format_table(compute_only=True).splitlines()
    assert compact[3 + 4].split() == ["4", "|", "B0", "F3", "B1", "F2"]
    assert "OPT" in compact[-1]
    assert "2 chunks/stage" in str(interleaved_one_f_one_b(2, 2, 2)).splitlines()[0]
    assert one_f_one_b(2, 2).to_dict()["stages"][1] == ["ra0<0", "F0", "B0", "sg0>0", "ra1<0", "F1", "B1",
                                                        "sg1>0", "OPT"]

"""The simulator: textbook bubbles, per-stage and per-edge times, link serialisation, Gantt output."""

from __future__ import annotations

import pytest

from layeredge_dist.schedule import (DeadlockError, Forward, RecvAct, Schedule, gpipe, interleaved_one_f_one_b,
                                     one_f_one_b, simulate)


@pytest.mark.parametrize("p,m", [(1, 1), (2, 4), (4, 4), (4, 8), (3, 16), (8, 8)])
@pytest.mark.parametrize("build", [gpipe, one_f_one_b])
@pytest.mark.parametrize("fb", [(1.0, 1.0), (1.0, 2.0)])
def test_textbook_bubble(p: int, m: int, build, fb: tuple[float, float]) -> None:
    f, b = fb
    r = simulate(build(p, m), f, b)
    assert r.step_time == pytest.approx((m + p - 1) * (f + b))
    assert r.bubble_fraction == pytest.approx((p - 1) / (m + p - 1))
    assert r.busy == pytest.approx((m * (f + b),) * p)


@pytest.mark.parametrize("p,m,v", [(2, 4, 2), (4, 8, 2), (4, 8, 4), (3, 6, 3)])
def test_interleaving_divides_the_bubble(p: int, m: int, v: int) -> None:
    r = simulate(interleaved_one_f_one_b(p, m, v), 1.0 / v, 2.0 / v)
    assert r.bubble_fraction == pytest.approx((p - 1) / (v * m + p - 1))


def test_slowest_stage_and_comm_set_the_pace() -> None:
    p, m = 3, 8
    fwd, bwd = [1.0, 3.0, 1.0], [2.0, 6.0, 2.0]
    r = simulate(one_f_one_b(p, m), fwd, bwd)
    assert r.step_time >= m * (3.0 + 6.0)
    assert r.stage_bubble[1] < r.stage_bubble[0]
    slow = simulate(one_f_one_b(p, m), fwd, bwd, comm_time=[0.5, 0.25])
    assert slow.step_time > r.step_time
    hops = {t.message.kind: t.end - t.start for t in slow.transfers if (t.src_stage, t.dst_stage) == (0, 1)}
    assert hops == {"act": 0.5}
    grads = [t.end - t.start for t in slow.transfers if (t.src_stage, t.dst_stage) == (2, 1)]
    assert grads and all(g == pytest.approx(0.25) for g in grads)


def test_bandwidth_bound_link_serialises_transfers() -> None:
    # Compute is free, each activation takes 1 s on the single link: m transfers queue on it.
    m = 5
    serial = simulate(gpipe(2, m, training=False), 0.0, 0.0, comm_time=1.0)
    overlap = simulate(gpipe(2, m, training=False), 0.0, 0.0, comm_time=1.0, serialize_links=False)
    assert serial.step_time == pytest.approx(m) and overlap.step_time == pytest.approx(1.0)


def test_separate_gradient_comm_time() -> None:
    r = simulate(gpipe(2, 1), 1.0, 1.0, comm_time=0.5, grad_comm_time=2.0)
    assert r.step_time == pytest.approx(1 + 0.5 + 1 + 1 + 2.0 + 1)


def test_bad_time_lists_and_deadlock() -> None:
    with pytest.raises(ValueError, match="expected 2 values"):
        simulate(gpipe(3, 2), 1.0, 1.0, comm_time=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        simulate(gpipe(2, 2), [1.0, -1.0], 1.0)
    with pytest.raises(DeadlockError, match="waiting for act of micro-batch 0 from stage 0"):
        simulate(Schedule("stuck", 2, 1, ((Forward(0),), (RecvAct(0, 0), Forward(0)))), 1.0, 1.0)


def test_gantt_is_readable() -> None:
    r = simulate(one_f_one_b(2, 2), 1.0, 1.0)
    rows = r.format_gantt(width=6).splitlines()
    assert rows[0] == "s0 |01.a.b|" and rows[1] == "s1 |.0a1b.|"
    assert rows[2] == "step 6 s, bubble 33.3%"

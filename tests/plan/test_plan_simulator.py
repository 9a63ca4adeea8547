"""predict(): agrees with schedule.simulate, is monotone in bandwidth, is fast for 1024 stages."""

from __future__ import annotations

import math
import random
import time

import pytest

from layeredge_dist.plan import (ClusterSpec, LinkSpec, ModelProfile, analytic_step_time, codec_cost, edge_time,
                                 even_cuts, predict, simulation, what_if)
from layeredge_dist.plan import simulator as sim
from layeredge_dist.schedule import gpipe, one_f_one_b, simulate


def _hand_profile() -> ModelProfile:
    return ModelProfile.from_numbers([0.1, 0.2, 0.3, 0.1, 0.2, 0.4], [0.2, 0.3, 0.5, 0.2, 0.4, 0.7],
                                     [1_000_000, 2_000_000, 500_000, 1_500_000, 800_000],
                                     grad_elements=[1_000_000, 2_000_000, 600_000, 1_500_000, 900_000],
                                     micro_batches=5)


def test_predict_equals_schedule_simulate_by_hand() -> None:
    prof = _hand_profile()
    links = (LinkSpec.parse("100Mbit", "1ms"), LinkSpec.parse("1Gbit"))
    cluster = ClusterSpec(3, links)
    cuts = (2, 4)  # stages: blocks 0-1, 2-3, 4-5; edges cross boundaries 1 and 3
    codecs = {"s0->s1": {"forward": "int8", "backward": "bf16"}, "s1->s2": {"forward": "int4"}}
    fwd = [0.1 + 0.2, 0.3 + 0.1, 0.2 + 0.4]
    bwd = [0.2 + 0.3, 0.5 + 0.2, 0.4 + 0.7]
    act = [edge_time(codec_cost("int8"), 2_000_000, links[0]), edge_time(codec_cost("int4"), 1_500_000, links[1])]
    grad = [edge_time(codec_cost("bf16"), 2_000_000, links[0]), edge_time(codec_cost("fp32"), 1_500_000, links[1])]
    ref = simulate(one_f_one_b(3, 5), fwd, bwd, act, grad, 0.0, serialize_links=True)
    for method in ("simulate", "fast", "auto"):
        p = predict(prof, cuts, codecs, cluster, "1f1b", 5, method=method)
        assert p.step_time_s == pytest.approx(ref.step_time, rel=1e-12)
        assert p.bubble_fraction == pytest.approx(ref.bubble_fraction, rel=1e-9)
        assert p.per_stage_busy_s == pytest.approx(ref.busy, rel=1e-12)
    p = predict(prof, cuts, codecs, cluster, "1f1b", 5)
    assert p.comm_time_per_edge["s0->s1"]["forward"] == pytest.approx(act[0])
    assert p.comm_time_per_edge["s1->s2"]["backward"] == pytest.approx(grad[1])
    assert p.bytes_per_link_per_step["s0->s1"] == 5 * codec_cost("int8").wire_bytes(2_000_000)
    assert p.bytes_per_link_per_step["s1->s0"] == 5 * 2_000_000 * 2  # bf16 gradients
    assert p.bytes_per_link_per_step["s2->s1"] == 5 * 1_500_000 * 4  # fp32 gradients (the default)
    assert p.bytes_per_edge_per_step["s1->s2"]["forward"] == 5 * codec_cost("int4").wire_bytes(1_500_000)
    assert simulation(prof, cuts, codecs, cluster, "1f1b", 5).step_time == pytest.approx(ref.step_time)


def test_fast_replay_is_bit_identical_to_simulate() -> None:
    rng = random.Random(7)
    for _ in range(120):
        sched = rng.choice(["gpipe", "1f1b", "interleaved"])
        p = rng.randint(2 if sched == "interleaved" else 1, 5)
        v = rng.randint(1, 3) if sched == "interleaved" else 1
        m = p * rng.randint(1, 3) if sched == "interleaved" else rng.randint(1, 9)
        n = p * v + rng.randint(0, 5)
        prof = ModelProfile.from_numbers([rng.uniform(0.01, 1) for _ in range(n)],
                                         [rng.uniform(0.01, 2) for _ in range(n)],
                                         [rng.randint(1, 3_000_000) for _ in range(n - 1)])
        cuts = tuple(sorted(rng.sample(range(1, n), p * v - 1)))
        codecs = [(rng.choice(["fp32", "int8", "bf16", "int4"]), rng.choice(["fp32", "int8", "bf16"]))
                  for _ in range(p * v - 1)]
        bw = rng.choice(["10Mbit", "100Mbit", "1Gbit", "inf"])
        a = predict(prof, cuts, codecs, bw, sched, m, v, method="simulate")
        b = predict(prof, cuts, codecs, bw, sched, m, v, method="fast")
        assert a.step_time_s == b.step_time_s
        assert a.per_stage_busy_s == pytest.approx(b.per_stage_busy_s, rel=1e-9)


def test_analytic_gpipe_is_exact_and_1f1b_close_on_balanced_stages() -> None:
    rng = random.Random(3)
    for _ in range(200):
        p, m = rng.randint(1, 6), rng.randint(1, 10)
        f = [rng.uniform(0.1, 1) for _ in range(p)]
        b = [rng.uniform(0.1, 2) for _ in range(p)]
        a = [rng.uniform(0, 3) for _ in range(p - 1)]
        g = [rng.uniform(0, 3) for _ in range(p - 1)]
        ref = simulate(gpipe(p, m), f, b, a, g).step_time
        assert analytic_step_time("gpipe", f, b, a, g, m) == pytest.approx(ref, rel=1e-9)
    worst = 0.0
    for _ in range(300):
        p, m = rng.randint(2, 8), rng.randint(1, 16)
        f, b = [1.0] * p, [2.0] * p  # balanced stages, every transfer under a tenth of a stage's compute
        a = [rng.uniform(0, 0.3) for _ in range(p - 1)]
        g = [rng.uniform(0, 0.3) for _ in range(p - 1)]
        ref = simulate(one_f_one_b(p, m), f, b, a, g).step_time
        worst = max(worst, abs(analytic_step_time("1f1b", f, b, a, g, m) / ref - 1))
    print(f"analytic 1F1B worst relative error on balanced stages: {worst:.2%}")
    assert worst < 0.03
    prof = ModelProfile.uniform(8, 0.1, 0.2, 100_000)
    assert predict(prof, (2, 4, 6), "int8", "1Gbit", "gpipe", 8, method="analytic").step_time_s == pytest.approx(
        predict(prof, (2, 4, 6), "int8", "1Gbit", "gpipe", 8).step_time_s, rel=1e-9)
    with pytest.raises(ValueError):
        analytic_step_time("interleaved", [1.0], [1.0], [], [], 4)


def test_monotone_in_bandwidth() -> None:
    prof = ModelProfile.uniform(8, 0.02, 0.04, 1_000_000, micro_batches=8)
    cuts = (2, 4, 6)
    times = [predict(prof, cuts, "fp32", bw).step_time_s for bw in ("10Mbit", "100Mbit", "1Gbit", "10Gbit", "inf")]
    assert all(x > y for x, y in zip(times, times[1:])), times
    # latency only adds
    assert predict(prof, cuts, "fp32", LinkSpec.parse("1Gbit", "5ms")).step_time_s > times[2]


def test_int8_beats_fp32_only_when_the_link_is_slow() -> None:
    prof = ModelProfile.uniform(8, 0.02, 0.04, 1_000_000, micro_batches=8)
    cuts = (2, 4, 6)
    slow_fp32 = predict(prof, cuts, "fp32", "100Mbit").step_time_s
    slow_int8 = predict(prof, cuts, "int8", "100Mbit").step_time_s
    assert slow_int8 < 0.5 * slow_fp32
    fast_fp32 = predict(prof, cuts, "fp32", "inf").step_time_s
    fast_int8 = predict(prof, cuts, "int8", "inf").step_time_s
    assert fast_int8 > fast_fp32  # with nothing to save on the wire, encode + decode cost more than two copies


def test_predict_1024_stages_is_fast() -> None:
    prof = ModelProfile.uniform(2048, 0.001, 0.002, 50_000, micro_batches=8)
    cluster = ClusterSpec.uniform(1024, "1Gbit", "100us")
    sim._compile.cache_clear()
    sim._schedule.cache_clear()
    t0 = time.perf_counter()
    p = predict(prof, None, "int8", cluster, "1f1b", 8)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict(prof, None, "bf16", cluster, "1f1b", 8)
    warm = time.perf_counter() - t0
    print(f"predict 1024 stages x 8 micro-batches: {cold:.3f} s cold (build + compile + replay), {warm:.3f} s warm; "
          f"method {p.method}")
    assert p.method == "fast"
    assert len(p.per_stage_busy_s) == 1024 and p.step_time_s > 0
    assert cold < 3.0


def test_codecs_forms_and_errors() -> None:
    prof = ModelProfile.uniform(6, 0.1, 0.2, 10_000, micro_batches=4)
    a = predict(prof, (2, 4), [("int8", "bf16"), "int4"], "1Gbit")
    b = predict(prof, (2, 4), {"s0->s1": {"forward": "int8", "backward": "bf16"},
                               "s1->s2": {"forward": "int4", "backward": "int4"}}, "1Gbit")
    assert a == b
    assert predict(prof, None, None, ClusterSpec.uniform(3, "1Gbit")) == predict(prof, (2, 4), "fp32", "1Gbit")
    with pytest.raises(ValueError, match="does not have"):
        predict(prof, (2, 4), {"s0->s2": {"forward": "int8"}}, "1Gbit")
    with pytest.raises(ValueError, match="directions"):
        predict(prof, (2, 4), {"s0->s1": {"forwards": "int8"}}, "1Gbit")
    with pytest.raises(ValueError, match="expected 2 entries"):
        predict(prof, (2, 4), ["int8"], "1Gbit")
    with pytest.raises(ValueError, match="interleaved"):
        predict(prof, (1, 2, 3), None, "1Gbit", "1f1b", 4, chunks=2)
    with pytest.raises(ValueError, match="nodes"):
        predict(prof, (2, 4), None, ClusterSpec.uniform(2, "1Gbit"))
    with pytest.raises(ValueError):
        predict(prof, (4, 2), None, "1Gbit")
    with pytest.raises(ValueError, match="unknown schedule"):
        predict(prof, (2, 4), None, "1Gbit", "zigzag")


def test_interleaved_edges_include_the_wrap_around() -> None:
    prof = ModelProfile.uniform(8, 0.1, 0.2, 100_000, micro_batches=4)
    p = predict(prof, (2, 4, 6), {"s1->s0": {"forward": "int8"}}, "100Mbit", "interleaved", 4, 2)
    assert set(p.comm_time_per_edge) == {"s0->s1", "s1->s0"}
    ref = simulate(sim._schedule("interleaved", 2, 4, 2), [0.2] * 4, [0.4] * 4,
                   [p.comm_time_per_edge["s0->s1"]["forward"] / 2, p.comm_time_per_edge["s1->s0"]["forward"],
                    p.comm_time_per_edge["s0->s1"]["forward"] / 2],
                   [p.comm_time_per_edge["s0->s1"]["backward"] / 2, p.comm_time_per_edge["s1->s0"]["backward"],
                    p.comm_time_per_edge["s0->s1"]["backward"] / 2])
    assert p.step_time_s == pytest.approx(ref.step_time, rel=1e-9)


def test_what_if_and_even_cuts() -> None:
    from layeredge_dist.model import even_cuts as model_even_cuts

    for n, k in [(12, 4), (10, 4), (7, 7), (9, 2)]:
        assert even_cuts(n, k) == model_even_cuts(n, k)
    prof = ModelProfile.uniform(12, 0.01, 0.02, 500_000, micro_batches=8, tokens_per_micro_batch=1024)
    slow = what_if(prof, 4, "100Mbit", codec="int8")
    fast = what_if(prof, 4, "10Gbit", codec="int8")
    assert slow.step_time_s > fast.step_time_s
    assert fast.tokens_per_s == pytest.approx(8 * 1024 / fast.step_time_s)
    assert math.isfinite(what_if(prof, 2, 1e9, latency="1ms", chunks=2, schedule="interleaved",
                                 microbatches=4).step_time_s)

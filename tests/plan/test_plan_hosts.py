"""The host-aware replay: shared cores, codecs on the stage threads, per-message / per-step overheads, fitting."""

from __future__ import annotations

import random

import pytest

from layeredge_dist.plan import (ClusterSpec, HostModel, LinkSpec, ModelProfile, PipelineModel,
                                 cross_validate_host, fit_host, host_grid, host_step_time, predict)
from layeredge_dist.plan.simulator import _compile, fast_step_time
from layeredge_dist.schedule import DeadlockError


def _random_case(rng: random.Random, p: int, m: int) -> tuple[list[float], list[float], list[float], list[float],
                                                              list[float]]:
    fwd = [rng.uniform(0.5, 2.0) for _ in range(p)]
    bwd = [rng.uniform(1.0, 4.0) for _ in range(p)]
    opt = [rng.uniform(0.0, 0.5) for _ in range(p)]
    act = [rng.uniform(0.0, 3.0) for _ in range(p - 1)]
    grad = [rng.uniform(0.0, 3.0) for _ in range(p - 1)]
    return fwd, bwd, opt, act, grad


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p,m", [(2, 1), (3, 4), (4, 8), (6, 3)])
def test_dedicated_cores_without_codec_work_is_the_plain_replay(schedule: str, p: int, m: int) -> None:
    rng = random.Random(p * 100 + m)
    for _ in range(5):
        fwd, bwd, opt, act, grad = _random_case(rng, p, m)
        compiled = _compile(schedule, p, m, 1)
        ref, ref_finish = fast_step_time(compiled, fwd, bwd, act, grad, opt)
        zero = [0.0] * (2 * (p - 1))
        got, finish = host_step_time(compiled, fwd, bwd, opt, zero, act + grad, zero, HostModel())
        assert got == pytest.approx(ref, rel=1e-12)
        assert finish == pytest.approx(ref_finish, rel=1e-12)
        # as many cores as stages: no contention either
        assert host_step_time(compiled, fwd, bwd, opt, zero, act + grad, zero, HostModel(cores=p))[0] == \
            pytest.approx(ref, rel=1e-12)


def test_one_core_without_network_runs_all_work_back_to_back() -> None:
    """1F1B on 2 stages with free links never leaves the single core idle: the step is the total work."""
    rng = random.Random(7)
    for m in (1, 2, 5):
        fwd, bwd, opt, _, _ = _random_case(rng, 2, m)
        zero = [0.0] * 2
        step, _ = host_step_time(_compile("1f1b", 2, m, 1), fwd, bwd, opt, zero, zero, zero, HostModel(cores=1))
        assert step == pytest.approx(m * sum(fwd) + m * sum(bwd) + sum(opt), rel=1e-12)


def test_shared_cores_slow_concurrent_work_only() -> None:
    """Two stages computing at once on one core take twice as long; a lone stage runs at full speed."""
    compiled = _compile("gpipe", 2, 1, 1)
    zero = [0.0] * 2
    # stage 0: F (1 s) then waits for the gradient; stage 1 waits, F (1 s), B (2 s); stage 0 B (2 s); opt 0.5 each
    step, _ = host_step_time(compiled, [1.0, 1.0], [2.0, 2.0], [0.5, 0.5], zero, zero, zero, HostModel())
    assert step == pytest.approx(6.5)  # 1 + 1 + 2 + 2 + opt 0.5 (stage 1's opt overlaps stage 0's B)
    step1, _ = host_step_time(compiled, [1.0, 1.0], [2.0, 2.0], [0.5, 0.5], zero, zero, zero, HostModel(cores=1))
    # stage 1's opt (0.5) shares the core with stage 0's B: both advance at half speed for 1 s of wall time
    assert step1 == pytest.approx(7.0)


def test_codec_work_runs_on_the_stage_threads() -> None:
    """GPipe, 2 stages, 1 micro-batch: encode delays the sender, decode the receiver, the wire sits between."""
    compiled = _compile("gpipe", 2, 1, 1)
    fwd, bwd, opt = [1.0, 1.0], [2.0, 2.0], [0.0, 0.0]
    enc, wire, dec = [0.25, 0.5], [0.75, 1.0], [0.125, 0.0625]  # activation of edge 0, then its gradient
    step, finish = host_step_time(compiled, fwd, bwd, opt, enc, wire, dec, HostModel())
    # s0: F 1 -> encode .25 -> wire .75 -> s1 decode .125 -> F 1 -> B 2 -> encode .5 -> wire 1 -> s0 decode .0625
    #     -> B 2
    assert finish[1] == pytest.approx(1 + 0.25 + 0.75 + 0.125 + 1 + 2 + 0.5)
    assert step == pytest.approx(1 + 0.25 + 0.75 + 0.125 + 1 + 2 + 0.5 + 1 + 0.0625 + 2)
    # the plain replay folds the codecs into the link instead: same total on this chain
    ref, _ = fast_step_time(compiled, fwd, bwd, [0.25 + 0.75 + 0.125], [0.5 + 1 + 0.0625], opt)
    assert step == pytest.approx(ref)


def test_message_overhead_delays_arrival_but_not_the_link() -> None:
    """GPipe, 2 stages, 2 micro-batches: two activations queue on one link; the overhead is added to each
    arrival, the second transfer starts when the first leaves the wire."""
    compiled = _compile("gpipe", 2, 2, 1)
    fwd, bwd, opt = [1.0, 0.1], [0.1, 0.1], [0.0, 0.0]
    zero = [0.0, 0.0]
    wire = [3.0, 0.0]
    base, fin0 = host_step_time(compiled, fwd, bwd, opt, zero, wire, zero, HostModel())
    over, fin1 = host_step_time(compiled, fwd, bwd, opt, zero, wire, zero, HostModel(message_overhead_s=0.5))
    # activations sent at 1 and 2; wire busy 1-4 and 4-7; arrivals 4 and 7 (4.5, 7.5 with the overhead); then
    # s1: F 0.1, B 0.1, B 0.1 with gradients on a free wire; s0: B 0.1 after the first gradient, B 0.1
    assert base == pytest.approx(7 + 0.1 + 0.1 + 0.1 + 0.1)
    assert over == pytest.approx(base + 2 * 0.5)  # the last activation and the last gradient each wait 0.5


def test_step_overhead_and_compute_scale() -> None:
    compiled = _compile("1f1b", 3, 4, 1)
    rng = random.Random(3)
    fwd, bwd, opt, act, grad = _random_case(rng, 3, 4)
    zero = [0.0] * 4
    enc = [0.1, 0.2, 0.3, 0.4]
    base, _ = host_step_time(compiled, fwd, bwd, opt, enc, zero, enc, HostModel(cores=2))
    scaled, _ = host_step_time(compiled, fwd, bwd, opt, enc, zero, enc, HostModel(cores=2, compute_scale=1.5))
    assert scaled == pytest.approx(1.5 * base, rel=1e-9)  # free links: all time is CPU work, scaled
    plus, _ = host_step_time(compiled, fwd, bwd, opt, enc, zero, enc, HostModel(cores=2, step_overhead_s=0.25))
    assert plus == pytest.approx(base + 0.25)


def test_fewer_cores_never_faster() -> None:
    rng = random.Random(11)
    for _ in range(20):
        p, m = rng.randint(2, 5), rng.randint(1, 6)
        fwd, bwd, opt, act, grad = _random_case(rng, p, m)
        enc = [rng.uniform(0, 0.3) for _ in range(2 * (p - 1))]
        compiled = _compile("1f1b", p, m, 1)
        steps = [host_step_time(compiled, fwd, bwd, opt, enc, act + grad, enc, HostModel(cores=c))[0]
                 for c in (None, p - 0.5, 1.5, 1.0, 0.5)]
        assert all(a <= b + 1e-9 for a, b in zip(steps, steps[1:])), steps


def test_predict_with_host() -> None:
    prof = ModelProfile.from_numbers([0.01] * 6, [0.02] * 6, [100_000] * 5, micro_batches=4)
    cluster = ClusterSpec(3, LinkSpec.parse("100Mbit", "0.5ms"))
    plain = predict(prof, (2, 4), "int8", cluster)
    dedicated = predict(prof, (2, 4), "int8", cluster, host=HostModel())
    assert dedicated.method == "host"
    assert dedicated.bytes_per_step == plain.bytes_per_step
    # codecs on the stage threads can only lengthen the step compared with codecs beside the link
    assert dedicated.step_time_s >= plain.step_time_s - 1e-12
    shared = predict(prof, (2, 4), "int8", cluster, host=HostModel(cores=1))
    assert shared.step_time_s > dedicated.step_time_s
    assert shared.per_stage_busy_s == pytest.approx(dedicated.per_stage_busy_s)
    assert 0.0 <= shared.bubble_fraction < 1.0


def test_fit_host_recovers_the_generating_model() -> None:
    prof = ModelProfile.from_numbers([0.004] * 6, [0.008] * 6, [65_536] * 5, micro_batches=4)
    runs = [(codec, ClusterSpec(3, LinkSpec.parse(bw, "0.3ms")))
            for codec in ("fp32", "int8") for bw in ("100Mbit", "1Gbit")]
    truth = HostModel(cores=2, message_overhead_s=0.0015, step_overhead_s=0.005, compute_scale=1.3)

    def steps(host: HostModel) -> list[float]:
        return [PipelineModel(prof, (2, 4), cluster).host_step_time([(codec, codec)] * 2, host)
                for codec, cluster in runs]

    measured = steps(truth)
    fitted, err = fit_host(steps, measured, HostModel(cores=2))
    assert err < 1e-9
    assert fitted == truth
    with pytest.raises(ValueError, match="at least one"):
        fit_host(steps, [], HostModel(cores=2))
    with pytest.raises(ValueError, match="4 step times for 3"):
        fit_host(steps, measured[:3], HostModel(cores=2))


def test_host_model_validation_and_round_trip() -> None:
    h = HostModel(cores=1.5, message_overhead_s=0.002, step_overhead_s=0.01, compute_scale=1.2)
    assert HostModel.from_dict(h.to_dict()) == h
    assert "1.5 shared cores" in h.describe() and "2 ms per message" in h.describe()
    assert "a core per stage" in HostModel().describe()
    for bad in ({"cores": 0}, {"cores": float("inf")}, {"message_overhead_s": -1e-3}, {"step_overhead_s": float("nan")},
                {"compute_scale": 0}):
        with pytest.raises(ValueError):
            HostModel(**bad)


def test_deadlock_is_reported() -> None:
    compiled = _compile("gpipe", 2, 1, 1)
    broken = type(compiled)(compiled.num_stages, compiled.num_virtual, compiled.num_messages, compiled.num_links,
                            (compiled.ops[0], tuple(op for op in compiled.ops[1] if op[0] != 1)))  # s1 never replies
    with pytest.raises(DeadlockError, match=r"stages \[0\]"):
        host_step_time(broken, [1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], HostModel())


def test_cross_validation_predicts_each_run_from_the_others() -> None:
    prof = ModelProfile.from_numbers([0.004] * 6, [0.008] * 6, [65_536] * 5, micro_batches=4)
    runs = [(codec, ClusterSpec(3, LinkSpec.parse(bw, "0.3ms")))
            for codec in ("fp32", "int8", "bf16") for bw in ("100Mbit", "1Gbit")]
    truth = HostModel(cores=2, message_overhead_s=0.001, step_overhead_s=0.002, compute_scale=1.2)

    def one(i: int, host: HostModel) -> float:
        codec, cluster = runs[i]
        return PipelineModel(prof, (2, 4), cluster).host_step_time([(codec, codec)] * 2, host)

    measured = [one(i, truth) for i in range(len(runs))]
    grid = host_grid(HostModel(cores=2), scales=(1.0, 1.2, 1.4), message_overheads_s=(0.0, 0.001, 0.002),
                     step_overheads_s=(0.0, 0.002))
    out = cross_validate_host(one, measured, HostModel(cores=2), grid)
    assert len(out) == len(runs)
    for (host, pred), m in zip(out, measured):
        assert host == truth and pred == pytest.approx(m)
    # a disturbed run does not calibrate its own prediction: the others still give the true model
    noisy = list(measured)
    noisy[0] *= 1.5
    host0, pred0 = cross_validate_host(one, noisy, HostModel(cores=2), grid)[0]
    assert host0 == truth and pred0 == pytest.approx(measured[0])
    with pytest.raises(ValueError, match="two runs"):
        cross_validate_host(one, measured[:1], HostModel(cores=2), grid)


def test_token_bucket_links() -> None:
    """A tbf-like link: bytes covered by the bucket leave at once; the bucket refills at the rate while idle."""
    compiled = _compile("gpipe", 2, 2, 1)
    fwd, bwd, opt = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    zero = [0.0, 0.0]
    wire = [1.0, 0.0]  # 1 MB at 1 MB/s, no latency
    plain, _ = host_step_time(compiled, fwd, bwd, opt, zero, wire, zero, HostModel())
    assert plain == pytest.approx(2.0)  # two activations back to back
    half = [(1e6, 1e6, 0.5e6), (0.0, 1e6, 0.5e6)]
    got, _ = host_step_time(compiled, fwd, bwd, opt, zero, wire, zero, HostModel(), half)
    assert got == pytest.approx(0.5 + 1.0)  # the first message uses the full bucket, the second finds it empty
    # an idle link refills the bucket: sends at 0.75 s (done at 1.25 s) and 1.5 s find 0.5 MB, then 0.25 MB
    gap, _ = host_step_time(compiled, [0.75, 0.0], fwd, opt, zero, wire, zero, HostModel(), half)
    assert gap == pytest.approx(1.5 + 0.75)
    queued, _ = host_step_time(compiled, [0.25, 0.0], fwd, opt, zero, wire, zero, HostModel(), half)
    assert queued == pytest.approx(0.25 + 0.5 + 1.0)  # the second send waits for the link: no refill meanwhile
    # a link spec with a burst makes PipelineModel use the bucket; without one, the plain rate
    prof = ModelProfile.from_numbers([0.01] * 2, [0.02] * 2, [250_000], micro_batches=2)
    tbf = ClusterSpec(2, LinkSpec(12.5e6, 0.0, 1e6))
    rate = ClusterSpec(2, LinkSpec(12.5e6, 0.0))
    assert LinkSpec.from_dict(LinkSpec(12.5e6, 0.0, 1e6).to_dict()) == LinkSpec(12.5e6, 0.0, 1e6)
    fast = PipelineModel(prof, (1,), tbf).host_step_time([("fp32", "fp32")], HostModel())
    slow = PipelineModel(prof, (1,), rate).host_step_time([("fp32", "fp32")], HostModel())
    assert fast < slow
    with pytest.raises(ValueError, match="burst_bytes"):
        LinkSpec(12.5e6, 0.0, -1.0)


def test_star_ports_are_shared_by_a_stage_s_messages() -> None:
    """On one switch port per node, the middle stage's activation (to s2) and gradient (to s0) leave through the
    same egress: with links that are the bottleneck the step grows; the cluster flag round-trips."""
    prof = ModelProfile.from_numbers([0.001] * 3, [0.002] * 3, [500_000] * 2, micro_batches=4)
    link = LinkSpec(12.5e6, 0.0)
    chain = PipelineModel(prof, (1, 2), ClusterSpec(3, link)).host_step_time([("fp32", "fp32")] * 2, HostModel())
    star_cluster = ClusterSpec(3, link, star=True)
    star = PipelineModel(prof, (1, 2), star_cluster).host_step_time([("fp32", "fp32")] * 2, HostModel())
    per_msg = 500_000 * 4 / 12.5e6  # 0.16 s
    # the middle stage sends 4 activations and 4 gradients: 8 messages through one egress
    assert star >= 8 * per_msg
    assert star > 1.2 * chain
    assert ClusterSpec.from_dict(star_cluster.to_dict()) == star_cluster
    assert "on one switch" in star_cluster.describe()
    # two stages: the same two ports either way
    two = PipelineModel(prof, (1,), ClusterSpec(2, link)).host_step_time([("fp32", "fp32")], HostModel())
    two_star = PipelineModel(prof, (1,), ClusterSpec(2, link, star=True)).host_step_time([("fp32", "fp32")],
                                                                                         HostModel())
    assert two_star == pytest.approx(two)

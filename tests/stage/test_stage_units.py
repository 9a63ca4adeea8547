"""Unit tests of the stage layer: specs, checkpoints, the endpoint over real loopback gRPC, the stage runtime in
threads, workloads and report tables. No Ray."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from stage_support import ThreadedPipeline

from layeredge_dist.codecs.base import CodecError
from layeredge_dist.model import (
    ByteGPTConfig,
    ByteLMWorkload,
    ModelSpec,
    SyntheticWorkload,
    TextCorpus,
    byte_gpt_spec,
    even_cuts,
    split_batch,
)
from layeredge_dist.pipeline.report import format_memory, format_traffic, traffic_rows
from layeredge_dist.schedule import Backward, Forward, OptimizerStep, RecvAct, RecvGrad, SendAct, SendGrad
from layeredge_dist.stage import (
    EdgeCodecs,
    Endpoint,
    OptimizerSpec,
    PeerTimeout,
    StageError,
    StageSpec,
    StepAborted,
    read_manifest,
    wire_microbatch,
    write_manifest,
)
from layeredge_dist.stage.checkpoint import MANIFEST, load_stage, save_stage, step_dir
from layeredge_dist.stage.endpoint import frame_seed
from layeredge_dist.transport import TransportConfig
from layeredge_dist.types import Direction, EdgeId, EdgeStats, TensorRole

TINY = ByteGPTConfig(context=16, d_model=32, n_layer=3, n_head=2)
ACT, GRAD = TensorRole.ACTIVATION, TensorRole.GRADIENT


def _e(text: str) -> EdgeId:
    return EdgeId.parse(text)


def _tiny_model(seed: int = 3) -> ModelSpec:
    return byte_gpt_spec(TINY, seed=seed)


# ---- EdgeCodecs -----------------------------------------------------------------------------------------------


def test_edge_codecs_defaults_apply_to_every_edge() -> None:
    codecs = EdgeCodecs("int8", "bf16")
    assert codecs.spec_for(_e("s0->s1"), ACT) == "int8"
    assert codecs.spec_for(_e("s1->s2"), ACT) == "int8"
    assert codecs.spec_for(_e("s1->s0"), GRAD) == "bf16"
    assert codecs.spec_for(_e("s2->s1"), GRAD) == "bf16"
    assert EdgeCodecs().spec_for(_e("s0->s1"), ACT) == "fp32"
    assert EdgeCodecs().spec_for(_e("s1->s0"), GRAD) == "fp32"


def test_edge_codecs_overrides_per_cut_and_direction() -> None:
    codecs = EdgeCodecs("fp32", "fp32", {"s0->s1": {"forward": "int4"}, "s1->s2": {"backward": "int8"}})
    assert codecs.spec_for(_e("s0->s1"), ACT) == "int4"
    assert codecs.spec_for(_e("s1->s0"), GRAD) == "fp32"  # only forward overridden on cut s0->s1
    assert codecs.spec_for(_e("s1->s2"), ACT) == "fp32"
    # the gradient on s2->s1 belongs to cut s1->s2, so it takes that cut's backward override
    assert codecs.spec_for(_e("s2->s1"), GRAD) == "int8"
    # ... and an override keyed by the gradient's own direction does not apply
    odd = EdgeCodecs("fp32", "fp32", {"s2->s1": {"backward": "int2"}})
    assert odd.spec_for(_e("s2->s1"), GRAD) == "fp32"


@pytest.mark.parametrize("edges", [{"s0-s1": {"forward": "int8"}}, {"x0->s1": {"forward": "int8"}},
                                   {"s0->s1": {"fwd": "int8"}}, {"s0->s1": {"forward": "int8", "grad": "x"}}])
def test_edge_codecs_reject_bad_edge_ids_and_keys(edges: dict[str, dict[str, str]]) -> None:
    with pytest.raises(ValueError):
        EdgeCodecs("fp32", "fp32", edges)


def test_edge_codecs_pickle_round_trip() -> None:
    codecs = EdgeCodecs("int8", "bf16", {"s0->s1": {"forward": "int4", "backward": "fp16"}})
    back = pickle.loads(pickle.dumps(codecs))
    assert back == codecs
    for edge in ("s0->s1", "s1->s2", "s1->s0", "s2->s1"):
        for role in (ACT, GRAD):
            assert back.spec_for(_e(edge), role) == codecs.spec_for(_e(edge), role)
    assert back.spec_for(_e("s1->s0"), GRAD) == "fp16"


# ---- StageSpec, OptimizerSpec ---------------------------------------------------------------------------------


def _spec(**kw: object) -> StageSpec:
    base: dict[str, object] = {"index": 0, "num_stages": 3, "model": _tiny_model(), "cuts": (1, 2)}
    base.update(kw)
    return StageSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [
    {"cuts": (1,)},  # 3 stages need 2 cuts
    {"cuts": (1, 2, 3)},
    {"chunks": 2, "cuts": (1, 2, 3, 4, 5)},  # chunks without interleaved
    {"index": 3},
    {"index": -1},
    {"recv_timeout_s": 0.0},
])
def test_stage_spec_rejects_inconsistent_settings(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _spec(**kw)


def test_stage_spec_accepts_interleaved_chunks() -> None:
    spec = _spec(index=1, schedule="interleaved", chunks=2, cuts=(1, 2, 3, 4, 5), microbatches=6,
                 model=byte_gpt_spec(ByteGPTConfig(context=16, d_model=32, n_layer=6, n_head=2)))
    assert spec.virtual_stages() == (1, 4)
    assert spec.host == 3
    assert [p.stage for p in spec.partition_specs()] == [1, 4]


def _kinds(actions: tuple[object, ...]) -> set[type]:
    return {type(a) for a in actions}


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_build_schedule_per_mode(schedule: str) -> None:
    spec = _spec(schedule=schedule, microbatches=4)
    for mode in ("train", "grad"):
        sched = spec.build_schedule(mode)  # type: ignore[arg-type]
        assert sched.training
        for s, acts in enumerate(sched.stages):
            assert acts[-1] == OptimizerStep(), (mode, s)
            assert sum(isinstance(a, Forward) for a in acts) == 4
            assert sum(isinstance(a, Backward) for a in acts) == 4
        assert SendGrad in _kinds(sched.stages[1]) and RecvGrad in _kinds(sched.stages[1])
    for mode in ("eval", "infer"):
        sched = spec.build_schedule(mode)  # type: ignore[arg-type]
        assert not sched.training
        for acts in sched.stages:
            assert _kinds(acts) <= {Forward, SendAct, RecvAct}
            assert sum(isinstance(a, Forward) for a in acts) == 4
        assert _kinds(sched.stages[0]) == {Forward, SendAct}
        assert _kinds(sched.stages[2]) == {Forward, RecvAct}


def test_build_schedule_interleaved_eval_is_forward_only() -> None:
    spec = _spec(schedule="interleaved", chunks=2, cuts=(1, 2, 3, 4, 5), microbatches=6,
                 model=byte_gpt_spec(ByteGPTConfig(context=16, d_model=32, n_layer=6, n_head=2)))
    train = spec.build_schedule("train")
    assert train.num_chunks == 2 and train.training
    assert all(Backward in _kinds(acts) and OptimizerStep in _kinds(acts) for acts in train.stages)
    for mode in ("eval", "infer"):
        sched = spec.build_schedule(mode)  # type: ignore[arg-type]
        assert not sched.training and sched.num_chunks == 2
        for acts in sched.stages:
            assert _kinds(acts) <= {Forward, SendAct, RecvAct}
            assert sorted((a.chunk, a.mb) for a in acts if isinstance(a, Forward)) == \
                [(c, m) for c in range(2) for m in range(6)]


def test_wire_microbatch_separates_chunks() -> None:
    assert wire_microbatch(0, 3, 3, 6) == 3
    assert wire_microbatch(2, 5, 3, 6) == 5
    assert wire_microbatch(3, 0, 3, 6) == 6  # chunk 1 of stage 0
    assert wire_microbatch(4, 2, 3, 6) == 8
    assert wire_microbatch(5, 5, 3, 6) == 11


@pytest.mark.parametrize("kw", [{"name": "adam"}, {"lr": 0.0}, {"lr": -1.0}, {"lr": float("nan")},
                                {"lr": float("inf")}, {"momentum": -0.1}, {"weight_decay": -1.0},
                                {"schedule": "linear"}, {"warmup_steps": -1}, {"schedule": "cosine"},
                                {"schedule": "cosine", "total_steps": 10, "final_lr_frac": 0.0},
                                {"final_lr_frac": 1.5}])
def test_optimizer_spec_rejects_bad_values(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        OptimizerSpec(**kw)  # type: ignore[arg-type]


def test_optimizer_spec_builds_configured_optimizers() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    sgd = OptimizerSpec("sgd", lr=0.5, momentum=0.9, weight_decay=0.01).build([p])
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.5, 0.9, 0.01)
    p.grad = torch.ones(3)
    sgd.step()
    # first SGD step with momentum: buf = g + wd * p = 1.01; p -= lr * buf
    assert torch.allclose(p.detach(), torch.full((3,), 1.0 - 0.5 * 1.01))
    q = torch.nn.Parameter(torch.ones(2))
    adamw = OptimizerSpec("adamw", lr=1e-2, weight_decay=0.1).build([q])
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["lr"] == 1e-2 and adamw.param_groups[0]["weight_decay"] == 0.1


def test_lr_schedule_warms_up_linearly_then_follows_the_cosine() -> None:
    spec = OptimizerSpec("adamw", lr=1e-2, schedule="cosine", warmup_steps=4, total_steps=14, final_lr_frac=0.1)
    assert [spec.lr_at(k) for k in range(4)] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert spec.lr_at(4) == pytest.approx(1e-2)  # the cosine starts at the peak
    assert spec.lr_at(9) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))  # half-way: the mean of peak and floor
    assert spec.lr_at(14) == pytest.approx(1e-3) and spec.lr_at(100) == pytest.approx(1e-3)  # held at the floor
    rates = [spec.lr_at(k) for k in range(4, 15)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    flat = OptimizerSpec("sgd", lr=0.2, warmup_steps=2)
    assert [flat.lr_at(k) for k in range(4)] == pytest.approx([0.1, 0.2, 0.2, 0.2])
    assert not OptimizerSpec().scheduled and flat.scheduled


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_scheduled_optimizer_steps_with_the_scheduled_rate_and_resumes_from_its_state(name: str) -> None:
    spec = OptimizerSpec(name, lr=0.1, schedule="cosine", warmup_steps=2, total_steps=6)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = spec.build([p])
    used = []
    for _ in range(3):
        p.grad = torch.ones(1)
        opt.step()
        used.append(opt.param_groups[0]["lr"])
    assert used == pytest.approx([spec.lr_at(k) for k in range(3)])
    if name == "sgd":  # plain SGD moves by exactly the rate: the rate is the one the step used
        assert float(p.detach()) == pytest.approx(-sum(used))
    state = opt.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    resumed = spec.build([q])
    resumed.load_state_dict(state)  # the step count travels in the param groups
    q.grad = torch.ones(1)
    resumed.step()
    assert resumed.param_groups[0]["lr"] == pytest.approx(spec.lr_at(3))
    late = spec.build([torch.nn.Parameter(torch.zeros(1))], start_step=5)
    late.param_groups[0]["params"][0].grad = torch.ones(1)
    late.step()
    assert late.param_groups[0]["lr"] == pytest.approx(spec.lr_at(5))


def test_seek_realigns_a_schedule_loaded_from_an_unscheduled_state() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    legacy = OptimizerSpec("sgd", lr=0.1).build([p]).state_dict()  # written before schedules existed
    spec = OptimizerSpec("sgd", lr=0.1, warmup_steps=10)
    opt = spec.build([p])
    opt.load_state_dict(legacy)
    spec.seek(opt, 4)
    p.grad = torch.ones(1)
    opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # step 4 of a 10-step warm-up


# ---- checkpoint files -----------------------------------------------------------------------------------------


def test_save_and_load_stage_round_trip(tmp_path: Path) -> None:
    state = {"stage": 1, "model": [{"w": torch.arange(6.0).reshape(2, 3)}], "note": "x"}
    path = save_stage(tmp_path, 7, 1, state)
    assert path == step_dir(tmp_path, 7) / "stage1.pt" and path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["stage1.pt"]  # no temp file left
    back = load_stage(tmp_path, 7, 1)
    assert back["step"] == 7 and back["stage"] == 1 and back["note"] == "x"
    assert torch.equal(back["model"][0]["w"], state["model"][0]["w"])  # type: ignore[index]


def test_load_stage_missing_or_of_another_step(tmp_path: Path) -> None:
    save_stage(tmp_path, 3, 0, {"stage": 0})
    with pytest.raises(FileNotFoundError):
        load_stage(tmp_path, 4, 0)
    with pytest.raises(FileNotFoundError):
        load_stage(tmp_path, 3, 1)
    shutil.copytree(step_dir(tmp_path, 3), step_dir(tmp_path, 4))
    with pytest.raises(ValueError, match="step 3"):
        load_stage(tmp_path, 4, 0)


def test_write_manifest_keeps_newest_step_dirs(tmp_path: Path) -> None:
    for step in (1, 2, 3, 10, 11):
        save_stage(tmp_path, step, 0, {"stage": 0})
    write_manifest(tmp_path, 11, {"model": "m"}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step*")) == ["step00000010", "step00000011"]
    manifest = read_manifest(tmp_path)
    assert manifest == {"model": "m", "step": 11}
    write_manifest(tmp_path, 11, {}, keep=1)
    assert [p.name for p in tmp_path.glob("step*")] == ["step00000011"]


def test_read_manifest_absent_or_corrupt(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    (tmp_path / MANIFEST).write_text('{"step": 3')
    with pytest.raises(ValueError, match="corrupt"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text('{"stage": 3}')
    with pytest.raises(ValueError):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"step": 4}))
    assert read_manifest(tmp_path) == {"step": 4}


# ---- Endpoint over real loopback gRPC ------------------------------------------------------------------------


@pytest.fixture(params=["grpc", "tcp"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Endpoint, Endpoint]]:
    """Endpoints of stages 0 and 1, 0 connected to 1 (and back)."""
    cfg = TransportConfig(token="t", tcp_data_path=request.param == "tcp")
    a, b = Endpoint(0, cfg), Endpoint(1, cfg)
    a.connect({1: b.address})
    b.connect({0: a.address})
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_endpoint_fp32_is_exact(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    x = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(0))
    a.send(1, ACT, 1, 0, x, "fp32", 10.0)
    y = b.receive(0, ACT, 1, 0, 10.0, "activation")
    assert y.dtype == torch.float32 and torch.equal(y, x)


def test_endpoint_int8_error_is_bounded(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    a.send(1, ACT, 1, 0, x, "int8", 10.0)
    y = b.receive(0, ACT, 1, 0, 10.0, "activation")
    assert y.shape == x.shape and y.dtype == x.dtype
    rel = float((y - x).norm() / x.norm())
    assert 0.0 < rel < 0.015


def _seeded_roundtrip(codec_seed: int | None, seq: int, spec: str = "int4/rht/sr",
                      step: int | None = None) -> torch.Tensor:
    """What stage 1 decodes when a seeded stage 0 sends one fixed tensor as frame (seq, micro-batch 0), of
    training step ``step`` when given."""
    cfg = TransportConfig(token="t")
    a, b = Endpoint(0, cfg, codec_seed=codec_seed), Endpoint(1, cfg)
    try:
        a.connect({1: b.address})
        x = torch.randn(8, 256, generator=torch.Generator().manual_seed(2))
        a.send(1, GRAD, seq, 0, x, spec, 10.0, step)
        return b.receive(0, GRAD, seq, 0, 10.0, "gradient")
    finally:
        a.close()
        b.close()


def test_endpoint_randomized_codec_draws_are_a_function_of_seed_and_frame() -> None:
    """Same codec seed and frame: the same rotation and rounding noise in a fresh endpoint (a repeated run);
    another frame or another seed: other draws."""
    first = _seeded_roundtrip(7, seq=3)
    assert torch.equal(first, _seeded_roundtrip(7, seq=3))
    assert not torch.equal(first, _seeded_roundtrip(7, seq=4))
    assert not torch.equal(first, _seeded_roundtrip(8, seq=3))
    assert not torch.equal(_seeded_roundtrip(None, seq=3), _seeded_roundtrip(None, seq=3))  # global RNG
    # a training step's frame draws by its step, whatever call number carries it
    step2 = _seeded_roundtrip(7, seq=3, step=2)
    assert torch.equal(step2, _seeded_roundtrip(7, seq=9, step=2)) and not torch.equal(step2, first)
    assert not torch.equal(step2, _seeded_roundtrip(7, seq=3, step=3))


def test_frame_seed_separates_every_field() -> None:
    e, f = EdgeId.parse("s0->s1"), EdgeId.parse("s1->s2")
    base = frame_seed(0, e, ACT, "step5", 1)
    others = [frame_seed(1, e, ACT, "step5", 1), frame_seed(0, f, ACT, "step5", 1),
              frame_seed(0, e, GRAD, "step5", 1), frame_seed(0, e, ACT, "step6", 1),
              frame_seed(0, e, ACT, "step5", 2), frame_seed(0, e, ACT, "call5", 1)]
    assert len({base, *others}) == 7 and all(0 <= v < 2**63 for v in others)


def test_pipeline_with_randomized_codecs_repeats_exactly_with_the_same_seed() -> None:
    """Two fresh pipelines with rotated, stochastically rounded edges and the same codec seed train to the same
    losses and weights; another seed trains differently (so the draws do depend on it)."""
    codecs = EdgeCodecs(forward="int4/rht", backward="int4/rht/sr")

    def run(codec_seed: int) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
        pipe = ThreadedPipeline(_tiny_model(), even_cuts(3, 3), 3, "1f1b", microbatches=4, codecs=codecs,
                                optimizer=OptimizerSpec("sgd", lr=0.1), extra={"codec_seed": codec_seed})
        try:
            losses = [float(torch.stack(pipe.call(_bytes_batch(k))).mean()) for k in range(3)]
            return losses, [s.parameters()[0] for s in pipe.stages]
        finally:
            pipe.close()

    losses, params = run(11)
    again, params_again = run(11)
    assert losses == again
    _assert_params_equal(params, params_again)
    other, _ = run(12)
    assert other != losses


@pytest.mark.parametrize("codecs", [EdgeCodecs(forward="int4/rht", backward="int4/rht/sr"),
                                    EdgeCodecs(forward="ef(int4)", backward="int8"),  # deterministic: the state
                                    EdgeCodecs(forward="delta(int4)", backward="int8")],
                         ids=["randomized", "error-feedback", "delta"])
def test_pipeline_training_does_not_depend_on_evaluation_calls(codecs: EdgeCodecs) -> None:
    """Evaluation calls between training steps leave the training run exactly as it was: same losses, same
    weights. Before, randomized draws were keyed by the call number (which evaluation advances), so a run's
    trajectory depended on its --eval-every and a retried step drew anew; and an evaluation's forward residual
    (``ef``) or reference (``delta``) carried into the next training step."""

    def run(evaluate: bool) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
        pipe = ThreadedPipeline(_tiny_model(), even_cuts(3, 3), 3, "1f1b", microbatches=4, codecs=codecs,
                                optimizer=OptimizerSpec("sgd", lr=0.1), extra={"codec_seed": 5})
        try:
            losses = []
            for k in range(3):
                if evaluate:
                    pipe.call(_bytes_batch(10 + k), mode="eval")
                losses.append(float(torch.stack(pipe.call(_bytes_batch(k))).mean()))
            return losses, [s.parameters()[0] for s in pipe.stages]
        finally:
            pipe.close()

    plain, params = run(False)
    evaluated, params_evaluated = run(True)
    assert plain == evaluated
    _assert_params_equal(params, params_evaluated)


def test_endpoint_raw_int64_is_bit_exact(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    x = torch.randint(-(2**62), 2**62, (3, 50), dtype=torch.int64, generator=torch.Generator().manual_seed(2))
    a.send(1, ACT, 1, 0, x, "raw", 10.0)
    y = b.receive(0, ACT, 1, 0, 10.0, "ids")
    assert y.dtype == torch.int64 and torch.equal(y, x)


def test_endpoint_stashes_frames_that_arrive_early(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    xs = {(seq, mb): torch.full((5,), float(10 * seq + mb)) for seq in (1, 2) for mb in range(3)}
    for key in [(2, 1), (1, 2), (2, 0), (1, 0), (1, 1), (2, 2)]:
        a.send(1, ACT, key[0], key[1], xs[key], "fp32", 10.0)
    for key in [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]:
        assert torch.equal(b.receive(0, ACT, key[0], key[1], 10.0, "activation"), xs[key]), key
    assert b.stale_frames == 0


def test_endpoint_drops_stale_frames(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    a.send(1, ACT, 1, 0, torch.zeros(4), "fp32", 10.0)  # left over from an aborted call
    a.send(1, ACT, 1, 1, torch.ones(4), "fp32", 10.0)
    a.send(1, ACT, 2, 0, torch.full((4,), 2.0), "fp32", 10.0)
    y = b.receive(0, ACT, 2, 0, 10.0, "activation")
    assert torch.equal(y, torch.full((4,), 2.0))
    assert b.stale_frames == 2
    # a stale frame is gone, not stashed: asking for it again times out
    with pytest.raises(PeerTimeout):
        b.receive(0, ACT, 1, 0, 0.3, "activation")


def test_endpoint_roles_are_separate_streams(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    b.send(0, GRAD, 1, 0, torch.full((3,), -1.0), "fp32", 10.0)
    b.send(0, ACT, 1, 0, torch.full((3,), 1.0), "fp32", 10.0)
    assert torch.equal(a.receive(1, ACT, 1, 0, 10.0, "x"), torch.full((3,), 1.0))
    assert torch.equal(a.receive(1, GRAD, 1, 0, 10.0, "g"), torch.full((3,), -1.0))


def test_endpoint_receive_times_out_naming_the_peer(pair: tuple[Endpoint, Endpoint]) -> None:
    _, b = pair
    t0 = time.monotonic()
    with pytest.raises(PeerTimeout) as info:
        b.receive(0, ACT, 7, 0, 0.6, "activation of micro-batch 0 from stage 0")
    elapsed = time.monotonic() - t0
    assert 0.55 <= elapsed < 2.0
    msg = str(info.value)
    assert "activation of micro-batch 0 from stage 0" in msg
    assert "stage 0" in msg and "s0->s1" in msg and "call 7" in msg
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, StageError)


def test_endpoint_abort_stops_blocked_receive_only_for_that_call(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    outcome: dict[str, object] = {}

    def wait() -> None:
        try:
            b.receive(0, ACT, 5, 0, 20.0, "activation")
            outcome["error"] = None
        except BaseException as err:  # noqa: BLE001 - inspected below
            outcome["error"] = err
        outcome["t"] = time.monotonic()

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.3)
    assert t.is_alive()
    t_abort = time.monotonic()
    b.abort(5)
    t.join(5)
    assert not t.is_alive()
    assert isinstance(outcome["error"], StepAborted)
    assert float(outcome["t"]) - t_abort < 0.5  # type: ignore[arg-type]
    # a later call is unaffected, even a receive that blocks for a while first
    later: dict[str, torch.Tensor] = {}
    t2 = threading.Thread(target=lambda: later.setdefault("y", b.receive(0, ACT, 6, 0, 10.0, "activation")))
    t2.start()
    time.sleep(0.4)
    a.send(1, ACT, 6, 0, torch.full((2,), 6.0), "fp32", 10.0)
    t2.join(10)
    assert torch.equal(later["y"], torch.full((2,), 6.0))
    with pytest.raises(StepAborted):  # ... while the aborted call stays aborted
        b.receive(0, ACT, 4, 0, 10.0, "activation")


def test_endpoint_meter_records_send_and_receive(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    x = torch.randn(10, 30)
    for mb in range(2):
        a.send(1, ACT, 1, mb, x, "int8", 10.0)
    ids = torch.arange(7, dtype=torch.int64)
    a.send(1, ACT, 1, 2, ids, "raw", 10.0)
    for mb in range(2):
        b.receive(0, ACT, 1, mb, 10.0, "activation")
    b.receive(0, ACT, 1, 2, 10.0, "ids")
    a.flush(10.0)
    sent = {(s.codec, s.direction): s for s in a.meter.snapshot()}
    got = {(s.codec, s.direction): s for s in b.meter.snapshot()}
    s8 = sent[("int8", Direction.SEND)]
    assert (s8.edge, s8.role, s8.elements, s8.raw_bytes) == (_e("s0->s1"), ACT, 600, 2400)
    assert 600 < s8.wire_bytes < 2400  # about a byte per element plus scales and headers
    assert s8.encode_s > 0
    sraw = sent[("raw", Direction.SEND)]
    assert (sraw.elements, sraw.raw_bytes) == (7, 56) and sraw.wire_bytes >= 56
    r8 = got[("int8", Direction.RECV)]
    assert (r8.edge, r8.elements, r8.raw_bytes) == (_e("s0->s1"), 600, 2400)
    assert r8.decode_s > 0 and r8.wire_bytes > 0
    assert (got[("raw", Direction.RECV)].elements, got[("raw", Direction.RECV)].raw_bytes) == (7, 56)
    assert a.meter.frames() == 3 and b.meter.frames() == 3


def test_endpoint_error_feedback_cancels_accumulated_error(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    steps = 6
    received = []
    for seq in range(1, steps + 1):
        a.send(1, ACT, seq, 0, x, "ef(int8)", 10.0)
        received.append(b.receive(0, ACT, seq, 0, 10.0, "activation"))
    single = float((received[0] - x).norm())
    assert single > 0
    assert not torch.equal(received[0], received[1])  # the residual changed what was sent
    # plain int8 of the same tensor errs the same way every time: the sum would be off by steps * single
    total_err = float((torch.stack(received).sum(0) - steps * x).norm())
    assert total_err < 2 * single
    assert a.codec_state()["ef"]  # the sender holds the residual


def test_endpoint_delta_references_stay_in_sync(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    g = torch.Generator().manual_seed(5)
    base = torch.randn(16, 64, generator=g)
    errors = []
    for seq in range(1, 6):
        x = base + 0.01 * seq * torch.randn(16, 64, generator=g)
        for mb in range(2):  # two keys (micro-batches), each with its own reference
            a.send(1, ACT, seq, mb, x + mb, "delta(int8)", 10.0)
        for mb in range(2):
            y = b.receive(0, ACT, seq, mb, 10.0, "activation")
            errors.append(float((y - (x + mb)).abs().max()))
    first = max(errors[:2])
    assert first > 0
    # later sends only carry small deltas: their error is far below the first (full) int8 send
    assert max(errors[2:]) < first / 4
    # sender and receiver references are bit-identical after every update, and equal what was received last
    key = (_e("s0->s1"), ACT, 1)
    send_state = a.codec_state()["delta"][("send", "delta(int8)", key)]
    recv_state = b.codec_state()["delta"][("recv", "delta(int8)", key)]
    assert send_state.version(key) == recv_state.version(key) == 5  # type: ignore[attr-defined]
    assert torch.equal(send_state.reference(key), recv_state.reference(key))  # type: ignore[attr-defined]
    assert torch.equal(recv_state.reference(key), y)  # type: ignore[attr-defined]


# ---- Stage runtime --------------------------------------------------------------------------------------------


def _bytes_batch(seed: int, b: int = 8, t: int = 16) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return SyntheticWorkload(_tiny_model(), b, t, seed=seed).batch(0)


def _params(pipe: ThreadedPipeline) -> list[dict[str, torch.Tensor]]:
    return [chunk for stage in pipe.stages for chunk in stage.parameters()]


def _assert_params_equal(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_stage_without_parameters_runs_infer() -> None:
    model = ModelSpec("sequential", {"layers": [{"type": "Identity"}] * 3, "loss": "none"})
    pipe = ThreadedPipeline(model, (1, 2), 3, microbatches=2)
    try:
        assert all(not list(p.parameters()) for s in pipe.stages for p in s.parts)
        x = torch.randn(4, 5)
        out = pipe.call((x, {}), "infer")
        assert len(out) == 2 and torch.equal(torch.cat(out), x)
        assert pipe.stages[1].memory()["param_bytes"] == 0
    finally:
        pipe.close()


@pytest.fixture(scope="module")
def tiny_pipe() -> Iterator[ThreadedPipeline]:
    """A 3-stage tiny byte GPT (fp32 edges, SGD) shared by the runtime tests of this module."""
    pipe = ThreadedPipeline(_tiny_model(), even_cuts(3, 3), 3, "1f1b", microbatches=4,
                            optimizer=OptimizerSpec("sgd", lr=0.1))
    try:
        yield pipe
    finally:
        pipe.close()


def test_stage_load_state_of_another_stage_fails(tiny_pipe: ThreadedPipeline) -> None:
    with pytest.raises(StageError, match="stage 1"):
        tiny_pipe.stages[0].load_state(tiny_pipe.stages[1].state())
    before = tiny_pipe.stages[0].parameters()
    tiny_pipe.stages[0].load_state(tiny_pipe.stages[0].state())  # its own state loads
    _assert_params_equal(before, tiny_pipe.stages[0].parameters())


def test_train_changes_parameters_and_grad_does_not(tiny_pipe: ThreadedPipeline) -> None:
    batch = _bytes_batch(1)
    p0 = _params(tiny_pipe)
    done = [stage.steps_done for stage in tiny_pipe.stages]
    losses = tiny_pipe.call(batch, "grad")
    assert len(losses) == 4 and all(o.dim() == 0 and 4.0 < float(o) < 7.0 for o in losses)  # ~ln 256
    _assert_params_equal(p0, _params(tiny_pipe))
    for stage in tiny_pipe.stages:
        grads = stage.gradients()[0]
        assert grads and set(grads) == {k for k, _ in stage.parts[0].named_parameters()}
        assert any(float(g.abs().max()) > 0 for g in grads.values())
    tiny_pipe.call(batch, "train")
    p1 = _params(tiny_pipe)
    for a, b in zip(p0, p1):
        assert any(not torch.equal(a[k], b[k]) for k in a)  # every stage stepped
    assert all(stage.gradients() == [{}] for stage in tiny_pipe.stages)  # and zeroed its gradients
    assert [stage.steps_done for stage in tiny_pipe.stages] == [d + 1 for d in done]


def test_eval_returns_scalar_losses_per_microbatch(tiny_pipe: ThreadedPipeline) -> None:
    batch = _bytes_batch(2)
    p0 = _params(tiny_pipe)
    losses = tiny_pipe.call(batch, "eval")
    assert len(losses) == 4
    assert all(o.dim() == 0 and torch.isfinite(o) and 3.0 < float(o) < 8.0 for o in losses)
    assert len({float(o) for o in losses}) > 1  # one loss per micro-batch, not one repeated
    _assert_params_equal(p0, _params(tiny_pipe))


def test_infer_returns_logits_per_microbatch(tiny_pipe: ThreadedPipeline) -> None:
    x, _ = _bytes_batch(3)
    out = tiny_pipe.call((x, {}), "infer")
    assert [tuple(o.shape) for o in out] == [(2, 16, 256)] * 4
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in out)


def test_memory_reports_saved_activations_after_train(tiny_pipe: ThreadedPipeline) -> None:
    tiny_pipe.call(_bytes_batch(4), "train")
    for stage in tiny_pipe.stages:
        mem = stage.memory()
        assert set(mem) == {"param_bytes", "optimizer_bytes", "saved_activation_bytes_peak", "rss_bytes",
                            "peak_rss_bytes"}
        want_params = sum(p.numel() * 4 for p in stage.parts[0].parameters())
        assert mem["param_bytes"] == want_params > 0
        assert mem["saved_activation_bytes_peak"] > 0
        assert mem["optimizer_bytes"] == 0  # plain SGD keeps no state
        assert 0 < mem["rss_bytes"] <= mem["peak_rss_bytes"]


def test_stage_stats_count_the_cut_traffic(tiny_pipe: ThreadedPipeline) -> None:
    before = {(s.edge, s.role, s.direction): s.elements for s in tiny_pipe.stages[1].stats()}
    tiny_pipe.call(_bytes_batch(5), "train")
    after = {(s.edge, s.role, s.direction): s.elements for s in tiny_pipe.stages[1].stats()}
    per_step = 8 * 16 * 32  # batch x context x d_model, summed over the 4 micro-batches
    for key in [(_e("s0->s1"), ACT, Direction.RECV), (_e("s1->s2"), ACT, Direction.SEND),
                (_e("s2->s1"), GRAD, Direction.RECV), (_e("s1->s0"), GRAD, Direction.SEND)]:
        assert after[key] - before.get(key, 0) == per_step, key


def test_stage_stats_count_wire_bytes_of_the_last_frames() -> None:
    """The TCP data path reads acknowledgements lazily; stats() must still count every frame's wire bytes."""
    pipe = ThreadedPipeline(_tiny_model(), even_cuts(3, 3), 3, "1f1b", microbatches=4,
                            transport=TransportConfig(token="t", tcp_data_path=True))
    try:
        pipe.call(_bytes_batch(6), "train")
        rows = [s for stage in pipe.stages for s in stage.stats() if s.direction is Direction.SEND]
        assert len(rows) == 5  # 2 activation and 2 gradient cuts, the losses to the host
        for s in rows:
            assert s.raw_bytes > 0 and s.wire_bytes >= s.raw_bytes, s  # fp32 / raw: nothing is smaller
    finally:
        pipe.close()


def test_stage_error_mid_call_surfaces_and_pipeline_keeps_working() -> None:
    codecs = EdgeCodecs(edges={"s0->s1": {"backward": "nonsense"}})
    pipe = ThreadedPipeline(_tiny_model(), even_cuts(3, 3), 3, "1f1b", microbatches=4, codecs=codecs,
                            timeout_s=10.0)
    try:
        p0 = pipe.stages[0].parameters()
        t0 = time.monotonic()
        with pytest.raises(CodecError, match="nonsense"):
            pipe.call(_bytes_batch(1), "train")
        assert time.monotonic() - t0 < 5.0  # the others were aborted, not left waiting for the timeout
        _assert_params_equal(p0, pipe.stages[0].parameters())
        assert pipe.stages[0].gradients() == [{}]
        # forward-only calls do not use the broken backward codec: the same pipeline still answers
        losses = pipe.call(_bytes_batch(2), "eval")
        assert len(losses) == 4 and all(torch.isfinite(o) for o in losses)
    finally:
        pipe.close()
    bad = ThreadedPipeline(_tiny_model(), even_cuts(3, 3), 3, "1f1b", microbatches=4,
                           codecs=EdgeCodecs(edges={"s1->s2": {"forward": "nonsense"}}), timeout_s=10.0)
    try:
        with pytest.raises(CodecError):
            bad.call(_bytes_batch(1), "infer")
    finally:
        bad.close()
    good = ThreadedPipeline(_tiny_model(), even_cuts(3, 3), 3, "1f1b", microbatches=4, timeout_s=10.0)
    try:
        assert len(good.call(_bytes_batch(1), "train")) == 4
    finally:
        good.close()


@pytest.mark.parametrize("opt", [
    OptimizerSpec("sgd", lr=0.1, momentum=0.9),  # momentum: the optimizer state must be restored too
    # a warm-up and cosine: the rate of steps 2 and 3 must follow the restored step count, not restart
    OptimizerSpec("sgd", lr=0.1, momentum=0.9, schedule="cosine", warmup_steps=3, total_steps=4),
], ids=["constant", "warmup-cosine"])
def test_checkpoint_restore_continues_bit_exactly(tmp_path: Path, opt: OptimizerSpec) -> None:
    model = _tiny_model(seed=7)
    work = SyntheticWorkload(model, 8, 16, seed=9)

    def pipeline() -> ThreadedPipeline:
        return ThreadedPipeline(model, even_cuts(3, 3), 3, "1f1b", microbatches=4, optimizer=opt)

    first = pipeline()
    try:
        for step in range(2):
            first.call(work.batch(step), "train")
        for stage in first.stages:
            stage.save_checkpoint(str(tmp_path), 2)
        at_checkpoint = _params(first)
        for step in range(2, 4):
            first.call(work.batch(step), "train")
        want = _params(first)
    finally:
        first.close()
    second = pipeline()
    try:
        fresh = _params(second)
        for stage in second.stages:
            stage.load_checkpoint(str(tmp_path), 2)
        assert all(stage.steps_done == 2 for stage in second.stages)
        _assert_params_equal(at_checkpoint, _params(second))
        for step in range(2, 4):
            second.call(work.batch(step), "train")
        _assert_params_equal(want, _params(second))
    finally:
        second.close()
    # the comparison can fail: without the checkpoint the same two steps end elsewhere
    assert any(not torch.equal(a[k], b[k]) for a, b in zip(fresh, at_checkpoint) for k in a)
    third = pipeline()
    try:
        for stage in third.stages:
            stage.load_state({**stage.state(), "model": [dict(d) for d in
                                                         load_stage(tmp_path, 2, stage.spec.index)["model"]]})
        for step in range(2, 4):  # weights restored but momentum buffers not: the result differs
            third.call(work.batch(step), "train")
        assert any(not torch.equal(a[k], b[k]) for a, b in zip(want, _params(third)) for k in a)
    finally:
        third.close()


# ---- workloads ------------------------------------------------------------------------------------------------


def _corpus(n: int = 5000) -> TextCorpus:
    train = (torch.arange(n) % 251).to(torch.uint8)
    val = ((torch.arange(n // 5) * 7) % 251).to(torch.uint8)
    return TextCorpus(train, val, ("a.py",), ("b.py",), "/nowhere", "f")


def test_byte_lm_batches_are_deterministic_per_step() -> None:
    work = ByteLMWorkload(_corpus(), batch_size=4, context=12, seed=1)
    x, side = work.batch(3)
    assert x.shape == (4, 12) and x.dtype == torch.int64 and set(side) == {"targets"}
    x2, side2 = ByteLMWorkload(_corpus(), batch_size=4, context=12, seed=1).batch(3)
    assert torch.equal(x, x2) and torch.equal(side["targets"], side2["targets"])
    assert not torch.equal(x, work.batch(4)[0])
    assert not torch.equal(x, ByteLMWorkload(_corpus(), 4, 12, seed=2).batch(3)[0])
    # the corpus counts up mod 251, so every window does, and the targets are the next bytes
    assert torch.equal(side["targets"], (x + 1) % 251)
    assert torch.equal(x[:, 1:], (x[:, :-1] + 1) % 251)


def test_byte_lm_validation_batches_are_fixed() -> None:
    work = ByteLMWorkload(_corpus(), batch_size=4, context=12, seed=1)
    val = work.val_batches(3)
    again = ByteLMWorkload(_corpus(), batch_size=4, context=12, seed=99).val_batches(3)
    assert len(val) == 3
    for (x, s), (y, t) in zip(val, again):
        assert torch.equal(x, y) and torch.equal(s["targets"], t["targets"])
        assert torch.equal(s["targets"], (x + 7) % 251)  # val corpus steps by 7
    assert not torch.equal(val[0][0], val[1][0])
    labels = ByteLMWorkload(_corpus(), 4, 12, seed=1, labels=True).batch(3)
    assert set(labels[1]) == {"labels"} and torch.equal(labels[1]["labels"], labels[0])


def test_synthetic_byte_gpt_batches() -> None:
    model = _tiny_model()
    work = SyntheticWorkload(model, 6, 16, seed=4)
    x, side = work.batch(0)
    assert x.shape == (6, 16) and x.dtype == torch.int64 and 0 <= int(x.min()) and int(x.max()) < 256
    assert torch.equal(x[:, 1:], side["targets"][:, :-1])
    assert torch.equal(x, SyntheticWorkload(model, 6, 16, seed=4).batch(0)[0])
    assert not torch.equal(x, work.batch(1)[0])
    val = work.val_batches(2)
    assert torch.equal(val[0][0], work.val_batches(2)[0][0]) and not torch.equal(val[0][0], val[1][0])
    assert not torch.equal(val[0][0], x)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_synthetic_sequential_batches(loss: str) -> None:
    model = ModelSpec("sequential", {"layers": [{"type": "Linear", "args": {"in_features": 5, "out_features": 7}},
                                                {"type": "ReLU"},
                                                {"type": "Linear", "args": {"in_features": 7, "out_features": 3}}],
                                     "loss": loss})
    x, side = SyntheticWorkload(model, 4, 99, seed=0).batch(2)
    assert x.shape == (4, 5) and x.dtype == torch.float32
    target = side["target"]
    if loss == "mse":
        assert target.shape == (4, 3) and target.dtype == torch.float32
    else:
        assert target.shape == (4,) and target.dtype == torch.int64 and int(target.max()) < 3
    no_linear = ModelSpec("sequential", {"layers": [{"type": "ReLU"}]})
    with pytest.raises(ValueError, match="Linear"):
        SyntheticWorkload(no_linear, 4, 8).batch(0)


def test_split_batch() -> None:
    x = torch.arange(12).reshape(6, 2)
    xs, sides = split_batch((x, {"t": torch.arange(6)}), 3)
    assert [tuple(p.shape) for p in xs] == [(2, 2)] * 3
    assert [s["t"].tolist() for s in sides] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError):
        split_batch((x, {"t": torch.arange(6)}), 4)
    with pytest.raises(ValueError):
        split_batch((x, {"t": torch.arange(5)}), 3)


# ---- report tables --------------------------------------------------------------------------------------------


def _stats() -> list[EdgeStats]:
    return [
        EdgeStats(_e("s3->s0"), ACT, Direction.SEND, "raw", 1000, 8000, 8100, 0.001, 0.0, 0.002),
        EdgeStats(_e("s0->s1"), ACT, Direction.SEND, "int8", 1_000_000, 4_000_000, 1_250_000, 0.030, 0.0, 0.010),
        EdgeStats(_e("s0->s1"), ACT, Direction.RECV, "int8", 1_000_000, 4_000_000, 1_250_000, 0.0, 0.007, 0.009),
        EdgeStats(_e("s1->s0"), GRAD, Direction.SEND, "fp32", 500_000, 2_000_000, 2_000_000, 0.002, 0.0, 0.02),
        EdgeStats(_e("s2->s3"), ACT, Direction.SEND, "raw", 4, 16, 0, 0.0, 0.0, 0.0),
    ]


def test_traffic_rows_use_sender_view_with_receiver_decode() -> None:
    rows = {(r["edge"], r["role"]): r for r in traffic_rows(_stats())}
    assert len(rows) == 4  # the RECV entry is folded into its SEND row
    r = rows[("s0->s1", "activation")]
    assert r["ratio"] == pytest.approx(3.2) and r["bits_per_element"] == pytest.approx(10.0)
    assert r["decode_s"] == pytest.approx(0.007) and r["encode_s"] == pytest.approx(0.030)
    assert r["transfer_s"] == pytest.approx(0.009) and r["ack_s"] == pytest.approx(0.010)  # receiver's vs sender's
    assert r["bandwidth_Bps"] == pytest.approx(1_250_000 / 0.009)
    assert rows[("s2->s3", "activation")]["ratio"] is None


def test_format_traffic_table() -> None:
    text = format_traffic(_stats(), num_stages=3)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["edge", "role", "codec"] and set(lines[1]) == {"-"}
    by_edge = {line.split()[0] + "/" + line.split()[1]: line.split() for line in lines[2:]}
    assert set(by_edge) == {"host->s0/activation", "s0->s1/activation", "s1->s0/gradient", "s2->host/activation"}
    assert "s3" not in text
    row = by_edge["s0->s1/activation"]
    # edge role codec rawMB wireMB ratio bits/elem encode_ms decode_ms transfer_ms(recv) MB/s
    assert row[2:] == ["int8", "4.0", "1.2", "3.20x", "10.00", "30", "7", "9", "139"]
    assert by_edge["s1->s0/gradient"][-2:] == ["-", "-"]  # no receiver record: no transfer time, no bandwidth
    assert by_edge["s1->s0/gradient"][2:7] == ["fp32", "2.0", "2.0", "1.00x", "32.00"]
    assert by_edge["s2->host/activation"][5] == "-"  # nothing on the wire: no ratio
    assert by_edge["host->s0/activation"][6] == "64.80"


def test_format_memory_rows() -> None:
    mem = [{"param_bytes": 2_000_000, "optimizer_bytes": 4_000_000, "saved_activation_bytes_peak": 1_500_000,
            "rss_bytes": 300_000_000, "peak_rss_bytes": 350_000_000},
           {"param_bytes": 0, "optimizer_bytes": 0, "saved_activation_bytes_peak": 0, "rss_bytes": 1_000_000,
            "peak_rss_bytes": 2_000_000}]
    lines = format_memory(mem).splitlines()
    assert lines[0].split()[0] == "stage" and len(lines) == 4
    assert lines[2].split() == ["s0", "2.0", "4.0", "1.5", "300", "350"]
    assert lines[3].split() == ["s1", "0.0", "0.0", "0.0", "1", "2"]

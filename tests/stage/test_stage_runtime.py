"""The stage runtime over real loopback gRPC, against single-process training of the same model and batches."""

from __future__ import annotations

import pytest
import torch
from stage_support import ThreadedPipeline

from layeredge_dist.model import ByteGPTConfig, ModelSpec, byte_gpt_spec, even_cuts, split_batch
from layeredge_dist.model.verify import grad_difference, merge_grads, reference_step
from layeredge_dist.model.workload import SyntheticWorkload
from layeredge_dist.stage import EdgeCodecs

SMALL = ByteGPTConfig(context=16, d_model=32, n_layer=6, n_head=2)


def _per_virtual(pipe: ThreadedPipeline) -> list[dict[str, torch.Tensor]]:
    p = len(pipe.stages)
    chunks = pipe.stages[0].spec.chunks
    grads = [stage.gradients() for stage in pipe.stages]
    return [grads[v % p][v // p] for v in range(p * chunks)]


def _compare(model: ModelSpec, cuts: tuple[int, ...], schedule: str, chunks: int = 1,
             codecs: EdgeCodecs = EdgeCodecs(), microbatches: int = 4) -> tuple[float, float]:
    work = SyntheticWorkload(model, batch_size=2 * microbatches, context=16, seed=1)
    batch = work.batch(0)
    pipe = ThreadedPipeline(model, cuts, 3, schedule, microbatches=microbatches, chunks=chunks, codecs=codecs)
    try:
        losses = pipe.call(batch, mode="grad")
        want_losses, want = reference_step(model, *split_batch(batch, microbatches))
        loss_diff = max(abs(float(a) - b) for a, b in zip(losses, want_losses))
        grad_diff, _ = grad_difference(want, merge_grads(model, cuts, _per_virtual(pipe)))
        return loss_diff, grad_diff
    finally:
        pipe.close()


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_three_stages_fp32_match_single_process(schedule: str) -> None:
    loss_diff, grad_diff = _compare(byte_gpt_spec(SMALL, seed=3), even_cuts(6, 3), schedule)
    assert loss_diff <= 1e-5 and grad_diff <= 1e-5


def test_interleaved_two_chunks_match_single_process() -> None:
    loss_diff, grad_diff = _compare(byte_gpt_spec(SMALL, seed=3), (1, 2, 3, 4, 5), "interleaved", chunks=2,
                                    microbatches=6)
    assert loss_diff <= 1e-5 and grad_diff <= 1e-5


def test_int8_edges_change_gradients_but_stay_close() -> None:
    """The comparison can fail: lossy edges move the gradients measurably, but only a little."""
    loss_diff, grad_diff = _compare(byte_gpt_spec(SMALL, seed=3), even_cuts(6, 3), "1f1b",
                                    codecs=EdgeCodecs("int8", "int8"))
    assert grad_diff > 1e-6
    assert loss_diff < 1e-2 and grad_diff < 1e-2


def test_serving_loops_forward_without_per_call_control() -> None:
    """Stage.serve: activations flow through every stage's loop; results equal the per-call infer path."""
    import threading

    model = byte_gpt_spec(SMALL, seed=3)
    pipe = ThreadedPipeline(model, even_cuts(6, 3), 3, "gpipe", microbatches=2)
    work = SyntheticWorkload(model, batch_size=4, context=16, seed=1)
    try:
        want = pipe.call(work.batch(0), mode="infer")
        stop = threading.Event()
        counts: list[int] = []
        threads = [threading.Thread(target=lambda s=s: counts.append(s.serve(stop, poll_s=0.05)))
                   for s in pipe.stages]
        for t in threads:
            t.start()
        try:
            inputs, _ = split_batch(work.batch(0), 2)
            for seq in (100, 101):
                pipe.host.send_inputs(seq, inputs)
                got = pipe.host.collect(seq, 2)
                assert all(torch.equal(a, b) for a, b in zip(got, want))
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert sorted(counts) == [4, 4, 4]
    finally:
        pipe.close()


def test_stages_export_edge_and_stage_metrics_over_http() -> None:
    """With metrics on, each stage serves Prometheus text with its edges' traffic, codec error and stage times."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    model = byte_gpt_spec(SMALL, seed=3)
    pipe = ThreadedPipeline(model, even_cuts(6, 3), 3, "1f1b", microbatches=4, codecs=EdgeCodecs("int8", "bf16"),
                            metrics=True, extra={"error_budget": 0.05})
    try:
        pipe.call(SyntheticWorkload(model, batch_size=8, context=16, seed=1).batch(0))
        target = pipe.stages[0].metrics_target
        assert target is not None
        text = urllib.request.urlopen(f"http://{target}/metrics", timeout=5).read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(text) for s in fam.samples}

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        act = dict(edge="s0->s1", direction="send", role="activation", codec="int8")
        raw = value("layeredge_edge_raw_bytes_total", **act)
        assert raw == 4 * 2 * 16 * 32 * 4  # 4 micro-batches of (2, 16, 32) fp32
        assert value("layeredge_edge_wire_bytes_total", **act) < raw / 3  # int8: ~4x smaller
        assert 0 < value("layeredge_edge_relative_error_ratio", **act) < 0.02
        grad = dict(edge="s1->s0", direction="recv", role="gradient", codec="bf16")
        assert value("layeredge_edge_frames_total", **grad) == 4
        assert value("layeredge_stage_compute_seconds_total", stage="s0", phase="forward") > 0
        assert 0 <= value("layeredge_stage_bubble_ratio", stage="s0") <= 1
        assert value("layeredge_edge_error_budget_ratio", edge="s0->s1", direction="forward") == 0.05
    finally:
        pipe.close()


def test_online_proxy_ranks_codecs_by_their_error() -> None:
    """The sender keeps what it sent, and the returning gradient gives E[(g.(a - a_hat))^2] per codec, online."""
    model = byte_gpt_spec(SMALL, seed=3)
    pipe = ThreadedPipeline(model, even_cuts(6, 3), 3, "1f1b", microbatches=4,
                            extra={"proxy_every": 2, "proxy_codecs": ("int2", "int4", "int8", "fp16")})
    work = SyntheticWorkload(model, batch_size=8, context=16, seed=1)
    try:
        pipe.call(work.batch(0))  # step 0: measured
        pipe.call(work.batch(1))  # step 1: not measured (every 2nd step)
        values = pipe.stages[0].proxy_values()["s0->s1"]
        assert values["fp32"]["taylor_sq_mean"] == 0.0  # the active codec is lossless
        assert values["fp32"]["micro_batches"] == 4
        sq = [values[c]["taylor_sq_mean"] for c in ("int2", "int4", "int8", "fp16")]
        assert sq == sorted(sq, reverse=True) and sq[-1] > 0, sq
        assert pipe.stages[2].proxy_values() == {}  # the last stage sends no activation
    finally:
        pipe.close()


def test_codec_switch_at_a_step_boundary_keeps_training() -> None:
    """Switching codecs between calls: new frames carry the new spec, receivers decode them, no call fails."""
    from layeredge_dist.codecs import CodecError
    from layeredge_dist.types import Direction

    model = byte_gpt_spec(SMALL, seed=3)
    pipe = ThreadedPipeline(model, even_cuts(6, 3), 3, "1f1b", microbatches=4)
    work = SyntheticWorkload(model, batch_size=8, context=16, seed=1)
    try:
        pipe.call(work.batch(0))
        new = EdgeCodecs("fp32", "fp32", {"s0->s1": {"forward": "int8", "backward": "bf16"}})
        switches = [stage.set_codecs(new) for stage in pipe.stages]
        assert switches[0] == {"s0->s1/forward": ("fp32", "int8")}
        assert switches[1] == {"s0->s1/backward": ("fp32", "bf16")}
        assert switches[2] == {}
        losses = pipe.call(work.batch(1))
        assert all(torch.isfinite(x) for x in losses)
        sent = {(str(s.edge), s.role.value, s.codec): s.elements for s in pipe.stages[0].stats()
                if s.direction is Direction.SEND}
        assert sent[("s0->s1", "activation", "fp32")] == sent[("s0->s1", "activation", "int8")] > 0
        got = {(str(s.edge), s.codec) for s in pipe.stages[0].stats() if s.direction is Direction.RECV}
        assert ("s1->s0", "bf16") in got
        with pytest.raises(CodecError):
            pipe.stages[0].set_codecs(EdgeCodecs("nonsense"))
        assert pipe.stages[0].spec.codecs == new  # unchanged after the rejected switch
    finally:
        pipe.close()


def test_codec_switch_between_error_feedback_codecs_starts_a_fresh_residual() -> None:
    """ef(int8) -> ef(int4/rht) on the same edge (what the online controller does when the link drops): the new
    wrapper starts with its own state instead of refusing the old one's (CodecError, a failed stage), and the
    switch back starts fresh again."""
    model = byte_gpt_spec(SMALL, seed=3)
    pipe = ThreadedPipeline(model, even_cuts(6, 3), 3, "1f1b", microbatches=4,
                            codecs=EdgeCodecs("ef(int8)", "ef(int8)"))
    work = SyntheticWorkload(model, batch_size=8, context=16, seed=1)
    try:
        pipe.call(work.batch(0))
        for k, spec in enumerate(["ef(int4/rht)", "ef(int8)"], start=1):
            for stage in pipe.stages:
                stage.set_codecs(EdgeCodecs(spec, spec))
            assert all(torch.isfinite(x) for x in pipe.call(work.batch(k)))
            states = [st for stage in pipe.stages for st in stage.endpoint.codec_state()["ef"].values()]
            assert states and {st.spec for st in states} == {spec}
    finally:
        pipe.close()


def test_embedding_tied_across_stages_stays_tied_and_matches_single_process() -> None:
    """GPT-2 ties lm_head to wte: stage 0 and the last stage sum their gradients before each step."""
    pytest.importorskip("transformers")
    from layeredge_dist.model import ModelSpec, build_reference, family_for
    from layeredge_dist.stage import OptimizerSpec

    model = ModelSpec("hf_gpt2", {
        "n_layer": 3, "n_embd": 32, "n_head": 4, "vocab_size": 64, "n_positions": 16, "bos_token_id": 0,
        "eos_token_id": 0, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
    }, seed=11)
    work = SyntheticWorkload(model, batch_size=8, context=16, seed=1)
    pipe = ThreadedPipeline(model, (1, 2), 3, "1f1b", microbatches=4, optimizer=OptimizerSpec("sgd", lr=0.5))
    try:
        pipe.call(work.batch(0), mode="grad")  # unsynced copies sum to the native gradient
        _, want = reference_step(model, *split_batch(work.batch(0), 4))
        grad_diff, _ = grad_difference(want, merge_grads(model, (1, 2), _per_virtual(pipe)))
        assert grad_diff <= 1e-5
        for stage in pipe.stages:
            stage.optimizer.zero_grad(set_to_none=True)
        for step in range(2):
            pipe.call(work.batch(step))
        wte = pipe.stages[0].parameters()[0]["pre.wte.weight"]
        head = pipe.stages[2].parameters()[0]["post.lm_head.weight"]
        assert torch.equal(wte, head)  # still one parameter in effect
        native = build_reference(model=model)
        family = family_for(model.family, model.config)
        opt = torch.optim.SGD(native.parameters(), lr=0.5)
        for step in range(2):
            for x, side in zip(*split_batch(work.batch(step), 4)):
                (family.native_loss(native, x, side) / 4).backward()
            opt.step()
            opt.zero_grad()
        assert float((native.get_parameter("transformer.wte.weight").detach() - wte).abs().max()) <= 1e-5
    finally:
        pipe.close()


@pytest.mark.parametrize("tcp", [False, True])
def test_rejected_frames_are_counted_by_edge_and_reason(tcp: bool) -> None:
    """A corrupted frame and a wrong token are refused, counted in layeredge_edge_rejected_frames_total, and the
    stage keeps serving."""
    from prometheus_client.parser import text_string_to_metric_families

    from layeredge_dist.codecs import parse_codec
    from layeredge_dist.stage import Endpoint, edge
    from layeredge_dist.transport import FrameRejected, PeerUnavailable, TransportConfig, Unauthenticated, open_sender
    from layeredge_dist.metrics import Metrics
    from layeredge_dist.types import TensorRole
    from layeredge_dist.wire import Frame, frame_from_encoded

    config = TransportConfig(token="right", tcp_data_path=tcp)
    metrics = Metrics()
    rx = Endpoint(1, config, metrics=metrics)
    try:
        x = torch.randn(64)
        frame = frame_from_encoded(parse_codec("fp32").encode(x), edge(0, 1), TensorRole.ACTIVATION, 1, 0)
        corrupt = frame.payload.clone()
        corrupt[0] ^= 0xFF
        with open_sender(rx.address, edge(0, 1), TensorRole.ACTIVATION, config) as tx:
            with pytest.raises((FrameRejected, PeerUnavailable)):
                tx.send(Frame(frame.header, corrupt), timeout_s=5)
                tx.flush(timeout_s=5)
        wrong = TransportConfig(token="wrong", tcp_data_path=tcp)
        with open_sender(rx.address, edge(0, 1), TensorRole.ACTIVATION, wrong) as tx:
            with pytest.raises((Unauthenticated, PeerUnavailable)):
                tx.send(frame, timeout_s=5)
                tx.flush(timeout_s=5)
        with open_sender(rx.address, edge(0, 1), TensorRole.ACTIVATION, config) as tx:  # still serving
            tx.send(frame, timeout_s=5)
            tx.flush(timeout_s=5)
        assert torch.equal(rx.receive(0, TensorRole.ACTIVATION, 1, 0, 5.0, "test frame"), x)
        counts = {tuple(sorted(s.labels.items())): s.value for fam in text_string_to_metric_families(
            metrics.exposition().decode()) for s in fam.samples if s.name == "layeredge_edge_rejected_frames_total"}
        assert counts[(("edge", "s0->s1"), ("reason", "checksum"))] == 1
        assert counts[(("edge", "unknown"), ("reason", "auth"))] >= 1
    finally:
        rx.close()

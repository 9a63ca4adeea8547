"""The demo byte-level GPT partitions like a block list with pre and post parts."""

from __future__ import annotations

import pytest
import torch

from layeredge_dist.model import build_partition, build_reference, partition_specs
from layeredge_dist.model.demo import ByteGPTConfig, byte_gpt_spec
from layeredge_dist.model.verify import compare_chain

TOL = 1e-6
TINY = ByteGPTConfig(context=16, d_model=32, n_layer=4, n_head=4)


def _batches(m: int, b: int = 2, t: int = 16) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randint(0, 256, (b, t), generator=g) for _ in range(m)]
    return xs, [{"targets": torch.randint(0, 256, (b, t), generator=g)} for _ in range(m)]


@pytest.mark.parametrize("cuts", [(), (2,), (1, 3), (0, 4), (0, 1, 2, 3, 4)])
def test_chained_stages_equal_whole_model(cuts: tuple[int, ...]) -> None:
    xs, sides = _batches(4)
    agree = compare_chain(byte_gpt_spec(TINY, seed=3), cuts, xs, sides)
    assert agree.worst() <= TOL, agree


def test_default_config_size_and_parts() -> None:
    cfg = ByteGPTConfig()
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context) == (256, 128, 6, 4, 128)
    native = build_reference(model=byte_gpt_spec(cfg))
    assert sum(p.numel() for p in native.parameters()) == cfg.num_parameters()
    first, middle, last = (build_partition(p) for p in partition_specs(byte_gpt_spec(cfg), (2, 4)))
    assert first.pre is not None and first.post is None and list(first.block_indices) == [0, 1]
    assert middle.pre is None and middle.post is None and list(middle.block_indices) == [2, 3]
    assert last.post is not None and list(last.block_indices) == [4, 5]
    h = first(torch.randint(0, 256, (2, 128)))
    assert h.shape == (2, 128, 128) and last(middle(h)).shape == (2, 128, 256)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ByteGPTConfig(d_model=30, n_head=4)
    part = build_partition(partition_specs(byte_gpt_spec(TINY), ())[0])
    with pytest.raises(ValueError, match="exceeds the model context"):
        part(torch.zeros(1, 17, dtype=torch.long))


def test_staged_training_on_stdlib_text_matches_single_process() -> None:
    """Three SGD-with-momentum steps, one optimizer per stage, micro-batched: same weights as one process.

    (SGD, because Adam divides by the gradient's running RMS and so turns rounding noise in gradients that are
    zero in exact arithmetic, such as the attention key bias, into parameter differences of order lr * 1e-3.)
    """
    from layeredge_dist.model import merge_state_dicts, train_chain
    from layeredge_dist.model.batches import BatchSampler, split_microbatches
    from layeredge_dist.model.corpus import CorpusConfig, load_corpus
    from layeredge_dist.model.demo import lm_loss

    spec, cuts = byte_gpt_spec(TINY, seed=4), (1, 3)
    native = build_reference(model=spec)
    parts = [build_partition(p) for p in partition_specs(spec, cuts)]
    opt_native = torch.optim.SGD(native.parameters(), lr=0.1, momentum=0.9)
    opts = [torch.optim.SGD(p.parameters(), lr=0.1, momentum=0.9) for p in parts]
    sampler = BatchSampler(load_corpus(CorpusConfig(max_bytes=200_000)).train, batch_size=8, context=16, seed=1)
    losses = []
    for step in range(3):
        x, y = sampler.batch(step)
        opt_native.zero_grad()
        loss = lm_loss(native(x), y)
        loss.backward()
        opt_native.step()
        for o in opts:
            o.zero_grad()
        xs, ys = split_microbatches(x, 4), split_microbatches(y, 4)
        chained = train_chain(parts, xs, [{"targets": t} for t in ys])
        for o in opts:
            o.step()
        assert abs(chained.loss - loss.item()) <= TOL
        losses.append(chained.loss)
    merged = merge_state_dicts(spec, cuts, [p.state_dict() for p in parts])
    worst = max(float((merged[k] - v).abs().max()) for k, v in native.state_dict().items())
    assert worst <= TOL, worst
    assert losses[-1] < losses[0]
    assert len(chained.activations) == 2 and chained.activations[0][0].shape == (2, 16, 32)
    assert chained.gradients[1][0].shape == (2, 16, 32)

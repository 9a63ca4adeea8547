"""HF GPT-2 cut along transformer.h: chained stages equal GPT2LMHeadModel (logits, loss, gradients)."""

from __future__ import annotations

import pathlib

import pytest
import torch

pytest.importorskip("transformers")

from layeredge_dist.model import (ModelSpec, build_partition, build_reference, partition_specs, split_state_dict,
                                  tied_parameters)
from layeredge_dist.model.verify import compare_chain

TOL = 1e-6


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def gpt2_spec(tie: bool = True, attn: str = "sdpa") -> ModelSpec:
    return ModelSpec("hf_gpt2", {
        "n_layer": 4, "n_embd": 32, "n_head": 4, "vocab_size": 64, "n_positions": 16, "bos_token_id": 0,
        "eos_token_id": 0, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": tie,
        "attn_implementation": attn,
    }, seed=11)


def _batches(m: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    xs, sides = [], []
    for i in range(m):
        x = torch.randint(0, 64, (2, 16), generator=g)
        mask = torch.ones(2, 16, dtype=torch.long)
        mask[0, 16 - 3 * i:] = 0  # right padding in some rows: the mask must reach every stage
        xs.append(x)
        sides.append({"attention_mask": mask, "labels": x})
    return xs, sides


@pytest.mark.parametrize("cuts", [(), (2,), (1, 3), (0, 4)])
@pytest.mark.parametrize("tie", [True, False])
def test_chained_stages_equal_gpt2(cuts: tuple[int, ...], tie: bool) -> None:
    xs, sides = _batches(4)
    agree = compare_chain(gpt2_spec(tie), cuts, xs, sides)
    assert agree.worst() <= TOL, agree


def test_eager_attention_too() -> None:
    xs, sides = _batches(2)
    assert compare_chain(gpt2_spec(attn="eager"), (1, 3), xs, sides).worst() <= TOL


def test_tied_embedding_is_reported_and_shared() -> None:
    spec = gpt2_spec()
    assert tied_parameters(spec, ()) == ()
    (tie,) = tied_parameters(spec, (2,))
    assert (tie.stage_a, tie.key_a, tie.stage_b, tie.key_b) == (1, "post.lm_head.weight", 0, "pre.wte.weight")
    single = build_partition(partition_specs(spec, ())[0])
    assert single.post.lm_head.weight is single.pre.wte.weight
    first, last = (build_partition(p) for p in partition_specs(spec, (2,)))
    assert torch.equal(first.pre.wte.weight, last.post.lm_head.weight)  # same init without sharing
    assert tied_parameters(gpt2_spec(tie=False), (2,)) == ()


def test_hub_style_checkpoint_without_prefix_or_lm_head() -> None:
    spec = gpt2_spec()
    native = build_reference(model=spec)
    hub = {k.removeprefix("transformer."): v for k, v in native.state_dict().items() if k != "lm_head.weight"}
    slices = split_state_dict(spec, (2,), hub)
    assert torch.equal(slices[1]["post.lm_head.weight"], native.transformer.wte.weight)
    assert "blocks.0.attn.c_attn.weight" in slices[1]


def test_stage_reads_only_its_slice_from_safetensors(tmp_path: pathlib.Path) -> None:
    spec = gpt2_spec()
    native = build_reference(model=spec).eval()
    with torch.no_grad():
        for p in native.parameters():
            p.mul_(1.5)  # differ from the seeded init, so loading is visible
    native.save_pretrained(tmp_path)  # drops the tied lm_head.weight
    on_disk = ModelSpec(spec.family, spec.config, seed=99, weights=str(tmp_path))
    parts = [build_partition(p).eval() for p in partition_specs(on_disk, (1, 3))]
    assert len(parts[1].state_dict()) == 2 * 12  # two GPT2Blocks, nothing else
    x = torch.randint(0, 64, (2, 16))
    h = x
    with torch.no_grad():
        for part in parts:
            h = part(h, {})
        want = native(input_ids=x).logits
    assert float((h - want).abs().max()) <= TOL

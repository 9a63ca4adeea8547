"""The ``hf_gpt2`` family: HF transformers ``GPT2LMHeadModel`` cut along ``transformer.h``.

Pre: ``wte``, ``wpe``, dropout. Blocks: ``GPT2Block``. Post: ``ln_f`` and ``lm_head``. transformers is imported
only when a family instance is created (extra ``hf``); ImportError otherwise.

Config: ``GPT2Config`` keyword arguments (``n_layer``, ``n_embd``, ...); ``attn_implementation`` defaults to
``"sdpa"`` and is applied to the partitions and the native model alike. Side inputs: ``attention_mask``
(B, T), optional, 1 for real tokens; ``labels`` (B, T) for the loss (shifted inside, -100 ignored, as in HF).

With ``tie_word_embeddings`` (the GPT-2 default) ``lm_head.weight`` is ``transformer.wte.weight``: a single stage
shares it; across stages see :func:`~layeredge_dist.model.state.tied_parameters`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .family import BlockExtras, Family, Side
from .hf_common import hf_config, hf_init
from .keymap import KeyMap

#: Keys of the family config that are ours, not GPT2Config's.
_OWN_KEYS: tuple[str, ...] = ()


class GPT2Pre(nn.Module):
    """Token and position embeddings plus dropout. (B, T) int64 -> (B, T, C)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, T)
        return self.drop(self.wte(input_ids) + self.wpe(positions))  # (B, T, C)


class GPT2Post(nn.Module):
    """Final LayerNorm and LM head. (B, T, C) -> (B, T, vocab) logits."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(hidden))


class GPT2Family(Family):
    """``hf_gpt2``: see the module docstring."""

    name = "hf_gpt2"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        from transformers import GPT2Config

        self.hf = hf_config(GPT2Config, config, _OWN_KEYS)

    @property
    def num_blocks(self) -> int:
        return int(self.hf.n_layer)

    def build_pre(self) -> nn.Module:
        return hf_init(GPT2Pre(self.hf), self.hf.initializer_range)

    def build_block(self, index: int) -> nn.Module:
        """A GPT2Block with HF's init, residual projections scaled by 1/sqrt(2 n_layer) as in GPT-2."""
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block

        block = hf_init(GPT2Block(self.hf, layer_idx=index), self.hf.initializer_range)
        with torch.no_grad():
            for name, param in block.named_parameters():
                if name.endswith("c_proj.weight"):
                    param.normal_(0.0, self.hf.initializer_range / (2 * self.hf.n_layer) ** 0.5)
        return block

    def build_post(self) -> nn.Module:
        return hf_init(GPT2Post(self.hf), self.hf.initializer_range)

    def key_map(self) -> KeyMap:
        return KeyMap(
            pre=(("transformer.wte.", "wte."), ("transformer.wpe.", "wpe.")),
            block_prefix="transformer.h.",
            post=(("transformer.ln_f.", "ln_f."), ("lm_head.", "lm_head.")),
            aliases=(("", "transformer."),),  # hub checkpoints of GPT2Model save "h.0...", "wte.weight"
            ignored=(r"\.attn\.(bias|masked_bias)$", r"\.crossattention\.(bias|masked_bias)$"),
            tied=(("lm_head.weight", "transformer.wte.weight"),) if self.hf.tie_word_embeddings else (),
        )

    def tied_partition_keys(self) -> tuple[tuple[str, str], ...]:
        return (("post.lm_head.weight", "pre.wte.weight"),) if self.hf.tie_word_embeddings else ()

    def block_extras(self, hidden: torch.Tensor, side: Side) -> BlockExtras:
        """The causal (and padding) mask GPT2Model builds, rebuilt on this stage from ``attention_mask``."""
        from transformers.masking_utils import create_causal_mask

        mask = side.get("attention_mask")
        if mask is not None:
            mask = mask.view(hidden.shape[0], -1)  # (B, T)
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)  # (1, T)
        causal = create_causal_mask(config=self.hf, inputs_embeds=hidden, attention_mask=mask, cache=None,
                                    position_ids=positions)
        return {"mask": causal}

    def run_block(self, block: nn.Module, hidden: torch.Tensor, extras: BlockExtras) -> torch.Tensor:
        return block(hidden, None, extras["mask"])

    def loss(self, output: torch.Tensor, side: Side) -> torch.Tensor:
        from transformers.loss.loss_utils import ForCausalLMLoss

        return ForCausalLMLoss(output, side["labels"], vocab_size=self.hf.vocab_size)

    def build_native(self) -> nn.Module:
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel(self.hf)

    def run_native(self, model: nn.Module, x: torch.Tensor, side: Side) -> torch.Tensor:
        return model(input_ids=x, attention_mask=side.get("attention_mask")).logits

    def native_loss(self, model: nn.Module, x: torch.Tensor, side: Side) -> torch.Tensor:
        return model(input_ids=x, attention_mask=side.get("attention_mask"), labels=side["labels"]).loss

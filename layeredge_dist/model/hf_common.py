"""Helpers shared by the HF transformers families (transformers is imported by the callers, lazily)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def hf_config(config_cls: Any, config: Mapping[str, Any], own_keys: tuple[str, ...]) -> Any:
    """A transformers config from the family config, with ``attn_implementation`` defaulting to sdpa."""
    kwargs = {k: v for k, v in config.items() if k not in own_keys}
    kwargs.setdefault("attn_implementation", "sdpa")
    cfg = config_cls(**kwargs)
    cfg._attn_implementation = kwargs["attn_implementation"]
    return cfg


def hf_init(module: nn.Module, std: float) -> nn.Module:
    """Initialise ``module`` in place the way HF ``PreTrainedModel._init_weights`` does for BERT and GPT-2.

    Linear and ``Conv1D`` weights ~ N(0, std) with zero bias; embeddings ~ N(0, std) with the padding row zeroed;
    LayerNorm weight 1, bias 0. Uses torch's global RNG (callers seed it). Returns ``module``.
    """
    with torch.no_grad():
        for m in module.modules():
            weight = getattr(m, "weight", None)
            bias = getattr(m, "bias", None)
            if isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, std)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                if weight is not None:
                    weight.fill_(1.0)
                if bias is not None:
                    bias.zero_()
            elif isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D":
                m.weight.normal_(0.0, std)
                if isinstance(bias, torch.Tensor):
                    bias.zero_()
    return module

"""The demo workload's model: a byte-level GPT (pre-LayerNorm decoder) expressed as pre / blocks / post.

Sized by :class:`ByteGPTConfig` (defaults: 256-byte vocabulary, d_model 128, 6 layers, 4 heads, context 128,
about 1.3 M parameters), small enough to train visibly on 2 CPU cores within minutes. The LM head is *not* tied
to the embedding, so no parameter is shared between the first and last stage.

Side input for the loss: ``targets`` (B, T) int64, the next byte of every position.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .family import Family, Side
from .keymap import KeyMap
from .spec import ModelSpec


@dataclass(frozen=True)
class ByteGPTConfig:
    """Shape of the byte-level GPT. Raises ValueError when ``d_model`` is not divisible by ``n_head``."""

    vocab_size: int = 256
    context: int = 128  # maximum sequence length (positions), tokens
    d_model: int = 128
    n_layer: int = 6
    n_head: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if min(self.vocab_size, self.context, self.d_model, self.n_layer, self.n_head, self.mlp_ratio) < 1:
            raise ValueError(f"all sizes must be >= 1: {self}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ByteGPTConfig:
        """Build from a ModelSpec config; raises TypeError naming an unknown field."""
        return cls(**dict(data))

    def num_parameters(self) -> int:
        """Parameter count of the whole model."""
        d, f = self.d_model, self.mlp_ratio * self.d_model
        block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        head = 2 * d + d * self.vocab_size + self.vocab_size
        return self.vocab_size * d + self.context * d + self.n_layer * block + head


def byte_gpt_spec(config: ByteGPTConfig | None = None, seed: int = 0) -> ModelSpec:
    """The :class:`ModelSpec` of a byte-level GPT (default config when None)."""
    return ModelSpec("byte_gpt", dataclasses.asdict(config or ByteGPTConfig()), seed=seed)


def _init_linear(layer: nn.Linear, std: float) -> None:
    nn.init.normal_(layer.weight, mean=0.0, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class Embed(nn.Module):
    """Pre part: token + learned position embeddings, dropout. (B, T) int64 -> (B, T, C)."""

    def __init__(self, cfg: ByteGPTConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.pos.num_embeddings:
            raise ValueError(f"sequence length {t} exceeds the model context {self.pos.num_embeddings}")
        pos = torch.arange(t, device=idx.device)  # (T,)
        return self.drop(self.tok(idx) + self.pos(pos))  # (B, T, C)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention via ``scaled_dot_product_attention``. (B, T, C) -> (B, T, C)."""

    def __init__(self, cfg: ByteGPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        _init_linear(self.qkv, 0.02)
        _init_linear(self.proj, 0.02 / math.sqrt(2 * cfg.n_layer))  # GPT-2 scaled residual init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)  # each (B, T, C)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # (B, H, T, C/H)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # (B, H, T, C/H)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # (B, H, T, C/H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, C/H)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # (B, T, C)
        return self.proj(y)


class Block(nn.Module):
    """One pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)). (B, T, C) -> (B, T, C)."""

    def __init__(self, cfg: ByteGPTConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, cfg.mlp_ratio * d)
        self.proj = nn.Linear(cfg.mlp_ratio * d, d)
        self.drop = nn.Dropout(cfg.dropout)
        _init_linear(self.fc, 0.02)
        _init_linear(self.proj, 0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln2(x)))))


class Head(nn.Module):
    """Post part: final LayerNorm and the (untied) LM head. (B, T, C) -> (B, T, vocab) logits."""

    def __init__(self, cfg: ByteGPTConfig) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)
        _init_linear(self.lm_head, 0.02)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln(h))


class ByteGPT(nn.Module):
    """The whole model in one module (native keys ``pre.*``, ``blocks.<i>.*``, ``post.*``)."""

    def __init__(self, cfg: ByteGPTConfig) -> None:
        super().__init__()
        self.pre = Embed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.post = Head(cfg)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 bytes -> (B, T, vocab) logits."""
        h = self.pre(idx)
        for block in self.blocks:
            h = block(h)
        return self.post(h)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy in nats. logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))  # (B*T, V) vs (B*T,)


class ByteGPTFamily(Family):
    """``byte_gpt``: config is :class:`ByteGPTConfig` as a dict; side input ``targets`` for the loss."""

    name = "byte_gpt"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.cfg = ByteGPTConfig.from_dict(config)

    @property
    def num_blocks(self) -> int:
        return self.cfg.n_layer

    def build_pre(self) -> nn.Module:
        return Embed(self.cfg)

    def build_block(self, index: int) -> nn.Module:
        return Block(self.cfg)

    def build_post(self) -> nn.Module:
        return Head(self.cfg)

    def key_map(self) -> KeyMap:
        return KeyMap(pre=(("pre.", ""),), block_prefix="blocks.", post=(("post.", ""),))

    def loss(self, output: torch.Tensor, side: Side) -> torch.Tensor:
        return lm_loss(output, side["targets"])

    def build_native(self) -> nn.Module:
        return ByteGPT(self.cfg)

    def run_native(self, model: nn.Module, x: torch.Tensor, side: Side) -> torch.Tensor:
        return model(x)

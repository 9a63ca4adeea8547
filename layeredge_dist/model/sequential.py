"""The ``sequential`` family: an ``nn.Sequential`` described layer by layer, cut by child index.

Config::

    {"layers": [{"type": "Linear", "args": {"in_features": 8, "out_features": 16}},
                {"type": "ReLU"}, ...],
     "loss": "mse" | "cross_entropy" | "none"}

``type`` names a class in ``torch.nn``; ``args`` are its keyword arguments. Each child is one block; there is
no pre or post part. Side input for the loss: ``target``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .family import Family, Side
from .keymap import KeyMap

_LOSSES = ("mse", "cross_entropy", "none")


def _layer(entry: Mapping[str, Any], index: int) -> nn.Module:
    """Instantiate layer ``index``; raises ValueError for a type that is not a torch.nn module class."""
    name = entry.get("type")
    cls = getattr(nn, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or cls in (nn.Sequential, nn.ModuleList):
        raise ValueError(f"layers[{index}].type {name!r} is not a torch.nn layer class")
    return cls(**dict(entry.get("args", {})))


class SequentialFamily(Family):
    """Blocks are the children of an ``nn.Sequential``; native keys are ``"<child index>.<param>"``."""

    name = "sequential"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        layers = self.config.get("layers")
        if not isinstance(layers, list) or not layers:
            raise ValueError("sequential config needs a non-empty 'layers' list")
        self.layers: list[Mapping[str, Any]] = layers
        self.loss_name = str(self.config.get("loss", "none"))
        if self.loss_name not in _LOSSES:
            raise ValueError(f"sequential loss must be one of {_LOSSES}, got {self.loss_name!r}")

    @property
    def num_blocks(self) -> int:
        return len(self.layers)

    @property
    def has_pre(self) -> bool:
        return False

    @property
    def has_post(self) -> bool:
        return False

    def build_block(self, index: int) -> nn.Module:
        return _layer(self.layers[index], index)

    def key_map(self) -> KeyMap:
        return KeyMap(block_prefix="")

    def loss(self, output: torch.Tensor, side: Side) -> torch.Tensor:
        if self.loss_name == "mse":
            return nn.functional.mse_loss(output, side["target"])
        if self.loss_name == "cross_entropy":
            return nn.functional.cross_entropy(output, side["target"])
        return super().loss(output, side)

    def build_native(self) -> nn.Module:
        return nn.Sequential(*[self.build_block(i) for i in range(self.num_blocks)])

    def run_native(self, model: nn.Module, x: torch.Tensor, side: Side) -> torch.Tensor:
        return model(x)

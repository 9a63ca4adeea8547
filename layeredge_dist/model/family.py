"""A model family: how to build the pre part, block ``i`` and the post part of a model from its config, how to
run them, and where their weights sit in the family's single-process ("native") model.

A family instance is built from a :class:`~layeredge_dist.model.spec.ModelSpec` config and is cheap; it holds
no weights. Families are registered by name (:func:`register_family`); :func:`family_for` looks one up.

What flows between stages is a single tensor per micro-batch (the hidden state). Everything else a stage
needs (attention masks, token types, labels) comes in ``side``: a mapping of small per-micro-batch tensors that
every stage is given alongside the edge tensor. Each family documents the side keys it reads.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .keymap import KeyMap
from .surgery import strip_prune

Side = Mapping[str, torch.Tensor]
#: Per-stage values computed once per micro-batch from ``side`` and shared by all blocks (e.g. a 4-D mask).
BlockExtras = Mapping[str, Any]


class Family(abc.ABC):
    """Build and run the parts of one model family. Subclasses set ``name`` and implement the builders.

    The defaults suit plain modules: ``pre(x)``, ``block(h)``, ``post(h)``, no side inputs, no loss.
    """

    name: ClassVar[str]

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    # -- structure ---------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def num_blocks(self) -> int:
        """Number of blocks (layers) the cuts index."""

    @property
    def has_pre(self) -> bool:
        """Whether the family has a pre part (owned by stage 0)."""
        return True

    @property
    def has_post(self) -> bool:
        """Whether the family has a post part (owned by the last stage)."""
        return True

    def build_pre(self) -> nn.Module | None:
        """A freshly initialised pre part, or None when the family has none."""
        return None

    @abc.abstractmethod
    def build_block(self, index: int) -> nn.Module:
        """A freshly initialised block ``index`` (global index, ``0 <= index < num_blocks``)."""

    def build_post(self) -> nn.Module | None:
        """A freshly initialised post part, or None when the family has none."""
        return None

    @abc.abstractmethod
    def key_map(self) -> KeyMap:
        """Rules mapping native state-dict keys onto pre / blocks / post."""

    def tied_partition_keys(self) -> tuple[tuple[str, str], ...]:
        """``(post key, pre key)`` partition-key pairs that are one parameter in the native model.

        When one stage owns both, the partition shares the parameter; across stages the stage runtime must sum
        the two gradients (and keep the copies equal). Default: none.
        """
        return ()

    # -- running ----------------------------------------------------------------------------------------
    def run_pre(self, pre: nn.Module, x: torch.Tensor, side: Side) -> torch.Tensor:
        """Model input -> hidden state at the first cut."""
        return pre(x)

    def block_extras(self, hidden: torch.Tensor, side: Side) -> BlockExtras:
        """Values every block of a stage needs beyond the hidden state (computed per stage, per micro-batch)."""
        return {}

    def run_block(self, block: nn.Module, hidden: torch.Tensor, extras: BlockExtras) -> torch.Tensor:
        """One block: hidden -> hidden, same shape."""
        return block(hidden)

    def run_post(self, post: nn.Module, hidden: torch.Tensor, side: Side) -> torch.Tensor:
        """Hidden state after the last block -> model output (logits, embeddings ...)."""
        return post(hidden)

    def loss(self, output: torch.Tensor, side: Side) -> torch.Tensor:
        """Scalar training loss of the model output; raises ValueError when the family has no loss."""
        raise ValueError(f"model family {self.name!r} with this config defines no loss")

    # -- single-process reference -----------------------------------------------------------------------
    @abc.abstractmethod
    def build_native(self) -> nn.Module:
        """The whole model as one module whose ``state_dict`` uses native keys (for reference runs).

        Its initialisation does not matter: :func:`~layeredge_dist.model.partition.build_reference` loads the
        same weights the partitions get.
        """

    @abc.abstractmethod
    def run_native(self, model: nn.Module, x: torch.Tensor, side: Side) -> torch.Tensor:
        """The native model's output; equals running all partitions in order."""

    def native_loss(self, model: nn.Module, x: torch.Tensor, side: Side) -> torch.Tensor:
        """The native model's loss; default: :meth:`loss` of :meth:`run_native`."""
        return self.loss(self.run_native(model, x, side), side)


_REGISTRY: dict[str, Callable[[Mapping[str, Any]], Family]] = {}


def register_family(name: str, factory: Callable[[Mapping[str, Any]], Family]) -> None:
    """Make ``name`` buildable; ``factory(config)`` returns a Family. Raises ValueError on a duplicate name."""
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"model family {name!r} is already registered")
    _REGISTRY[name] = factory


def known_families() -> tuple[str, ...]:
    """Names of all registered families, sorted."""
    _ensure_builtin()
    return tuple(sorted(_REGISTRY))


def family_for(name: str, config: Mapping[str, Any]) -> Family:
    """The family ``name`` configured by ``config``; raises KeyError listing the known names otherwise.

    The ``prune`` section of a config (structural edits, see :mod:`.surgery`) is not the family's: it is
    stripped here and applied by :func:`~layeredge_dist.model.partition.build_partition`.
    """
    _ensure_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    return factory(strip_prune(config))


def _ensure_builtin() -> None:
    """Register the built-in families (import is deferred to avoid cycles; HF ones import transformers lazily)."""
    if "sequential" in _REGISTRY:
        return
    from . import demo, hf_bert, hf_gpt2, sequential

    register_family("sequential", sequential.SequentialFamily)
    register_family("byte_gpt", demo.ByteGPTFamily)
    register_family("hf_gpt2", hf_gpt2.GPT2Family)
    register_family("hf_bert", hf_bert.BertFamily)

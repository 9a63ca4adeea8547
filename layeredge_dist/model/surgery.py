"""The ``prune`` section of a model config: structural edits a stage applies while it builds its blocks.

A pruned model is still plain data. ``ModelSpec.config["prune"]`` (optional; the family never sees it, see
:func:`~layeredge_dist.model.family.family_for`) holds::

    {"projections": [{"cut": 2, "width": 128, "rank": 64}],
     "resize": {"3.fc": [384, 128], "3.proj": [128, 384]}}

- ``projections``: a learned low-rank bottleneck between block ``cut - 1`` and block ``cut``. Block ``cut - 1``
  gains a submodule ``edge_down`` (:class:`CutProjection`, ``Linear(width -> rank)``) applied to its output,
  block ``cut`` gains ``edge_up`` (``Linear(rank -> width)``) applied to its input. When ``cut`` is a pipeline
  cut, the tensor crossing it has ``rank`` channels instead of ``width``. The parameters live inside the blocks
  (native keys ``<block prefix><i>.edge_down.weight``), so splitting, merging and safetensors loading of state
  dicts work unchanged, and the single-process reference model (:func:`build_reference`) gets the same
  bottleneck.
- ``resize``: the ``nn.Linear`` (or ``nn.Conv1d/2d/3d``) at ``"<global block index>.<path inside the block>"``
  is built with ``[out, in]`` features instead (e.g. the pruned hidden units of a transformer MLP).

Weights of edited modules come from the partition's state dict like every other weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

#: The model-config key holding the section.
PRUNE_KEY = "prune"
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class CutProjection(nn.Linear):
    """One end of a low-rank projection at a cut: ``down`` (width -> rank, on the sending side) or ``up``
    (rank -> width, on the receiving side). A plain ``nn.Linear`` on the last dimension, named for reports."""

    def __init__(self, in_features: int, out_features: int, role: str) -> None:
        if role not in ("down", "up"):
            raise ValueError(f"CutProjection role must be 'down' or 'up', got {role!r}")
        super().__init__(in_features, out_features)
        self.role = role

    def extra_repr(self) -> str:
        return f"{self.role}: {super().extra_repr()}"


def _project_output(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook of block ``cut - 1``: its output goes through ``edge_down``."""
    down = module.edge_down
    if isinstance(output, tuple):  # HF blocks return (hidden, ...)
        return (down(output[0]),) + tuple(output[1:])
    return down(output)


def _project_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Forward pre-hook of block ``cut``: its input comes through ``edge_up``."""
    up = module.edge_up
    if args:
        return (up(args[0]),) + tuple(args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, dict(kwargs, hidden_states=up(kwargs["hidden_states"]))
    raise ValueError("edge_up: the block was called without a positional input or hidden_states")


@dataclass(frozen=True)
class Projection:
    """A bottleneck between block ``cut - 1`` and block ``cut`` carrying ``rank`` of ``width`` channels."""

    cut: int
    width: int
    rank: int

    def to_dict(self) -> dict[str, int]:
        return {"cut": self.cut, "width": self.width, "rank": self.rank}


@dataclass(frozen=True)
class BlockSurgery:
    """The parsed ``prune`` section; :meth:`apply` edits one freshly built block in place."""

    projections: tuple[Projection, ...] = ()
    resize: tuple[tuple[int, str, int, int], ...] = ()  # (block, path inside it, out, in)

    @property
    def empty(self) -> bool:
        return not self.projections and not self.resize

    @classmethod
    def from_config(cls, config: Mapping[str, Any], num_blocks: int) -> BlockSurgery:
        """Parse ``config["prune"]`` (absent: no edits). Raises ValueError naming the bad entry."""
        section = config.get(PRUNE_KEY)
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError(f"model config 'prune' must be a mapping, got {section!r}")
        unknown = set(section) - {"projections", "resize"}
        if unknown:
            raise ValueError(f"model config 'prune': unknown keys {sorted(unknown)}; expected projections, resize")
        projections = []
        for i, p in enumerate(section.get("projections", [])):
            try:
                proj = Projection(int(p["cut"]), int(p["width"]), int(p["rank"]))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"prune.projections[{i}] must be {{cut, width, rank}} integers, got {p!r}") from None
            if not 1 <= proj.cut <= num_blocks - 1:
                raise ValueError(f"prune.projections[{i}]: cut {proj.cut} needs a block on both sides "
                                 f"(1 <= cut <= {num_blocks - 1})")
            if proj.width < 1 or proj.rank < 1:
                raise ValueError(f"prune.projections[{i}]: width and rank must be >= 1, got {proj}")
            projections.append(proj)
        cuts = [p.cut for p in projections]
        if len(set(cuts)) != len(cuts):
            raise ValueError(f"prune.projections: more than one projection at cut(s) {sorted(cuts)}")
        resize = []
        for key, shape in dict(section.get("resize", {})).items():
            head, _, path = str(key).partition(".")
            if not head.isdigit() or not path or not 0 <= int(head) < num_blocks:
                raise ValueError(f"prune.resize key {key!r} must be '<block index>.<module path>' "
                                 f"with a block index below {num_blocks}")
            if not (isinstance(shape, (list, tuple)) and len(shape) == 2 and all(int(s) >= 1 for s in shape)):
                raise ValueError(f"prune.resize[{key!r}] must be [out, in] positive sizes, got {shape!r}")
            resize.append((int(head), path, int(shape[0]), int(shape[1])))
        return cls(tuple(projections), tuple(resize))

    def apply(self, block: nn.Module | None, index: int) -> nn.Module | None:
        """Edit block ``index`` (global) in place and return it. Raises ValueError when a resized path is not a
        Linear or single-group Conv."""
        if block is None or self.empty:
            return block
        for b, path, out_f, in_f in self.resize:
            if b == index:
                _resize(block, path, out_f, in_f)
        for p in self.projections:
            if p.cut - 1 == index:
                block.edge_down = CutProjection(p.width, p.rank, "down")
                block.register_forward_hook(_project_output)
            if p.cut == index:
                block.edge_up = CutProjection(p.rank, p.width, "up")
                block.register_forward_pre_hook(_project_input, with_kwargs=True)
        return block


def _resize(block: nn.Module, path: str, out_f: int, in_f: int) -> None:
    old = block.get_submodule(path)
    parent_path, _, leaf = path.rpartition(".")
    parent = block.get_submodule(parent_path) if parent_path else block
    bias = getattr(old, "bias", None) is not None
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(in_f, out_f, bias=bias)
    elif isinstance(old, _CONVS) and old.groups == 1:
        new = type(old)(in_f, out_f, old.kernel_size, stride=old.stride, padding=old.padding,
                        dilation=old.dilation, bias=bias, padding_mode=old.padding_mode)
    else:
        raise ValueError(f"prune.resize: {path!r} is a {type(old).__name__}; only Linear and single-group "
                         "Conv layers can be resized")
    new = new.to(dtype=old.weight.dtype, device=old.weight.device)
    setattr(parent, leaf, new)


def surgery_for(config: Mapping[str, Any], num_blocks: int) -> BlockSurgery:
    """:meth:`BlockSurgery.from_config` (the entry point for :mod:`.partition`)."""
    return BlockSurgery.from_config(config, num_blocks)


def apply_to_native(native: nn.Module, block_prefix: str, surgery: BlockSurgery, num_blocks: int) -> None:
    """Apply ``surgery`` to the blocks of a family's native model (block ``i`` at ``block_prefix + str(i)``)."""
    if surgery.empty:
        return
    for i in range(num_blocks):
        surgery.apply(native.get_submodule(f"{block_prefix}{i}"), i)


def strip_prune(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the ``prune`` section (what the family is built from)."""
    return {k: v for k, v in config.items() if k != PRUNE_KEY}

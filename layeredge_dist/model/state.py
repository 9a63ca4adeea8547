"""Split a native state dict into per-stage slices (partition keys) and reassemble it.

Tensors are not copied: slices hold the same tensor objects as the input dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .family import Family, family_for
from .keymap import Route, parse_partition_key, partition_key
from .spec import ModelSpec, check_cuts, stage_blocks


def _stage_of(route: Route, blocks: Sequence[range]) -> int:
    """Index of the stage owning ``route``; raises KeyError for a block beyond the model."""
    if route.section == "pre":
        return 0
    if route.section == "post":
        return len(blocks) - 1
    for s, r in enumerate(blocks):
        if route.block in r:
            return s
    raise KeyError(f"block {route.block} is beyond the model's {blocks[-1].stop} blocks")


def _family(model: ModelSpec, cuts: Sequence[int]) -> tuple[Family, tuple[range, ...]]:
    family = family_for(model.family, model.config)
    check_cuts(family.num_blocks, cuts, family.has_pre, family.has_post)
    return family, stage_blocks(family.num_blocks, cuts)


def split_state_dict(
    model: ModelSpec, cuts: Sequence[int], state: Mapping[str, torch.Tensor]
) -> list[dict[str, torch.Tensor]]:
    """Per-stage slices of a native state dict, keyed as each stage's partition expects.

    Keys matching the family's ``ignored`` patterns are dropped; a tied key missing from ``state`` (HF
    checkpoints save ``lm_head.weight`` only as ``transformer.wte.weight``) is filled from its source.
    Raises KeyError naming the first key that belongs to no part of the model.
    """
    family, blocks = _family(model, cuts)
    keymap = family.key_map()
    slices: list[dict[str, torch.Tensor]] = [{} for _ in blocks]
    by_route: dict[Route, torch.Tensor] = {}
    for key, tensor in state.items():
        if keymap.is_ignored(key):
            continue
        route = keymap.route(key)
        by_route[route] = tensor
        s = _stage_of(route, blocks)
        slices[s][partition_key(route, blocks[s].start)] = tensor
    for dst, src in keymap.tied:
        dst_route, src_route = keymap.route(dst), keymap.route(src)
        if dst_route not in by_route and src_route in by_route:
            s = _stage_of(dst_route, blocks)
            slices[s][partition_key(dst_route, blocks[s].start)] = by_route[src_route]
    return slices


def merge_state_dicts(
    model: ModelSpec, cuts: Sequence[int], slices: Sequence[Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`split_state_dict`: one native state dict from every stage's partition state dict.

    Raises ValueError when the number of slices does not match the cuts or two slices hold the same key, and
    KeyError for a key a stage should not have.
    """
    family, blocks = _family(model, cuts)
    if len(slices) != len(blocks):
        raise ValueError(f"{len(slices)} slices for {len(blocks)} stages")
    keymap = family.key_map()
    out: dict[str, torch.Tensor] = {}
    for s, part_state in enumerate(slices):
        for key, tensor in part_state.items():
            route = parse_partition_key(key, blocks[s].start)
            if _stage_of(route, blocks) != s:
                raise KeyError(f"stage {s} holds {key!r}, which belongs to stage {_stage_of(route, blocks)}")
            native = keymap.native_key(route)
            if native in out:
                raise ValueError(f"native key {native!r} appears in more than one slice")
            out[native] = tensor
    return out


@dataclass(frozen=True)
class TiedParameter:
    """One native parameter held as two copies on different stages; their gradients must be summed."""

    stage_a: int
    key_a: str  # partition key on stage_a
    stage_b: int
    key_b: str  # partition key on stage_b


def tied_parameters(model: ModelSpec, cuts: Sequence[int]) -> tuple[TiedParameter, ...]:
    """Ties that cross stages for these cuts (empty for a single stage, where the partition shares them).

    The stage runtime must, before each optimizer step, add the gradient of ``key_a`` on ``stage_a`` and of
    ``key_b`` on ``stage_b`` and use the sum on both (or keep the copies equal otherwise).
    """
    family, blocks = _family(model, cuts)
    last = len(blocks) - 1
    if last == 0:
        return ()
    return tuple(TiedParameter(last, post_key, 0, pre_key) for post_key, pre_key in family.tied_partition_keys())

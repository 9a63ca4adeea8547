"""Channel pruning with weight surgery: remove channels and physically shrink the layers around them.

Two places where removing channels is exact (the pruned model computes what the original computes with those
channels zeroed, up to float summation order):

- **At a cut of a ``sequential`` model** (:func:`prune_cut_channels`): the tensor crossing the cut is produced by
  a ``Linear`` / ``Conv`` (possibly followed by element-wise activations, dropout or a BatchNorm) and consumed by
  the next ``Linear`` / ``Conv``. Removing channel ``c`` deletes row ``c`` of the producer (weight and bias), the
  channel from any BatchNorm / PReLU in between, and column ``c`` of the consumer; the model config's layer sizes
  shrink with them, so the edge carries fewer channels. Equivalent to zeroing those channels at the consumer's
  input (for the usual ``Linear -> ReLU | cut | Linear`` that is the tensor on the wire).
- **Inside transformer MLPs** (:func:`prune_mlp_hidden`): hidden units of ``fc (d -> 4d)`` / ``proj (4d -> d)``
  are rows of ``fc`` and columns of ``proj``; they are ranked by Taylor importance (:func:`mlp_hidden_scores`)
  and the two Linears shrink (``prune.resize`` in the model config). This shrinks weights and compute, not the
  cut: the block's output is still ``d`` channels.

Where a cut carries a residual stream (``byte_gpt``, ``hf_gpt2``, ``hf_bert``), no channel can be removed at one
cut: every block reads all ``d`` channels through a LayerNorm (which mixes them) and writes all ``d`` back through
the residual add. :func:`cut_prunability` says so per cut, and :func:`prune_cut_channels` raises
:class:`NotPrunable`; the nearest real option is a learned low-rank projection at the cut
(:func:`~layeredge_dist.prune.projection.apply_projection`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from layeredge_dist.measure import ChannelAccumulator, ChannelScores, least_important
from layeredge_dist.model import (
    ModelSpec,
    Partition,
    PartitionSpec,
    build_partition,
    merge_state_dicts,
    split_batch,
    split_state_dict,
    train_chain,
)
from layeredge_dist.model.surgery import PRUNE_KEY

#: Layers a channel passes through unchanged and independently of the others (zero stays removable).
ELEMENTWISE = frozenset({
    "ReLU", "ReLU6", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ELU", "SELU", "CELU", "Softplus", "Mish",
    "Hardswish", "Hardsigmoid", "Hardtanh", "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
})
#: Layers with one parameter (or buffer) entry per channel: they shrink with the channels.
CHANNELWISE = {
    "BatchNorm1d": ("weight", "bias", "running_mean", "running_var"),
    "BatchNorm2d": ("weight", "bias", "running_mean", "running_var"),
    "BatchNorm3d": ("weight", "bias", "running_mean", "running_var"),
    "PReLU": ("weight",),
}
_FEATURE_ARGS = {"Linear": ("in_features", "out_features"), "Conv1d": ("in_channels", "out_channels"),
                 "Conv2d": ("in_channels", "out_channels"), "Conv3d": ("in_channels", "out_channels")}
RESIDUAL_REASON = (
    "the tensor crossing this cut is the residual stream: every block reads all d channels (through a LayerNorm, "
    "which mixes them) and adds its output to all of them, so a channel cannot be removed at one cut without "
    "changing every block; use a learned low-rank projection at the cut instead (apply_projection)"
)


class NotPrunable(ValueError):
    """Channels cannot be removed at this cut; the message says why and what to do instead."""


def rebuild(parts: Sequence[Partition], model: ModelSpec, states: Sequence[Mapping[str, torch.Tensor]]
            ) -> list[Partition]:
    """Every partition rebuilt from ``model`` (same cuts and stages) with ``states[s]`` loaded (strict), on the
    device and in the train / eval mode of the original."""
    out = []
    for part, state in zip(parts, states):
        device = next((p.device for p in part.parameters()), torch.device("cpu"))
        new = build_partition(PartitionSpec(model, part.spec.cuts, part.spec.stage), state, device=device)
        out.append(new.train(part.training))
    return out


# ---- cuts of sequential models ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelCut:
    """Where the channels crossing a cut of a sequential model are made and used (global layer indices)."""

    producer: int
    consumer: int
    between: tuple[int, ...]  # element-wise and channel-wise layers from the producer to the consumer
    channels: int
    channel_dim: int  # -1 for Linear, 1 for Conv (the tensor's channel dimension)


def _type(layer: Mapping[str, Any]) -> str:
    return str(layer.get("type"))


def _args(layer: Mapping[str, Any]) -> dict[str, Any]:
    return dict(layer.get("args", {}))


def _passes(layer: Mapping[str, Any]) -> bool:
    t = _type(layer)
    if t == "PReLU":
        return True
    return t in ELEMENTWISE or t in CHANNELWISE


def cut_plan(model: ModelSpec, cut_block: int) -> ChannelCut:
    """How channels at the cut before block ``cut_block`` can be removed; raises :class:`NotPrunable` otherwise."""
    if model.family != "sequential":
        raise NotPrunable(f"{model.family} cut at block {cut_block}: {RESIDUAL_REASON}"
                          if model.family in ("byte_gpt", "hf_gpt2", "hf_bert") else
                          f"channel surgery at a cut is implemented for sequential models, not {model.family!r}")
    layers = list(model.config["layers"])
    if not 1 <= cut_block <= len(layers) - 1:
        raise NotPrunable(f"cut at block {cut_block} has no layer on one side ({len(layers)} layers)")
    projections = model.config.get(PRUNE_KEY, {}).get("projections", [])
    i = cut_block - 1
    while i >= 0 and _passes(layers[i]):
        i -= 1
    j = cut_block
    while j < len(layers) and _passes(layers[j]):
        j += 1
    if i < 0 or _type(layers[i]) not in _FEATURE_ARGS:
        found = "nothing" if i < 0 else _type(layers[i])
        raise NotPrunable(f"cut at block {cut_block}: the channels are not produced by a Linear or Conv layer "
                          f"(found {found} before the cut)")
    if j >= len(layers) or _type(layers[j]) not in _FEATURE_ARGS:
        found = "nothing" if j >= len(layers) else _type(layers[j])
        raise NotPrunable(f"cut at block {cut_block}: the channels are not consumed by a Linear or Conv layer "
                          f"(found {found} after the cut)")
    pt, ct = _type(layers[i]), _type(layers[j])
    if (pt == "Linear") != (ct == "Linear") or (pt != "Linear" and pt != ct):
        raise NotPrunable(f"cut at block {cut_block}: producer {pt} and consumer {ct} do not share a channel layout")
    for name in (pt, ct):
        if name != "Linear":
            k = i if name == pt else j
            if int(_args(layers[k]).get("groups", 1)) != 1:
                raise NotPrunable(f"cut at block {cut_block}: grouped convolutions are not pruned")
    out_f = int(_args(layers[i])[_FEATURE_ARGS[pt][1]])
    in_f = int(_args(layers[j])[_FEATURE_ARGS[ct][0]])
    if out_f != in_f:
        raise NotPrunable(f"cut at block {cut_block}: producer makes {out_f} channels, consumer takes {in_f}")
    for p in projections:
        if i < int(p["cut"]) <= j:
            raise NotPrunable(f"cut at block {cut_block}: a projection at block {p['cut']} sits between the layers")
    between = tuple(range(i + 1, j))
    for k in between:
        if _type(layers[k]) == "PReLU" and int(_args(layers[k]).get("num_parameters", 1)) not in (1, out_f):
            raise NotPrunable(f"cut at block {cut_block}: PReLU {k} has an unexpected parameter count")
    return ChannelCut(i, j, between, out_f, -1 if pt == "Linear" else 1)


def shrink_sequential(model: ModelSpec, state: Mapping[str, torch.Tensor], plan: ChannelCut,
                      keep: torch.Tensor) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The sequential ``model`` and its native ``state`` with only channels ``keep`` (sorted ascending) at the
    cut of ``plan``: smaller layer sizes in the config, sliced weights (copies)."""
    keep = torch.as_tensor(keep, dtype=torch.int64).sort().values
    n = int(keep.numel())
    if n < 1 or n > plan.channels or int(keep.unique().numel()) != n or int(keep.max()) >= plan.channels:
        raise ValueError(f"keep must be distinct channel indices in [0, {plan.channels}), at least one")
    config = copy.deepcopy(dict(model.config))
    layers = [dict(layer) for layer in config["layers"]]
    out = dict(state)
    p, c = plan.producer, plan.consumer
    p_args, c_args = _args(layers[p]), _args(layers[c])
    p_args[_FEATURE_ARGS[_type(layers[p])][1]] = n
    c_args[_FEATURE_ARGS[_type(layers[c])][0]] = n
    layers[p]["args"], layers[c]["args"] = p_args, c_args
    out[f"{p}.weight"] = state[f"{p}.weight"][keep].clone()
    if f"{p}.bias" in state:
        out[f"{p}.bias"] = state[f"{p}.bias"][keep].clone()
    out[f"{c}.weight"] = state[f"{c}.weight"][:, keep].clone()
    for k in plan.between:
        t = _type(layers[k])
        if t not in CHANNELWISE:
            continue
        args = _args(layers[k])
        if t == "PReLU":
            if int(args.get("num_parameters", 1)) == 1:
                continue
            args["num_parameters"] = n
        else:
            args["num_features"] = n
        layers[k]["args"] = args
        for name in CHANNELWISE[t]:
            key = f"{k}.{name}"
            if key in state:
                out[key] = state[key][keep].clone()
    config["layers"] = layers
    return ModelSpec(model.family, config, seed=model.seed, weights=model.weights), out


def cut_prunability(parts: Sequence[Partition]) -> list[dict[str, Any]]:
    """Per cut: ``{"cut", "block", "prunable", "reason"}`` (reason empty when channels can be removed)."""
    rows = []
    for k in range(len(parts) - 1):
        block = parts[k + 1].first_block
        try:
            cut_plan(parts[0].spec.model, block)
            rows.append({"cut": k, "block": block, "prunable": True, "reason": ""})
        except NotPrunable as err:  # the row names the block already
            reason = re.sub(r"^[\w ]*cut at block \d+: ", "", str(err))
            rows.append({"cut": k, "block": block, "prunable": False, "reason": reason})
    return rows


def prune_cut_channels(parts: Sequence[Partition], cut: int, drop: torch.Tensor | Sequence[int]
                       ) -> list[Partition]:
    """New partitions with channels ``drop`` removed at cut ``cut`` (between ``parts[cut]`` and
    ``parts[cut + 1]``) by weight surgery; the tensor crossing the cut loses those channels.

    Raises :class:`NotPrunable` where the architecture does not allow it (see :func:`cut_plan`), ValueError for
    bad indices or when every channel would go.
    """
    if not 0 <= cut < len(parts) - 1:
        raise ValueError(f"cut index {cut} out of range for {len(parts)} partitions")
    model = parts[0].spec.model
    cuts = parts[0].spec.cuts
    plan = cut_plan(model, parts[cut + 1].first_block)
    drop_t = torch.as_tensor(drop, dtype=torch.int64).reshape(-1)
    if drop_t.numel() and (int(drop_t.min()) < 0 or int(drop_t.max()) >= plan.channels):
        raise ValueError(f"channel indices must lie in [0, {plan.channels})")
    mask = torch.ones(plan.channels, dtype=torch.bool)
    mask[drop_t] = False
    keep = mask.nonzero().squeeze(1)
    if keep.numel() == 0:
        raise ValueError("cannot remove every channel of a cut")
    native = merge_state_dicts(model, cuts, [p.state_dict() for p in parts])
    new_model, new_state = shrink_sequential(model, native, plan, keep)
    return rebuild(parts, new_model, split_state_dict(new_model, cuts, new_state))


def drop_least_important(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ``round(fraction * C)`` least important channels (at most ``C - 1``)."""
    c = int(torch.as_tensor(scores).numel())
    k = min(c - 1, int(round(fraction * c)))
    return least_important(scores, max(0, k))


# ---- transformer MLP hidden units ---------------------------------------------------------------------------


def mlp_blocks(part: Partition, fc: str = "fc", proj: str = "proj") -> dict[int, nn.Module]:
    """Global block index -> block, for blocks with Linears ``fc`` (d -> h) and ``proj`` (h -> d)."""
    out = {}
    for local, block in enumerate(part.blocks):
        a, b = getattr(block, fc, None), getattr(block, proj, None)
        if isinstance(a, nn.Linear) and isinstance(b, nn.Linear) and a.out_features == b.in_features:
            out[part.first_block + local] = block
    return out


def mlp_hidden_scores(parts: Sequence[Partition], batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
                      microbatches: int = 1, fc: str = "fc", proj: str = "proj") -> dict[int, ChannelScores]:
    """Importance of every MLP hidden unit (the input of ``proj``): Taylor ``E|sum a_u g_u|``, L2, mean |a|,
    per global block index, from forward and backward passes over ``batches`` (eval mode; gradients cleared)."""
    from .calib import eval_mode

    accs: dict[int, ChannelAccumulator] = {}
    handles = []

    def hook_for(acc: ChannelAccumulator):  # type: ignore[no-untyped-def]
        def pre(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            a = args[0]
            if a.requires_grad:
                def grad_hook(g: torch.Tensor, a: torch.Tensor = a) -> None:
                    acc.add(a.detach(), g)
                a.register_hook(grad_hook)
            else:
                acc.add(a.detach())
        return pre

    for part in parts:
        for index, block in mlp_blocks(part, fc, proj).items():
            accs[index] = ChannelAccumulator()
            handles.append(getattr(block, proj).register_forward_pre_hook(hook_for(accs[index])))
    try:
        with eval_mode(parts):
            for batch in batches:
                xs, sides = split_batch(batch, microbatches)
                train_chain(parts, xs, sides)
    finally:
        for h in handles:
            h.remove()
        for part in parts:
            part.zero_grad(set_to_none=True)
    return {i: acc.result() for i, acc in accs.items()}


def mlp_keep(scores: Mapping[int, ChannelScores], fraction: float, by: str = "taylor") -> dict[int, torch.Tensor]:
    """Per block: the hidden units kept (ascending) when the ``fraction`` least important are removed."""
    out = {}
    for index, s in scores.items():
        values = s.taylor if by == "taylor" else s.l2
        if values is None:
            raise ValueError(f"block {index}: no {by} scores (calibrate with gradients)")
        drop = drop_least_important(values, fraction)
        mask = torch.ones(values.numel(), dtype=torch.bool)
        mask[drop] = False
        out[index] = mask.nonzero().squeeze(1)
    return out


def prune_mlp_hidden(parts: Sequence[Partition], keep: Mapping[int, torch.Tensor | Sequence[int]],
                     fc: str = "fc", proj: str = "proj") -> list[Partition]:
    """New partitions whose MLP in block ``i`` keeps only hidden units ``keep[i]``: ``fc`` loses rows, ``proj``
    loses columns, recorded as ``prune.resize`` in the model config so every stage builds the smaller layers.

    Raises ValueError for a block without such an MLP or bad unit indices.
    """
    model = parts[0].spec.model
    config = copy.deepcopy(dict(model.config))
    section = dict(config.get(PRUNE_KEY, {}))
    resize = dict(section.get("resize", {}))
    states = [dict(p.state_dict()) for p in parts]
    found: dict[int, tuple[int, Partition]] = {}
    for s, part in enumerate(parts):
        for index in mlp_blocks(part, fc, proj):
            found[index] = (s, part)
    for index, units in keep.items():
        if index not in found:
            raise ValueError(f"block {index} has no {fc}/{proj} MLP in these partitions")
        s, part = found[index]
        block = part.blocks[index - part.first_block]
        a, b = getattr(block, fc), getattr(block, proj)
        idx = torch.as_tensor(units, dtype=torch.int64).sort().values
        h = a.out_features
        if idx.numel() < 1 or int(idx.unique().numel()) != idx.numel() or int(idx.min()) < 0 or int(idx.max()) >= h:
            raise ValueError(f"block {index}: kept units must be distinct indices in [0, {h}), at least one")
        local = index - part.first_block
        st = states[s]
        st[f"blocks.{local}.{fc}.weight"] = a.weight.detach()[idx].clone()
        if a.bias is not None:
            st[f"blocks.{local}.{fc}.bias"] = a.bias.detach()[idx].clone()
        st[f"blocks.{local}.{proj}.weight"] = b.weight.detach()[:, idx].clone()
        resize[f"{index}.{fc}"] = [int(idx.numel()), a.in_features]
        resize[f"{index}.{proj}"] = [b.out_features, int(idx.numel())]
    section["resize"] = resize
    config[PRUNE_KEY] = section
    new_model = ModelSpec(model.family, config, seed=model.seed, weights=model.weights)
    return rebuild(parts, new_model, states)

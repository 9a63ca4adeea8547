"""A learned low-rank projection at a cut: the nearest real option where channels cannot be removed.

In a residual network (the demo byte GPT, GPT-2, BERT) the tensor crossing a cut is the residual stream: every
block reads all ``d`` channels (through a LayerNorm, which mixes them) and adds its output to all of them, so no
channel can be taken off the wire at one cut without changing every block. What *can* shrink the edge is a
bottleneck: the sending stage ends with ``down: Linear(d -> r)``, the receiving stage starts with
``up: Linear(r -> d)``, and the edge carries ``r`` channels. :func:`apply_projection` inserts one
(:class:`~layeredge_dist.model.surgery.CutProjection` modules, described in the model config's ``prune`` section,
so every stage builds it from plain data) and initialises it from calibration activations ``X`` (N, d):

- ``pca``: ``down(x) = U_r^T (x - mu)``, ``up(z) = U_r z + mu`` with ``U_r`` the top-``r`` principal directions
  of ``X`` (eigenvectors of its covariance). ``up(down(x))`` is the rank-``r`` PCA reconstruction, the best
  linear one in mean squared error; with ``r = d`` it is the identity (up to rounding).
- ``channels``: keep the ``r`` most important channels (``scores``, e.g. Taylor importance at the cut): ``down``
  selects them, ``up`` puts them back and fills every dropped channel with its calibration mean.

Fine-tuning afterwards trains the projections with the rest of the model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from layeredge_dist.model import ModelSpec, Partition
from layeredge_dist.model.surgery import PRUNE_KEY, CutProjection

from .channels import rebuild

INITS = ("pca", "channels")

__all__ = ["INITS", "CutProjection", "apply_projection", "flatten_channels", "projected_spec", "projection_state",
           "projection_weights"]


def flatten_channels(tensors: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack activations (any leading shape, channels last) into (N, C) float64."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    return torch.cat([t.detach().reshape(-1, t.shape[-1]).to(torch.float64) for t in tensors])


def projection_weights(acts: torch.Tensor, rank: int, init: str = "pca",
                       scores: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``down.weight`` (r, d), ``down.bias`` (r,), ``up.weight`` (d, r), ``up.bias`` (d,) in fp32.

    ``acts`` is (N, d) (see :func:`flatten_channels`). Raises ValueError for a rank outside ``[1, d]``, an
    unknown ``init`` or ``channels`` without ``scores`` of length d.
    """
    x = acts.to(torch.float64)
    d = x.shape[-1]
    if not 1 <= rank <= d:
        raise ValueError(f"projection rank must lie in [1, {d}], got {rank}")
    mu = x.mean(dim=0)  # (d,)
    if init == "pca":
        xc = x - mu
        cov = xc.T @ xc / max(1, x.shape[0] - 1)  # (d, d)
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        u = vecs[:, -rank:].flip(1)  # (d, r) top-r directions, largest first
        w_down, b_down = u.T, -(u.T @ mu)
        w_up, b_up = u, mu
    elif init == "channels":
        if scores is None or torch.as_tensor(scores).numel() != d:
            raise ValueError(f"init 'channels' needs one importance score per channel ({d})")
        s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
        keep = torch.sort(torch.sort(s, descending=True, stable=True).indices[:rank]).values  # (r,) ascending
        eye = torch.eye(d, dtype=torch.float64)
        w_down, b_down = eye[keep], torch.zeros(rank, dtype=torch.float64)
        w_up = eye[:, keep]
        b_up = mu.clone()
        b_up[keep] = 0.0  # kept channels pass through; dropped ones become their calibration mean
    else:
        raise ValueError(f"unknown projection init {init!r}; expected one of {INITS}")
    return {"down.weight": w_down.float().contiguous(), "down.bias": b_down.float().contiguous(),
            "up.weight": w_up.float().contiguous(), "up.bias": b_up.float().contiguous()}


def projected_spec(model: ModelSpec, cut_block: int, width: int, rank: int) -> ModelSpec:
    """``model`` with a projection of ``width`` -> ``rank`` channels between block ``cut_block - 1`` and
    ``cut_block`` added to its config's ``prune`` section (one replaced if that cut already has one)."""
    config = copy.deepcopy(dict(model.config))
    section = dict(config.get(PRUNE_KEY, {}))
    projections = [p for p in section.get("projections", []) if int(p["cut"]) != cut_block]
    projections.append({"cut": cut_block, "width": width, "rank": rank})
    section["projections"] = sorted(projections, key=lambda p: int(p["cut"]))
    config[PRUNE_KEY] = section
    return ModelSpec(model.family, config, seed=model.seed, weights=model.weights)


def apply_projection(parts: Sequence[Partition], cut: int, r: int,
                     calib_activations: torch.Tensor | Sequence[torch.Tensor], init: str = "pca",
                     scores: torch.Tensor | None = None) -> list[Partition]:
    """New partitions of the same model and cuts with a rank-``r`` projection at cut ``cut`` (between
    ``parts[cut]`` and ``parts[cut + 1]``): the sending stage ends with ``down``, the receiving one starts with
    ``up``, so the tensor crossing the cut has ``r`` channels. Weights of every other module are copied.

    ``calib_activations``: the tensor(s) crossing the cut on calibration data, channels last. Raises ValueError
    for a cut index out of range, a cut at which a stage holds no block on one side (a stage of only the pre or
    post part), or a bad rank / init (see :func:`projection_weights`).
    """
    if not 0 <= cut < len(parts) - 1:
        raise ValueError(f"cut index {cut} out of range for {len(parts)} partitions")
    send, recv = parts[cut], parts[cut + 1]
    if not len(send.blocks) or not len(recv.blocks):
        raise ValueError(f"cut {cut}: a projection needs a block on both sides; stage {cut} or {cut + 1} holds "
                         "only the pre or post part")
    acts = flatten_channels(calib_activations)
    width = acts.shape[-1]
    weights = projection_weights(acts, r, init, scores)
    cut_block = recv.first_block
    model = projected_spec(send.spec.model, cut_block, width, r)
    states = [dict(p.state_dict()) for p in parts]
    last_local = len(send.blocks) - 1
    for end, local, state in (("down", last_local, states[cut]), ("up", 0, states[cut + 1])):
        for name in ("weight", "bias"):
            state[f"blocks.{local}.edge_{end}.{name}"] = weights[f"{end}.{name}"]
    return rebuild(parts, model, states)


def projection_state(part: Partition) -> Mapping[str, Any]:
    """``{key: shape}`` of the projection parameters a partition holds (for reports)."""
    return {k: tuple(v.shape) for k, v in part.state_dict().items() if ".edge_down." in k or ".edge_up." in k}


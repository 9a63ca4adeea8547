"""Weight pruning inside partitions: masks by magnitude, Taylor or N:M structure, kept sparse while training.

- :func:`prune_masks` builds one boolean mask (True = kept) per selected parameter tensor:

  - ``magnitude``: per tensor, keep the ``(1 - s) * n`` largest ``|w|`` (unstructured);
  - ``taylor``: per tensor, keep the largest ``|w * g|`` (first-order loss change of removing a weight; ``g`` is
    the parameter's ``.grad``, e.g. the mean gradient over calibration batches, see
    :func:`~layeredge_dist.prune.calib.accumulate_gradients`);
  - ``N:M`` (``"2:4"``): in every group of ``M`` consecutive weights along the input (last) dimension keep the
    ``N`` largest ``|w|`` (or ``|w * g|`` with ``scores="taylor"``), the structure sparse tensor cores run.

  Targets are per tensor: ``targets`` maps ``fnmatch`` patterns of parameter names to a sparsity; the first
  matching pattern wins; tensors matching none are not pruned. :func:`default_targets` selects every weight
  matrix (``dim >= 2``).
- :func:`apply_masks` zeroes the pruned weights; :class:`MaskKeeper` re-applies the masks after every
  optimizer step (an optimizer step post-hook), so training keeps them sparse (momentum would revive them).
- :func:`to_sparse` exports the kept weights as indices + values (flat int64 positions, values in the tensor's
  dtype); :mod:`.transfer` encodes them compactly (bitmap / Elias-Fano / N:M pattern indices, int8/int4 values).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

METHODS = ("magnitude", "taylor", "2:4")
Masks = dict[str, torch.Tensor]


def parse_nm(method: str) -> tuple[int, int] | None:
    """``(N, M)`` of an ``"N:M"`` method string, None for other methods; ValueError unless ``0 < N < M``."""
    if ":" not in method:
        return None
    a, _, b = method.partition(":")
    try:
        n, m = int(a), int(b)
    except ValueError:
        raise ValueError(f"N:M method must look like '2:4', got {method!r}") from None
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {method!r}")
    return n, m


def default_targets(module: nn.Module, sparsity: float) -> dict[str, float]:
    """``{name: sparsity}`` for every parameter with ``dim >= 2`` (Linear / Conv / Embedding weights)."""
    return {name: sparsity for name, p in module.named_parameters() if p.dim() >= 2}


def _target(name: str, targets: Mapping[str, float]) -> float | None:
    for pattern, s in targets.items():
        if fnmatch.fnmatchcase(name, pattern):
            return float(s)
    return None


def magnitude_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``n - round(sparsity * n)`` largest scores (ties: lower flat index first)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    n = score.numel()
    drop = int(round(sparsity * n))
    mask = torch.ones(n, dtype=torch.bool, device=score.device)
    if drop:
        order = torch.sort(score.detach().reshape(-1).to(torch.float64), stable=True).indices
        mask[order[:drop]] = False
    return mask.view(score.shape)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive scores along the last dimension.

    Raises ValueError for a tensor of fewer than 2 dimensions or whose last dimension is not a multiple of ``m``.
    """
    if score.dim() < 2 or score.shape[-1] % m:
        raise ValueError(f"{n}:{m} sparsity needs a weight whose last dimension is a multiple of {m}, "
                         f"got shape {tuple(score.shape)}")
    groups = score.detach().reshape(-1, m).to(torch.float64)  # (G, M)
    top = torch.topk(groups, n, dim=1, sorted=False).indices  # (G, N)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, top, True)
    return mask.view(score.shape)


def prune_masks(module: nn.Module, method: str, targets: Mapping[str, float] | None = None,
                sparsity: float = 0.5) -> Masks:
    """Masks (True = kept) for the parameters of ``module`` selected by ``targets`` (default: every weight
    matrix at ``sparsity``). ``method``: ``magnitude``, ``taylor`` (needs ``.grad``) or ``"N:M"`` (the target
    sparsity is then ``1 - N/M`` and any other value in ``targets`` is ignored; tensors whose last dimension
    is not a multiple of ``M`` are skipped)."""
    nm = parse_nm(method)
    if nm is None and method not in ("magnitude", "taylor"):
        raise ValueError(f"unknown weight pruning method {method!r}; expected magnitude, taylor or N:M like 2:4")
    targets = dict(targets) if targets is not None else default_targets(module, sparsity)
    masks: Masks = {}
    for name, p in module.named_parameters():
        s = _target(name, targets)
        if s is None or (s <= 0.0 and nm is None):
            continue
        if method == "taylor":
            if p.grad is None:
                raise ValueError(f"taylor pruning of {name}: no gradient (run a backward first)")
            score = (p.detach() * p.grad.detach()).abs()
        else:
            score = p.detach().abs()
        if nm is not None:
            if p.dim() < 2 or p.shape[-1] % nm[1]:
                continue
            masks[name] = nm_mask(score, *nm)
        else:
            masks[name] = magnitude_mask(score, s)
    return masks


@torch.no_grad()
def apply_masks(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of ``module`` in place. KeyError names a mask without a parameter."""
    params = dict(module.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"mask for {name!r}, which is not a parameter of the module")
        params[name].mul_(mask.to(device=params[name].device, dtype=params[name].dtype))


class MaskKeeper:
    """Keeps ``masks`` applied to ``module`` after every step of ``optimizer`` (a step post-hook).

    Applies them once on construction. :meth:`remove` detaches the hook. Usable as a context manager.
    """

    def __init__(self, module: nn.Module, masks: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
                 ) -> None:
        self.module = module
        self.masks = dict(masks)
        apply_masks(module, self.masks)
        self._handle = optimizer.register_step_post_hook(lambda *_: apply_masks(self.module, self.masks))

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> MaskKeeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass(frozen=True)
class SparseWeight:
    """A pruned tensor exported sparse: sorted flat positions of the kept weights and their values."""

    shape: tuple[int, ...]
    indices: torch.Tensor  # (k,) int64, strictly increasing flat positions
    values: torch.Tensor  # (k,) the tensor's dtype

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(math.prod(self.shape), dtype=self.values.dtype)
        out[self.indices] = self.values
        return out.view(self.shape)

    @property
    def density(self) -> float:
        n = math.prod(self.shape)
        return self.indices.numel() / n if n else 0.0


def to_sparse(state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, SparseWeight]:
    """The masked tensors of ``state`` as :class:`SparseWeight` (keys: the mask names present in ``state``)."""
    out = {}
    for name, mask in masks.items():
        if name not in state:
            continue
        t = state[name].detach().cpu()
        idx = mask.detach().cpu().reshape(-1).nonzero().squeeze(1)
        out[name] = SparseWeight(tuple(t.shape), idx, t.reshape(-1)[idx].clone())
    return out


def sparsity_report(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Pruned / total elements over the masked tensors and over all parameters, plus exact-zero counts."""
    params = dict(module.named_parameters())
    pruned = sum(int((~m).sum()) for m in masks.values())
    masked_total = sum(m.numel() for m in masks.values())
    total = sum(p.numel() for p in params.values())
    zeros = sum(int((params[n].detach() == 0).sum()) for n in masks if n in params)
    return {"tensors": len(masks), "masked_elements": masked_total, "pruned_elements": pruned,
            "sparsity_masked": pruned / masked_total if masked_total else 0.0,
            "sparsity_all": pruned / total if total else 0.0, "zeros_in_masked": zeros}


def partition_masks(parts: Sequence[nn.Module], method: str, sparsity: float,
                    targets: Mapping[str, float] | None = None) -> list[Masks]:
    """:func:`prune_masks` of each partition (keys are that partition's parameter names)."""
    return [prune_masks(p, method, targets, sparsity) for p in parts]


def check_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` along the last dimension keeps exactly ``n``."""
    return bool((mask.reshape(-1, m).sum(dim=1) == n).all())

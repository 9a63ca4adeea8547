"""Descriptions of a model and of one stage's partition of it: plain, JSON-round-trippable data.

A stage receives a :class:`PartitionSpec` (never a pickled module) and builds its own partition from it with
:func:`layeredge_dist.model.partition.build_partition`.

Cut convention: a model has ``n`` blocks (layers) numbered ``0..n-1``; ``cuts`` lists the block index at which
each stage after the first begins. ``cuts=(2, 4)`` on 6 blocks gives stages owning blocks ``[0, 2)``,
``[2, 4)`` and ``[4, 6)``. Stage 0 also owns the family's *pre* part (embeddings), the last stage its *post*
part (head). A cut equal to 0 (a stage 0 that holds only the pre part) or to ``n`` (a last stage that holds
only the post part) is allowed when the family has that part; see :func:`check_cuts`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: JSON value types accepted inside a model config.
_SCALARS = (str, int, float, bool, type(None))


def _canonical(value: Any, where: str) -> Any:
    """Deep-copy ``value`` into JSON-compatible form (tuples become lists); raise TypeError otherwise."""
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeError(f"{where}: non-finite float {value!r} is not JSON")
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    raise TypeError(f"{where}: {type(value).__name__} value {value!r} is not JSON-compatible")


@dataclass(frozen=True)
class ModelSpec:
    """What model to build, without its weights.

    Attributes:
        family: registered family name (``sequential``, ``byte_gpt``, ``hf_gpt2``, ``hf_bert``, ...).
        config: family-specific settings; JSON-compatible values only (TypeError otherwise). Deep-copied.
        seed: seeds the deterministic per-module initialisation used when no weights are loaded. Block ``i`` is
            initialised the same way whichever stage hosts it, so re-cutting a model never changes its weights.
        weights: optional path (a ``.safetensors`` file or a directory holding ``model.safetensors``) that
            every node can read; a stage then loads only its own tensors from it.
    """

    family: str
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    weights: str | None = None

    def __post_init__(self) -> None:
        if not self.family:
            raise ValueError("ModelSpec.family must be a non-empty family name")
        object.__setattr__(self, "config", _canonical(dict(self.config), f"{self.family}.config"))

    def __hash__(self) -> int:
        return hash(self.to_json())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict; :meth:`from_dict` inverts it."""
        return {"family": self.family, "config": _canonical(self.config, "config"), "seed": self.seed,
                "weights": self.weights}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), stable across processes."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; raises KeyError when ``family`` is missing."""
        return cls(family=data["family"], config=dict(data.get("config", {})), seed=int(data.get("seed", 0)),
                   weights=data.get("weights"))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class PartitionSpec:
    """One stage's share of a model: the model, all cut points, and which stage this is.

    Raises ValueError when cuts are not strictly increasing or ``stage`` is out of range. Whether the cuts fit
    the model's block count is checked when the partition is built (:func:`check_cuts`).
    """

    model: ModelSpec
    cuts: tuple[int, ...]
    stage: int

    def __post_init__(self) -> None:
        cuts = tuple(int(c) for c in self.cuts)
        object.__setattr__(self, "cuts", cuts)
        if any(b <= a for a, b in zip(cuts, cuts[1:])):
            raise ValueError(f"cuts must be strictly increasing, got {cuts}")
        if cuts and cuts[0] < 0:
            raise ValueError(f"cuts must be >= 0, got {cuts}")
        if not 0 <= self.stage < len(cuts) + 1:
            raise ValueError(f"stage {self.stage} out of range for {len(cuts) + 1} stages")

    @property
    def num_stages(self) -> int:
        """Number of stages the cuts make."""
        return len(self.cuts) + 1

    @property
    def is_first(self) -> bool:
        """True for stage 0 (it owns the pre part and takes the model input)."""
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        """True for the last stage (it owns the post part and computes the loss)."""
        return self.stage == self.num_stages - 1

    def block_range(self, num_blocks: int) -> range:
        """Global indices of the blocks this stage owns, for a model of ``num_blocks`` blocks."""
        return stage_blocks(num_blocks, self.cuts)[self.stage]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict; :meth:`from_dict` inverts it."""
        return {"model": self.model.to_dict(), "cuts": list(self.cuts), "stage": self.stage}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartitionSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(ModelSpec.from_dict(data["model"]), tuple(data["cuts"]), int(data["stage"]))


def partition_specs(model: ModelSpec, cuts: Sequence[int]) -> tuple[PartitionSpec, ...]:
    """The :class:`PartitionSpec` of every stage for ``cuts``."""
    n = len(cuts) + 1
    return tuple(PartitionSpec(model, tuple(cuts), s) for s in range(n))


def stage_blocks(num_blocks: int, cuts: Sequence[int]) -> tuple[range, ...]:
    """Block ranges per stage: ``cuts=(2, 4)``, 6 blocks -> ``(range(0, 2), range(2, 4), range(4, 6))``.

    Raises ValueError when a cut lies outside ``[0, num_blocks]``.
    """
    bounds = (0, *cuts, num_blocks)
    if any(not 0 <= c <= num_blocks for c in cuts):
        raise ValueError(f"cuts {tuple(cuts)} outside [0, {num_blocks}]")
    return tuple(range(a, b) for a, b in zip(bounds, bounds[1:]))


def check_cuts(num_blocks: int, cuts: Sequence[int], has_pre: bool, has_post: bool) -> None:
    """Raise ValueError unless every stage owns at least one module.

    With a pre part, a first cut at 0 (stage 0 = embeddings only) is allowed; with a post part, a last cut at
    ``num_blocks`` (last stage = head only) is allowed. Middle stages always own at least one block.
    """
    lo = 0 if has_pre else 1
    hi = num_blocks if has_post else num_blocks - 1
    cuts = tuple(cuts)
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"cuts must be strictly increasing, got {cuts}")
    bad = [c for c in cuts if not lo <= c <= hi]
    if bad:
        raise ValueError(
            f"cuts {cuts} leave a stage empty: with {num_blocks} blocks (pre part: {has_pre}, post part: "
            f"{has_post}) every cut must lie in [{lo}, {hi}]"
        )


def even_cuts(num_blocks: int, num_stages: int) -> tuple[int, ...]:
    """Cuts giving each stage ``num_blocks // num_stages`` blocks; the remainder goes one each to the last stages.

    Raises ValueError when there are fewer blocks than stages.
    """
    if not 1 <= num_stages <= num_blocks:
        raise ValueError(f"cannot cut {num_blocks} blocks into {num_stages} non-empty stages")
    base, extra = divmod(num_blocks, num_stages)
    sizes = [base + (1 if s >= num_stages - extra else 0) for s in range(num_stages)]
    out, pos = [], 0
    for size in sizes[:-1]:
        pos += size
        out.append(pos)
    return tuple(out)

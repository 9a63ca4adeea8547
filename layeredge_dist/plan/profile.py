"""What the planner knows about a model: per-block compute and per-boundary traffic and sensitivity.

A model is a chain of ``n`` blocks (layers); the pre part (embeddings) is folded into block 0 and the post part
(head, loss) into block ``n - 1``. Boundary ``i`` (``0 <= i <= n - 2``) lies after block ``i``: a cut at block
index ``c`` (the run config's ``pipeline.cuts`` convention: the block where a later stage begins) crosses boundary
``c - 1``.

Per block: forward and backward seconds per micro-batch and parameter bytes. Per boundary: the activation elements
per micro-batch crossing it (the activation-gradient crossing back has the same count unless ``grad_elements`` says
otherwise), and optionally ``sensitivity[boundary][direction][codec]``: the loss increase when only that boundary
and direction is compressed with that codec (``direction`` is ``forward`` for activations, ``backward`` for
gradients), and ``proxy`` with the same shape (the online proxy). Codec keys are stored in canonical spec form.

Units: seconds, bytes, elements. Plain frozen data with an exact JSON round trip.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from .codec_costs import canonical_spec, is_lossless

DIRECTIONS: tuple[str, ...] = ("forward", "backward")
SCORE_SOURCES: tuple[str, ...] = ("sensitivity", "proxy")

Table = Mapping[int, Mapping[str, Mapping[str, float]]]


@dataclass(frozen=True)
class BlockCost:
    """One block: forward and backward seconds per micro-batch, parameter bytes."""

    fwd_s: float
    bwd_s: float
    params_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("fwd_s", "bwd_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"block {name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.params_bytes, int) or self.params_bytes < 0:
            raise ValueError(f"block params_bytes must be an integer >= 0, got {self.params_bytes!r}")


def _empty() -> Table:
    return types.MappingProxyType({})


def _freeze_table(table: Any, n_boundaries: int, what: str) -> Table:
    """Validate ``{boundary: {direction: {codec: value}}}`` (boundary may be a str of an int in JSON) and return
    it frozen with canonical codec specs. ``None`` values are dropped (not measured)."""
    if table is None:
        return _empty()
    if not isinstance(table, Mapping):
        raise ValueError(
            f"{what} must be a mapping boundary -> direction -> codec -> value, got {type(table).__name__}")
    out: dict[int, Mapping[str, Mapping[str, float]]] = {}
    for key, dirs in table.items():
        try:
            b = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: boundary must be an integer, got {key!r}") from None
        if not 0 <= b < n_boundaries:
            raise ValueError(f"{what}: boundary {b} outside 0..{n_boundaries - 1}")
        if b in out:
            raise ValueError(f"{what}: boundary {b} given twice")
        if not isinstance(dirs, Mapping):
            raise ValueError(f"{what}[{b}] must map direction -> codec -> value")
        inner: dict[str, Mapping[str, float]] = {}
        for direction, codecs in dirs.items():
            if direction not in DIRECTIONS:
                raise ValueError(f"{what}[{b}]: unknown direction {direction!r}; expected one of {DIRECTIONS}")
            if not isinstance(codecs, Mapping):
                raise ValueError(f"{what}[{b}][{direction}] must map codec spec -> value")
            vals: dict[str, float] = {}
            for spec, value in codecs.items():
                if value is None:
                    continue
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise ValueError(f"{what}[{b}][{direction}][{spec!r}] must be a finite number, got {value!r}")
                vals[canonical_spec(spec)] = float(value)
            inner[direction] = types.MappingProxyType(vals)
        out[b] = types.MappingProxyType(inner)
    return types.MappingProxyType(dict(sorted(out.items())))


def _thaw_table(table: Table) -> dict[str, Any]:
    return {str(b): {d: dict(c) for d, c in dirs.items()} for b, dirs in table.items()}


@dataclass(frozen=True)
class ModelProfile:
    """Cost model of a chain of blocks; see the module docstring.

    Raises ValueError for a wrong number of boundary entries, negative numbers, or a malformed table.
    """

    blocks: tuple[BlockCost, ...]
    elements: tuple[int, ...]
    grad_elements: tuple[int, ...] | None = None
    sensitivity: Table = field(default_factory=_empty)
    proxy: Table = field(default_factory=_empty)
    micro_batches: int = 4
    tokens_per_micro_batch: int | None = None
    name: str = "model"

    def __post_init__(self) -> None:
        blocks = tuple(b if isinstance(b, BlockCost) else BlockCost(**b) for b in self.blocks)
        if not blocks:
            raise ValueError("a model profile needs at least one block")
        object.__setattr__(self, "blocks", blocks)
        nb = len(blocks) - 1
        for name in ("elements", "grad_elements"):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(value)
            if len(value) != nb:
                raise ValueError(f"{name}: expected {nb} entries (one per boundary between {len(blocks)} blocks), "
                                 f"got {len(value)}")
            if any(not isinstance(e, int) or isinstance(e, bool) or e < 0 for e in value):
                raise ValueError(f"{name}: entries must be integers >= 0, got {value}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "sensitivity", _freeze_table(self.sensitivity, nb, "sensitivity"))
        object.__setattr__(self, "proxy", _freeze_table(self.proxy, nb, "proxy"))
        if not isinstance(self.micro_batches, int) or self.micro_batches < 1:
            raise ValueError(f"micro_batches must be an integer >= 1, got {self.micro_batches!r}")
        if self.tokens_per_micro_batch is not None and (
                not isinstance(self.tokens_per_micro_batch, int) or self.tokens_per_micro_batch < 1):
            raise ValueError(f"tokens_per_micro_batch must be an integer >= 1 or None, got "
                             f"{self.tokens_per_micro_batch!r}")

    # ---- constructors ------------------------------------------------------------------------------------

    @classmethod
    def from_numbers(
        cls,
        fwd_s: Sequence[float],
        bwd_s: Sequence[float],
        elements: Sequence[int] | int,
        *,
        params_bytes: Sequence[int] | int = 0,
        grad_elements: Sequence[int] | None = None,
        sensitivity: Mapping[Any, Any] | None = None,
        proxy: Mapping[Any, Any] | None = None,
        micro_batches: int = 4,
        tokens_per_micro_batch: int | None = None,
        name: str = "model",
    ) -> ModelProfile:
        """From explicit per-block times and per-boundary element counts (an int is used for every boundary)."""
        fwd, bwd = list(fwd_s), list(bwd_s)
        if len(fwd) != len(bwd):
            raise ValueError(f"fwd_s and bwd_s need one entry per block, got {len(fwd)} and {len(bwd)}")
        n = len(fwd)
        params = [params_bytes] * n if isinstance(params_bytes, int) else list(params_bytes)
        if len(params) != n:
            raise ValueError(f"params_bytes: expected {n} entries, got {len(params)}")
        elems = (elements,) * max(n - 1, 0) if isinstance(elements, int) else tuple(elements)
        return cls(tuple(BlockCost(f, b, p) for f, b, p in zip(fwd, bwd, params)), elems,
                   None if grad_elements is None else tuple(grad_elements),
                   sensitivity or {}, proxy or {}, micro_batches, tokens_per_micro_batch, name)

    @classmethod
    def uniform(cls, n_blocks: int, fwd_s: float, bwd_s: float, elements: int, **kwargs: Any) -> ModelProfile:
        """``n_blocks`` identical blocks, ``elements`` activation elements per micro-batch at every boundary.

        Keyword arguments are those of :meth:`from_numbers`.
        """
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        return cls.from_numbers([fwd_s] * n_blocks, [bwd_s] * n_blocks, elements, **kwargs)

    def with_scores(self, table: Mapping[Any, Any], source: str = "sensitivity") -> ModelProfile:
        """A copy with the ``sensitivity`` (or ``proxy``) table replaced."""
        if source not in SCORE_SOURCES:
            raise ValueError(f"source must be one of {SCORE_SOURCES}, got {source!r}")
        return replace(self, **{source: table})

    def with_compute_scaled(self, factor: float) -> ModelProfile:
        """A copy whose forward and backward seconds are multiplied by ``factor`` (> 0): the same model on slower
        or busier cores (e.g. 3 stage processes sharing 2 cores, or a calibration against measured steps).
        ValueError for a factor that is not a positive finite number."""
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"compute scale must be a positive finite number, got {factor!r}")
        if factor == 1.0:
            return self
        return replace(self, blocks=tuple(BlockCost(b.fwd_s * factor, b.bwd_s * factor, b.params_bytes)
                                          for b in self.blocks))

    # ---- queries -----------------------------------------------------------------------------------------

    @property
    def n_blocks(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    @property
    def n_boundaries(self) -> int:
        """Number of block boundaries (``n_blocks - 1``)."""
        return len(self.blocks) - 1

    @cached_property
    def _prefix(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...]]:
        f, b, p = [0.0], [0.0], [0]
        for blk in self.blocks:
            f.append(f[-1] + blk.fwd_s)
            b.append(b[-1] + blk.bwd_s)
            p.append(p[-1] + blk.params_bytes)
        return tuple(f), tuple(b), tuple(p)

    def compute(self, lo: int, hi: int) -> tuple[float, float]:
        """Forward and backward seconds per micro-batch of blocks ``lo..hi-1``."""
        f, b, _ = self._prefix
        return f[hi] - f[lo], b[hi] - b[lo]

    def params(self, lo: int, hi: int) -> int:
        """Parameter bytes of blocks ``lo..hi-1``."""
        return self._prefix[2][hi] - self._prefix[2][lo]

    def boundary_elements(self, boundary: int, direction: str = "forward") -> int:
        """Elements per micro-batch crossing ``boundary`` in ``direction``."""
        if direction == "backward" and self.grad_elements is not None:
            return self.grad_elements[boundary]
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        return self.elements[boundary]

    def score(self, boundary: int, direction: str, spec: str, source: str = "sensitivity") -> float | None:
        """The measured score of ``spec`` at ``boundary``/``direction``: 0 for a lossless codec (fp32, raw), the
        table's value when measured, None when not measured."""
        canon = canonical_spec(spec)
        if is_lossless(canon):
            return 0.0
        if source not in SCORE_SOURCES:
            raise ValueError(f"source must be one of {SCORE_SOURCES}, got {source!r}")
        table: Table = getattr(self, source)
        return table.get(boundary, {}).get(direction, {}).get(canon)

    def measured_codecs(self, source: str = "sensitivity") -> tuple[str, ...]:
        """Every codec spec with at least one entry in the table, in first-seen order."""
        seen: dict[str, None] = {}
        for dirs in getattr(self, source).values():
            for codecs in dirs.values():
                seen.update(dict.fromkeys(codecs))
        return tuple(seen)

    def summary(self) -> dict[str, Any]:
        """A small JSON-compatible description (for plans)."""
        f, b, p = self._prefix
        return {"name": self.name, "n_blocks": self.n_blocks, "fwd_s": f[-1], "bwd_s": b[-1],
                "params_bytes": p[-1], "max_elements": max(self.elements, default=0),
                "micro_batches": self.micro_batches, "tokens_per_micro_batch": self.tokens_per_micro_batch}

    # ---- serialisation -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict; ``ModelProfile.from_dict(p.to_dict()) == p``."""
        return {
            "name": self.name,
            "micro_batches": self.micro_batches,
            "tokens_per_micro_batch": self.tokens_per_micro_batch,
            "blocks": [{"fwd_s": b.fwd_s, "bwd_s": b.bwd_s, "params_bytes": b.params_bytes} for b in self.blocks],
            "elements": list(self.elements),
            "grad_elements": None if self.grad_elements is None else list(self.grad_elements),
            "sensitivity": _thaw_table(self.sensitivity),
            "proxy": _thaw_table(self.proxy),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelProfile:
        """Inverse of :meth:`to_dict`; ValueError for unknown or missing keys."""
        known = {"name", "micro_batches", "tokens_per_micro_batch", "blocks", "elements", "grad_elements",
                 "sensitivity", "proxy"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model profile keys {sorted(unknown)}; known: {sorted(known)}")
        for key in ("blocks", "elements"):
            if key not in data:
                raise ValueError(f"model profile needs {key!r}")
        ge = data.get("grad_elements")
        return cls(
            tuple(BlockCost(**b) for b in data["blocks"]), tuple(data["elements"]),
            None if ge is None else tuple(ge), data.get("sensitivity") or {}, data.get("proxy") or {},
            data.get("micro_batches", 4), data.get("tokens_per_micro_batch"), data.get("name", "model"),
        )

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ModelProfile:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def stage_ranges(n_blocks: int, cuts: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """``(lo, hi)`` block ranges of the (virtual) stages that ``cuts`` define."""
    bounds = (0, *cuts, n_blocks)
    return tuple(zip(bounds, bounds[1:]))


def check_cuts(n_blocks: int, cuts: Sequence[int], num_parts: int) -> tuple[int, ...]:
    """Return ``cuts`` as a tuple after checking that they cut ``n_blocks`` blocks into ``num_parts`` non-empty
    parts: ``num_parts - 1`` strictly increasing integers in ``[1, n_blocks - 1]``. ValueError otherwise."""
    cuts = tuple(cuts)
    if len(cuts) != num_parts - 1:
        raise ValueError(f"{num_parts} stage(s) need {num_parts - 1} cut(s), got {len(cuts)}: {cuts}")
    if any(not isinstance(c, int) or isinstance(c, bool) for c in cuts):
        raise ValueError(f"cuts must be integers, got {cuts}")
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"cuts must be strictly increasing, got {cuts}")
    if cuts and (cuts[0] < 1 or cuts[-1] > n_blocks - 1):
        raise ValueError(f"cuts {cuts} leave a stage empty: with {n_blocks} blocks every cut must lie in "
                         f"[1, {n_blocks - 1}]")
    return cuts

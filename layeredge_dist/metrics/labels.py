"""Label validation: every label value that reaches Prometheus is one of a bounded set.

A Prometheus series is created per distinct label set, forever (until the process exits). A label that carries
a step number, a micro-batch id or free text therefore grows memory and scrape size without bound, so this
module accepts only values from closed sets or tight patterns:

=========  ==========================================================================================
label      accepted values
=========  ==========================================================================================
stage      ``s<int>`` (``s0`` .. ``s9999``, no leading zeros) or ``host``; a :class:`StageId` is accepted
src, dst   the same as ``stage`` (``host`` = the driver / a machine outside the pipeline)
edge       canonical ``s<int>->s<int>`` (e.g. ``s0->s1``, no leading zeros, src != dst); an :class:`EdgeId`
direction  per family (see :data:`TRAFFIC_DIRECTIONS` and :data:`DATAFLOW_DIRECTIONS`); a :class:`Direction`
role       ``activation``, ``gradient``, ``weight``; a :class:`TensorRole` is accepted
codec      a codec spec string: 1..64 characters, starts with a lowercase letter, only
           ``[A-Za-z0-9_.:+-/(),=]`` (so no whitespace). The codecs layer owns the exact grammar; this check is
           syntactic only and bounds the set by length and charset — cardinality is bounded by the specs in use.
reason     :data:`REASONS`
phase      :data:`PHASES`
kind       :data:`KINDS`
split      :data:`SPLITS`
run        a short run name: 1..64 characters of ``[A-Za-z0-9_.:-]``, starting with a letter or digit, and not
           all digits (an all-digit value is almost certainly a step or id that slipped into a label)
=========  ==========================================================================================

Directions: edge *traffic* families (bytes, frames, transfer/encode/decode time, ratio, bits, relative error)
use ``send``/``recv`` — the recording process's view of a frame, as :class:`layeredge_dist.types.Direction`.
Families about the *plan* of an edge (importance, sensitivity, error budget, codec switches, plan info) use
``forward`` (activations flowing towards the output) / ``backward`` (gradients flowing back), because a plan
chooses a codec per edge and dataflow direction, independent of which end records it.

Any value of another type (an ``int`` step, a ``bool``, ``None``) or outside the set raises
:class:`MetricLabelError`, a ``ValueError`` naming the family, the label and the value.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Protocol

from layeredge_dist.types import EdgeId, StageId

#: Every label name a family may use.
ALLOWED_LABELS: frozenset[str] = frozenset(
    {"stage", "edge", "direction", "role", "codec", "reason", "kind", "src", "dst", "phase", "run", "split"}
)

#: Edge label of rejected frames whose edge is not known (unparseable header, failed authentication).
UNKNOWN_EDGE = "unknown"
#: Directions of edge-traffic families: the recording process sent or received the frame.
TRAFFIC_DIRECTIONS: tuple[str, ...] = ("send", "recv")
#: Directions of edge-plan families: forward (activations) or backward (gradients) dataflow.
DATAFLOW_DIRECTIONS: tuple[str, ...] = ("forward", "backward")
ROLES: tuple[str, ...] = ("activation", "gradient", "weight")
#: Why a received frame was rejected; ``other`` for anything not listed.
REASONS: tuple[str, ...] = ("checksum", "header", "length", "codec", "dtype", "shape", "auth", "other")
#: Where a stage spends compute time.
PHASES: tuple[str, ...] = ("forward", "backward", "optimizer")
#: Which importance estimator produced a value.
KINDS: tuple[str, ...] = ("proxy", "sensitivity", "channel_taylor", "activation_norm")
SPLITS: tuple[str, ...] = ("train", "val")

#: Longest accepted codec spec or run name, in characters.
MAX_VALUE_CHARS = 64

_STAGE = r"s(?:0|[1-9][0-9]{0,3})"
_STAGE_RE = re.compile(rf"^(?:{_STAGE}|host)$")
_EDGE_RE = re.compile(rf"^({_STAGE})->({_STAGE})$")
_CODEC_RE = re.compile(r"^[a-z][A-Za-z0-9_.:+\-/(),=]{0,63}$")
_RUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")

_CLOSED: dict[str, tuple[str, ...]] = {
    "role": ROLES,
    "reason": REASONS,
    "phase": PHASES,
    "kind": KINDS,
    "split": SPLITS,
}


class MetricLabelError(ValueError):
    """A label value that is not in its bounded set; names the family, the label and the value."""

    def __init__(self, family: str, label: str, value: object, why: str) -> None:
        self.family = family
        self.label = label
        self.value = value
        super().__init__(f"metric {family}: label {label}={value!r} rejected: {why}")


class _FamilyLike(Protocol):
    name: str
    labels: tuple[str, ...]
    directions: tuple[str, ...]


def _short(value: object) -> object:
    """The value for an error message, cut to a readable length."""
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    return value


def label_value(family: str, label: str, value: object, directions: Sequence[str] = ()) -> str:
    """Validate one label value and return it as the string Prometheus will see.

    ``directions``: the accepted ``direction`` values of ``family`` (ignored for other labels).
    Enums (:class:`Direction`, :class:`TensorRole`, ...) are accepted through their string ``value``;
    :class:`StageId` / :class:`EdgeId` through ``str()``. Raises :class:`MetricLabelError` otherwise.
    """
    if isinstance(value, (StageId, EdgeId)):
        value = str(value)
    elif isinstance(value, enum.Enum) and isinstance(value.value, str):
        value = value.value
    if not isinstance(value, str):
        raise MetricLabelError(
            family, label, _short(value),
            f"label values are strings from a bounded set, got {type(value).__name__}; a step or micro-batch "
            "number is a metric value, never a label",
        )
    if label in ("stage", "src", "dst"):
        if not _STAGE_RE.fullmatch(value):
            raise MetricLabelError(family, label, _short(value), "expected a stage id 's<int>' (s0..s9999) or 'host'")
    elif label == "edge":
        if value == UNKNOWN_EDGE and "rejected_frames" in family:
            return value  # a frame rejected before its edge could be read (bad header, failed auth)
        m = _EDGE_RE.fullmatch(value)
        if m is None:
            raise MetricLabelError(family, label, _short(value), "expected a canonical edge id 's<int>->s<int>'")
        if m.group(1) == m.group(2):
            raise MetricLabelError(family, label, value, "an edge joins two different stages")
    elif label == "direction":
        if value not in directions:
            raise MetricLabelError(family, label, _short(value), f"expected one of {', '.join(directions)}")
    elif label == "codec":
        if len(value) > MAX_VALUE_CHARS:
            raise MetricLabelError(
                family, label, _short(value), f"codec spec longer than {MAX_VALUE_CHARS} characters ({len(value)})"
            )
        if not _CODEC_RE.fullmatch(value):
            raise MetricLabelError(
                family, label, _short(value),
                "expected a codec spec: starts with a lowercase letter, only [A-Za-z0-9_.:+-/(),=], no spaces",
            )
    elif label == "run":
        if len(value) > MAX_VALUE_CHARS:
            raise MetricLabelError(
                family, label, _short(value), f"run name longer than {MAX_VALUE_CHARS} characters ({len(value)})"
            )
        if not _RUN_RE.fullmatch(value) or value.isdigit():
            raise MetricLabelError(
                family, label, _short(value),
                "expected a short run name of [A-Za-z0-9_.:-], starting with a letter or digit, not all digits",
            )
    elif label in _CLOSED:
        if value not in _CLOSED[label]:
            raise MetricLabelError(family, label, _short(value), f"expected one of {', '.join(_CLOSED[label])}")
    else:
        raise MetricLabelError(family, label, _short(value), f"unknown label name; allowed: {sorted(ALLOWED_LABELS)}")
    return value


def check_labels(family: _FamilyLike, values: Sequence[object]) -> tuple[str, ...]:
    """Validate ``values`` (in the order of ``family.labels``) and return them as strings.

    Raises :class:`MetricLabelError` for a wrong count of values or any value outside its bounded set.
    """
    if len(values) != len(family.labels):
        raise MetricLabelError(
            family.name, ",".join(family.labels), tuple(values),
            f"expected {len(family.labels)} label values, got {len(values)}",
        )
    return tuple(
        label_value(family.name, label, v, family.directions) for label, v in zip(family.labels, values)
    )

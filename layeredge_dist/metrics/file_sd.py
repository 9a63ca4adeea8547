"""Prometheus file service discovery: the JSON file that tells Prometheus which exporters to scrape.

Format (Prometheus ``file_sd_configs``): a JSON list of target groups ``{"targets": ["host:port"], "labels":
{...}}``. :func:`write_file_sd` writes one group per named exporter, atomically
(:func:`layeredge_dist.files.atomic_write`: the temporary file is named ``.<name>.<random>.tmp``, so a ``*.json``
glob in ``file_sd_configs`` never matches it, and the result is world-readable). Prometheus therefore reads either
the old or the new file, never a partial one.

Target labels must not reuse a metric label name (``stage``, ``edge``, ...): Prometheus would rename the
series' own label to ``exported_<name>``. Each group is labelled ``job`` (default ``layeredge``) and
``process`` (the target's name, e.g. ``driver`` or ``s0``) unless ``labels_per_target`` overrides them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from layeredge_dist.files import atomic_write_json

from .labels import ALLOWED_LABELS

#: The ``job`` label given to every target unless overridden.
DEFAULT_JOB = "layeredge"

_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TARGET_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):([0-9]{1,5})$")


def _check_target(name: str, addr: object) -> str:
    if not isinstance(addr, str):
        raise ValueError(f"file SD target {name!r}: address must be a 'host:port' string, got {addr!r}")
    m = _TARGET_RE.fullmatch(addr)
    if m is None or not 1 <= int(m.group(1)) <= 65535:
        raise ValueError(f"file SD target {name!r}: expected 'host:port' with port 1..65535, got {addr!r}")
    return addr


def _check_labels(where: str, labels: Mapping[str, object]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_NAME_RE.fullmatch(k):
            raise ValueError(f"file SD {where}: invalid Prometheus label name {k!r}")
        if k in ALLOWED_LABELS:
            raise ValueError(
                f"file SD {where}: target label {k!r} is also a metric label; Prometheus would rename the "
                f"series' own {k!r} to 'exported_{k}'. Use another name (e.g. 'process')"
            )
        if not isinstance(v, str):
            raise ValueError(f"file SD {where}: label {k}={v!r} must be a string")
        out[k] = v
    return out


def write_file_sd(
    path: str | os.PathLike[str],
    targets: Mapping[str, str],
    labels_per_target: Mapping[str, Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Atomically write a file-SD JSON with one target group per entry of ``targets`` (name -> ``host:port``).

    Each group's labels: ``{"job": "layeredge", "process": name}`` updated with ``labels_per_target[name]``.
    Returns the groups written. Raises ValueError (before touching the file) for a malformed address, a label
    name that is invalid or collides with a metric label, a non-string label value, or ``labels_per_target``
    naming an unknown target; OSError when the directory is not writable (no temporary file is left behind).
    """
    extra = dict(labels_per_target or {})
    unknown = sorted(set(extra) - set(targets))
    if unknown:
        raise ValueError(f"file SD: labels given for unknown targets {unknown}; targets are {sorted(targets)}")
    groups: list[dict[str, Any]] = []
    for name, addr in targets.items():
        labels = _check_labels(f"target {name!r}", {"job": DEFAULT_JOB, "process": name, **extra.get(name, {})})
        groups.append({"targets": [_check_target(name, addr)], "labels": labels})
    atomic_write_json(path, groups, indent=2, sort_keys=True)
    return groups


def read_file_sd(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a file-SD JSON: a list of ``{"targets": [str, ...], "labels": {str: str}}`` (labels default to {}).

    Raises OSError if unreadable, ValueError if it is not valid JSON of that shape.
    """
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"file SD {os.fspath(path)!r}: not valid JSON: {e}") from None
    if not isinstance(doc, list):
        raise ValueError(f"file SD {os.fspath(path)!r}: expected a JSON list of target groups")
    out: list[dict[str, Any]] = []
    for i, g in enumerate(doc):
        if not isinstance(g, dict) or not isinstance(g.get("targets"), list) or not all(
            isinstance(t, str) for t in g["targets"]
        ):
            raise ValueError(f"file SD {os.fspath(path)!r}: group {i} needs 'targets': a list of strings")
        labels = g.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValueError(f"file SD {os.fspath(path)!r}: group {i} 'labels' must map strings to strings")
        out.append({"targets": list(g["targets"]), "labels": dict(labels)})
    return out

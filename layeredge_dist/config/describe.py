"""Self-documentation of the run configuration: every leaf field with its type, default and help text.

:func:`describe_fields` gives the table as data (for tests, docs or a ``--json`` listing); :func:`format_help`
renders it as a text block for a CLI ``--help`` epilog. Both read only the dataclass definitions.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

from . import _validate as v
from .run import RunConfig

__all__ = ["describe_fields", "format_help", "type_label", "default_text"]

HEADER = "Configuration fields (YAML or TOML file; every field is optional and defaults as shown):"
#: The note on the override syntax; one line at the default width of 100 columns.
OVERRIDE_NOTE = "Override any field with --set PATH=VALUE (VALUE is YAML; repeatable), e.g. --set train.steps=50"


def type_label(tp: Any) -> str:
    """A short YAML-oriented label of an annotation.

    Examples: ``int``, ``str | null``, ``list[int] | null``, ``mapping[str, any]``.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(type_label(a) for a in args)
    if origin is tuple:
        return f"list[{type_label(args[0])}]"
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return f"mapping[{type_label(args[0])}, {type_label(args[1])}]" if args else "mapping"
    return getattr(tp, "__name__", str(tp))


def default_text(value: object) -> str:
    """A default value as it would be written in YAML: ``null``, ``true``, ``0.003``, ``[]``, ``{}``, ``fp32``."""
    if isinstance(value, str):
        return value if value.strip() and value == value.strip() else json.dumps(value)
    return json.dumps(v.thaw(value))


def _default_of(f: dataclasses.Field[Any]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"config field {f.name!r} has no default")  # a schema bug: every field must have one


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted path, type label, default as YAML text, help) for every leaf field of ``cls``, in declaration order.

    Nested config dataclasses are recursed into (their fields appear as ``section.field``); ``prefix`` is
    prepended to every path. Raises TypeError when ``cls`` is not a dataclass or a field has no default.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a config dataclass, got {cls!r}")
    hints = v.hints(cls)
    rows: list[tuple[str, str, str, str]] = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            rows += describe_fields(tp, path)
        else:
            rows.append((path, type_label(tp), default_text(_default_of(f)), str(f.metadata.get("help", ""))))
    return rows


def format_help(cls: type = RunConfig, width: int = 100) -> str:
    """A text block listing every leaf field of ``cls`` grouped by section, for a CLI ``--help`` epilog.

    Each entry reads ``  train.steps (int, default 200): help...`` wrapped at ``width`` columns; top-level
    scalar fields are grouped under ``run``. Ends with a note on the ``--set PATH=VALUE`` override syntax.
    Raises TypeError like :func:`describe_fields`.
    """
    rows = describe_fields(cls)
    hints = v.hints(cls)
    titles: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
            titles[f.name] = str(f.metadata.get("help", ""))
    groups: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in rows:
        head = row[0].split(".", 1)[0]
        groups.setdefault(head if head in titles else "run", []).append(row)
    lines = [textwrap.fill(HEADER, width=width, break_long_words=False, break_on_hyphens=False)]
    for group, members in groups.items():
        title = titles.get(group, "top-level settings")
        lines.append("")
        lines.append(textwrap.fill(f"{group}: {title}", width=width, subsequent_indent="    ", break_long_words=False))
        for path, label, default, help_text in members:
            entry = f"{path} ({label}, default {default}): {help_text}"
            lines.append(
                textwrap.fill(
                    entry, width=width, initial_indent="  ", subsequent_indent="      ",
                    break_long_words=False, break_on_hyphens=False,
                )
            )
    lines.append("")
    lines.append(textwrap.fill(OVERRIDE_NOTE, width=width, break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines) + "\n"

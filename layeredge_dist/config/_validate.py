"""Type checking and coercion of config values from dataclass annotations, plus small range checks.

Private to :mod:`layeredge_dist.config`. Everything here raises :class:`ConfigError` naming the dotted path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

from .errors import ConfigError

_NONE = type(None)


def found(value: object) -> str:
    """How an offending value is shown in messages: its repr and its type."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def fail(path: str, expected: str, value: object, hint: str = "") -> ConfigError:
    """A ConfigError ``"<path>: expected <expected>, found <value> (<type>)[; hint]"`` (returned, not raised)."""
    return ConfigError(path, f"expected {expected}, found {found(value)}" + (f"; {hint}" if hint else ""))


def type_text(tp: Any) -> str:
    """A short human description of an annotation, as used in error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "JSON-compatible value"
    if tp is _NONE:
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin is tuple:
        return f"list of {type_text(args[0])}"
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if args else "mapping"
    return {int: "integer", float: "number", str: "string", bool: "boolean (true/false)"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields (cached; computed on first use, not at import)."""
    resolved = typing.get_type_hints(cls)
    return {f.name: resolved[f.name] for f in dataclasses.fields(cls)}


def coerce(value: object, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in canonical form.

    Canonical form: integral floats become ``int`` in int fields, ints become ``float`` in float fields,
    sequences become tuples, mappings become read-only ``MappingProxyType`` copies (recursively).
    Raises ConfigError naming ``path`` (or a deeper path such as ``path[2]``) on a mismatch.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return freeze_json(value, path)
    if origin in (Union, types.UnionType):
        if value is None:
            if _NONE in args:
                return None
            raise fail(path, type_text(tp), value)
        alternatives = [a for a in args if a is not _NONE]
        for alt in alternatives:
            try:
                return coerce(value, alt, path)
            except ConfigError as err:
                if err.path != path:  # a deeper element is wrong: that message is the more precise one
                    raise
        raise fail(path, type_text(tp), value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail(path, type_text(tp), value)
    if tp is int:
        if isinstance(value, bool):
            raise fail(path, "integer", value, "booleans are not integers")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise fail(path, "integer", value)
    if tp is float:
        if isinstance(value, bool):
            raise fail(path, "number", value, "booleans are not numbers")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise fail(path, "finite number", value)
            return float(value)
        raise fail(path, "number", value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail(path, "string", value)
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        raise fail(path, type_text(tp), value)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise fail(path, type_text(tp), value)
        key_t, val_t = args
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if key_t is str and not isinstance(k, str):
                raise fail(path, "string keys", k)
            out[k] = coerce(v, val_t, f"{path}.{k}")
        return types.MappingProxyType(out)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise fail(path, tp.__name__, value)
    raise TypeError(f"{path}: unsupported annotation {tp!r}")  # a bug in the schema, not in the input


def freeze_json(value: object, path: str) -> Any:
    """A read-only deep copy of a JSON-compatible value: mappings -> MappingProxyType, lists -> tuples.

    Raises ConfigError naming the path of the first value that is not a string, integer, finite number,
    boolean, null, list or string-keyed mapping.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise fail(path, "finite number", value)
    if isinstance(value, (list, tuple)):
        return tuple(freeze_json(v, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise fail(path, "string keys", k)
            out[k] = freeze_json(v, f"{path}.{k}")
        return types.MappingProxyType(out)
    raise fail(path, "JSON-compatible value (string, number, boolean, null, list or mapping)", value)


def thaw(value: object) -> Any:
    """The plain JSON/YAML form of a frozen value: tuples -> lists, mappings -> dicts (recursively)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


def hash_key(value: object) -> Any:
    """A hashable stand-in for a frozen value: mappings become sorted item tuples (recursively)."""
    if isinstance(value, Mapping):
        return ("<mapping>",) + tuple(sorted((k, hash_key(v)) for k, v in value.items()))
    if isinstance(value, tuple):
        return tuple(hash_key(v) for v in value)
    return value


def at_least(path: str, value: float, low: float) -> None:
    """Raise ConfigError unless ``value >= low``."""
    if value < low:
        raise fail(path, f"a value >= {low}", value)


def greater(path: str, value: float, low: float) -> None:
    """Raise ConfigError unless ``value > low``."""
    if not value > low:
        raise fail(path, f"a value > {low}", value)


def one_of(path: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed`` (listed in the message)."""
    if value not in allowed:
        raise fail(path, "one of " + ", ".join(allowed), value)


def non_empty(path: str, value: str | None) -> None:
    """Raise ConfigError when ``value`` is a blank string (None passes)."""
    if value is not None and not value.strip():
        raise fail(path, "a non-empty string", value)

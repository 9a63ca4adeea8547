"""Loading a :class:`RunConfig` from YAML or TOML, applying ``section.field=value`` overrides, and dumping it.

File and override values are checked against the dataclass annotations: unknown keys are reported with the
valid keys and a "did you mean" suggestion; wrong types, out-of-range values and inconsistent sections raise
:class:`ConfigError` whose message starts with the dotted path of the field. Nothing here reads globals or the
environment.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import yaml

from . import _validate as v
from .errors import ConfigError
from .run import RunConfig

__all__ = [
    "ConfigError",
    "config_from_dict",
    "config_to_dict",
    "dump_yaml",
    "load_config",
    "parse_override",
    "with_overrides",
]

YAML_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")
TOML_SUFFIXES: tuple[str, ...] = (".toml",)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The run configuration in ``path`` (defaults for missing keys) with ``overrides`` applied in order.

    ``path`` ending ``.yaml``/``.yml`` is read with ``yaml.safe_load``, ``.toml`` with ``tomllib``; None means
    all defaults. Overrides look like ``"train.steps=50"`` (see :func:`parse_override`) and are applied to the
    file's contents before validation, so an override can repair an invalid file value.

    Raises ConfigError naming the file for an unsupported extension, a missing or unreadable file, or a
    syntax error; naming the dotted field path for unknown keys, wrong types and invalid values.
    """
    tree: dict[str, Any] = {} if path is None else _read(Path(path))
    for text in _as_override_list(overrides):
        keys, value = parse_override(text)
        _set_in(tree, keys, value)
    return config_from_dict(tree)


def with_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A copy of ``cfg`` with ``overrides`` (``"section.field=value"`` strings) applied in order.

    Paths into mapping fields add or replace single keys (``"model.config.d_model=64"``,
    ``"codecs.edges.s0->s1.forward=int8"``). Raises ConfigError like :func:`load_config`; ``cfg`` is unchanged.
    """
    overrides = _as_override_list(overrides)
    if not overrides:
        return cfg
    tree = config_to_dict(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        _set_in(tree, keys, value)
    return config_from_dict(tree)


def reseeded(cfg: RunConfig, k: int) -> RunConfig:
    """Replicate ``k`` of ``cfg``: ``data.seed + k`` and ``model.seed + k`` (other batches, other initial weights
    and, since the stages seed their randomized codecs from ``data.seed``, other codec draws); ``k = 0`` is
    ``cfg`` itself. Benchmarks over several seeds and the planner's multi-seed trials use it, so both mean the
    same runs by "seed k". ValueError for ``k < 0``."""
    if k < 0:
        raise ValueError(f"replicate index must be >= 0, got {k}")
    return with_overrides(cfg, [f"data.seed={cfg.data.seed + k}", f"model.seed={cfg.model.seed + k}"] if k else [])


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into (``["a", "b", "c"]``, parsed value).

    The value is parsed with ``yaml.safe_load`` (so ``3``, ``0.5``, ``true``, ``null``, ``[2, 4]`` and
    ``{d_model: 64}`` work); text YAML cannot parse stays the raw string, and so does any non-null value for a
    string field (``name=2024`` gives ``"2024"``). The path is checked against the schema: raises ConfigError
    for a missing ``=``, an empty path component, an unknown key (with a suggestion) or a path that continues
    past a scalar field.
    """
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ConfigError(
            key or text, f"override must look like section.field=value (e.g. train.steps=50), got {text!r}"
        )
    keys = key.split(".")
    if not all(keys):
        raise ConfigError(key, f"override path has an empty component, got {text!r}")
    target = _target_type(keys)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return keys, raw
    if value is not None and not isinstance(value, str) and target is not None and _accepts_str(target):
        return keys, raw
    return keys, value


def config_from_dict(data: Mapping[str, Any] | None) -> RunConfig:
    """Build and validate a RunConfig from plain data (as read from YAML/TOML/JSON); missing keys take defaults.

    A section given as null counts as empty. Raises ConfigError naming the dotted path for unknown keys, wrong
    types and invalid values.
    """
    config = _build(RunConfig, data, "")
    assert isinstance(config, RunConfig)
    return config


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The plain JSON/YAML-compatible form of a config dataclass (RunConfig or one section).

    Tuples become lists, mappings become dicts; ``config_from_dict(config_to_dict(cfg)) == cfg`` exactly.
    Raises TypeError when ``cfg`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = config_to_dict(value) if dataclasses.is_dataclass(value) else v.thaw(value)
    return out


def dump_yaml(cfg: RunConfig) -> str:
    """``cfg`` as a YAML document (fields in declaration order) that :func:`load_config` reads back equal."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------------- helpers


def _as_override_list(overrides: Sequence[str]) -> list[str]:
    if isinstance(overrides, str):  # a lone string would otherwise be applied one character at a time
        return [overrides]
    return list(overrides)


def _read(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in YAML_SUFFIXES + TOML_SUFFIXES:
        raise ConfigError(
            str(path), f"unsupported config file extension {path.suffix!r}; expected .yaml, .yml or .toml"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"cannot read config file: {err}") from None
    try:
        data = yaml.safe_load(text) if suffix in YAML_SUFFIXES else tomllib.loads(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        kind = "YAML" if suffix in YAML_SUFFIXES else "TOML"
        raise ConfigError(str(path), f"invalid {kind}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), f"top level must be a mapping of sections, found {v.found(data)}")
    return copy.deepcopy(dict(data))


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _unknown(path: str, key: object, valid: Sequence[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    hint = f"; did you mean {_join(prefix, close[0])!r}?" if close else ""
    return ConfigError(path, f"unknown key; valid keys here: {', '.join(valid)}{hint}")


def _build(cls: type, data: object, prefix: str) -> object:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise v.fail(prefix, f"a mapping of {cls.__name__} fields", data)
    hints = v.hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = _join(prefix, key)
        if key not in hints:
            raise _unknown(path, key, list(hints), prefix)
        tp = hints[key]
        kwargs[key] = _build(tp, value, path) if _is_section(tp) else value
    return cls(**kwargs)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _is_mapping_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin is not None and isinstance(origin, type) and issubclass(origin, Mapping)


def _target_type(keys: list[str]) -> Any:
    """The annotation an override path points at (None inside free-form ``Any`` data); checks the path."""
    tp: Any = RunConfig
    for i, key in enumerate(keys):
        prefix, path = ".".join(keys[:i]), ".".join(keys[: i + 1])
        if _is_section(tp):
            hints = v.hints(tp)
            if key not in hints:
                raise _unknown(path, key, list(hints), prefix)
            tp = hints[key]
        elif tp is None or tp is Any:
            return None
        elif _is_mapping_type(_strip_optional(tp)):
            tp = typing.get_args(_strip_optional(tp))[1]
        else:
            raise ConfigError(
                prefix,
                f"is a scalar field ({v.type_text(tp)}), not a section or mapping; cannot set {'.'.join(keys)!r}",
            )
    return tp


def _accepts_str(tp: Any) -> bool:
    if tp is str:
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return str in typing.get_args(tp)
    return False


def _set_in(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = {}
        elif isinstance(child, Mapping):
            child = dict(child)
        else:
            raise ConfigError(
                ".".join(keys[: i + 1]), f"holds {v.found(child)}, not a mapping; cannot set {'.'.join(keys)!r}"
            )
        node[key] = child
        node = child
    node[keys[-1]] = value

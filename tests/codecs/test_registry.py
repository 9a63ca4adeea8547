"""The registry is complete and every spec string parses, prints back canonically, or fails clearly."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import layeredge_dist.codecs as codecs_pkg
from layeredge_dist.codecs import registry
from layeredge_dist.codecs.base import Codec, CodecError
from layeredge_dist.codecs.registry import parse_any, parse_codec
from layeredge_dist.codecs.spec import Chain, Wrapped, parse_spec


def _all_codec_subclasses() -> set[type[Codec]]:
    """Every concrete Codec subclass defined in a module of layeredge_dist.codecs (all modules imported)."""
    for info in pkgutil.walk_packages(codecs_pkg.__path__, prefix=codecs_pkg.__name__ + "."):
        importlib.import_module(info.name)
    found: set[type[Codec]] = set()
    todo = list(Codec.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith(codecs_pkg.__name__ + ".") and not inspect.isabstract(cls):
            found.add(cls)
    return found


def _names_in(spec: str) -> set[str]:
    node = parse_spec(spec)
    while isinstance(node, Wrapped):
        node = node.inner
    assert isinstance(node, Chain)
    return {t.name for t in node.terms}


def test_every_codec_class_is_registered() -> None:
    missing = _all_codec_subclasses() - set(registry.CODEC_CLASSES)
    assert not missing, f"Codec subclasses missing from registry.CODEC_CLASSES: {sorted(c.__name__ for c in missing)}"


def test_every_name_has_an_example() -> None:
    covered: set[str] = set()
    for spec in registry.EXAMPLES:
        covered |= _names_in(spec)
    for cls in registry.CODEC_CLASSES:
        for name in cls.NAMES:  # type: ignore[attr-defined]
            assert name in covered, f"{cls.__name__} name {name!r} has no example in registry.EXAMPLES"
    for wrapper in registry.WRAPPER_CLASSES:
        assert any(s.startswith(wrapper + "(") for s in registry.EXAMPLES), f"no example of {wrapper}(...)"


def test_names_are_unique_across_classes() -> None:
    seen: dict[str, str] = {}
    for cls in registry.CODEC_CLASSES:
        for name in cls.NAMES:  # type: ignore[attr-defined]
            assert name not in seen, f"{name!r} claimed by {seen[name]} and {cls.__name__}"
            seen[name] = cls.__name__


@pytest.mark.parametrize("spec", registry.EXAMPLES)
def test_examples_round_trip(spec: str) -> None:
    codec = parse_any(spec)
    assert str(codec.spec) == spec
    assert parse_any(codec.spec) == codec
    assert str(parse_spec(spec)) == spec


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("int4/b128", "int4"), ("topk:0.050", "topk:0.05"), ("topk:5e-2", "topk:0.05"), ("atopk:.01", "atopk:0.01"),
     ("randk:1", "randk:1.0"), ("topk:0.05+int8/b128", "topk:0.05+int8"), ("ef(int4/b128)", "ef(int4)"),
     ("delta(topk:0.10+int8)", "delta(topk:0.1+int8)"), ("int4/sr/rht", "int4/rht/sr"),
     ("int2/sr/b64", "int2/b64/sr")],
)
def test_non_canonical_specs_normalize(given: str, canonical: str) -> None:
    assert parse_any(given).spec == canonical
    assert parse_any(canonical).spec == canonical


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("", "non-empty"),
        ("foo", "unknown codec 'foo'"),
        ("int9", "unknown codec 'int9'"),
        ("INT8", "cannot parse 'INT8'"),
        ("int4/zz", "zz"),
        ("int4/b1", "block size"),
        ("int4/b64/b32", "twice"),
        ("int4:3", "argument"),
        ("fp16/x", "fp16"),
        ("fp16:1", "fp16"),
        ("topk", "ratio"),
        ("topk:0", "ratio"),
        ("topk:1.5", "ratio"),
        ("topk:abc", "cannot parse 'topk:abc'"),
        ("topk:0.1/b64", "no options"),
        ("topk:0.1+topk:0.2", "sparsified again"),
        ("int8+int4", "sparsifier+valuecodec"),
        ("topk:0.1+int8+fp16", "sparsifier+valuecodec"),
        ("topk:0.1+", "cannot parse ''"),
        ("ef(int4", "missing ')'"),
        ("ef(ef(int4))", "do not nest"),
        ("ef()", "non-empty"),
        ("delta(foo)", "unknown codec 'foo'"),
        ("int4 ", "cannot parse"),
        ("raw:1", "raw takes no argument"),
        ("raw/b64", "raw takes no argument"),
        ("topk:0.1+raw", "standalone codec"),
        ("raw+int8", "sparsifier+valuecodec"),
        ("ef(raw)", "wrap only float codecs"),
        ("delta(raw)", "wrap only float codecs"),
    ],
)
def test_bad_specs_raise_codec_error_naming_the_problem(spec: str, needle: str) -> None:
    with pytest.raises(CodecError) as info:
        parse_any(spec)
    assert needle in str(info.value), f"{spec!r}: message {str(info.value)!r} does not mention {needle!r}"


def test_parse_codec_refuses_wrappers() -> None:
    with pytest.raises(CodecError, match="stateful wrapper"):
        parse_codec("ef(int2)")
    assert isinstance(parse_codec("topk:0.05+int8"), Codec)


def test_known_names_lists_everything() -> None:
    names = registry.known_names()
    for cls in registry.CODEC_CLASSES:
        for name in cls.NAMES:  # type: ignore[attr-defined]
            assert name in names
    assert "ef(...)" in names and "delta(...)" in names


def test_codecs_are_hashable_values() -> None:
    a, b = parse_any("topk:0.05+int8"), parse_any("topk:0.050+int8/b128")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert parse_any("ef(int4)") != parse_any("delta(int4)")

"""The import direction of design.md, checked on the source: lower layers never import upper ones."""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "layeredge_dist"

#: Layer rank, low to high; a module may import only packages of equal or lower rank (and never ``cli``).
RANK = {
    "types": 0, "config": 0, "files": 0,
    "metrics": 1,
    "codecs": 2, "model": 2,
    "prune": 3, "measure": 3, "schedule": 3,  # schedule is pure data + simulator: the planner builds on it
    "plan": 4,
    "wire": 5,
    "transport": 6,
    "stage": 8,
    "pipeline": 9,
    "bench": 10, "testbed": 10,
    "cli": 11,
}
#: Third-party packages a layer must not import, whatever its rank (design.md's rules).
FORBIDDEN = {
    "codecs": {"grpc", "ray", "prometheus_client"},
    "wire": {"ray"},
    "transport": {"ray"},
    "stage": {"ray"},
    "plan": {"grpc", "ray"},
    "schedule": {"grpc", "ray", "torch"},
    "model": {"grpc", "ray"},
}
#: Only the wire package may import the generated protobuf code.
GENERATED = "layeredge_dist.wire._proto"


def _layer(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0].removesuffix(".py") if rel else ""


def _imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    pkg_parts = ("layeredge_dist",) + path.relative_to(PKG).parent.parts
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(base + ((node.module,) if node.module else ()))
                names.append(mod)
                names += [f"{mod}.{a.name}" for a in node.names]
            elif node.module:
                names.append(node.module)
    return names


SOURCES = sorted(p for p in PKG.rglob("*.py") if "_proto" not in p.parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down(path: pathlib.Path) -> None:
    layer = _layer(path)
    if layer in ("__init__", "__main__"):
        return
    assert layer in RANK, f"{path}: package {layer!r} has no rank in tests/test_layers.py; add it"
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN.get(layer, set()), f"{path}: layer {layer!r} must not import {top!r}"
        if name.startswith(GENERATED):
            assert layer == "wire", f"{path}: only layeredge_dist.wire may import generated protobuf code"
        if top != "layeredge_dist" or name == "layeredge_dist":
            continue
        target = name.split(".")[1]
        if target in RANK:
            assert RANK[target] <= RANK[layer], (
                f"{path}: layer {layer!r} (rank {RANK[layer]}) imports {name!r} of higher layer {target!r}"
            )


def test_rank_table_is_complete() -> None:
    layers = {_layer(p) for p in SOURCES} - {"__init__", "__main__"}
    assert layers <= set(RANK), f"packages without a layer rank: {sorted(layers - set(RANK))}"

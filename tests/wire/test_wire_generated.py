"""The committed generated code matches proto/layeredge.proto, and only the wire package imports it."""

from __future__ import annotations

import ast
import pathlib

import pytest

from layeredge_dist.wire import regen

PKG = pathlib.Path(__file__).resolve().parents[2] / "layeredge_dist"


def test_generated_code_is_current() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to regenerate protobuf code")
    stale = regen.stale_files()
    assert not stale, f"stale generated code {stale}; run: python -m layeredge_dist.wire.regen"


def test_regen_check_cli_passes() -> None:
    pytest.importorskip("grpc_tools")
    assert regen.main(["--check"]) == 0


def _imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_only_wire_imports_generated_code(path: pathlib.Path) -> None:
    rel = path.relative_to(PKG).parts
    if rel[0] == "wire":
        return
    for name in _imported_modules(path):
        parts = name.split(".")
        ours = "_proto" in parts or "layeredge_pb2" in parts
        assert not ours, f"{path}: imports LayerEdge's generated protobuf code ({name}); only layeredge_dist.wire may"

"""model imports neither ray, grpc, transport nor wire, and transformers only lazily (inside functions)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

MODEL = pathlib.Path(__file__).resolve().parents[2] / "layeredge_dist" / "model"
FORBIDDEN = {"ray", "grpc", "layeredge_dist.transport", "layeredge_dist.wire", "layeredge_dist.stage",
             "layeredge_dist.pipeline", "layeredge_dist.schedule"}
LAZY = {"transformers", "safetensors"}


def _top_level_imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in tree.body:  # module level only: function bodies may import lazily
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def _all_imports(path: pathlib.Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_no_forbidden_or_eager_heavy_imports() -> None:
    for path in sorted(MODEL.glob("*.py")):
        for name in _all_imports(path):
            assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), f"{path.name} imports {name}"
        for name in _top_level_imports(path):
            assert name.split(".")[0] not in LAZY, f"{path.name} imports {name} at module level"


def test_importing_model_loads_no_transformers_ray_or_grpc() -> None:
    code = ("import sys, layeredge_dist.model, layeredge_dist.model.demo, layeredge_dist.model.hf_bert, "
            "layeredge_dist.model.hf_gpt2, layeredge_dist.model.corpus, layeredge_dist.model.verify; "
            "print(sorted(m for m in ('transformers', 'ray', 'grpc', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

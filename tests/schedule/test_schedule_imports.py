"""schedule is pure: it imports only the standard library, itself and layeredge_dist.types."""

from __future__ import annotations

import ast
import pathlib
import sys

SCHEDULE = pathlib.Path(__file__).resolve().parents[2] / "layeredge_dist" / "schedule"


def test_only_stdlib_and_types() -> None:
    for path in sorted(SCHEDULE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # relative: inside the package
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                ok = top in sys.stdlib_module_names or name in ("layeredge_dist.types",)
                assert ok, f"{path.name} imports {name}"

"""layeredge_dist.files: whole-or-nothing writes, on the real file system."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from layeredge_dist.files import atomic_write, atomic_write_json


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    atomic_write(target, lambda f: f.write(b"old contents"))

    def broken(f: object) -> None:
        f.write(b"half of the new")  # type: ignore[attr-defined]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["data.bin"]
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["data.bin"]


def test_atomic_write_creates_parents_and_is_world_readable(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "state.json"
    atomic_write_json(target, {"x": 1, "path": tmp_path}, indent=1)
    assert json.loads(target.read_text()) == {"x": 1, "path": str(tmp_path)}  # str() for what JSON cannot hold
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    atomic_write(target, lambda f: f.write(b"{}"), mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_atomic_write_json_that_cannot_be_encoded_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    atomic_write_json(target, [1, 2])
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="[Cc]ircular"):
        atomic_write_json(target, loop)
    assert json.loads(target.read_text()) == [1, 2] and os.listdir(tmp_path) == ["doc.json"]
    # (what bench --out writes through it) NaN as JSON allows it, other objects as their str
    atomic_write_json(target, {"v": float("nan"), "obj": object()})
    doc = json.loads(target.read_text())
    assert doc["obj"].startswith("<object") and doc["v"] != doc["v"]
    with pytest.raises(ValueError):
        atomic_write_json(target, {"loop": loop})
    assert json.loads(target.read_text())["obj"] == doc["obj"] and len(list(tmp_path.iterdir())) == 1


def test_files_imports_no_torch() -> None:
    """The testbed's state files and the metrics layer write through this module without paying for torch."""
    code = "import sys, layeredge_dist.files, layeredge_dist.testbed.netns; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

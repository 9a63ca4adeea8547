"""Atomic per-stage checkpoints and the manifest that says which step is complete.

Layout under a checkpoint directory::

    step00000050/stage0.pt   stage1.pt ...   (each written whole or not at all: layeredge_dist.files)
    latest.json                              ({"step": 50, "num_stages": 3, ...}, written by the driver only
                                              after every stage of that step has saved)

A step is resumable only when ``latest.json`` names it, so a crash in the middle of saving never leaves a
half-written checkpoint looking complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from layeredge_dist.files import atomic_write

MANIFEST = "latest.json"


def step_dir(directory: str | Path, step: int) -> Path:
    """Directory of the checkpoint taken after optimizer step ``step``."""
    return Path(directory) / f"step{step:08d}"


def save_stage(directory: str | Path, step: int, stage: int, state: Mapping[str, Any]) -> Path:
    """Atomically save stage ``stage``'s ``state`` after step ``step``; returns the file."""
    path = step_dir(directory, step) / f"stage{stage}.pt"
    atomic_write(path, lambda f: torch.save(dict(state, step=step), f))
    return path


def load_stage(directory: str | Path, step: int, stage: int) -> dict[str, Any]:
    """The state stage ``stage`` saved after step ``step``; FileNotFoundError when absent, ValueError when the
    file belongs to another step."""
    path = step_dir(directory, step) / f"stage{stage}.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint for stage {stage} at step {step}: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file (codec states are objects)
    if state.get("step") != step:
        raise ValueError(f"{path} holds step {state.get('step')}, expected {step}")
    return state


def write_manifest(directory: str | Path, step: int, info: Mapping[str, Any], keep: int = 2) -> None:
    """Mark step ``step`` complete (every stage saved) and delete all but the newest ``keep`` step directories."""
    body = json.dumps(dict(info, step=step), sort_keys=True, indent=1).encode()
    atomic_write(Path(directory) / MANIFEST, lambda f: f.write(body))
    steps = sorted(p for p in Path(directory).glob("step*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old != step_dir(directory, step):
            shutil.rmtree(old, ignore_errors=True)


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The newest complete checkpoint's manifest, or None when there is none. ValueError for a corrupt one."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt checkpoint manifest {path}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("step"), int):
        raise ValueError(f"checkpoint manifest {path} has no integer 'step': {data!r}")
    return data

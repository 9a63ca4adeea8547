"""Read one stage's weights straight from a ``.safetensors`` checkpoint, without loading the rest.

``safetensors`` (installed with transformers, extra ``hf``) reads tensors lazily, so a stage touches only the
bytes of the tensors it owns.
"""

from __future__ import annotations

import pathlib

import torch

from .family import family_for
from .keymap import partition_key
from .spec import PartitionSpec, check_cuts, stage_blocks


def checkpoint_file(path: str) -> pathlib.Path:
    """The ``.safetensors`` file at ``path``, or ``path/model.safetensors``; FileNotFoundError otherwise."""
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"no safetensors checkpoint at {path!r} (looked for {p})")
    return p


def read_partition_state(spec: PartitionSpec) -> dict[str, torch.Tensor]:
    """Stage ``spec.stage``'s tensors from ``spec.model.weights``, in partition keys.

    Raises ValueError when the spec has no weights path, FileNotFoundError when the file is missing, ImportError
    when safetensors is not installed, KeyError for a checkpoint key that belongs to no part of the model.
    """
    if spec.model.weights is None:
        raise ValueError("ModelSpec.weights is not set")
    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading weights needs the 'safetensors' package (pip install 'layeredge-dist[hf]')") from exc
    family = family_for(spec.model.family, spec.model.config)
    n = family.num_blocks
    check_cuts(n, spec.cuts, family.has_pre, family.has_post)
    blocks = stage_blocks(n, spec.cuts)
    mine = blocks[spec.stage]
    keymap = family.key_map()
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(checkpoint_file(spec.model.weights)), framework="pt", device="cpu") as f:
        keys = list(f.keys())
        present = set()
        for key in keys:
            if keymap.is_ignored(key):
                continue
            route = keymap.route(key)
            present.add(keymap.native_key(route))
            if _owns(route.section, route.block, spec, mine):
                out[partition_key(route, mine.start)] = f.get_tensor(key)
        for dst, src in keymap.tied:
            dst_route = keymap.route(dst)
            if dst not in present and _owns(dst_route.section, dst_route.block, spec, mine):
                src_key = next(k for k in keys if not keymap.is_ignored(k) and keymap.route(k) == keymap.route(src))
                out[partition_key(dst_route, mine.start)] = f.get_tensor(src_key)
    return out


def _owns(section: str, block: int | None, spec: PartitionSpec, mine: range) -> bool:
    if section == "pre":
        return spec.is_first
    if section == "post":
        return spec.is_last
    return block in mine

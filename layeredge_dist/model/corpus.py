"""The demo's text: the Python standard library's own ``.py`` sources, present on every machine with Python.

Selection is deterministic: files are ordered by the SHA-256 of their path relative to the stdlib root, each
file goes to the validation split when its hash falls in the first ``val_fraction`` of the hash range (a split
by file, never by bytes), and files are taken in that order until each split's byte budget is filled.
Test suites, ``site-packages`` and caches are skipped. The :attr:`TextCorpus.fingerprint` lets stages on
different machines check they hold the same bytes (they will not across Python versions).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sysconfig
from dataclasses import dataclass

import torch

#: Directory names never descended into.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


@dataclass(frozen=True)
class CorpusConfig:
    """Which stdlib files make up the corpus.

    Attributes:
        max_bytes: total byte budget of both splits (the default, 4 MB, is about a third of CPython 3.11's
            stdlib without tests); the validation split gets ``val_fraction`` of it.
        val_fraction: share of files (by path hash) and of the budget held out, in (0, 1).
        min_file_bytes / max_file_bytes: files outside this size range are skipped (tiny ``__init__.py`` files,
            generated data tables).
        root: directory to read; None means this interpreter's stdlib.
    """

    max_bytes: int = 4_000_000
    val_fraction: float = 0.1
    min_file_bytes: int = 1_000
    max_file_bytes: int = 200_000
    root: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.max_bytes <= 0 or self.min_file_bytes > self.max_file_bytes:
            raise ValueError(f"bad size bounds in {self}")


@dataclass(frozen=True, eq=False)
class TextCorpus:
    """Train and validation bytes (uint8 tensors) and the files they came from, in order."""

    train: torch.Tensor  # (N_train,) uint8
    val: torch.Tensor  # (N_val,) uint8
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    root: str
    fingerprint: str  # SHA-256 hex over file names and contents of both splits


def stdlib_root() -> pathlib.Path:
    """This interpreter's standard-library directory."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _hash(rel: str) -> bytes:
    return hashlib.sha256(rel.encode()).digest()


def candidate_files(cfg: CorpusConfig) -> list[str]:
    """Relative paths of eligible ``.py`` files, in the deterministic (path-hash) order."""
    root = pathlib.Path(cfg.root) if cfg.root else stdlib_root()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = pathlib.Path(dirpath) / name
            size = path.stat().st_size
            if cfg.min_file_bytes <= size <= cfg.max_file_bytes:
                found.append(path.relative_to(root).as_posix())
    return sorted(found, key=_hash)


def is_validation_file(rel: str, val_fraction: float) -> bool:
    """True when the file belongs to the held-out split (its path hash lies in the first fraction)."""
    return int.from_bytes(_hash(rel)[:8], "big") / 2**64 < val_fraction


def load_corpus(cfg: CorpusConfig | None = None) -> TextCorpus:
    """Read the corpus (a few MB, well under a second). Raises FileNotFoundError when the root is missing and
    ValueError when either split ends up empty (budget or size bounds too tight)."""
    cfg = cfg or CorpusConfig()
    root = pathlib.Path(cfg.root) if cfg.root else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {root} is not a directory")
    budgets = {"train": cfg.max_bytes * (1.0 - cfg.val_fraction), "val": cfg.max_bytes * cfg.val_fraction}
    chunks: dict[str, list[bytes]] = {"train": [], "val": []}
    files: dict[str, list[str]] = {"train": [], "val": []}
    used = {"train": 0, "val": 0}
    digest = hashlib.sha256()
    for rel in candidate_files(cfg):
        split = "val" if is_validation_file(rel, cfg.val_fraction) else "train"
        size = (root / rel).stat().st_size
        if used[split] + size > budgets[split]:
            continue
        data = (root / rel).read_bytes()
        chunks[split].append(data)
        files[split].append(rel)
        used[split] += len(data)
        digest.update(f"{split}:{rel}:{len(data)}\n".encode())
        digest.update(data)
    for split in ("train", "val"):
        if not files[split]:
            raise ValueError(f"corpus {split} split is empty under {cfg}")
    as_tensor = {s: torch.frombuffer(bytearray(b"".join(chunks[s])), dtype=torch.uint8) for s in chunks}
    return TextCorpus(as_tensor["train"], as_tensor["val"], tuple(files["train"]), tuple(files["val"]),
                      str(root), digest.hexdigest())

"""Files written whole or not at all: the one temp-file-fsync-rename the checkpoints, the Prometheus file-SD
file, benchmark ``--out`` documents and the testbed's state files share.

Torch-free and dependency-free (rank 0 in ``tests/test_layers.py``), so ``layeredge testbed up|down|status`` and
the metrics layer can use it without importing torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], mode: int = 0o644) -> None:
    """Write ``path`` via ``write(binary file object)``: into a temporary file in the same directory (named
    ``.<name>.<random>.tmp``, so a ``*.json`` or ``*.pt`` glob never matches it), fsynced, given ``mode`` (the
    default is world-readable: Prometheus and ``testbed status`` may run as another user), renamed over ``path``,
    then the directory is fsynced. Readers see the old file or the new one, never a partial one.

    Creates missing parent directories. Whatever ``write`` or the file system raises propagates; the old file is
    then untouched and no temporary file is left behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | os.PathLike[str], doc: Any, indent: int | None = None,
                      sort_keys: bool = False) -> None:
    """:func:`atomic_write` of ``doc`` as JSON (UTF-8, a trailing newline; values JSON cannot hold are written as
    their ``str``). The document is encoded before the file is touched, so one that cannot be encoded (a
    circular reference) raises ValueError and leaves the old file as it was."""
    data = (json.dumps(doc, indent=indent, sort_keys=sort_keys, default=str) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))

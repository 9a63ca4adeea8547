"""What every ``layeredge bench`` prints: a table with its progress on stderr, or with ``--json`` one JSON document
on stdout and no progress; with ``--out FILE`` the JSON document is also written to FILE.

``layeredge_dist.cli.main`` adds the two options to every benchmark and checks ``--out`` before the benchmark runs
(:func:`check`), so a long run cannot end with nowhere to write; the benchmarks print through :func:`progress` and
:func:`emit`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from layeredge_dist.files import atomic_write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--json`` and ``--out FILE``."""
    p.add_argument("--json", action="store_true",
                   help="print one JSON document on stdout instead of the table, and no progress")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="also write the JSON document to FILE (whole or not at all; its directory is checked before "
                   "the benchmark starts), with the table and the progress as usual")


def check(args: argparse.Namespace) -> str | None:
    """Why ``args.out`` cannot be written (its directory is missing or not writable), else None."""
    path = getattr(args, "out", None)
    if path and not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
        return f"--out {path}: its directory does not exist or is not writable"
    return None


def progress(args: argparse.Namespace) -> Callable[[str], None]:
    """The progress printer: a line on stderr, or nothing with ``--json``."""
    if getattr(args, "json", False):
        return lambda text: None
    return lambda text: print(text, file=sys.stderr, flush=True)


def emit(doc: Any, args: argparse.Namespace, indent: int | None = None) -> bool:
    """Write ``doc`` to ``--out`` (if given; whole or not at all, :func:`layeredge_dist.files.atomic_write_json`)
    and, with ``--json``, print it on stdout; True when it was printed, so the caller prints no table."""
    path = getattr(args, "out", None)
    if path:
        atomic_write_json(path, doc)
        print(f"json: {path}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=indent, default=str))
        return True
    return False

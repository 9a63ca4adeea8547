"""Regenerate the protobuf code in ``layeredge_dist/wire/_proto`` from ``proto/layeredge.proto``.

Usage::

    python -m layeredge_dist.wire.regen            # rewrite the committed generated files
    python -m layeredge_dist.wire.regen --check    # exit 1 if they are stale
    python -m layeredge_dist.wire.regen --out DIR  # write into DIR instead

Needs ``grpcio-tools`` (a development dependency). Imports between generated modules are rewritten so that they
import as ``layeredge_dist.wire._proto.<name>_pb2``. Only message code is generated (no ``_pb2_grpc``): the
transport registers its handlers with custom raw-bytes (de)serializers.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

#: Repository root (this file is layeredge_dist/wire/regen.py).
REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "_proto"
PACKAGE = "layeredge_dist.wire._proto"
PROTO_FILES = ("layeredge.proto",)

_IMPORT_RE = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generated_names() -> list[str]:
    """File names generate() writes, e.g. ``layeredge_pb2.py`` and ``layeredge_pb2.pyi``."""
    names = []
    for proto in PROTO_FILES:
        stem = Path(proto).stem
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
    return names


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc (from grpcio-tools) on every proto file and write the Python modules into ``out_dir``.

    Returns the written paths. Raises RuntimeError with protoc's exit code when protoc fails, ImportError when
    grpcio-tools is not installed.
    """
    from grpc_tools import protoc  # development dependency, imported only here

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={tmp}", f"--pyi_out={tmp}"]
        argv += [str(proto_dir / p) for p in PROTO_FILES]
        code = protoc.main(argv)
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(argv)}")
        written = []
        for name in generated_names():
            text = (Path(tmp) / name).read_text()
            text = _IMPORT_RE.sub(rf"from {PACKAGE} import \1 as \2", text)
            dest = out_dir / name
            dest.write_text(text)
            written.append(dest)
    return written


def stale_files(committed_dir: Path = OUT_DIR) -> list[str]:
    """Names of generated files whose committed copy in ``committed_dir`` differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for name in generated_names():
            fresh = (Path(tmp) / name).read_text()
            old = committed_dir / name
            if not old.exists() or old.read_text() != fresh:
                stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns 0 on success, 1 when --check finds stale files."""
    parser = argparse.ArgumentParser(prog="python -m layeredge_dist.wire.regen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the committed code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        if stale:
            print(f"stale generated code: {', '.join(stale)}; run python -m layeredge_dist.wire.regen",
                  file=sys.stderr)
            return 1
        print("generated code is current")
        return 0
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

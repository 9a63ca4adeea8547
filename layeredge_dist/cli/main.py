"""``layeredge`` entry point: one sub-command per job; figures come as tables or, with --json, one JSON document."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Runner = Callable[[argparse.Namespace], int]


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from layeredge_dist.bench import codecs as bench_codecs

    bench = sub.add_parser(
        "bench",
        help="benchmarks: ours vs. baselines measured in the same run",
        description="Benchmarks. Each reports ratios against baselines measured in the same run, since the "
        "machines are shared and noisy. Add --json for one machine-readable JSON document.",
    )
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    p = kinds.add_parser(
        "codecs",
        help="encode/decode speed, bits per element and error of every codec",
        description=bench_codecs.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_codecs.add_arguments(p)
    p.set_defaults(func=bench_codecs.run)
    from layeredge_dist.bench import transport as bench_transport

    p = kinds.add_parser(
        "transport",
        help="our gRPC edge channel vs. raw TCP: throughput, p50/p99 latency, receiver memory",
        description=bench_transport.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_transport.add_arguments(p)
    p.set_defaults(func=bench_transport.run)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render --help in the docs)."""
    parser = argparse.ArgumentParser(
        prog="layeredge",
        description="LayerEdge: measure and shrink the tensors that cross the cuts of a model split across "
        "machines.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for usage errors, 1 for failures)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Runner = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

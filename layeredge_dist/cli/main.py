"""``layeredge`` entry point: one sub-command per job; figures come as tables or, with --json, one JSON document."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

Runner = Callable[[argparse.Namespace], int]


#: ``layeredge bench KIND``: (module under layeredge_dist.bench, one-line help). Each module provides
#: ``add_arguments(parser)`` and ``run(args) -> exit code``; its docstring is the command's --help text.
BENCHES: dict[str, str] = {
    "codecs": "encode/decode speed, bits per element and error of every codec",
    "transport": "our edge channel vs. raw TCP: throughput, p50/p99 latency, receiver memory",
    "importance": "channel importance at the cuts: val loss with half the channels removed by importance vs "
    "at random",
    "weights": "compressed weight transfer of the demo model: bytes, ratios and errors of fp32 / bf16 / int8 / "
    "int4 / int4 + 50 % sparsity / int8 + 2:4, and the transfer time over loopback",
    "pipeline": "stage runtime on a local Ray cluster: val-loss gap per codec, step time vs single process, "
    "per-hop overhead, memory per stage",
    "simulator": "predicted vs measured step time on a local Ray cluster (or, with --testbed, on shaped links): fp32, "
    "the planner's plan, more configs",
    "e2e": "end to end on a shaped 3-host testbed (root): step time, time to target loss, bytes and bits per "
    "element for fp32, bf16, the planner's plan and a strong fixed codec, per link rate",
    "control": "the online controller under a bandwidth drop (1 Gbit/s -> 100 Mbit/s mid-run) on a shaped 3-host "
    "testbed (root): switch step, step time before / after the drop with and without the controller, codecs",
    "soak": "train and serve the demo pipeline continuously for M minutes: RSS growth per stage and driver, "
    "error counts, p50/p99 step time and inference latency per time window",
}


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmarks: ours vs. baselines measured in the same run",
        description="Benchmarks. Each reports ratios against baselines measured in the same run, since the "
        "machines are shared and noisy. Add --json for one machine-readable JSON document, or --out FILE to write "
        "it beside the table.",
    )
    from layeredge_dist.bench import output

    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    for name, help_text in BENCHES.items():
        module = importlib.import_module(f"layeredge_dist.bench.{name}")
        p = kinds.add_parser(name, help=help_text, description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        output.add_arguments(p)
        p.set_defaults(func=_checked_bench(name, module.run))


def _checked_bench(name: str, run: Runner) -> Runner:
    """``run`` after the output checks every benchmark shares (:func:`layeredge_dist.bench.output.check`): exit
    code 2 with the reason before the benchmark starts."""
    from layeredge_dist.bench import output

    def checked(args: argparse.Namespace) -> int:
        problem = output.check(args)
        if problem is not None:
            print(f"layeredge bench {name}: {problem}", file=sys.stderr)
            return 2
        return run(args)
    return checked


def _add_cluster(sub: argparse._SubParsersAction) -> None:
    from layeredge_dist.cli import cluster_cmd

    p = sub.add_parser("cluster", help="start a local multi-node Ray cluster, or show a cluster's nodes",
                       description=cluster_cmd.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cluster_cmd.add_arguments(p)


def _add_testbed(sub: argparse._SubParsersAction) -> None:
    from layeredge_dist.cli import testbed_cmd

    p = sub.add_parser("testbed", help="emulated multi-host network with shaped links on this machine (root)",
                       description=testbed_cmd.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    testbed_cmd.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render --help in the docs)."""
    parser = argparse.ArgumentParser(
        prog="layeredge",
        description="LayerEdge: measure and shrink the tensors that cross the cuts of a model split across "
        "machines.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from layeredge_dist.cli import pipeline_cmd

    pipeline_cmd.add_arguments(sub)
    from layeredge_dist.cli import profile_cmd

    profile_cmd.add_parser(sub)
    from layeredge_dist.cli import prune_cmd

    prune_cmd.add_parser(sub)
    from layeredge_dist.cli import plan_cmd

    plan_cmd.add_parsers(sub)
    _add_bench(sub)
    _add_cluster(sub)
    _add_testbed(sub)
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

"""Local Ray clusters for the stage runtime.

  layeredge cluster up --nodes 3          start 3 Ray nodes on 127.0.0.1 (each its own raylet and resources) in
                                          the foreground; Ctrl-C or SIGTERM stops exactly the processes it started
  layeredge cluster status [--address A]  alive nodes and their resources

Every process that joins the cluster needs RAY_AUTH_MODE=token and the cluster's token (~/.ray/auth_token,
RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN); `up` creates ~/.ray/auth_token if it does not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from layeredge_dist.pipeline.cluster import ClusterError, LocalCluster, alive_nodes, token_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``up`` and ``status`` sub-commands to ``layeredge cluster``."""
    sub = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    up = sub.add_parser(
        "up", help="start a local multi-node Ray cluster on 127.0.0.1 and keep it running until Ctrl-C",
        description="Start N Ray nodes on 127.0.0.1 - one head and N-1 workers, each with its own raylet and "
        "resources - print the address and how to use it, then run in the foreground until Ctrl-C or SIGTERM, "
        "and stop exactly the processes it started (by PID; never `ray stop`).",
    )
    up.add_argument("--nodes", type=int, required=True, metavar="N",
                    help="number of Ray nodes (one per pipeline stage for STRICT_SPREAD placement)")
    up.add_argument("--cpus-per-node", type=float, default=1.0, metavar="C",
                    help="logical CPUs each node offers to Ray (default: 1; a stage actor asks for 1)")
    up.add_argument("--gpus-per-node", type=float, default=0.0, metavar="G",
                    help="logical GPUs each node offers to Ray (default: 0)")
    up.add_argument("--timeout", type=float, default=120.0, metavar="S",
                    help="seconds to wait for all nodes to be alive before giving up and cleaning up "
                    "(default: 120)")
    up.add_argument("--temp-dir", default=None, metavar="DIR",
                    help="Ray session and log directory, at most 48 characters (default: a fresh /tmp/le-ray-*, "
                    "removed on stop)")
    up.add_argument("--json", action="store_true",
                    help="once ready, print one line of JSON (address, nodes, pids, resources) instead of the text")
    up.set_defaults(func=run_up)

    status = sub.add_parser("status", help="show the alive nodes of a Ray cluster and their resources",
                            description="Ask a cluster's GCS for its alive nodes and resources (no driver is "
                            "started, so it also works from a machine that is not a cluster node).")
    status.add_argument("--address", default=None, metavar="HOST:PORT",
                        help="GCS address of the cluster (default: $RAY_ADDRESS, else the single Ray cluster "
                        "running on this machine)")
    status.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the GCS to answer (default: 10)")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(func=run_status)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action (the parser sets ``func`` per action)."""
    return int(args.func(args))


def _fmt_resources(res: dict[str, float]) -> str:
    gib = 1024.0**3
    parts = [f"CPU {res.get('CPU', 0):g}", f"GPU {res.get('GPU', 0):g}",
             f"memory {res.get('memory', 0) / gib:.1f} GiB",
             f"object store {res.get('object_store_memory', 0) / gib:.2f} GiB"]
    return ", ".join(parts)


def run_up(args: argparse.Namespace) -> int:
    """Start the cluster, print how to use it, wait for Ctrl-C/SIGTERM, stop what was started."""

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # interrupts the wait below, or a start still in progress (which cleans up)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, on_signal) for s in handled}
    cluster = LocalCluster(args.nodes, args.cpus_per_node, args.gpus_per_node, timeout_s=args.timeout,
                           temp_dir=args.temp_dir)
    code = 0
    try:
        t0 = time.monotonic()
        try:
            info = cluster.start()
        except ClusterError as e:
            print(f"layeredge cluster up: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("layeredge cluster up: interrupted before the cluster was ready; stopped what was started",
                  file=sys.stderr)
            return 130
        pids = cluster.pids()
        if args.json:
            print(json.dumps({"address": info.address, "num_nodes": info.num_nodes, "node_ips": list(info.node_ips),
                              "resources": dict(info.resources), "pids": pids, "pid": os.getpid(),
                              "start_s": round(time.monotonic() - t0, 3), "temp_dir": cluster.temp_dir}), flush=True)
        else:
            _print_up(info.address, info.num_nodes, dict(info.resources), pids, cluster.temp_dir,
                      time.monotonic() - t0)
        try:
            while True:
                time.sleep(1.0)
                if not cluster.running():
                    print("layeredge cluster up: the cluster's helper process exited unexpectedly; see "
                          f"{cluster.log_path}", file=sys.stderr)
                    code = 1
                    break
        except KeyboardInterrupt:
            pass
        return code
    finally:
        for s in handled:  # a second Ctrl-C must not interrupt the cleanup
            signal.signal(s, signal.SIG_IGN)
        n = len(cluster.pids())
        cluster.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
        if n:
            print(f"layeredge cluster up: stopped {n} process(es)", file=sys.stderr, flush=True)


def _print_up(address: str, nodes: int, resources: dict[str, float], pids: list[int], temp_dir: str | None,
              seconds: float) -> None:
    print(f"LayerEdge local Ray cluster: {nodes} node(s) on 127.0.0.1, ready in {seconds:.1f} s")
    print(f"address: {address}")
    print(f"resources: {_fmt_resources(resources)}")
    print(f"pids: {' '.join(map(str, pids))}")
    print(f"logs: {temp_dir}")
    print()
    print("Use it:")
    print(f"  layeredge run --address {address} ...")
    print(f"  layeredge cluster status --address {address}")
    print("  from layeredge_dist.pipeline import connect")
    print(f"  with connect(address=\"{address}\") as info: ...")
    print()
    print("Every process that joins needs the same token auth settings:")
    print("  RAY_AUTH_MODE=token (connect() sets it), and the token in "
          f"{token_path()} (or RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN)")
    print("  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before ray is imported, so 127.0.0.1 is not rewritten to the "
          "external IP (connect() sets it)")
    print()
    print("Press Ctrl-C (or send SIGTERM) to stop; exactly the processes above (and their children) are stopped.",
          flush=True)


def run_status(args: argparse.Namespace) -> int:
    """Print the alive nodes of a cluster and their resources."""
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address is None:
            from layeredge_dist.pipeline.cluster import _resolve_auto

            address = _resolve_auto()
        nodes = alive_nodes(address, timeout_s=args.timeout)
    except ClusterError as e:
        print(f"layeredge cluster status: {e}", file=sys.stderr)
        return 1
    total: dict[str, float] = {}
    for n in nodes:
        for k, v in n["resources"].items():
            total[k] = total.get(k, 0.0) + v
    if args.json:
        print(json.dumps({"address": address, "num_nodes": len(nodes), "nodes": nodes, "resources": total}))
        return 0
    print(f"Ray cluster at {address}: {len(nodes)} alive node(s)")
    for n in nodes:
        role = "head  " if n["is_head"] else "worker"
        print(f"  {role} {n['node_id'][:12]}  {n['ip']:<15}  {_fmt_resources(n['resources'])}")
    print(f"total: {_fmt_resources(total)}")
    return 0

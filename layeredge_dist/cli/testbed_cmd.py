"""An emulated multi-host network with shaped links on this machine (root; see cluster/testbed.md).

  layeredge testbed up --hosts 3 --rate 100mbit   N hosts (network namespaces) on a switch, each link shaped to
                                                  the rate in both directions, one Ray node per host; runs in the
                                                  foreground and tears everything down on Ctrl-C / SIGTERM
  layeredge testbed run --rate 100mbit [-- ARGS]  up, then `layeredge run ARGS` as the driver inside host 0, then
                                                  down (the one-command way; --command train|profile|verify)
  layeredge testbed status [--json]               testbeds on this machine (from their state files) and leftovers
  layeredge testbed down [--id ID]                tear down testbeds (asks a live `up` to stop first) and remove
                                                  leftovers of crashed runs

A driver must run inside host 0's namespace: the testbed's addresses are reachable only from inside it. `up`
prints the exact command, e.g.

  ip netns exec le-1234-h0 layeredge run --address 10.250.0.1:6379 --set transport.allow_plaintext_token=true

No latency or loss is emulated (the kernel has no netem), only bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from layeredge_dist.testbed.netns import (DEFAULT_PREFIX, Testbed, TestbedError, _ns_pattern, _teardown,
                                          cleanup_stale, list_namespaces, list_testbeds, parse_rate, state_dir)

_COMMANDS = ("run", "train", "profile", "verify")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``up``, ``run``, ``status`` and ``down`` to ``layeredge testbed``."""
    sub = parser.add_subparsers(dest="testbed_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--hosts", type=int, default=3, metavar="N", help="emulated hosts (default 3)")
        p.add_argument("--rate", default="100mbit",
                       help="every host's link rate per direction: 100mbit, 1gbit, 1Gbit/s, ... or unshaped "
                       "(default 100mbit)")
        p.add_argument("--cpus-per-node", type=float, default=1.0, metavar="C",
                       help="logical CPUs each Ray node offers (default 1: one stage actor per host)")
        p.add_argument("--timeout", type=float, default=180.0, metavar="S",
                       help="seconds to wait for all Ray nodes (default 180)")

    up = sub.add_parser("up", help="start the testbed and its Ray nodes; Ctrl-C tears it down",
                        description="Create N hosts (network namespaces) on one switch with shaped links and a Ray "
                        "node in each (head in host 0), print the Ray address and the exact driver command, and "
                        "stay in the foreground until Ctrl-C or SIGTERM; then stop every process it started and "
                        "delete every namespace and link.")
    common(up)
    up.add_argument("--no-ray", action="store_true", help="only the network, no Ray nodes")
    up.add_argument("--json", action="store_true", help="once ready, print one line of JSON instead of the text")
    up.set_defaults(func=run_up)

    run = sub.add_parser("run", help="up, run a pipeline command as the driver inside host 0, down",
                         description="Bring the testbed up, run `layeredge COMMAND --address <head> --set "
                         "transport.allow_plaintext_token=true ARGS` inside host 0, tear down; exits with the "
                         "command's exit code. Put the command's own arguments after `--`.")
    common(run)
    run.add_argument("--command", choices=_COMMANDS, default="run", help="layeredge command to run (default run)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the command (after --)")
    run.set_defaults(func=run_run)

    status = sub.add_parser("status", help="testbeds on this machine and leftovers of crashed runs")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(func=run_status)

    down = sub.add_parser("down", help="tear down testbeds and leftovers",
                          description="Tear down every testbed of this machine (or --id): a live `testbed up` gets "
                          "SIGTERM and cleans up itself; whatever remains (processes inside the namespaces, the "
                          "namespaces, work dirs, state files) is removed here. Also deletes namespaces of crashed "
                          "runs that nothing uses.")
    down.add_argument("--id", default=None, help="only this testbed id (see status)")
    down.add_argument("--timeout", type=float, default=30.0, metavar="S",
                      help="seconds to wait for a live owner to finish its own teardown (default 30)")
    down.set_defaults(func=run_down)


def _ray_env_note() -> str:
    from layeredge_dist.pipeline.cluster import token_path

    return f"RAY_AUTH_MODE=token and the token in {token_path()} (the same for every process; layeredge sets the mode)"


def _driver_cmd(ns: str, address: str, command: str = "run") -> str:
    return (f"ip netns exec {ns} layeredge {command} --address {address} "
            "--set transport.allow_plaintext_token=true")


def _start(args: argparse.Namespace, with_ray: bool = True) -> tuple[Testbed, Any, dict[str, Any]]:
    from layeredge_dist.testbed.ray_nodes import RayNodes

    tb = Testbed()
    nodes = None
    try:
        tb.up(args.hosts, args.rate)
        info: dict[str, Any] = {"id": tb.id, "subnet": tb.subnet, "rate": tb.rate,
                                "hosts": [{"index": h.index, "namespace": h.namespace, "ip": h.ip} for h in tb.hosts],
                                "switch": tb.switch, "state_file": str(tb.state_path), "pid": os.getpid()}
        if with_ray:
            nodes = RayNodes(tb, args.cpus_per_node, timeout_s=args.timeout)
            ray = nodes.start()
            info.update(address=ray["address"], ray_pids=ray["pids"], ray_start_s=ray["start_s"],
                        driver_command=_driver_cmd(tb.hosts[0].namespace, ray["address"]))
        return tb, nodes, info
    except BaseException:
        if nodes is not None:
            nodes.stop()
        tb.down()
        raise


def _signals() -> dict[int, Any]:
    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


def _restore(old: dict[int, Any]) -> None:
    for s, h in old.items():
        signal.signal(s, h)


def run_up(args: argparse.Namespace) -> int:
    """``layeredge testbed up``."""
    try:
        parse_rate(args.rate)
    except ValueError as err:
        print(f"layeredge testbed up: {err}", file=sys.stderr)
        return 2
    old = _signals()
    tb: Testbed | None = None
    nodes = None
    code = 0
    try:
        t0 = time.monotonic()
        try:
            tb, nodes, info = _start(args, with_ray=not args.no_ray)
        except TestbedError as err:
            print(f"layeredge testbed up: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("layeredge testbed up: interrupted before the testbed was ready; removed what was created",
                  file=sys.stderr)
            return 130
        info["start_s"] = round(time.monotonic() - t0, 2)
        if args.json:
            print(json.dumps(info), flush=True)
        else:
            _print_up(info)
        try:
            while True:
                time.sleep(1.0)
                if nodes is not None and any(p.poll() is not None for p in nodes.procs):
                    dead = [i for i, p in enumerate(nodes.procs) if p.poll() is not None]
                    print(f"layeredge testbed up: the Ray node(s) of host(s) {dead} exited; see "
                          f"{tb.work_dir}/ray-h*.log. Tearing down.", file=sys.stderr)
                    code = 1
                    break
                if not tb.state_path.exists():
                    print("layeredge testbed up: the state file was removed (testbed down?); tearing down",
                          file=sys.stderr)
                    break
        except KeyboardInterrupt:
            pass
        return code
    finally:
        for s in old:
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the teardown
        if tb is not None:
            n = len(tb.pids())
            if nodes is not None:
                nodes.stop()
            tb.down()
            print(f"layeredge testbed up: stopped {n} process(es), deleted {len(tb.namespaces) or 'all'} "
                  "namespaces of the testbed", file=sys.stderr, flush=True)
        _restore(old)


def _print_up(info: dict[str, Any]) -> None:
    print(f"LayerEdge testbed {info['id']}: {len(info['hosts'])} hosts on {info['subnet']}, links shaped to "
          f"{info['rate']} per direction (no added latency or loss: no netem)")
    for h in info["hosts"]:
        print(f"  host {h['index']}: namespace {h['namespace']}, address {h['ip']}")
    print(f"  switch: namespace {info['switch']}; state: {info['state_file']}")
    if "address" in info:
        print(f"Ray: {len(info['hosts'])} nodes, head at {info['address']} (ready in {info['ray_start_s']} s), "
              f"pids {' '.join(map(str, info['ray_pids']))}")
        print()
        print("Run a driver inside host 0 (only there are the testbed's addresses reachable):")
        print(f"  {info['driver_command']}")
        print(f"  {_driver_cmd(info['hosts'][0]['namespace'], info['address'], 'train')} --config FILE")
        print(f"  ip netns exec {info['hosts'][0]['namespace']} layeredge cluster status --address {info['address']}")
        print(f"Every process needs {_ray_env_note()}.")
    else:
        print(f"Run something inside a host: ip netns exec {info['hosts'][0]['namespace']} COMMAND")
    print()
    print("Press Ctrl-C (or send SIGTERM, or run `layeredge testbed down`) to tear it all down.", flush=True)


def run_run(args: argparse.Namespace) -> int:
    """``layeredge testbed run``: up, the driver inside host 0, down; the driver's exit code."""
    try:
        parse_rate(args.rate)
    except ValueError as err:
        print(f"layeredge testbed run: {err}", file=sys.stderr)
        return 2
    extra = list(args.args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    old = _signals()
    tb: Testbed | None = None
    nodes = None
    try:
        try:
            tb, nodes, info = _start(args)
        except TestbedError as err:
            print(f"layeredge testbed run: {err}", file=sys.stderr)
            return 1
        from layeredge_dist.testbed.ray_nodes import TESTBED_OVERRIDES

        argv = [sys.executable, "-m", "layeredge_dist.cli.main", args.command, "--address", info["address"]]
        for o in TESTBED_OVERRIDES:
            argv += ["--set", o]
        argv += extra
        print(f"layeredge testbed run: testbed {tb.id} ({len(tb.hosts)} hosts, {tb.rate}), Ray at "
              f"{info['address']}; driver: ip netns exec {tb.hosts[0].namespace} layeredge "
              f"{shlex.join(argv[3:])}", file=sys.stderr, flush=True)
        assert nodes is not None
        proc = nodes.spawn_driver(argv, cwd=os.getcwd())
        try:
            return proc.wait()
        except KeyboardInterrupt:
            tb.stop(proc)
            return 130
    except KeyboardInterrupt:
        return 130
    finally:
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        if nodes is not None:
            nodes.stop()
        if tb is not None:
            tb.down()
        _restore(old)


def _leftover_namespaces(states: list[dict[str, Any]]) -> list[str]:
    claimed = {n for s in states for n in s.get("namespaces", [])}
    pattern = _ns_pattern(DEFAULT_PREFIX)
    return [n for n in list_namespaces() if pattern.match(n) and n not in claimed]


def run_status(args: argparse.Namespace) -> int:
    """``layeredge testbed status``."""
    states = list_testbeds()
    leftovers = _leftover_namespaces(states)
    if args.json:
        print(json.dumps({"state_dir": str(state_dir()), "testbeds": states, "leftover_namespaces": leftovers}))
        return 0
    if not states:
        print(f"no testbed on this machine (state dir {state_dir()})")
    for s in states:
        owner = s.get("owner", {})
        alive = "alive" if s["owner_alive"] else "DEAD (stale: removed by the next up or by down)"
        print(f"testbed {s['id']}: {len(s.get('hosts', []))} hosts on {s.get('subnet')}, rate {s.get('rate')}, "
              f"owner pid {owner.get('pid')} {alive}")
        for h in s.get("hosts", []):
            print(f"  host {h['index']}: {h['namespace']}  {h['ip']}")
        ray = s.get("ray")
        if ray:
            print(f"  Ray head: {ray['address']}; driver: {_driver_cmd(s['hosts'][0]['namespace'], ray['address'])}")
        print(f"  namespaces present: {len(s['namespaces_present'])}/{len(s.get('namespaces', []))}; live processes: "
              f"{len(s['live_pids'])}")
    if leftovers:
        print(f"leftover namespaces without a state file: {' '.join(leftovers)} (layeredge testbed down removes "
              "the unused ones)")
    return 0


def run_down(args: argparse.Namespace) -> int:
    """``layeredge testbed down``."""
    try:
        from layeredge_dist.testbed.netns import require_tools

        require_tools()
    except TestbedError as err:
        print(f"layeredge testbed down: {err}", file=sys.stderr)
        return 1
    removed: list[str] = []
    code = 0
    for s in list_testbeds():
        if args.id is not None and s.get("id") != args.id:
            continue
        owner = s.get("owner", {})
        if s["owner_alive"] and owner.get("pid") != os.getpid():
            try:
                os.kill(int(owner["pid"]), signal.SIGTERM)
            except OSError:
                pass
            deadline = time.monotonic() + args.timeout
            while os.path.exists(s["state_file"]) and time.monotonic() < deadline:
                time.sleep(0.2)
        if os.path.exists(s["state_file"]):
            try:
                _teardown(s, Path(s["state_file"]))
            except TestbedError as err:
                print(f"layeredge testbed down: {err}", file=sys.stderr)
                code = 1
                continue
        removed.append(str(s.get("id")))
    if args.id is None:
        removed += cleanup_stale(DEFAULT_PREFIX)
    print(f"removed: {', '.join(removed) if removed else 'nothing'}")
    return code


def main(argv: list[str] | None = None) -> int:
    """``python -m layeredge_dist.cli.testbed_cmd ACTION ...``: the same as ``layeredge testbed ACTION ...``,
    without importing every other command (starts in a fraction of the time)."""
    parser = argparse.ArgumentParser(prog="layeredge testbed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

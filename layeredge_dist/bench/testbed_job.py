"""A benchmark's driver process inside the testbed's host 0: the job file in, the result file out.

The testbed's addresses are reachable only from inside its namespaces, so benchmarks that train on it (``bench
e2e``, ``bench control``) write a JSON job, start ``python -c "from <module> import _driver_main; ..."`` in host 0
(:meth:`~layeredge_dist.testbed.ray_nodes.RayNodes.spawn_driver`), and read the JSON result it writes atomically
to ``job["out"]``. Its stdout (and stderr when quiet) goes to ``job["out"] + ".log"``, whose tail is quoted when it
fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from layeredge_dist.files import atomic_write_json

Drive = Callable[[dict[str, Any], Callable[[str], None]], dict[str, Any]]


def driver_main(drive: Drive) -> None:
    """Entry of the driver process: read the job named by ``sys.argv[1]``, run ``drive(job, log)`` (log lines go
    to stderr), add its wall ``seconds`` and write the result to ``job["out"]``
    (:func:`~layeredge_dist.files.atomic_write_json`, so a reader never sees half a result)."""
    with open(sys.argv[1]) as f:
        job = json.load(f)
    t0 = time.perf_counter()
    result = drive(job, lambda t: print(t, file=sys.stderr, flush=True))
    result["seconds"] = time.perf_counter() - t0
    atomic_write_json(job["out"], result)


def spawn(nodes: Any, module: str, job: dict[str, Any], what: str, progress: bool) -> tuple[Any, str]:
    """Write ``job`` next to its output and start ``module``'s ``_driver_main`` in host 0 of ``nodes``' testbed;
    returns the process and the path of its log."""
    path = job["out"] + ".job"
    with open(path, "w") as f:
        json.dump(job, f)
    log_path = job["out"] + ".log"
    with open(log_path, "wb") as logf:
        proc = nodes.spawn_driver([sys.executable, "-c", f"from {module} import _driver_main; _driver_main()", path],
                                  stdout=logf, stderr=None if progress else subprocess.STDOUT, what=what,
                                  cwd=os.getcwd())
    return proc, log_path


def result(job: dict[str, Any], rc: int | None, log_path: str, what: str,
           error: Callable[[str], Exception]) -> dict[str, Any]:
    """The driver's result; raises ``error(message)`` quoting the last 25 log lines when it failed (exit status
    ``rc`` not 0, or no result file)."""
    if rc != 0 or not os.path.exists(job["out"]):
        with open(log_path, errors="replace") as f:
            tail = "\n".join(f.read().splitlines()[-25:])
        raise error(f"{what} failed (exit {rc}); last output:\n{tail}")
    with open(job["out"]) as f:
        return json.load(f)


@contextmanager
def testbed_with_ray(hosts: int, rate: str, cpus_per_node: float, timeout_s: float,
                     log: Callable[[str], None]) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """A testbed of ``hosts`` emulated hosts at ``rate`` with one Ray node each, torn down on exit (also on an
    error or Ctrl-C). Yields ``(testbed, ray_nodes, facts)``; ``facts`` (id, subnet, host IPs, Ray address,
    start seconds) is what the benchmarks record. Raises TestbedError when it cannot be built."""
    from layeredge_dist.testbed import Testbed
    from layeredge_dist.testbed.ray_nodes import RayNodes

    tb = Testbed()
    nodes: RayNodes | None = None
    try:
        t0 = time.perf_counter()
        tb.up(hosts, rate)
        log(f"testbed {tb.id}: {hosts} hosts on {tb.subnet} ({', '.join(tb.namespaces)}); starting Ray ...")
        nodes = RayNodes(tb, cpus_per_node=cpus_per_node, timeout_s=timeout_s)
        info = nodes.start()
        log(f"Ray at {info['address']}: {len(info['nodes'])} nodes alive after {time.perf_counter() - t0:.1f} s")
        yield tb, nodes, {"id": tb.id, "subnet": tb.subnet, "hosts": [h.ip for h in tb.hosts],
                          "ray_address": nodes.address, "start_s": time.perf_counter() - t0}
    finally:
        if nodes is not None:
            nodes.stop()
        tb.down()

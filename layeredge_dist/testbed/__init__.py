"""An emulated multi-host network on one machine, for end-to-end runs over shaped links.

* :mod:`~layeredge_dist.testbed.netns` - N network namespaces ("hosts") on a software switch, each with its own
  address and a rate-limited (``tc tbf``) link in both directions; idempotent ``up`` / ``down`` that also clears
  a previous failed run's leftovers. Needs root and iproute2 (``ip``, ``tc``).
* :mod:`~layeredge_dist.testbed.ray_nodes` - a Ray head in host 0 and one worker per other host
  (``ray start --block`` inside each namespace), stopped by PID; and how to run a driver inside host 0.
* :mod:`~layeredge_dist.testbed.bandwidth` - a plain-socket bandwidth check between two hosts.

See ``cluster/testbed.md`` for what is emulated (bandwidth) and what is not (latency, loss: no ``netem`` in the
development kernel).
"""

from layeredge_dist.testbed.netns import (
    Shaping,
    Testbed,
    TestbedError,
    TestbedHost,
    cleanup_stale,
    list_testbeds,
    parse_rate,
    require_tools,
    unavailable_reason,
)

__all__ = [
    "Shaping",
    "Testbed",
    "TestbedError",
    "TestbedHost",
    "cleanup_stale",
    "list_testbeds",
    "parse_rate",
    "require_tools",
    "unavailable_reason",
]

"""Session-wide test settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_compile_by_default(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Keep torch.compile out of ordinary tests (its first compile costs ~20 s on 2 cores).

    Tests marked ``compile`` exercise the compiled fast paths explicitly.
    """
    if request.node.get_closest_marker("compile") is None:
        monkeypatch.setenv("LAYEREDGE_NO_COMPILE", "1")
    elif os.environ.get("LAYEREDGE_NO_COMPILE") == "1":
        monkeypatch.delenv("LAYEREDGE_NO_COMPILE")


@pytest.fixture(scope="session")
def ray_cluster():  # -> layeredge_dist.pipeline.cluster.ClusterInfo
    """A 3-node Ray cluster on 127.0.0.1 (2 logical CPUs per node), with this process connected, once per session.

    Each node is its own raylet, so ``STRICT_SPREAD`` places one stage per node as on three machines, and a
    stage actor with ``num_cpus=1`` fits on every node with room to spare. Torn down at session end (ray.shutdown,
    then the cluster's processes are stopped by PID) whether tests passed or not. ray is imported lazily, so
    collecting tests does not need it.
    """
    from layeredge_dist.pipeline.cluster import connect

    with connect(nodes=3, cpus_per_node=2.0, timeout_s=120.0) as info:
        yield info

"""The pipeline driver layer: the Ray cluster the stages run on, and (later) plan building, stage actors and steps.

This is the only layer (with the actor wrapper) that imports ray; it does so lazily, inside functions, so that
the Ray environment (token auth, loopback binding) is in place before ray is first imported.
"""

from layeredge_dist.pipeline.cluster import (
    PLACEMENTS,
    ClusterError,
    ClusterInfo,
    LocalCluster,
    alive_nodes,
    choose_placement,
    connect,
    ray_env,
    token_path,
)

__all__ = [
    "PLACEMENTS",
    "ClusterError",
    "ClusterInfo",
    "LocalCluster",
    "alive_nodes",
    "choose_placement",
    "connect",
    "ray_env",
    "token_path",
]

"""One pipeline stage: hosts a partition, runs its schedule, talks to its neighbours. No Ray here.

- :class:`StageSpec` (+ :class:`EdgeCodecs`, :class:`OptimizerSpec`): what a stage is told, plain data.
- :class:`Stage`: builds its partition(s) and optimizer, serves its incoming edges, executes a call
  (:meth:`Stage.run_step`: train / grad / eval / infer), checkpoints atomically.
- :class:`Host`: the driver's end of the edge transport (inputs in, losses and outputs out).
- :class:`EdgeMeter`: per-edge traffic.
"""

from .checkpoint import read_manifest, write_manifest
from .endpoint import Endpoint
from .errors import PeerTimeout, StageError, StepAborted
from .host import Host
from .meter import EdgeMeter
from .runtime import Stage, StepReport
from .spec import HOST_CODEC, EdgeCodecs, Mode, OptimizerSpec, StageSpec, edge, wire_microbatch

__all__ = [
    "HOST_CODEC", "EdgeCodecs", "EdgeMeter", "Endpoint", "Host", "Mode", "OptimizerSpec", "PeerTimeout", "Stage",
    "StageError", "StageSpec", "StepAborted", "StepReport", "edge", "read_manifest", "wire_microbatch",
    "write_manifest",
]

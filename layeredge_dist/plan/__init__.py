"""The planner's pure core: where to cut a model and which codec each cut uses, under a budget.

- :mod:`.profile`: :class:`ModelProfile`, the cost model of a chain of blocks (compute, traffic, sensitivity).
- :mod:`.cluster`: :class:`LinkSpec`, :class:`ClusterSpec`, :func:`parse_bandwidth`.
- :mod:`.codec_costs`: :class:`CodecCost` (exact wire bytes, measured speeds) and :func:`edge_time`.
- :mod:`.simulator`: :func:`predict` a step with :func:`layeredge_dist.schedule.simulate` (or its exact fast
  replay), :func:`what_if`.
- :mod:`.hosts`: :class:`HostModel` (shared cores, codecs on the stage threads, software overheads),
  :func:`host_step_time`, :func:`fit_host`, :func:`cross_validate_host`.
- :mod:`.cuts`: :func:`best_cuts` by dynamic programming.
- :mod:`.assign`: codec per edge and direction: :func:`min_time_under_budget`, :func:`min_loss_under_time`,
  :func:`best_uniform`, :func:`plan_jointly`.
- :mod:`.plan`: :class:`Plan`, plain data with JSON/YAML, a table and a diff.

Everything here is a pure function of its arguments; nothing touches the network, Ray or gRPC.
"""

from .assign import (Assignment, InfeasibleError, best_uniform, min_loss_under_time, min_time_under_budget,
                     plan_jointly)
from .cluster import ClusterSpec, LinkSpec, format_bandwidth, parse_bandwidth, parse_duration
from .codec_costs import DEFAULT_SPEEDS, CodecCost, codec_cost, default_speeds, edge_time
from .cuts import best_cuts, bottleneck, stage_costs
from .hosts import HostModel, cross_validate_host, fit_host, host_grid, host_step_time
from .plan import Plan, make_plan, plan_from_assignment
from .profile import BlockCost, ModelProfile
from .simulator import PipelineModel, Prediction, analytic_step_time, even_cuts, predict, simulation, what_if

__all__ = [
    "Assignment", "BlockCost", "ClusterSpec", "CodecCost", "DEFAULT_SPEEDS", "HostModel", "InfeasibleError",
    "LinkSpec", "ModelProfile", "PipelineModel", "Plan", "Prediction", "analytic_step_time", "best_cuts",
    "best_uniform", "bottleneck", "codec_cost", "cross_validate_host", "default_speeds", "edge_time", "even_cuts",
    "fit_host", "format_bandwidth", "host_grid", "host_step_time", "make_plan", "min_loss_under_time",
    "min_time_under_budget", "parse_bandwidth", "parse_duration", "plan_from_assignment", "plan_jointly", "predict",
    "simulation", "stage_costs", "what_if",
]

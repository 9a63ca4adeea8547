"""Run configuration of LayerEdge: frozen dataclasses loaded from YAML or TOML, with CLI overrides.

``load_config("examples/demo.yaml", ["train.steps=50"])`` gives a validated, immutable :class:`RunConfig`;
:func:`format_help` documents every field for ``--help``. Every problem is a :class:`ConfigError` naming the
dotted field path. Layer rank 0: imports only the standard library, ``yaml`` and :mod:`layeredge_dist.types`.
"""

from __future__ import annotations

from .describe import describe_fields, format_help
from .errors import ConfigError
from .load import config_from_dict, config_to_dict, dump_yaml, load_config, reseeded, with_overrides
from .run import (
    ClusterConfig,
    CodecConfig,
    DataConfig,
    MetricsConfig,
    ControlConfig,
    ModelConfig,
    PipelineConfig,
    RunConfig,
    TrainConfig,
    TransportSettings,
)

__all__ = [
    "ClusterConfig",
    "CodecConfig",
    "ConfigError",
    "DataConfig",
    "MetricsConfig",
    "ControlConfig",
    "ModelConfig",
    "PipelineConfig",
    "RunConfig",
    "TrainConfig",
    "TransportSettings",
    "config_from_dict",
    "config_to_dict",
    "describe_fields",
    "dump_yaml",
    "format_help",
    "load_config",
    "reseeded",
    "with_overrides",
]

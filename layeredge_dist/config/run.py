"""The run configuration: frozen dataclasses, one per section, each field documented in its metadata.

Every class checks and canonicalises its own fields in ``__post_init__`` (types from the annotations, then
ranges and enums) and raises :class:`~layeredge_dist.config.errors.ConfigError` naming the dotted field path,
what was expected and what was found. Mapping fields are stored as read-only ``MappingProxyType`` deep
copies and sequence fields as tuples, so a constructed config cannot be changed afterwards.

Layer rank 0: imports only the standard library and :mod:`layeredge_dist.types`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..types import EdgeId
from . import _validate as v
from .errors import ConfigError

SCHEDULES: tuple[str, ...] = ("gpipe", "1f1b", "interleaved")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
PLACEMENTS: tuple[str, ...] = ("auto", "strict_spread", "spread", "pack")
DATA_PATHS: tuple[str, ...] = ("tcp", "grpc")
EDGE_DIRECTIONS: tuple[str, ...] = ("forward", "backward")


def _empty_mapping() -> Mapping[str, Any]:
    return types.MappingProxyType({})


class _Section:
    """Base of every config dataclass: canonicalise fields from their annotations, then ``_validate``."""

    #: Dotted prefix of this section inside RunConfig (``"train"``); ``""`` for RunConfig itself.
    _section: ClassVar[str] = ""

    def _path(self, name: str) -> str:
        return f"{self._section}.{name}" if self._section else name

    def __post_init__(self) -> None:
        for name, tp in v.hints(type(self)).items():
            value = getattr(self, name)
            canonical = v.coerce(value, tp, self._path(name))
            if canonical is not value:
                object.__setattr__(self, name, canonical)
        self._validate()

    def _validate(self) -> None:
        """Range, enum and cross-field checks; raises ConfigError. Overridden per section."""

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # MappingProxyType does not pickle; rebuild from plain values (the constructor re-freezes them), so
        # configs survive pickle, copy.deepcopy and multiprocessing, not only cloudpickle.
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return (type(self), tuple(v.thaw(getattr(self, f.name)) for f in fields))


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Which model to train and how its weights start."""

    _section: ClassVar[str] = "model"

    family: str = field(
        default="byte_gpt",
        metadata={"help": "registered model family; built in: byte_gpt | sequential | hf_gpt2 | hf_bert"},
    )
    config: Mapping[str, Any] = field(
        default_factory=_empty_mapping,
        metadata={
            "help": "family-specific settings, JSON-compatible values (byte_gpt: vocab_size, context [tokens], "
            "d_model, n_layer, n_head, mlp_ratio, dropout [probability]); {} = the family's defaults"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the deterministic weight initialisation; integer >= 0"})
    weights: str | None = field(
        default=None,
        metadata={
            "help": "path of a .safetensors file that every node can read, loaded over the initial weights; "
            "null = keep the seeded initialisation"
        },
    )

    def __hash__(self) -> int:  # MappingProxyType is unhashable; hash a frozen stand-in instead
        return hash((self.family, v.hash_key(self.config), self.seed, self.weights))

    def _validate(self) -> None:
        v.non_empty(self._path("family"), self.family)
        v.at_least(self._path("seed"), self.seed, 0)
        v.non_empty(self._path("weights"), self.weights)
        if self.weights is not None and not self.weights.endswith(".safetensors"):
            raise v.fail(self._path("weights"), "a path ending in .safetensors, or null", self.weights)


@dataclass(frozen=True)
class DataConfig(_Section):
    """The training corpus (bytes of Python source) and how batches are drawn from it."""

    _section: ClassVar[str] = "data"

    batch_size: int = field(
        default=16, metadata={"help": "sequences per optimizer step, split into pipeline.microbatches; integer >= 1"}
    )
    context: int = field(default=128, metadata={"help": "bytes (tokens) per sequence; integer >= 1"})
    corpus_bytes: int = field(
        default=4_000_000,
        metadata={"help": "byte budget of the source-code corpus, train and validation together; integer >= 1"},
    )
    val_fraction: float = field(
        default=0.1, metadata={"help": "fraction of the corpus held out for validation; number in (0, 1)"}
    )
    corpus_root: str | None = field(
        default=None,
        metadata={"help": "directory whose .py files form the corpus; null = this interpreter's standard library"},
    )
    seed: int = field(
        default=0,
        metadata={"help": "batch sampling seed; the batch of step s is a pure function of (seed, s); also seeds the "
                          "draws of randomized codecs (/rht, /sr) per frame; integer >= 0"},
    )

    def _validate(self) -> None:
        for name in ("batch_size", "context", "corpus_bytes"):
            v.at_least(self._path(name), getattr(self, name), 1)
        if not 0.0 < self.val_fraction < 1.0:
            raise v.fail(self._path("val_fraction"), "a number in the open interval (0, 1)", self.val_fraction)
        v.non_empty(self._path("corpus_root"), self.corpus_root)
        v.at_least(self._path("seed"), self.seed, 0)


@dataclass(frozen=True)
class PipelineConfig(_Section):
    """How the model is cut into stages and which schedule runs them."""

    _section: ClassVar[str] = "pipeline"

    stages: int = field(default=3, metadata={"help": "pipeline stages (one Ray actor each); integer >= 1"})
    cuts: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "block index where each stage after the first begins: strictly increasing list of "
            "stages*chunks - 1 integers >= 0 (stages - 1 unless interleaved); null = even split"
        },
    )
    schedule: str = field(
        default="1f1b", metadata={"help": "pipeline schedule: gpipe | 1f1b | interleaved (interleaved 1F1B)"}
    )
    microbatches: int = field(
        default=4,
        metadata={
            "help": "micro-batches per step; integer >= 1 that divides data.batch_size "
            "(interleaved: also a multiple of stages)"
        },
    )
    chunks: int = field(
        default=1,
        metadata={"help": "model chunks per stage; integer >= 1, and must be 1 unless schedule is interleaved"},
    )
    weight_codec: str | None = field(
        default=None,
        metadata={
            "help": "deployment of model.weights: null = every stage reads its share of the file; a codec spec "
            "(fp32, bf16, int8, int4) = the driver reads the file once and pushes each stage its share over the "
            "edge transport in that codec, checksums verified by the stage (int8/int4 are lossy)"
        },
    )

    def _validate(self) -> None:
        v.at_least(self._path("stages"), self.stages, 1)
        v.one_of(self._path("schedule"), self.schedule, SCHEDULES)
        v.at_least(self._path("microbatches"), self.microbatches, 1)
        v.at_least(self._path("chunks"), self.chunks, 1)
        if self.weight_codec is not None:
            v.non_empty(self._path("weight_codec"), self.weight_codec)
        if self.chunks != 1 and self.schedule != "interleaved":
            raise v.fail(
                self._path("chunks"), f"1 with schedule {self.schedule!r}", self.chunks,
                "more than one chunk per stage needs schedule: interleaved",
            )
        if self.schedule == "interleaved" and self.microbatches % self.stages:
            raise v.fail(
                self._path("microbatches"), f"a multiple of pipeline.stages ({self.stages}) for interleaved",
                self.microbatches,
            )
        if self.cuts is not None:
            path, want = self._path("cuts"), self.stages * self.chunks - 1
            if len(self.cuts) != want:
                raise v.fail(
                    path, f"{want} cut(s) for {self.stages} stage(s) x {self.chunks} chunk(s)", list(self.cuts)
                )
            for i, c in enumerate(self.cuts):
                v.at_least(f"{path}[{i}]", c, 0)
            if any(b <= a for a, b in zip(self.cuts, self.cuts[1:])):
                raise v.fail(path, "strictly increasing block indices", list(self.cuts))


@dataclass(frozen=True)
class CodecConfig(_Section):
    """Compression of the tensors crossing each cut (codec spec strings; parsed by the codecs layer)."""

    _section: ClassVar[str] = "codecs"

    forward: str = field(
        default="fp32",
        metadata={
            "help": "codec spec for activations on every edge, e.g. fp32, bf16, int8, int4/rht, topk:0.05+int8"
        },
    )
    backward: str = field(
        default="fp32", metadata={"help": "codec spec for activation-gradients on every edge (same syntax)"}
    )
    edges: Mapping[str, Mapping[str, str]] = field(
        default_factory=_empty_mapping,
        metadata={
            "help": 'per-edge overrides keyed by edge id, e.g. {"s0->s1": {"forward": "int8", "backward": '
            '"bf16"}}; inner keys: forward | backward'
        },
    )

    def __hash__(self) -> int:  # MappingProxyType is unhashable; hash a frozen stand-in instead
        return hash((self.forward, self.backward, v.hash_key(self.edges)))

    def _validate(self) -> None:
        v.non_empty(self._path("forward"), self.forward)
        v.non_empty(self._path("backward"), self.backward)
        canonical: dict[str, Mapping[str, str]] = {}
        for key, inner in self.edges.items():
            path = f"{self._path('edges')}.{key}"
            try:
                edge = EdgeId.parse(key)
            except ValueError:
                raise v.fail(path, "an edge id like 's0->s1'", key) from None
            if edge.src == edge.dst:
                raise v.fail(path, "an edge between two different stages", key)
            name = str(edge)
            if name in canonical:
                raise v.fail(path, f"each edge once, but it repeats {name!r}", key)
            for direction, spec in inner.items():
                if direction not in EDGE_DIRECTIONS:
                    close = difflib.get_close_matches(str(direction), EDGE_DIRECTIONS, n=1)
                    raise ConfigError(
                        f"{path}.{direction}",
                        f"unknown key; valid keys: {', '.join(EDGE_DIRECTIONS)}"
                        + (f"; did you mean {path}.{close[0]}?" if close else ""),
                    )
                v.non_empty(f"{path}.{direction}", spec)
            canonical[name] = inner
        if list(canonical) != list(self.edges):
            object.__setattr__(self, "edges", types.MappingProxyType(canonical))


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The optimisation loop: steps, optimizer, evaluation, logging and checkpoints."""

    _section: ClassVar[str] = "train"

    steps: int = field(default=200, metadata={"help": "optimizer steps to run in total; integer >= 1"})
    optimizer: str = field(default="adamw", metadata={"help": "optimizer: sgd | adamw"})
    lr: float = field(default=3e-3, metadata={"help": "learning rate (the peak, with a schedule); number > 0"})
    lr_schedule: str = field(
        default="constant",
        metadata={"help": "learning rate after the warm-up: constant | cosine (from lr down to final_lr_frac * lr "
                  "at train.steps)"},
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "linear learning-rate warm-up from lr / warmup_steps to lr; integer >= 0"}
    )
    final_lr_frac: float = field(
        default=0.1, metadata={"help": "cosine schedule only: the last step's lr as a fraction of lr; in (0, 1]"}
    )
    momentum: float = field(
        default=0.0, metadata={"help": "SGD momentum; number in [0, 1); must be 0 unless optimizer is sgd"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay coefficient; number >= 0"})
    eval_every: int = field(
        default=50,
        metadata={"help": "steps between validation-loss evaluations; integer >= 0 (0 = only at the end)"},
    )
    eval_batches: int = field(default=8, metadata={"help": "validation batches per evaluation; integer >= 1"})
    log_every: int = field(default=10, metadata={"help": "steps between progress log lines; integer >= 1"})
    checkpoint_every: int = field(
        default=50, metadata={"help": "steps between checkpoints; integer >= 0 (0 = never)"}
    )
    checkpoint_dir: str | None = field(
        default=None, metadata={"help": "checkpoint directory; null = <run_dir>/checkpoints"}
    )
    resume: bool = field(
        default=True,
        metadata={"help": "resume from the newest complete checkpoint when one exists; true | false"},
    )

    def _validate(self) -> None:
        v.at_least(self._path("steps"), self.steps, 1)
        v.one_of(self._path("optimizer"), self.optimizer, OPTIMIZERS)
        v.greater(self._path("lr"), self.lr, 0.0)
        v.one_of(self._path("lr_schedule"), self.lr_schedule, LR_SCHEDULES)
        v.at_least(self._path("warmup_steps"), self.warmup_steps, 0)
        if not 0.0 < self.final_lr_frac <= 1.0:
            raise v.fail(self._path("final_lr_frac"), "a number in (0, 1]", self.final_lr_frac)
        if not 0.0 <= self.momentum < 1.0:
            raise v.fail(self._path("momentum"), "a number in [0, 1)", self.momentum)
        if self.momentum and self.optimizer != "sgd":
            raise v.fail(
                self._path("momentum"), f"0 with optimizer {self.optimizer!r}", self.momentum,
                "momentum applies to optimizer: sgd only",
            )
        v.at_least(self._path("weight_decay"), self.weight_decay, 0.0)
        v.at_least(self._path("eval_every"), self.eval_every, 0)
        v.at_least(self._path("eval_batches"), self.eval_batches, 1)
        v.at_least(self._path("log_every"), self.log_every, 1)
        v.at_least(self._path("checkpoint_every"), self.checkpoint_every, 0)
        v.non_empty(self._path("checkpoint_dir"), self.checkpoint_dir)


@dataclass(frozen=True)
class ClusterConfig(_Section):
    """The Ray cluster the stages run on and the resources each stage asks for."""

    _section: ClassVar[str] = "cluster"

    address: str | None = field(
        default=None,
        metadata={
            "help": "Ray cluster to join: auto | host:port; null = start an embedded local cluster on 127.0.0.1"
        },
    )
    nodes: int = field(
        default=1,
        metadata={
            "help": "embedded cluster only: local Ray nodes (each its own raylet) on 127.0.0.1; integer >= 1 "
            "(must be 1 when address is set)"
        },
    )
    cpus_per_stage: float = field(default=1.0, metadata={"help": "Ray CPUs reserved per stage actor; number >= 0"})
    gpus_per_stage: float = field(
        default=0.0,
        metadata={"help": "Ray GPUs per stage actor; number >= 0; > 0 places stages on GPU nodes and runs on CUDA"},
    )
    placement: str = field(
        default="auto",
        metadata={
            "help": "placement group strategy: auto | strict_spread | spread | pack "
            "(auto = strict_spread when there are >= stages nodes, else pack)"
        },
    )
    max_restarts: int = field(
        default=1, metadata={"help": "Ray restarts of a dead stage actor; integer >= -1 (-1 = unlimited)"}
    )
    start_timeout_s: float = field(
        default=120.0, metadata={"help": "seconds to wait for the cluster and all stage actors to start; > 0"}
    )
    step_timeout_s: float = field(
        default=300.0,
        metadata={"help": "seconds after which an unfinished step is reported as a hang naming the stuck stage; > 0"},
    )

    def _validate(self) -> None:
        v.non_empty(self._path("address"), self.address)
        if self.address is not None and self.address != "auto":
            host, sep, port = self.address.rpartition(":")
            if not (sep and host and port.isdigit() and 0 < int(port) < 65536) or any(c.isspace() for c in host):
                raise v.fail(self._path("address"), "auto, host:port or null", self.address)
        v.at_least(self._path("nodes"), self.nodes, 1)
        if self.address is not None and self.nodes != 1:
            raise v.fail(
                self._path("nodes"), "1 when joining an existing cluster (address is set)", self.nodes,
                "nodes only sizes the embedded cluster",
            )
        v.at_least(self._path("cpus_per_stage"), self.cpus_per_stage, 0.0)
        v.at_least(self._path("gpus_per_stage"), self.gpus_per_stage, 0.0)
        v.one_of(self._path("placement"), self.placement, PLACEMENTS)
        v.at_least(self._path("max_restarts"), self.max_restarts, -1)
        v.greater(self._path("start_timeout_s"), self.start_timeout_s, 0.0)
        v.greater(self._path("step_timeout_s"), self.step_timeout_s, 0.0)


@dataclass(frozen=True)
class TransportSettings(_Section):
    """How tensor frames travel between stages."""

    _section: ClassVar[str] = "transport"

    data_path: str = field(
        default="tcp",
        metadata={
            "help": "tcp (raw TCP data connection granted over gRPC; loopback/trusted networks only) | "
            "grpc (frames over gRPC streams)"
        },
    )
    recv_timeout_s: float = field(
        default=120.0, metadata={"help": "seconds a stage waits for an incoming tensor before failing; > 0"}
    )
    tune_malloc: bool = field(
        default=True,
        metadata={"help": "tune glibc malloc (trim/mmap thresholds) for large frame buffers; true | false"},
    )
    tls_ca: str | None = field(
        default=None,
        metadata={"help": "PEM file of the CA that signed every stage's certificate (every node can read it); with "
                  "tls_cert and tls_key: mutual TLS on every edge (needs data_path grpc); null = no TLS"},
    )
    tls_cert: str | None = field(
        default=None, metadata={"help": "PEM certificate chain every stage and the driver present (server and client)"}
    )
    tls_key: str | None = field(default=None, metadata={"help": "PEM private key of tls_cert"})
    tls_server_name: str | None = field(
        default=None,
        metadata={"help": "name to verify in the peers' certificate instead of their IP (when the certificate "
                  "has no IP SANs); null = the address"},
    )
    allow_plaintext_token: bool = field(
        default=False,
        metadata={"help": "on non-loopback addresses without TLS, send the per-run bearer token in clear text "
                  "anyway (trusted private networks only; otherwise stages refuse to start there)"},
    )

    def _validate(self) -> None:
        v.one_of(self._path("data_path"), self.data_path, DATA_PATHS)
        v.greater(self._path("recv_timeout_s"), self.recv_timeout_s, 0.0)
        tls = (self.tls_ca, self.tls_cert, self.tls_key)
        if any(t is not None for t in tls) and not all(t is not None for t in tls):
            raise v.fail(self._path("tls_ca"), "tls_ca, tls_cert and tls_key all set or all null", tls)
        if self.tls_ca is not None and self.data_path == "tcp":
            raise v.fail(self._path("data_path"), "grpc when TLS is configured (the tcp data path carries no TLS)",
                         self.data_path)


@dataclass(frozen=True)
class MetricsConfig(_Section):
    """Prometheus exporters (driver and stages) and online measurement (link probes, importance proxy)."""

    _section: ClassVar[str] = "metrics"

    port: int | None = field(
        default=None,
        metadata={"help": "TCP port of the driver's Prometheus exporter; 0 = any free port, null = off (then the "
                  "stages export nothing either); 0..65535. The run writes <run_dir>/prometheus/targets.json "
                  "(file service discovery of every exporter)"},
    )
    probe_every: int = field(
        default=0,
        metadata={"help": "steps between re-measurements of every link's bandwidth and RTT (0 = never); integer >= 0"},
    )
    proxy_every: int = field(
        default=0,
        metadata={"help": "online importance proxy E[(g.(a - a_hat))^2] of every activation edge on every N-th "
                  "training step (0 = off; costs one encode + decode per codec on those steps); integer >= 0"},
    )
    error_budget: float | None = field(
        default=None,
        metadata={"help": "relative error ||x - x_hat|| / ||x|| each edge's codec may cause (both directions), "
                  "exported as layeredge_edge_error_budget_ratio for the edge-error-over-budget alert; null = none"},
    )
    proxy_codecs: tuple[str, ...] = field(
        default=(),
        metadata={"help": "candidate codec specs the online proxy also evaluates besides each edge's own, e.g. "
                  "[int8, int4, int2]"},
    )

    def _validate(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise v.fail(self._path("port"), "a TCP port in 0..65535 or null", self.port)
        for name in ("probe_every", "proxy_every"):
            if getattr(self, name) < 0:
                raise v.fail(self._path(name), "an integer >= 0", getattr(self, name))
        if self.error_budget is not None and not self.error_budget >= 0:
            raise v.fail(self._path("error_budget"), "a number >= 0 or null", self.error_budget)
        for spec in self.proxy_codecs:
            if not spec.strip():
                raise v.fail(self._path("proxy_codecs"), "non-empty codec specs", self.proxy_codecs)


@dataclass(frozen=True)
class ControlConfig(_Section):
    """Online re-planning of the codec per edge and direction while training (see layeredge plan)."""

    _section: ClassVar[str] = "control"

    profile: str | None = field(
        default=None,
        metadata={"help": "model profile JSON from `layeredge plan --profile-out FILE` (block times, sizes, "
                  "sensitivities); null = no online re-planning"},
    )
    every: int = field(default=50, metadata={"help": "training steps between re-plans; integer >= 1"})
    budget: float | None = field(
        default=None,
        metadata={"help": "accuracy budget: total measured sensitivity of the chosen codecs (nats of loss); "
                  "null = no accuracy limit"},
    )
    candidates: tuple[str, ...] = field(
        default=("fp32", "bf16", "int8", "int4"), metadata={"help": "codec specs the controller may choose"}
    )
    min_gain: float = field(
        default=0.05,
        metadata={"help": "switch only when the predicted step time drops by at least this fraction; in [0, 1)"},
    )

    def _validate(self) -> None:
        if self.every < 1:
            raise v.fail(self._path("every"), "an integer >= 1", self.every)
        if not 0.0 <= self.min_gain < 1.0:
            raise v.fail(self._path("min_gain"), "a fraction in [0, 1)", self.min_gain)
        if self.budget is not None and self.budget < 0:
            raise v.fail(self._path("budget"), "a number >= 0 or null", self.budget)
        if not self.candidates:
            raise v.fail(self._path("candidates"), "at least one codec spec", self.candidates)


@dataclass(frozen=True)
class RunConfig(_Section):
    """A whole training run; every section defaults to its own defaults.

    Raises ConfigError on construction when any section is invalid or the sections disagree
    (micro-batches not dividing the batch size, an edge override naming a stage that does not exist).
    """

    name: str = field(default="demo", metadata={"help": "run name, used in logs and metric labels; non-empty"})
    run_dir: str = field(
        default="runs/demo",
        metadata={"help": "directory for checkpoints, logs and the resolved config (relative to the working dir)"},
    )
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the model"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the training data"})
    pipeline: PipelineConfig = field(default_factory=PipelineConfig, metadata={"help": "stages and schedule"})
    codecs: CodecConfig = field(default_factory=CodecConfig, metadata={"help": "compression on the cuts"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "the optimisation loop"})
    cluster: ClusterConfig = field(default_factory=ClusterConfig, metadata={"help": "Ray cluster and resources"})
    transport: TransportSettings = field(
        default_factory=TransportSettings, metadata={"help": "tensor transport between stages"}
    )
    metrics: MetricsConfig = field(default_factory=MetricsConfig, metadata={"help": "Prometheus exporter"})
    control: ControlConfig = field(default_factory=ControlConfig, metadata={"help": "online re-planning"})

    def _validate(self) -> None:
        v.non_empty("name", self.name)
        v.non_empty("run_dir", self.run_dir)
        if self.data.batch_size % self.pipeline.microbatches:
            raise v.fail(
                "pipeline.microbatches", f"a divisor of data.batch_size ({self.data.batch_size})",
                self.pipeline.microbatches,
            )
        for key in self.codecs.edges:
            edge = EdgeId.parse(key)
            top = max(edge.src.index, edge.dst.index)
            if top >= self.pipeline.stages:
                raise v.fail(
                    f"codecs.edges.{key}", f"an edge between stages s0..s{self.pipeline.stages - 1}", key,
                    f"pipeline.stages is {self.pipeline.stages}",
                )

"""From a :class:`~layeredge_dist.config.RunConfig` to what the driver and the stages are built from."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from layeredge_dist.config import RunConfig, config_to_dict
from layeredge_dist.model import CorpusConfig, ModelSpec, Workload, even_cuts, family_for, workload_for
from layeredge_dist.stage import EdgeCodecs, OptimizerSpec, StageSpec
from layeredge_dist.transport import TLSConfig, TransportConfig

from .driver import Placement


def model_spec(cfg: RunConfig) -> ModelSpec:
    """The ModelSpec of ``cfg.model`` (family config as plain JSON values)."""
    plain = config_to_dict(cfg.model)
    return ModelSpec(plain["family"], plain["config"], seed=plain["seed"], weights=plain["weights"])


def cuts(cfg: RunConfig, model: ModelSpec) -> tuple[int, ...]:
    """Explicit cuts, or an even split of the model's blocks over ``stages * chunks`` virtual stages.

    Raises ValueError when the model has fewer blocks than virtual stages.
    """
    if cfg.pipeline.cuts is not None:
        return tuple(cfg.pipeline.cuts)
    blocks = family_for(model.family, model.config).num_blocks
    return even_cuts(blocks, cfg.pipeline.stages * cfg.pipeline.chunks)


def transport(cfg: RunConfig, token: str | None = None) -> TransportConfig:
    """Transport settings of a run; every run gets its own random bearer token unless one is given. With
    ``transport.tls_*`` every edge uses mutual TLS (the files are read here, on the driver, and travel in the
    stage specs). Raises OSError when a TLS file cannot be read."""
    t = cfg.transport
    tls = None
    if t.tls_ca is not None:
        tls = TLSConfig.from_files(t.tls_ca, t.tls_cert, t.tls_key, require_client_auth=True,
                                   server_name_override=t.tls_server_name)
    return TransportConfig(token=token or secrets.token_hex(16), tls=tls, tcp_data_path=t.data_path == "tcp",
                           tune_malloc=t.tune_malloc, allow_unauthenticated=t.allow_plaintext_token)


def optimizer_spec(cfg: RunConfig, lr: float | None = None) -> OptimizerSpec:
    """The optimizer and learning-rate schedule of ``cfg.train`` (cosine over ``train.steps``); ``lr`` overrides
    the peak rate."""
    t = cfg.train
    return OptimizerSpec(t.optimizer, t.lr if lr is None else lr, t.momentum, t.weight_decay, schedule=t.lr_schedule,
                         warmup_steps=t.warmup_steps, total_steps=t.steps, final_lr_frac=t.final_lr_frac)


def stage_spec(cfg: RunConfig, token: str | None = None) -> StageSpec:
    """The spec every stage starts from (index 0; the driver sets each stage's index)."""
    model = model_spec(cfg)
    plain = config_to_dict(cfg.codecs)
    return StageSpec(
        index=0, num_stages=cfg.pipeline.stages, model=model, cuts=cuts(cfg, model),
        schedule=cfg.pipeline.schedule, microbatches=cfg.pipeline.microbatches, chunks=cfg.pipeline.chunks,
        codecs=EdgeCodecs(plain["forward"], plain["backward"], plain["edges"]),
        optimizer=optimizer_spec(cfg),
        transport=transport(cfg, token), recv_timeout_s=cfg.transport.recv_timeout_s,
        device="auto" if cfg.cluster.gpus_per_stage > 0 else "cpu", metrics=cfg.metrics.port is not None,
        proxy_every=cfg.metrics.proxy_every, proxy_codecs=tuple(cfg.metrics.proxy_codecs),
        error_budget=cfg.metrics.error_budget, codec_seed=cfg.data.seed,
    )


def placement(cfg: RunConfig) -> Placement:
    """Ray resources and supervision of the stage actors, and how ``model.weights`` is deployed
    (``pipeline.weight_codec``)."""
    c = cfg.cluster
    return Placement(c.cpus_per_stage, c.gpus_per_stage, c.placement, c.max_restarts, c.start_timeout_s,
                     c.step_timeout_s, weight_codec=cfg.pipeline.weight_codec)


def workload(cfg: RunConfig, synthetic: bool = False) -> Workload:
    """The training data of ``cfg`` (the stdlib corpus for byte-level models)."""
    d = cfg.data
    corpus = CorpusConfig(max_bytes=d.corpus_bytes, val_fraction=d.val_fraction, root=d.corpus_root)
    return workload_for(model_spec(cfg), d.batch_size, d.context, d.seed, corpus, synthetic=synthetic)


@dataclass(frozen=True)
class Identity:
    """What a checkpoint must match to be resumed: model, cuts, stages and chunks."""

    model: str
    cuts: tuple[int, ...]
    stages: int
    chunks: int

    @classmethod
    def of(cls, spec: StageSpec) -> Identity:
        return cls(spec.model.to_json(), spec.cuts, spec.num_stages, spec.chunks)

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "cuts": list(self.cuts), "stages": self.stages, "chunks": self.chunks}

    def mismatch(self, info: dict[str, object]) -> str | None:
        """None when a manifest's ``info`` was written by this identity, else what differs."""
        mine = self.to_dict()
        diff = [k for k in mine if info.get(k) != mine[k]]
        return None if not diff else f"checkpoint differs in {diff}"

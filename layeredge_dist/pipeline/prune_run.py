"""Driver side of ``layeredge prune``: baseline, pruning at the cuts, weight pruning, fine-tuning, weight transfer.

:func:`run` does, in this process (no Ray), for the run config's model and cuts:

1. **Baseline**: the partitions of the run's newest complete checkpoint when one matches the model and cuts
   (``train.checkpoint_dir`` or ``<run_dir>/checkpoints``), otherwise ``train_steps`` steps of in-process training
   exactly as the pipeline trains (:func:`~layeredge_dist.pipeline.profile.trained_partitions`), cached in
   ``<out>/baseline.pt`` for the next run with the same model, cuts, data, optimizer and steps.
2. **Cuts**: at every cut ``r = round(cut_rank * C)`` of the ``C`` channels stay on the wire. Where the architecture
   allows it (a ``sequential`` cut between ``Linear`` [+ activation] and ``Linear``), the ``C - r`` channels of least
   Taylor importance are removed by weight surgery; where the cut carries a residual stream (``byte_gpt``, HF
   models) that is impossible (the report says why) and a learned low-rank projection ``down: d -> r`` /
   ``up: r -> d`` is inserted instead, initialised by PCA of calibration activations (or from the ``r`` most
   important channels). Optionally MLP hidden units are pruned by Taylor importance (``mlp_hidden``).
3. **Weights**: optional per-tensor magnitude / Taylor / N:M pruning of every weight matrix; the masks are
   re-applied after every fine-tuning optimizer step.
4. **Recovery**: ``finetune_steps`` steps of the run's optimizer on the batches of steps ``T .. T + F - 1`` (``T`` =
   baseline steps); cut projections train at ``projection_lr_scale`` (default 0.1) times the learning rate: at the
   full rate the freshly inserted bottlenecks moved enough to cost 3 % validation loss on the demo model, at 0.1
   or frozen (0) under 2 %. For a fair comparison the unpruned baseline is fine-tuned the same steps on the same batches
   with the same optimizer settings; both validation losses are reported. With ``curve`` the projection alone is
   measured for several ranks (edge bytes vs validation loss, with and without fine-tuning).
   With ``finetune_on="pipeline"`` the pruned model's recovery runs through the real Ray pipeline instead
   (:func:`finetune_on_pipeline`: stage actors built from the pruned config, the pruned weights pushed to them with
   :meth:`~layeredge_dist.pipeline.driver.Pipeline.push_weights`, the same steps on the same batches, the
   fine-tuned weights fetched back); the validation losses are computed the same way. The pipeline's optimizer
   has one learning rate and keeps no weight masks, so that mode needs ``projection_lr_scale == 1`` and no weight
   pruning; the unpruned reference and the curve are fine-tuned in this process.
5. **Transfer**: every stage's pruned state is encoded (:func:`~layeredge_dist.prune.transfer.encode_state`: int8
   / int4 blockwise, sparse indices + values for pruned tensors, XXH3 checksums of the decoded tensors) and
   shipped to another process over the real edge transport with ``TensorRole.WEIGHT``
   (:func:`ship_states`: two :class:`~layeredge_dist.stage.Endpoint` s), measuring bytes and time; the receiver
   verifies every checksum.
6. **Outputs**: ``<out>/model.safetensors`` (native keys, projections included) and ``<out>/pruned.yaml`` (the run
   config with the model's ``prune`` section and ``model.weights``), so ``layeredge train --config
   <out>/pruned.yaml`` trains the pruned model on Ray: every stage builds its share from plain data.

Units: bytes, seconds, nats (losses).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import multiprocessing
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layeredge_dist.codecs import CodecError, parse_any, parse_codec
from layeredge_dist.config import RunConfig, config_to_dict, dump_yaml
from layeredge_dist.model import (
    Partition,
    Workload,
    build_partition,
    merge_state_dicts,
    partition_specs,
    split_batch,
    train_chain,
)
from layeredge_dist.prune import (
    MaskKeeper,
    TransferPolicy,
    accumulate_gradients,
    apply_masks,
    apply_projection,
    cut_plan,
    cut_prunability,
    cut_tensors,
    drop_least_important,
    encode_state,
    mlp_hidden_scores,
    mlp_keep,
    prune_cut_channels,
    prune_masks,
    prune_mlp_hidden,
    sparsity_report,
    val_loss,
)
from layeredge_dist.prune.transfer import EncodedState, assemble, load_manifest, summary
from layeredge_dist.prune.weights import parse_nm
from layeredge_dist.measure import ChannelAccumulator
from layeredge_dist.stage import Endpoint, OptimizerSpec, StageSpec, edge, read_manifest
from layeredge_dist.stage.checkpoint import load_stage
from layeredge_dist.transport import TransportConfig
from layeredge_dist.types import Direction, TensorRole

Log = Callable[[str], None]
SHIP_MODES = ("process", "thread", "none")
FINETUNE_ON = ("local", "pipeline")


@dataclass(frozen=True)
class PruneOptions:
    """What :func:`run` does. Fractions in [0, 1]; ``None`` = the run config's value."""

    cut_rank: float = 0.5
    init: str = "pca"
    mlp_hidden: float = 0.0
    weight_sparsity: float = 0.0
    weight_method: str = "magnitude"
    finetune_steps: int = 200
    finetune_lr: float | None = None
    projection_lr_scale: float = 0.1
    train_steps: int | None = None
    calib_batches: int = 8
    eval_batches: int = 16
    curve: tuple[float, ...] = ()
    weight_codec: str = "int8"
    sparse_codec: str | None = None
    ship: str = "process"
    out_dir: str | None = None
    use_checkpoint: bool = True
    #: Where the pruned model is fine-tuned: ``local`` (this process) or ``pipeline`` (the run's Ray pipeline).
    finetune_on: str = "local"
    #: Codec of the weight push to the pipeline with ``finetune_on="pipeline"`` (fp32: lossless).
    push_codec: str = "fp32"

    def __post_init__(self) -> None:
        if not 0.0 < self.cut_rank <= 1.0:
            raise ValueError(f"cut rank must lie in (0, 1], got {self.cut_rank}")
        if not 0.0 <= self.mlp_hidden < 1.0 or not 0.0 <= self.weight_sparsity < 1.0:
            raise ValueError("mlp hidden and weight sparsity fractions must lie in [0, 1)")
        if self.projection_lr_scale < 0:
            raise ValueError(f"projection lr scale must be >= 0, got {self.projection_lr_scale}")
        if self.finetune_steps < 0 or (self.train_steps is not None and self.train_steps < 0):
            raise ValueError("step counts must be >= 0")
        if self.calib_batches < 1 or self.eval_batches < 1:
            raise ValueError("calibration and evaluation batch counts must be >= 1")
        if self.ship not in SHIP_MODES:
            raise ValueError(f"ship must be one of {SHIP_MODES}, got {self.ship!r}")
        if any(not 0.0 < f <= 1.0 for f in self.curve):
            raise ValueError(f"curve rank fractions must lie in (0, 1], got {self.curve}")
        if self.init not in ("pca", "channels"):
            raise ValueError(f"projection init must be pca or channels, got {self.init!r}")
        if self.weight_method not in ("magnitude", "taylor") and parse_nm(self.weight_method) is None:
            raise ValueError(f"unknown weight pruning method {self.weight_method!r}; expected magnitude, taylor or "
                             "N:M like 2:4")
        TransferPolicy(self.weight_codec, sparse_codec=self.sparse_codec)  # CodecError (a ValueError) if bad
        TransferPolicy(self.push_codec)
        if self.finetune_on not in FINETUNE_ON:
            raise ValueError(f"finetune_on must be one of {FINETUNE_ON}, got {self.finetune_on!r}")
        if self.finetune_on == "pipeline":
            if self.projection_lr_scale != 1.0:
                raise ValueError("fine-tuning on the pipeline trains every parameter at one learning rate: set the "
                                 f"projection lr scale to 1 (got {self.projection_lr_scale})")
            if self.weight_sparsity > 0 or ":" in self.weight_method:
                raise ValueError("fine-tuning on the pipeline keeps no weight masks: prune weights with "
                                 "finetune_on='local'")


# ---- baseline and training ------------------------------------------------------------------------------------


def _baseline_key(cfg: RunConfig, spec: StageSpec, steps: int) -> dict[str, Any]:
    """Everything an in-process baseline depends on (model, cuts, data, micro-batching, optimizer, steps)."""
    from .setup import Identity

    return {"identity": Identity.of(spec).to_dict(), "steps": steps, "data": config_to_dict(cfg.data),
            "microbatches": spec.microbatches, "optimizer": dataclasses.asdict(spec.optimizer)}


def load_or_train(cfg: RunConfig, spec: StageSpec, steps: int, use_checkpoint: bool, log: Log,
                  cache: Path | None = None) -> tuple[list[Partition], dict[str, Any]]:
    """The baseline partitions: from the run's newest matching checkpoint, else from ``cache`` (a baseline an
    earlier ``layeredge prune`` trained with the same model, cuts, data, optimizer and steps), else trained
    ``steps`` in-process (and saved to ``cache``)."""
    from .profile import trained_partitions
    from .setup import Identity

    ckpt = Path(cfg.train.checkpoint_dir or Path(cfg.run_dir) / "checkpoints")
    if use_checkpoint and spec.chunks == 1:
        try:
            manifest = read_manifest(ckpt)
        except ValueError:
            manifest = None
        if manifest is not None and Identity.of(spec).mismatch(manifest) is None:
            step = int(manifest["step"])
            pspecs = partition_specs(spec.model, spec.cuts)
            states = [load_stage(ckpt, step, s)["model"][0] for s in range(len(pspecs))]
            log(f"baseline: checkpoint after step {step} in {ckpt}")
            parts = [build_partition(ps, st) for ps, st in zip(pspecs, states)]
            return parts, {"source": "checkpoint", "steps": step, "checkpoint_dir": str(ckpt)}
    key = _baseline_key(cfg, spec, steps)
    if use_checkpoint and cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=False)  # our own file
        if saved.get("key") == key:
            log(f"baseline: {steps} steps trained earlier, cached in {cache}")
            pspecs = partition_specs(spec.model, spec.cuts)
            parts = [build_partition(ps, st) for ps, st in zip(pspecs, saved["states"])]
            return parts, dict(saved["info"], source="cache", cache=str(cache))
    log(f"baseline: training {steps} steps in-process ...")
    t0 = time.perf_counter()
    parts, _, losses = trained_partitions(cfg, steps)
    info = {"source": "trained", "steps": steps, "train_seconds": time.perf_counter() - t0,
            "final_train_loss": losses[-1] if losses else None}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "info": info, "states": [p.state_dict() for p in parts]}, cache)
    return parts, info


def _is_projection(name: str) -> bool:
    return ".edge_down." in name or ".edge_up." in name


def finetune(parts: Sequence[Partition], workload: Workload, optimizer: OptimizerSpec, start_step: int,
             steps: int, microbatches: int, masks: Sequence[dict[str, torch.Tensor]] | None = None,
             projection_lr_scale: float = 1.0) -> list[float]:
    """``steps`` optimizer steps on the batches of steps ``start_step ..``, as the pipeline trains (a fresh
    optimizer; ``masks`` per partition re-applied after every step). Cut projections train at
    ``projection_lr_scale`` times the learning rate (0: frozen). Returns the training losses."""
    named = [(n, p) for part in parts for n, p in part.named_parameters() if p.requires_grad]
    params = [p for n, p in named if not _is_projection(n)]
    projections = [p for n, p in named if _is_projection(n)]
    if steps <= 0 or not named:
        return []
    opt = optimizer.build(params or projections)
    if not params:
        projections = []
    if projections and projection_lr_scale > 0:
        opt.add_param_group({"params": projections, "lr": optimizer.lr * projection_lr_scale})
    frozen = projections if projection_lr_scale <= 0 else []
    for p in frozen:
        p.requires_grad_(False)
    keepers = [MaskKeeper(part, mk, opt) for part, mk in zip(parts, masks or []) if mk]
    for part in parts:
        part.train()
    losses = []
    try:
        for step in range(start_step, start_step + steps):
            xs, sides = split_batch(workload.batch(step), microbatches)
            opt.zero_grad(set_to_none=True)
            losses.append(train_chain(parts, xs, sides).loss)
            opt.step()
    finally:
        opt.zero_grad(set_to_none=True)
        for k in keepers:
            k.remove()
        for p in frozen:
            p.requires_grad_(True)
    return losses


def finetune_on_pipeline(cfg: RunConfig, spec: StageSpec, parts: Sequence[Partition], workload: Workload,
                         optimizer: OptimizerSpec, start_step: int, steps: int, held: Sequence[Any],
                         push_codec: str = "fp32", log: Log = lambda _t: None) -> tuple[list[float], dict[str, Any]]:
    """:func:`finetune` through the run's Ray pipeline: connect to the cluster (``cluster.*`` as ``layeredge
    train``), start one stage actor per partition from the partitions' (pruned) model config, push ``parts``'
    weights with ``push_codec`` (:meth:`Pipeline.push_weights`, checksums verified by the stages), train
    ``steps`` steps on the batches of steps ``start_step ..`` with ``optimizer``, evaluate ``held`` on the
    pipeline and load the fine-tuned weights back into ``parts``.

    Returns the per-step training losses and ``{push: {codec, raw_bytes, wire_bytes, ratio, seconds},
    train_seconds, val_loss_pipeline, nodes}``. Raises StageFailure / WeightTransferError / ClusterError from the
    pipeline.
    """
    from . import setup
    from .cluster import connect
    from .driver import Pipeline
    from .train import evaluate

    model = dataclasses.replace(parts[0].spec.model, weights=None)  # the pruned config; weights are pushed
    base = dataclasses.replace(spec, model=model, optimizer=optimizer)
    c = cfg.cluster
    per_node = math.ceil(base.num_stages / max(1, c.nodes))
    with connect(c.address, c.nodes, max(c.cpus_per_stage * per_node, c.cpus_per_stage), c.gpus_per_stage * per_node,
                 c.start_timeout_s) as info:
        with Pipeline(base, dataclasses.replace(setup.placement(cfg), weight_codec=None)) as pipe:
            push = pipe.push_weights([p.state_dict() for p in parts], push_codec)
            log(f"pipeline of {base.num_stages} stages on {info.num_nodes} node(s): pushed the pruned weights "
                f"({push.codec}, {push.raw_bytes / 1e6:.3f} MB -> {push.wire_bytes / 1e6:.3f} MB on the wire, "
                f"checksums verified); fine-tuning {steps} steps ...")
            t0 = time.perf_counter()
            losses = []
            for step in range(start_step, start_step + steps):
                res = pipe.call(workload.batch(step), "train")
                losses.append(float(torch.stack([o.float() for o in res.outputs]).mean()))
            train_s = time.perf_counter() - t0
            val = evaluate(pipe, list(held)) if held else None
            states = pipe.parameters()
    for part, state in zip(parts, states):
        part.load_state_dict(state, strict=True)
    return losses, {"push": {"codec": push.codec, "raw_bytes": push.raw_bytes, "wire_bytes": push.wire_bytes,
                             "ratio": push.ratio, "seconds": push.seconds},
                    "train_seconds": train_s, "val_loss_pipeline": val, "nodes": info.num_nodes}


# ---- cuts -----------------------------------------------------------------------------------------------------


def _cut_shapes(parts: Sequence[Partition], batch: Any, microbatches: int) -> list[tuple[int, ...]]:
    """Shape of the tensor crossing each cut, per micro-batch."""
    return [tuple(acts[0].shape) for acts, _ in cut_tensors(parts, [batch], microbatches, grads=False)]


def shrink_cuts(parts: Sequence[Partition], fraction: float, calib: Sequence[Any], microbatches: int,
                init: str = "pca") -> tuple[list[Partition], list[dict[str, Any]]]:
    """Keep ``round(fraction * C)`` channels at every cut: remove the rest by surgery where the cut allows it,
    else insert a low-rank projection. Returns the new partitions and one action row per cut."""
    current = list(parts)
    prunable = cut_prunability(current)
    actions = []
    for k in range(len(current) - 1):
        need_scores = prunable[k]["prunable"] or init == "channels"
        acts, grads = cut_tensors(current, calib, microbatches, grads=need_scores)[k]
        if prunable[k]["prunable"] and cut_plan(current[0].spec.model, prunable[k]["block"]).channel_dim == 1:
            acts, grads = [a.movedim(1, -1) for a in acts], [g.movedim(1, -1) for g in grads]  # conv: (B, C, ...)
        c = int(acts[0].shape[-1])
        r = max(1, int(round(fraction * c)))
        row: dict[str, Any] = {"cut": k, "block": prunable[k]["block"], "channels_before": c, "channels_after": c,
                               "prunable": prunable[k]["prunable"], "reason": prunable[k]["reason"],
                               "action": "none"}
        if r < c:
            scores = None
            if need_scores:
                acc = ChannelAccumulator()
                for a, g in zip(acts, grads):
                    acc.add(a, g)
                scores = acc.result().taylor
            if prunable[k]["prunable"]:
                assert scores is not None
                current = prune_cut_channels(current, k, drop_least_important(scores, 1.0 - r / c))
                row["action"] = "channels removed (weight surgery, Taylor importance)"
            else:
                current = apply_projection(current, k, r, acts, init=init, scores=scores)
                row["action"] = f"low-rank projection d->{r}->d ({init} init)"
            row["channels_after"] = r
        actions.append(row)
    return current, actions


def _wire_nbytes(spec: str, numel: int) -> int | None:
    try:
        codec: Any = parse_codec(spec)
    except CodecError:
        try:
            codec = parse_any(spec).inner  # type: ignore[union-attr]
        except (CodecError, AttributeError):
            return None
    try:
        return int(codec.payload_nbytes(numel))
    except (CodecError, TypeError):
        return None


def edge_rows(spec: StageSpec, before: Sequence[tuple[int, ...]], after: Sequence[tuple[int, ...]],
              actions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cut: elements and bytes per training step before / after (fp32 and the run's codecs)."""
    rows = []
    m = spec.microbatches
    for k, (sb, sa) in enumerate(zip(before, after)):
        nb, na = int(torch.Size(sb).numel()), int(torch.Size(sa).numel())
        fwd = spec.codecs.spec_for(edge(k, k + 1), TensorRole.ACTIVATION)
        bwd = spec.codecs.spec_for(edge(k + 1, k), TensorRole.GRADIENT)
        row = dict(actions[k]) if k < len(actions) else {"cut": k}
        row.update({
            "edge": str(edge(k, k + 1)), "shape_before": list(sb), "shape_after": list(sa),
            "elements_per_step_before": nb * m, "elements_per_step_after": na * m,
            "fp32_bytes_per_step_before": 2 * 4 * nb * m, "fp32_bytes_per_step_after": 2 * 4 * na * m,
            "codec_forward": fwd, "codec_backward": bwd,
        })
        wb = [_wire_nbytes(fwd, nb), _wire_nbytes(bwd, nb)]
        wa = [_wire_nbytes(fwd, na), _wire_nbytes(bwd, na)]
        row["wire_bytes_per_step_before"] = None if None in wb else m * sum(wb)  # type: ignore[arg-type]
        row["wire_bytes_per_step_after"] = None if None in wa else m * sum(wa)  # type: ignore[arg-type]
        row["bytes_saved_fraction"] = 1.0 - na / nb if nb else 0.0
        rows.append(row)
    return rows


# ---- weight transfer over the edge transport ----------------------------------------------------------------


def _receive_bundles(endpoint: Endpoint, count: int, timeout_s: float, keep_states: bool
                     ) -> Iterator[dict[str, Any]]:
    """Receiver side: ``count`` bundles (call ``seq = 1..count``) from stage 0 with role WEIGHT, checksums verified;
    yields one result per bundle as soon as it is verified (the sender waits for it before the next)."""
    for seq in range(1, count + 1):
        t0 = time.perf_counter()
        res: dict[str, Any] = {"seq": seq}
        try:
            manifest = load_manifest(endpoint.receive(0, TensorRole.WEIGHT, seq, 0, timeout_s, "weight manifest"))
            first = time.perf_counter()
            tensors = [endpoint.receive(0, TensorRole.WEIGHT, seq, i + 1, timeout_s, f"weight part {i}")
                       for i in range(int(manifest["parts"]))]
            t1 = time.perf_counter()
            state = assemble(manifest, tensors)
            res.update(ok=True, tensors=len(state), receive_s=t1 - t0, after_manifest_s=t1 - first,
                       verify_s=time.perf_counter() - t1)
            if keep_states:
                res["state"] = state
        except Exception as err:  # reported to the sender, which raises
            res.update(ok=False, error=f"{type(err).__name__}: {err}")
        yield res


def _receiver_process(conn: Any, transport: TransportConfig, count: int, timeout_s: float) -> None:
    """Child process: an Endpoint as stage 1; sends its address, then one result per bundle."""
    torch.set_num_threads(1)
    endpoint = Endpoint(1, transport)
    try:
        conn.send(endpoint.address)
        for res in _receive_bundles(endpoint, count, timeout_s, keep_states=False):
            conn.send(res)
    finally:
        endpoint.close()
        conn.close()


def ship_states(bundles: Sequence[EncodedState], mode: str = "process", timeout_s: float = 120.0
                ) -> list[dict[str, Any]]:
    """Send every bundle from an Endpoint here (stage 0) to another Endpoint (stage 1) over the real edge
    transport on loopback with ``TensorRole.WEIGHT``: in a child process (``process``) or a thread of this one
    (``thread``; the results then include the received ``state``). Returns per bundle: payload and measured wire
    bytes, seconds from the first send until the receiver verified every checksum, and the receiver's report.

    Raises RuntimeError when the receiver fails (e.g. a checksum mismatch), TimeoutError when it does not answer.
    """
    transport = TransportConfig(token=secrets.token_hex(16))
    sender = Endpoint(0, transport)
    child = None
    results: list[dict[str, Any]] = []
    thread_results: list[dict[str, Any]] = []
    try:
        if mode == "process":
            ctx = multiprocessing.get_context("spawn")
            parent, child_conn = ctx.Pipe()
            child = ctx.Process(target=_receiver_process, args=(child_conn, transport, len(bundles), timeout_s),
                                daemon=True)
            child.start()
            child_conn.close()
            if not parent.poll(timeout_s):
                raise TimeoutError(f"the weight receiver did not start within {timeout_s:.0f} s")
            address = parent.recv()

            def wait_result() -> dict[str, Any]:
                if not parent.poll(timeout_s):
                    raise TimeoutError(f"no answer from the weight receiver within {timeout_s:.0f} s")
                try:
                    return parent.recv()
                except EOFError:
                    raise RuntimeError(f"the weight receiver process exited (code {child.exitcode})") from None
        elif mode == "thread":
            receiver = Endpoint(1, transport)
            address = receiver.address
            done = threading.Semaphore(0)

            def serve() -> None:
                try:
                    for res in _receive_bundles(receiver, len(bundles), timeout_s, keep_states=True):
                        thread_results.append(res)
                        done.release()
                finally:
                    receiver.close()

            threading.Thread(target=serve, name="weight-receiver", daemon=True).start()

            def wait_result() -> dict[str, Any]:
                if not done.acquire(timeout=timeout_s):
                    raise TimeoutError(f"no answer from the weight receiver within {timeout_s:.0f} s")
                return thread_results[len(results)]
        else:
            raise ValueError(f"ship mode must be process or thread, got {mode!r}")
        sender.connect({1: address})
        for seq, bundle in enumerate(bundles, start=1):
            before = _sent_wire_bytes(sender)
            t0 = time.perf_counter()
            for mb, part in enumerate(bundle.frames()):
                sender.send(1, TensorRole.WEIGHT, seq, mb, part.source, part.spec, timeout_s)
            sender.flush(timeout_s)
            res = wait_result()
            seconds = time.perf_counter() - t0
            if not res.get("ok"):
                raise RuntimeError(f"weight transfer {seq} rejected by the receiver: {res.get('error')}")
            res.update(seconds=seconds, payload_bytes=bundle.nbytes, raw_bytes=bundle.raw_nbytes,
                       wire_bytes=_sent_wire_bytes(sender) - before, frames=len(bundle.frames()))
            results.append(res)
    finally:
        sender.close()
        if child is not None:
            child.join(timeout=10)
            if child.is_alive():
                child.terminate()
    return results


def _sent_wire_bytes(endpoint: Endpoint) -> int:
    return sum(s.wire_bytes for s in endpoint.meter.snapshot()
               if s.role is TensorRole.WEIGHT and s.direction is Direction.SEND)


# ---- outputs ----------------------------------------------------------------------------------------------------


def write_pruned(cfg: RunConfig, parts: Sequence[Partition], out_dir: Path) -> dict[str, str]:
    """``model.safetensors`` (native keys) and ``pruned.yaml`` (the run config with the pruned model) in
    ``out_dir``; returns their paths and the command that trains the pruned model on Ray."""
    try:
        from safetensors.torch import save_file
    except ImportError:  # pragma: no cover - safetensors comes with the hf extra
        return {"error": "writing the pruned model needs safetensors (pip install 'layeredge-dist[hf]')"}

    out_dir.mkdir(parents=True, exist_ok=True)
    model = parts[0].spec.model
    native = merge_state_dicts(model, parts[0].spec.cuts, [p.state_dict() for p in parts])
    weights = (out_dir / "model.safetensors").resolve()
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in native.items()}, str(weights))
    model_cfg = dataclasses.replace(cfg.model, config=dict(model.config), weights=str(weights))
    pruned_cfg = dataclasses.replace(cfg, model=model_cfg, run_dir=str((out_dir / "run").resolve()))
    config_path = out_dir / "pruned.yaml"
    config_path.write_text(dump_yaml(pruned_cfg))
    return {"weights": str(weights), "config": str(config_path),
            "train_command": f"layeredge train --config {config_path}"}


# ---- the whole job ----------------------------------------------------------------------------------------------


def _optimizer(cfg: RunConfig, lr: float | None) -> OptimizerSpec:
    t = cfg.train
    return OptimizerSpec(t.optimizer, lr if lr is not None else t.lr, t.momentum, t.weight_decay)


def run(cfg: RunConfig, opts: PruneOptions, log: Log = lambda _t: None) -> dict[str, Any]:
    """The whole job (see the module docstring); returns a JSON-compatible report."""
    from . import setup

    t_start = time.perf_counter()
    spec = setup.stage_spec(cfg)
    workload = setup.workload(cfg)
    m = spec.microbatches
    steps = cfg.train.steps if opts.train_steps is None else opts.train_steps
    out_dir = Path(opts.out_dir or Path(cfg.run_dir) / "pruned")
    baseline, base_info = load_or_train(cfg, spec, steps, opts.use_checkpoint, log, out_dir / "baseline.pt")
    if len(baseline) < 2:
        raise ValueError("the run has one stage: there is no cut to prune (set pipeline.stages >= 2)")
    start = int(base_info["steps"])
    batches = workload.val_batches(opts.calib_batches + opts.eval_batches)
    calib, held = batches[:opts.calib_batches], batches[opts.calib_batches:]
    optimizer = _optimizer(cfg, opts.finetune_lr)
    loss_base = val_loss(baseline, held)
    log(f"baseline validation loss {loss_base:.4f} ({base_info['source']}, {start} steps)")
    shapes_before = _cut_shapes(baseline, calib[0], m)

    # cuts
    pruned, actions = shrink_cuts(copy.deepcopy(baseline), opts.cut_rank, calib, m, opts.init)
    mlp: dict[str, Any] | None = None
    if opts.mlp_hidden > 0:
        scores = mlp_hidden_scores(pruned, calib, m)
        if scores:
            keep = mlp_keep(scores, opts.mlp_hidden)
            pruned = prune_mlp_hidden(pruned, keep)
            mlp = {"fraction": opts.mlp_hidden, "blocks": sorted(keep),
                   "hidden_after": {str(i): int(k.numel()) for i, k in keep.items()}}
    loss_cuts = val_loss(pruned, held)
    log(f"after pruning the cuts: {loss_cuts:.4f}")

    # weights
    masks: list[dict[str, torch.Tensor]] = [{} for _ in pruned]
    weights: dict[str, Any] | None = None
    if opts.weight_sparsity > 0 or ":" in opts.weight_method:
        if opts.weight_method == "taylor":
            accumulate_gradients(pruned, calib, m)
        # every weight matrix except the cut projections (small, and what carries the edge)
        masks = [prune_masks(p, opts.weight_method, {n: opts.weight_sparsity for n, q in p.named_parameters()
                                                     if q.dim() >= 2 and not _is_projection(n)}) for p in pruned]
        for p, mk in zip(pruned, masks):
            p.zero_grad(set_to_none=True)
            apply_masks(p, mk)
        reports = [sparsity_report(p, mk) for p, mk in zip(pruned, masks)]
        total = sum(r["masked_elements"] for r in reports)
        weights = {"method": opts.weight_method, "sparsity_target": opts.weight_sparsity,
                   "tensors": sum(r["tensors"] for r in reports),
                   "sparsity_masked": sum(r["pruned_elements"] for r in reports) / total if total else 0.0,
                   "sparsity_all": sum(r["pruned_elements"] for r in reports)
                   / max(1, sum(q.numel() for p in pruned for q in p.parameters()))}
    loss_pruned = val_loss(pruned, held)
    log(f"after pruning: {loss_pruned:.4f}; fine-tuning {opts.finetune_steps} steps ...")

    # recovery, and the fair reference
    on_pipeline: dict[str, Any] | None = None
    if opts.finetune_on == "pipeline" and opts.finetune_steps > 0:
        ft_losses, on_pipeline = finetune_on_pipeline(cfg, spec, pruned, workload, optimizer, start,
                                                      opts.finetune_steps, held, opts.push_codec, log)
    else:
        ft_losses = finetune(pruned, workload, optimizer, start, opts.finetune_steps, m, masks,
                             opts.projection_lr_scale)
    loss_ft = val_loss(pruned, held)
    if weights is not None:  # the masks held through every optimizer step
        after = [sparsity_report(p, mk) for p, mk in zip(pruned, masks)]
        weights["zeros_after_finetune"] = sum(r["zeros_in_masked"] for r in after)
        weights["pruned_elements"] = sum(r["pruned_elements"] for r in after)
    log(f"pruned + fine-tuned: {loss_ft:.4f}; fine-tuning the unpruned model the same {opts.finetune_steps} steps ...")
    reference = copy.deepcopy(baseline)
    ref_losses = finetune(reference, workload, optimizer, start, opts.finetune_steps, m)
    loss_ref = val_loss(reference, held)
    log(f"unpruned + fine-tuned: {loss_ref:.4f}")
    shapes_after = _cut_shapes(pruned, calib[0], m)

    curve = []
    for frac in opts.curve:
        if frac == opts.cut_rank and weights is None and mlp is None:  # the main run measured exactly this
            variant, acts, before_ft, after_ft = pruned, actions, loss_cuts, loss_ft
        else:
            variant, acts = shrink_cuts(copy.deepcopy(baseline), frac, calib, m, opts.init)
            if all(a["action"] == "none" for a in acts):  # nothing removed: the unpruned model and its fine-tuning
                before_ft, after_ft = loss_base, loss_ref
            else:
                before_ft = val_loss(variant, held)
                finetune(variant, workload, optimizer, start, opts.finetune_steps, m,
                         projection_lr_scale=opts.projection_lr_scale)
                after_ft = val_loss(variant, held)
        shapes = _cut_shapes(variant, calib[0], m)
        curve.append({"rank_fraction": frac, "channels": [a["channels_after"] for a in acts],
                      "edge_bytes_per_step": sum(2 * 4 * m * int(torch.Size(s).numel()) for s in shapes),
                      "val_loss": before_ft, "val_loss_finetuned": after_ft,
                      "gap_vs_unpruned_finetuned": after_ft / loss_ref - 1.0})
        log(f"curve r={frac:g}: {before_ft:.4f} -> {after_ft:.4f} after fine-tuning")

    # weight transfer
    policy = TransferPolicy(opts.weight_codec, sparse_codec=opts.sparse_codec)
    bundles = [encode_state(p.state_dict(), policy, masks=mk) for p, mk in zip(pruned, masks)]
    transfer: dict[str, Any] = {"codec": opts.weight_codec, "sparse_codec": opts.sparse_codec or opts.weight_codec,
                                "stages": [dict(summary(b), stage=s) for s, b in enumerate(bundles)]}
    if opts.ship != "none":
        log(f"shipping {len(bundles)} partition states over the edge transport ({opts.ship}) ...")
        shipped = ship_states(bundles, opts.ship)
        for row, res in zip(transfer["stages"], shipped):
            row.update(wire_bytes=res["wire_bytes"], seconds=res["seconds"], verified=res["ok"])
    raw = sum(b.raw_nbytes for b in bundles)
    payload = sum(b.nbytes for b in bundles)
    transfer.update(raw_bytes=raw, payload_bytes=payload, ratio=raw / payload if payload else None)
    if opts.ship != "none":
        transfer["wire_bytes"] = sum(r["wire_bytes"] for r in transfer["stages"])

    outputs = write_pruned(cfg, pruned, out_dir)
    edges = edge_rows(spec, shapes_before, shapes_after, actions)
    return {
        "model": {"family": spec.model.family, "cuts": list(spec.cuts), "stages": len(baseline),
                  "prune": pruned[0].spec.model.config.get("prune", {})},
        "baseline": base_info,
        "options": dataclasses.asdict(opts),
        "edges": edges,
        "edge_bytes_per_step": {"before": sum(e["fp32_bytes_per_step_before"] for e in edges),
                                "after": sum(e["fp32_bytes_per_step_after"] for e in edges)},
        "loss": {"baseline": loss_base, "after_cut_pruning": loss_cuts, "after_pruning": loss_pruned,
                 "finetuned": loss_ft, "unpruned_finetuned": loss_ref,
                 "gap_vs_unpruned_finetuned": loss_ft / loss_ref - 1.0, "gap_vs_baseline": loss_ft / loss_base - 1.0},
        "finetune": {"steps": opts.finetune_steps, "start_step": start, "lr": optimizer.lr,
                     "on": opts.finetune_on, "pipeline": on_pipeline,
                     "projection_lr_scale": opts.projection_lr_scale,
                     "optimizer": optimizer.name,
                     "train_loss_first": ft_losses[0] if ft_losses else None,
                     "train_loss_last": ft_losses[-1] if ft_losses else None,
                     "reference_train_loss_last": ref_losses[-1] if ref_losses else None},
        "mlp": mlp,
        "weights": weights,
        "curve": curve,
        "transfer": transfer,
        "outputs": outputs,
        "eval_batches": opts.eval_batches, "calib_batches": opts.calib_batches,
        "wall_s": time.perf_counter() - t_start,
    }

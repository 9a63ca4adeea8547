"""Where the network time of a pipeline goes, and what is safe to compress, per edge (``layeredge profile``).

Two measurements, combined by :func:`profile` into one JSON-compatible dict (floats, ints, strings, lists, dicts;
an undefined figure is ``None``):

- :func:`calibrate` (in-process, no Ray): builds every (virtual) stage's partition of the configured model and
  cuts, optionally trains them a few steps with the run's optimizer, then on held-out calibration batches measures
  per cut and direction (forward = activation, backward = activation-gradient) the traffic a training step makes
  (elements, raw bytes, wire bytes per codec from the codec's exact bits per element), the measured sensitivity
  per codec (:func:`~layeredge_dist.measure.edge_sensitivity`), the online proxy per codec
  (:func:`~layeredge_dist.measure.chain_proxies`), activation statistics, channel importance, per-stage weight
  importance, and the Spearman rank correlation of proxy vs. sensitivity over all (cut, codec) pairs.
- :func:`measure_pipeline` (on a Ray cluster the caller has connected to): a real :class:`Pipeline`, a few
  training steps, then per edge the bytes and transfer seconds per step, the achieved bandwidth and share of the
  step time; per stage the forward / backward / optimizer / idle seconds and the bubble fraction; link RTT and
  bandwidth from a probe; memory per stage.

:func:`format_profile` renders the dict as text tables and :func:`plot_profile` as one PNG (matplotlib, the
``bench`` extra, imported lazily).

Units: bytes, seconds, bytes per second, nats (loss deltas), bits per element. Ray and the driver are imported
only inside :func:`measure_pipeline`, so calibration and formatting never touch Ray.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from layeredge_dist.config import RunConfig
from layeredge_dist.measure import (
    ChannelAccumulator,
    StatsAccumulator,
    chain_proxies,
    edge_sensitivity,
    roundtrip,
    spearman,
    weight_importance,
)
from layeredge_dist.model import (
    Partition,
    Workload,
    build_partition,
    family_for,
    partition_specs,
    split_batch,
    stage_blocks,
    train_chain,
)

#: Codecs profiled when none are given.
DEFAULT_CODECS: tuple[str, ...] = ("fp16", "bf16", "int8", "int4", "int2", "topk:0.1+int8")
#: Channels listed at each end of the channel-importance ranking.
TOP_CHANNELS = 5
#: Parameter tensors listed per stage in the weight-importance summary.
TOP_TENSORS = 5
#: Pipeline steps run (and not counted) before the measured ones: connection set-up, first allocations.
WARMUP_STEPS = 1
DIRECTIONS = ("forward", "backward")


# ---- helpers ---------------------------------------------------------------------------------------------------


def _num(v: float | None) -> float | None:
    """A JSON number: NaN and infinities become None."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _clean(v: Any) -> Any:
    """Deep-convert ``v`` into JSON-compatible values (tuples to lists, non-finite floats to None)."""
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, torch.Tensor):
        return _clean(v.tolist())
    raise TypeError(f"{type(v).__name__} value {v!r} is not JSON-compatible")


def _edge_name(src: int, dst: int) -> str:
    return f"s{src}->s{dst}"


def _cut_edges(num_stages: int, num_cuts: int) -> list[tuple[int, int]]:
    """Physical (src, dst) stage pair of every cut: virtual stage ``v`` runs on stage ``v % num_stages``."""
    return [(k % num_stages, (k + 1) % num_stages) for k in range(num_cuts)]


def _stage_of_block(num_blocks: int, cuts: Sequence[int], num_stages: int) -> list[int]:
    """Physical stage hosting each block."""
    owner = [0] * num_blocks
    for v, blocks in enumerate(stage_blocks(num_blocks, cuts)):
        for b in blocks:
            owner[b] = v % num_stages
    return owner


def _half_mass_fraction(scores: torch.Tensor) -> float | None:
    """Smallest fraction of channels whose scores sum to at least half the total (None when the total is 0)."""
    s = scores.detach().to(torch.float64).abs().reshape(-1)
    total = float(s.sum())
    if s.numel() == 0 or not math.isfinite(total) or total <= 0:
        return None
    cum = torch.cumsum(torch.sort(s, descending=True).values, 0)  # (C,)
    needed = int(torch.searchsorted(cum, torch.tensor(0.5 * total, dtype=torch.float64)).item()) + 1
    return min(needed, s.numel()) / s.numel()


def _channel_summary(acc: ChannelAccumulator) -> dict[str, Any]:
    """Top / bottom channels by Taylor importance (L2 when no gradient) and the half-mass fraction."""
    res = acc.result()
    score = res.taylor if res.taylor is not None else res.l2
    order = torch.sort(score, descending=True, stable=True).indices
    k = min(TOP_CHANNELS, res.channels)
    top = [int(i) for i in order[:k]]
    bottom = [int(i) for i in order[-k:].flip(0)]
    total = float(score.sum())
    return {
        "channels": res.channels,
        "criterion": "taylor" if res.taylor is not None else "l2",
        "top": [{"channel": i, "score": float(score[i])} for i in top],
        "bottom": [{"channel": i, "score": float(score[i])} for i in bottom],
        "fraction_for_half_importance": _half_mass_fraction(score),
        "top_share": (sum(float(score[i]) for i in top) / total) if total > 0 else None,
        "l2_half_mass_fraction": _half_mass_fraction(res.l2),
    }


def _weights_summary(parts: Sequence[Partition], num_stages: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per physical stage: parameter count, Taylor total and share, top tensors; and Taylor per block (``b3``,
    ``pre``, ``post``). Needs ``.grad`` set on the parameters (magnitudes only where it is not)."""
    per_block: dict[str, float] = {}
    stages: list[dict[str, Any]] = [
        {"stage": s, "virtual_stages": [], "blocks": [], "parameters": 0, "taylor_total": 0.0, "tensors": []}
        for s in range(num_stages)
    ]
    for v, part in enumerate(parts):
        st = stages[v % num_stages]
        st["virtual_stages"].append(v)
        st["blocks"].extend(list(part.block_indices))
        for name, imp in weight_importance(part).items():
            numel = math.prod(imp.shape) if imp.shape else 1
            st["parameters"] += numel
            taylor = imp.taylor or 0.0
            st["taylor_total"] += taylor
            head, _, rest = name.partition(".")
            key = f"b{part.first_block + int(rest.split('.')[0])}" if head == "blocks" else head
            per_block[key] = per_block.get(key, 0.0) + taylor
            st["tensors"].append({"name": f"v{v}.{name}" if len(parts) > num_stages else name,
                                  "shape": list(imp.shape), "rms": imp.l2_mean, "mean_abs": imp.l1_mean,
                                  "taylor": imp.taylor})
    grand = sum(st["taylor_total"] for st in stages)
    for st in stages:
        st["taylor_share"] = st["taylor_total"] / grand if grand > 0 else None
        st["tensors"] = sorted(st["tensors"], key=lambda t: -(t["taylor"] or 0.0))[:TOP_TENSORS]
    return stages, per_block


# ---- calibration (in-process) ----------------------------------------------------------------------------------


def trained_partitions(cfg: RunConfig, train_steps: int) -> tuple[list[Partition], Workload, list[float]]:
    """Every stage's partition of ``cfg``'s model, in this process, trained ``train_steps`` steps exactly as the
    pipeline would (the workload's batch of each step, the run's micro-batching and optimizer). Returns the
    partitions (train mode, gradients cleared), the workload and the loss of each step."""
    from . import setup

    base = setup.stage_spec(cfg)
    workload = setup.workload(cfg)
    parts = [build_partition(p) for p in partition_specs(base.model, tuple(base.cuts))]
    params = [p for part in parts for p in part.parameters() if p.requires_grad]
    losses: list[float] = []
    if train_steps > 0 and params:
        opt = base.optimizer.build(params)
        for part in parts:
            part.train()
        for step in range(train_steps):
            xs, sides = split_batch(workload.batch(step), base.microbatches)
            opt.zero_grad(set_to_none=True)
            losses.append(train_chain(parts, xs, sides).loss)
            opt.step()
        opt.zero_grad(set_to_none=True)
    return parts, workload, losses


def calibrate(cfg: RunConfig, codecs: Sequence[str], batches: int, train_steps: int) -> dict[str, Any]:
    """Per-edge traffic, sensitivity and importance of the configured model, measured in this process (no Ray).

    Steps:

    1. Build the partition of every virtual stage (``build_partition`` of each PartitionSpec of the model and the
       cuts of ``setup.stage_spec(cfg)``).
    2. With ``train_steps > 0``, train them that many steps as the pipeline would: the workload's batch of step
       ``k``, split into ``pipeline.microbatches`` micro-batches, through
       :func:`~layeredge_dist.model.train_chain`, then one step of the run's optimizer (``train.optimizer``,
       ``lr``, ``momentum``, ``weight_decay``). 0 keeps the seeded initialisation.
    3. On ``batches`` held-out calibration batches (``workload.val_batches``; each run as one micro-batch of
       ``data.batch_size`` samples, partitions in eval mode): per cut and direction the elements per micro-batch
       and per step, raw bytes per step (the tensor's own dtype), wire bytes per step per codec (exact payload
       bits per element of micro-batch-sized encodings, frame headers excluded), activation (or gradient)
       statistics; forward: channel importance of the activation (Taylor ``|sum a * g|`` per channel), measured
       sensitivity (loss delta ``L(compressed) - L(exact)`` in nats, mean ± standard error over batches; output
       distance ``1 - cos`` and KL of the model output: exactly what ``edge_sensitivity(mode="infer")`` computes,
       taken from the same train-mode pass) and the proxy (``taylor_sq_mean``, ``taylor_abs_mean``); backward:
       the relative error of the upstream parameter gradients when the gradient crossing the cut is compressed,
       and the proxy ``rel_mse`` of that gradient. Per stage: weight importance (RMS, mean |w|, Taylor
       ``sum |w * grad|`` of the mean calibration-batch gradient).
    4. Spearman rank correlation over all (cut, codec) pairs: ``taylor_sq_mean`` vs ``|mean loss delta|``
       (``forward``), ``taylor_abs_mean`` vs ``mean |loss delta|`` (``forward_abs``), ``rel_mse`` vs gradient
       error (``backward``); None where undefined (fewer than two pairs or a constant side).

    Args:
        cfg: the run (model, cuts, micro-batches, data, optimizer).
        codecs: codec spec strings; CodecError for a bad one, ValueError for duplicates.
        batches: calibration batches, >= 1 (ValueError otherwise).
        train_steps: optimizer steps before measuring, >= 0 (ValueError otherwise).

    Returns the JSON-compatible dict described in the module docstring (key ``edges``: one entry per (cut,
    direction)). Raises ValueError for a model with no cuts (one stage), CodecError when a codec cannot carry a
    cut's tensor (e.g. an integer tensor), and what building the model or loading the corpus raises.
    """
    from . import setup

    if batches < 1:
        raise ValueError(f"need at least one calibration batch, got {batches}")
    if train_steps < 0:
        raise ValueError(f"train_steps must be >= 0, got {train_steps}")
    specs = list(codecs)
    if len(set(specs)) != len(specs):
        raise ValueError(f"duplicate codec specs in {specs}")
    t_start = time.perf_counter()
    base = setup.stage_spec(cfg)
    model, cuts = base.model, tuple(base.cuts)
    if not cuts:
        raise ValueError("the model has a single stage: there is no edge to profile (pipeline.stages >= 2)")
    num_stages, m = base.num_stages, base.microbatches
    family = family_for(model.family, model.config)
    t_train = time.perf_counter()
    parts, workload, losses = trained_partitions(cfg, train_steps)  # 2. train as the pipeline does
    params = [p for part in parts for p in part.parameters() if p.requires_grad]
    train_s = time.perf_counter() - t_train

    # 3. calibration batches: traffic, statistics, channel and weight importance (one forward + backward each)
    cal = workload.val_batches(batches)
    n_cuts = len(cuts)
    mb_size = cal[0][0].shape[0] // m if cal[0][0].dim() > 0 else 1
    act_stats = [StatsAccumulator() for _ in range(n_cuts)]
    grad_stats = [StatsAccumulator() for _ in range(n_cuts)]
    chans = [ChannelAccumulator() for _ in range(n_cuts)]
    bits: dict[tuple[int, str, str], list[float]] = {}
    shapes: list[dict[str, Any]] = [{} for _ in range(n_cuts)]
    modes = [part.training for part in parts]
    t_cal = time.perf_counter()
    try:
        for part in parts:
            part.eval()
        for p in params:
            p.grad = None
        for bi, (x, side) in enumerate(cal):
            step = train_chain(parts, [x], [dict(side)])
            for k in range(n_cuts):
                a, g = step.activations[k][0], step.gradients[k][0]
                act_stats[k].add(a)
                grad_stats[k].add(g)
                chans[k].add(a, g)
                if not shapes[k]:
                    shapes[k] = {"shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch."),
                                 "itemsize": a.element_size(), "batch": int(a.shape[0]) if a.dim() else 1}
                # exact wire bits of micro-batch-sized tensors, as the pipeline sends them
                a_mb, g_mb = (a[:mb_size], g[:mb_size]) if a.dim() else (a, g)  # (B/m, ...)
                for spec in specs:
                    bits.setdefault((k, "forward", spec), []).append(roundtrip(spec, a_mb, seed=bi)[1])
                    bits.setdefault((k, "backward", spec), []).append(roundtrip(spec, g_mb, seed=bi)[1])
        for p in params:  # mean gradient over the calibration batches, for weight Taylor importance
            if p.grad is not None:
                p.grad /= len(cal)
        stages_w, per_block = _weights_summary(parts, num_stages)
    finally:
        for p in params:
            p.grad = None
        for part, mode in zip(parts, modes):
            part.train(mode)
    stats_s = time.perf_counter() - t_cal

    t_sens = time.perf_counter()
    table = edge_sensitivity(model, cuts, cal, specs, mode="train", parts=parts)
    sens_s = time.perf_counter() - t_sens
    t_proxy = time.perf_counter()
    proxies = chain_proxies(parts, cal, specs)
    proxy_s = time.perf_counter() - t_proxy

    # assemble one entry per (cut, direction)
    links = _cut_edges(num_stages, n_cuts)
    edges: list[dict[str, Any]] = []
    for k in range(n_cuts):
        info = shapes[k]
        per_sample = math.prod(info["shape"][1:]) if len(info["shape"]) > 1 else 1
        per_mb = per_sample * mb_size
        per_step = per_mb * m
        raw_step = per_step * info["itemsize"]
        src, dst = links[k]
        for direction in DIRECTIONS:
            fwd = direction == "forward"
            rows: dict[str, Any] = {}
            for spec in specs:
                b = statistics.fmean(bits[(k, direction, spec)])
                wire = per_step * b / 8.0
                e = table.get(k, spec)
                pv = proxies[k][spec]
                if fwd:
                    sens = {"loss_delta_mean": e.loss_delta_mean, "loss_delta_stderr": e.loss_delta_stderr,
                            "loss_delta_abs_mean": e.loss_delta_abs_mean,
                            "output_cos_dist_mean": e.cos_dist_mean, "output_cos_dist_stderr": e.cos_dist_stderr,
                            "output_kl_mean": e.kl_mean, "output_kl_stderr": e.kl_stderr}
                    prox = {"taylor_sq_mean": pv.taylor_sq_mean, "taylor_abs_mean": pv.taylor_abs_mean,
                            "taylor_mean": pv.taylor_mean, "rel_mse": pv.act_rel_mse}
                else:
                    sens = {"grad_rel_error_mean": e.grad_rel_error_mean,
                            "grad_rel_error_stderr": e.grad_rel_error_stderr}
                    prox = {"rel_mse": pv.rel_mse}
                rows[spec] = {"bits_per_element": b, "wire_bytes_per_step": wire,
                              "ratio": raw_step / wire if wire > 0 else None, "sensitivity": sens, "proxy": prox}
            entry: dict[str, Any] = {
                "cut": k, "block": cuts[k], "edge": _edge_name(src, dst) if fwd else _edge_name(dst, src),
                "link": _edge_name(src, dst), "direction": direction, "role": "activation" if fwd else "gradient",
                "shape": info["shape"], "dtype": info["dtype"], "elements_per_microbatch": per_mb,
                "elements_per_step": per_step, "raw_bytes_per_step": raw_step,
                "stats": (act_stats[k] if fwd else grad_stats[k]).result().to_dict(), "codecs": rows,
            }
            if fwd:
                entry["channels"] = _channel_summary(chans[k])
            edges.append(entry)

    def rho(xs: list[float | None], ys: list[float | None]) -> float | None:
        pairs = [(x, y) for x, y in zip(xs, ys) if _num(x) is not None and _num(y) is not None]
        return _num(spearman([p[0] for p in pairs], [p[1] for p in pairs])) if len(pairs) >= 2 else None

    pairs = [(k, c) for k in range(n_cuts) for c in specs]
    fwd_meas = [None if table.get(k, c).loss_delta_mean is None else abs(table.get(k, c).loss_delta_mean or 0.0)
                for k, c in pairs]
    spear = {
        "forward": rho([proxies[k][c].taylor_sq_mean for k, c in pairs], fwd_meas),
        "forward_abs": rho([proxies[k][c].taylor_abs_mean for k, c in pairs],
                           [table.get(k, c).loss_delta_abs_mean for k, c in pairs]),
        "backward": rho([proxies[k][c].rel_mse for k, c in pairs],
                        [table.get(k, c).grad_rel_error_mean for k, c in pairs]),
        "pairs": len(pairs),
        "forward_definition": "Spearman(taylor_sq_mean, |mean loss delta|) over (cut, codec) pairs",
    }
    num_blocks = family.num_blocks
    return _clean({
        "model": {"family": model.family, "config": model.config, "seed": model.seed,
                  "num_blocks": num_blocks, "has_pre": family.has_pre, "has_post": family.has_post,
                  "parameters": sum(p.numel() for p in params)},
        "cuts": list(cuts), "stages": num_stages, "chunks": base.chunks, "microbatches": m,
        "microbatch_size": mb_size, "batch_size": cfg.data.batch_size, "codecs": specs,
        "block_stage": _stage_of_block(num_blocks, cuts, num_stages),
        "optimizer": {"name": base.optimizer.name, "lr": base.optimizer.lr},
        "train_steps": train_steps, "train_losses": losses, "calibration_batches": len(cal),
        "exact_loss": table.exact_loss, "exact_loss_stderr": table.exact_loss_stderr,
        "edges": edges, "weights": stages_w, "block_taylor": per_block, "spearman": spear,
        "seconds": {"train": train_s, "stats": stats_s, "sensitivity": sens_s, "proxy": proxy_s,
                    "total": time.perf_counter() - t_start},
        "sensitivity_cost": dict(table.cost.__dict__),
    })


# ---- measurement on the pipeline (Ray) -------------------------------------------------------------------------


def _stats_key(s: Any) -> tuple[str, str, str, str]:
    return (str(s.edge), s.role.value, s.direction.value, s.codec)


def measure_pipeline(cfg: RunConfig, steps: int) -> dict[str, Any]:
    """Traffic and time of a real pipeline of Ray stage actors; the caller must have connected to Ray
    (:func:`~layeredge_dist.pipeline.cluster.connect`).

    Starts a :class:`~layeredge_dist.pipeline.driver.Pipeline` from ``setup`` (the run's codecs on every edge),
    runs :data:`WARMUP_STEPS` training step(s) that are not counted, then ``steps`` training steps on the
    workload's batches, and reports, with counters differenced around the measured steps:

    - ``edges``: per stage-to-stage edge, role and codec, sender's view: raw and wire bytes per step, transfer,
      encode and (receiver's) decode seconds per step, achieved bandwidth (wire bytes / transfer seconds, None
      without transfer time) and ``share_of_step`` = transfer seconds per step / step time p50. The sender's
      transfer time of a frame runs from ``send()`` to the moment its ack is *read*; frames of a step overlap each
      other and compute, and the TCP data path reads acks lazily (at the next send or flush), so on that path this
      is an upper bound that can exceed the step time. Two bounds from the other side come with it:
      ``recv_transfer_s_per_step`` (receiver: header to last byte of each frame, a lower bound that misses
      latency) and ``link_est_s_per_step`` = wire bytes / probed link bandwidth + frames * RTT / 2, with
      ``link_share_of_step`` = that / step time p50 (what the link itself costs per step);
      ``host_edges``: the driver's inputs and losses, same fields without the link figures;
    - ``stages``: per stage and step (median over steps): total, forward, backward, optimizer, idle (blocked in
      receives) and other (encode / send / bookkeeping) seconds, and ``bubble_fraction`` = idle / total;
    - ``links``: :meth:`Pipeline.probe_links` RTT (s) and bandwidth (bytes/s) of every link;
    - ``memory``: :meth:`Pipeline.memory` per stage; ``step_seconds`` and their p50.

    Raises ValueError when ``steps < 1``; StageFailure when a stage fails; ClusterError when the placement is
    impossible on the connected cluster.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    from . import setup
    from .driver import Pipeline

    spec = setup.stage_spec(cfg)
    workload = setup.workload(cfg)
    num_stages = spec.num_stages
    with Pipeline(spec, setup.placement(cfg)) as pipe:
        for k in range(WARMUP_STEPS):
            pipe.call(workload.batch(k), "train")
        before = {_stats_key(s): s for s in pipe.stats()}
        step_s: list[float] = []
        reports: list[list[Any]] = []
        losses: list[float] = []
        for k in range(WARMUP_STEPS, WARMUP_STEPS + steps):
            res = pipe.call(workload.batch(k), "train")
            step_s.append(res.seconds)
            reports.append(sorted(res.reports, key=lambda r: r.stage))
            losses.append(float(torch.stack([o.float() for o in res.outputs]).mean()))
        after = pipe.stats()
        links = pipe.probe_links()
        memory = pipe.memory()
        infos = list(pipe.infos)

    p50 = statistics.median(step_s)
    # counters over the measured steps only
    probes = {(a, b): r for (a, b), r in links.items()}
    deltas: dict[tuple[str, str, str, str], dict[str, float]] = {}
    for s in after:
        key = _stats_key(s)
        b = before.get(key)
        deltas[key] = {f: float(getattr(s, f)) - (float(getattr(b, f)) if b is not None else 0.0)
                       for f in ("elements", "raw_bytes", "wire_bytes", "encode_s", "decode_s", "transfer_s")}
    edges: list[dict[str, Any]] = []
    host_edges: list[dict[str, Any]] = []
    n_cuts = len(spec.cuts)
    cut_links = _cut_edges(num_stages, n_cuts)
    for (edge, role, direction, codec), d in sorted(deltas.items()):
        if direction != "send":
            continue
        recv = deltas.get((edge, role, "recv", codec), {})
        src, dst = (int(x[1:]) for x in edge.split("->"))
        transfer = d["transfer_s"] / steps
        row: dict[str, Any] = {
            "edge": edge, "role": role, "codec": codec,
            "direction": "forward" if role == "activation" else "backward",
            "elements_per_step": d["elements"] / steps, "raw_bytes_per_step": d["raw_bytes"] / steps,
            "wire_bytes_per_step": d["wire_bytes"] / steps, "transfer_s_per_step": transfer,
            "encode_s_per_step": d["encode_s"] / steps, "decode_s_per_step": recv.get("decode_s", 0.0) / steps,
            "recv_transfer_s_per_step": recv.get("transfer_s", 0.0) / steps,
            "achieved_Bps": d["wire_bytes"] / d["transfer_s"] if d["transfer_s"] > 0 else None,
            "share_of_step": transfer / p50 if p50 > 0 else None,
        }
        if num_stages in (src, dst):
            host_edges.append(row)
            continue
        link = (src, dst) if role == "activation" else (dst, src)
        row["link"] = _edge_name(*link)
        row["cuts"] = [k for k, c in enumerate(cut_links) if c == link]
        pr = probes.get(link)
        frames = spec.microbatches * len(row["cuts"])  # one frame per micro-batch and cut on this link
        est = (row["wire_bytes_per_step"] / pr.bandwidth_Bps + frames * pr.rtt_s / 2
               if pr is not None and pr.bandwidth_Bps > 0 else None)
        row["frames_per_step"] = frames
        row["link_est_s_per_step"] = est
        row["link_share_of_step"] = est / p50 if est is not None and p50 > 0 else None
        edges.append(row)

    stages: list[dict[str, Any]] = []
    for s in range(num_stages):
        reps = [r[s] for r in reports if len(r) > s]

        def med(f: str, reps: list[Any] = reps) -> float:
            return statistics.median(float(getattr(r, f)) for r in reps) if reps else 0.0

        total, idle = med("total_s"), med("wait_s")
        fwd, bwd, opt = med("forward_s"), med("backward_s"), med("optimizer_s")
        bubbles = [r.wait_s / r.total_s for r in reps if r.total_s > 0]
        stages.append({
            "stage": s, "node_ip": infos[s].get("node_ip") if s < len(infos) else None,
            "device": infos[s].get("device") if s < len(infos) else None,
            "total_s": total, "forward_s": fwd, "backward_s": bwd, "optimizer_s": opt, "idle_s": idle,
            "other_s": max(total - idle - fwd - bwd - opt, 0.0),
            "bubble_fraction": min(max(statistics.median(bubbles), 0.0), 1.0) if bubbles else 0.0,
        })
    return _clean({
        "steps": steps, "warmup_steps": WARMUP_STEPS, "step_seconds": step_s, "step_seconds_p50": p50,
        "losses": losses, "schedule": spec.schedule, "microbatches": spec.microbatches,
        "codec_forward": spec.codecs.forward, "codec_backward": spec.codecs.backward,
        "edges": edges, "host_edges": host_edges, "stages": stages,
        "links": [{"link": _edge_name(a, b), "src": a, "dst": b, "rtt_s": r.rtt_s, "bandwidth_Bps": r.bandwidth_Bps,
                   "probe_bytes": r.probe_bytes} for (a, b), r in sorted(links.items())],
        "memory": [dict(m, stage=i) for i, m in enumerate(memory)],
    })


def profile(cfg: RunConfig, codecs: Sequence[str] = DEFAULT_CODECS, calib_batches: int = 4,
            calib_train_steps: int = 30, pipeline_steps: int = 10, use_pipeline: bool = True) -> dict[str, Any]:
    """:func:`calibrate` and, with ``use_pipeline``, :func:`measure_pipeline` (Ray must be connected) in one
    JSON-compatible dict: the calibration's keys plus ``pipeline`` (None without it). Raises what they raise."""
    out = calibrate(cfg, codecs, calib_batches, calib_train_steps)
    out["pipeline"] = measure_pipeline(cfg, pipeline_steps) if use_pipeline else None
    return out


# ---- rendering -------------------------------------------------------------------------------------------------

MB = 1e6


def _pm(mean: float | None, se: float | None, signed: bool = True) -> str:
    if mean is None:
        return "-"
    text = f"{mean:+.2e}" if signed else f"{mean:.2e}"
    return text + (f" ± {se:.1e}" if se is not None else "")


def _g(v: float | None, fmt: str = ".2e") -> str:
    return "-" if v is None else format(v, fmt)


def format_profile(doc: Mapping[str, Any]) -> str:
    """The profile as text: one table per cut (both directions, a row per codec), the pipeline's per-edge
    traffic with link bandwidth and share of step time, the stage time breakdown, and the Spearman line."""
    from .report import format_memory, table

    out: list[str] = []
    model = doc["model"]
    out.append(f"{model['family']} ({model['parameters']:,} parameters, {model['num_blocks']} blocks), cuts "
               f"{doc['cuts']} -> {doc['stages']} stages; {doc['microbatches']} micro-batches of "
               f"{doc['microbatch_size']}; calibrated after {doc['train_steps']} {doc['optimizer']['name']} steps "
               f"on {doc['calibration_batches']} held-out batches (exact loss {_g(doc['exact_loss'], '.4f')} nats)")
    by_cut: dict[int, dict[str, Mapping[str, Any]]] = {}
    for e in doc["edges"]:
        by_cut.setdefault(e["cut"], {})[e["direction"]] = e
    for k, dirs in sorted(by_cut.items()):
        f, b = dirs["forward"], dirs["backward"]
        ch = f.get("channels") or {}
        half = ch.get("fraction_for_half_importance")
        out.append("")
        out.append(f"cut {k}: {f['link']} before block {f['block']}; {f['dtype']} {f['shape'][1:]} per sample, "
                   f"{f['elements_per_step']:,} elements/step each way, raw {f['raw_bytes_per_step'] / MB:.2f} MB/step "
                   f"forward + {b['raw_bytes_per_step'] / MB:.2f} MB/step backward"
                   + (f"; {half:.0%} of channels carry half the Taylor importance" if half is not None else "")
                   + f"; activation kurtosis {_g(f['stats'].get('kurtosis'), '.1f')}")
        rows = []
        for spec in doc["codecs"]:
            fr, br = f["codecs"][spec], b["codecs"][spec]
            fs, bs = fr["sensitivity"], br["sensitivity"]
            rows.append([spec, f"{fr['bits_per_element']:.2f}", f"{fr['wire_bytes_per_step'] / MB:.3f}",
                         _pm(fs["loss_delta_mean"], fs["loss_delta_stderr"]), _g(fs["output_kl_mean"]),
                         _g(fr["proxy"]["taylor_sq_mean"]), f"{br['wire_bytes_per_step'] / MB:.3f}",
                         _pm(bs["grad_rel_error_mean"], bs["grad_rel_error_stderr"], signed=False),
                         _g(br["proxy"]["rel_mse"])])
        out.append(table(["codec", "bits/el", "fwd MB/step", "fwd loss delta (nats)", "out KL", "fwd proxy",
                          "bwd MB/step", "bwd grad rel err", "bwd proxy"], rows))
    sp = doc["spearman"]
    pipe = doc.get("pipeline")
    if pipe:
        bw = {lk["link"]: lk for lk in pipe["links"]}
        out.append("")
        out.append(f"pipeline: {pipe['steps']} training steps ({pipe['schedule']}, codecs fwd "
                   f"{pipe['codec_forward']} / bwd {pipe['codec_backward']}), step time p50 "
                   f"{pipe['step_seconds_p50'] * 1e3:.1f} ms")
        rows = []
        for e in pipe["edges"]:
            lk = bw.get(e["link"], {})
            rows.append([e["edge"], e["direction"], e["codec"], f"{e['raw_bytes_per_step'] / MB:.3f}",
                         f"{e['wire_bytes_per_step'] / MB:.3f}", f"{e['transfer_s_per_step'] * 1e3:.2f}",
                         _g(None if e["share_of_step"] is None else 100 * e["share_of_step"], ".0f"),
                         _g(None if e["achieved_Bps"] is None else e["achieved_Bps"] / MB, ".1f"),
                         f"{e['recv_transfer_s_per_step'] * 1e3:.2f}",
                         _g(None if lk.get("bandwidth_Bps") is None else lk["bandwidth_Bps"] / MB, ".0f"),
                         _g(None if lk.get("rtt_s") is None else lk["rtt_s"] * 1e3, ".2f"),
                         _g(None if e.get("link_est_s_per_step") is None else e["link_est_s_per_step"] * 1e3, ".2f"),
                         _g(None if e.get("link_share_of_step") is None else 100 * e["link_share_of_step"], ".1f")])
        out.append(table(["edge", "dir", "codec", "raw MB/step", "wire MB/step", "send->ack ms/step", "%",
                          "MB/s", "recv ms/step", "link MB/s", "RTT ms", "link est ms/step", "% of step"], rows,
                         left=3))
        out.append("send->ack: sender's time from send() to reading the ack, summed over frames (overlapping; an "
                   "upper bound); recv: receiver's header-to-last-byte time (a lower bound); link est: wire bytes "
                   "/ probed link bandwidth + frames x RTT/2; % of step = link est / step time p50")
        rows = [[f"s{s['stage']}", f"{s['total_s'] * 1e3:.1f}", f"{s['forward_s'] * 1e3:.1f}",
                 f"{s['backward_s'] * 1e3:.1f}", f"{s['optimizer_s'] * 1e3:.1f}", f"{s['other_s'] * 1e3:.1f}",
                 f"{s['idle_s'] * 1e3:.1f}", f"{s['bubble_fraction']:.0%}"] for s in pipe["stages"]]
        out.append("")
        out.append("stage time per step (median, ms)")
        out.append(table(["stage", "total", "forward", "backward", "optimizer", "other", "idle", "bubble"], rows))
        if pipe.get("memory"):
            out.append("")
            out.append("memory per stage\n" + format_memory(pipe["memory"]))
    out.append("")
    out.append(f"Spearman(proxy, measured sensitivity) over {sp['pairs']} (cut, codec) pairs: forward "
               f"{_g(sp['forward'], '.3f')} (mean |loss delta| vs mean |Taylor| {_g(sp['forward_abs'], '.3f')}), "
               f"backward {_g(sp['backward'], '.3f')}")
    return "\n".join(out)


def plot_profile(doc: Mapping[str, Any], path: str) -> str:
    """Write one PNG figure of the profile to ``path`` and return the path.

    Four panels share the x axis of layers (blocks; ``pre`` / ``post`` for embeddings and head), with stage
    spans shaded and the cuts marked: (1) Taylor importance of each block's weights (log), with the pipeline's
    per-stage forward / backward / idle times when measured; (2) bytes per training step crossing each cut, raw
    and per codec (forward + backward), annotated with the measured share of step time; (3) forward importance
    per cut and codec: measured |loss delta| (log, error bars = standard error) and the proxy (hollow markers,
    right axis); (4) the same for the backward direction (upstream gradient error, gradient rel. MSE proxy).
    A value of exactly 0 is drawn at a tenth of the smallest positive one.

    Raises RuntimeError naming the ``bench`` extra when matplotlib is not installed; OSError when the path cannot
    be written.
    """
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("--plot needs matplotlib: pip install 'layeredge-dist[bench]' (or matplotlib)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = doc["model"]
    n = int(model["num_blocks"])
    cuts = [int(c) for c in doc["cuts"]]
    codecs = list(doc["codecs"])
    owner = list(doc["block_stage"])
    n_stages = int(doc["stages"])
    colors = plt.get_cmap("tab10")
    x_lo = -1.0 if model.get("has_pre") else 0.0
    x_hi = n + 1.0 if model.get("has_post") else float(n)

    fig, axes = plt.subplots(4, 1, figsize=(max(10.0, 1.2 * (x_hi - x_lo) + 4), 14), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1.3, 1.3, 1.3]})

    # stage spans (in block coordinates, pre part left of block 0, post part right of the last block)
    spans: list[tuple[float, float, int]] = []
    bounds = [x_lo, *[float(c) for c in cuts], x_hi]
    for v in range(len(bounds) - 1):
        spans.append((bounds[v], bounds[v + 1], v % n_stages))
    for ax in axes:
        for a, b, s in spans:
            ax.axvspan(a, b, color=colors(s), alpha=0.08, lw=0)
        for c in cuts:
            ax.axvline(c, color="0.3", ls="--", lw=1)

    # (1) layers: weight Taylor importance per block, stage labels and times
    ax = axes[0]
    bt = doc.get("block_taylor") or {}
    xs, hs, cs = [], [], []
    for i in range(n):
        xs.append(i + 0.5)
        hs.append(bt.get(f"b{i}") or 0.0)
        cs.append(colors(owner[i]))
    if model.get("has_pre"):
        xs.append(-0.5)
        hs.append(bt.get("pre") or 0.0)
        cs.append(colors(0))
    if model.get("has_post"):
        xs.append(n + 0.5)
        hs.append(bt.get("post") or 0.0)
        cs.append(colors(owner[-1] if owner else n_stages - 1))
    positive = [h for h in hs if h > 0]
    pipe_present = bool(doc.get("pipeline"))
    floor = min(positive) / 10 if positive else 1e-12
    ax.bar(xs, [max(h, floor) for h in hs], width=0.7, color=cs, alpha=0.8)
    ax.set_yscale("log")
    if positive:
        ax.set_ylim(floor, max(positive) * (30 if pipe_present else 5))  # headroom for the stage labels
    ax.set_ylabel("weight Taylor\nΣ|w·∂L/∂w| per block")
    pipe = doc.get("pipeline")
    stage_t = {s["stage"]: s for s in pipe["stages"]} if pipe else {}
    for v, (a, b, s) in enumerate(spans):
        label = f"s{s}" + (f" (v{v})" if len(spans) > n_stages else "")
        if s in stage_t and v < n_stages:
            t = stage_t[s]
            label += (f"\nfwd {t['forward_s'] * 1e3:.0f} bwd {t['backward_s'] * 1e3:.0f} ms\n"
                      f"idle {t['idle_s'] * 1e3:.0f} ms, bubble {t['bubble_fraction']:.0%}")
        ax.text((a + b) / 2, 0.97, label, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)

    # (2) bytes per step crossing each cut: raw and per codec (forward + backward)
    ax = axes[1]
    by_cut: dict[int, dict[str, Mapping[str, Any]]] = {}
    for e in doc["edges"]:
        by_cut.setdefault(int(e["cut"]), {})[e["direction"]] = e
    series = ["raw", *codecs]
    width = 0.8 / len(series)
    offsets = [(j - (len(series) - 1) / 2) * width for j in range(len(series))]
    share: dict[int, float] = {}
    if pipe:
        for e in pipe["edges"]:
            for k in e.get("cuts", []):
                share[k] = share.get(k, 0.0) + (e.get("link_share_of_step") or 0.0) / max(1, len(e["cuts"]))
    for j, name in enumerate(series):
        vals = []
        for k in sorted(by_cut):
            dirs = by_cut[k]
            if name == "raw":
                vals.append(sum(d["raw_bytes_per_step"] for d in dirs.values()) / MB)
            else:
                vals.append(sum(d["codecs"][name]["wire_bytes_per_step"] for d in dirs.values()) / MB)
        ax.bar([cuts[k] + offsets[j] for k in sorted(by_cut)], vals, width=width * 0.95,
               color="0.55" if name == "raw" else plt.get_cmap("viridis")(j / max(1, len(series) - 1)),
               label=name, edgecolor="black" if name == "raw" else None, lw=0.5)
    for k in sorted(by_cut):
        raw = sum(d["raw_bytes_per_step"] for d in by_cut[k].values()) / MB
        txt = f"{raw:.2f} MB/step"
        if k in share:
            txt += f"\nlink est. {100 * share[k]:.1f}% of step"
        ax.annotate(txt, (cuts[k], raw), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
    ax.set_ylabel("MB per training step\n(forward + backward)")
    ax.margins(y=0.25)
    ax.legend(fontsize=8, ncol=min(len(series), 7), loc="upper left")

    # (3) forward, (4) backward: measured sensitivity per cut and codec (log) and the proxy (right axis)
    sp = doc["spearman"]
    panels = (
        ("forward", "loss_delta_mean", "loss_delta_stderr", "taylor_sq_mean",
         "|loss delta| (nats)\nfilled: measured ± s.e.", "proxy E[(Σ g·Δa)²]\nhollow ◇",
         f"forward (activations): loss change when only this edge is compressed; Spearman proxy vs measured "
         f"{_g(sp.get('forward'), '.2f')}"),
        ("backward", "grad_rel_error_mean", "grad_rel_error_stderr", "rel_mse",
         "upstream grad rel. error\nfilled: measured ± s.e.", "proxy ‖g−ĝ‖²/‖g‖²\nhollow ◇",
         f"backward (gradients): relative error of the upstream weight gradients; Spearman "
         f"{_g(sp.get('backward'), '.2f')}"),
    )
    ks = sorted(by_cut)
    for ax, (direction, mean_key, se_key, proxy_key, ylabel, y2label, title) in zip(axes[2:], panels):
        ax2 = ax.twinx()
        rows = {(k, c): by_cut[k][direction]["codecs"][c] for k in ks for c in codecs}
        pos = [abs(r["sensitivity"][mean_key]) for r in rows.values() if r["sensitivity"][mean_key]]
        s_floor = min(pos) / 10 if pos else 1e-12
        ppos = [r["proxy"][proxy_key] for r in rows.values() if r["proxy"][proxy_key]]
        p_floor = min(ppos) / 10 if ppos else 1e-12
        for j, c in enumerate(codecs):
            color = plt.get_cmap("viridis")((j + 1) / max(1, len(series) - 1))
            x = [cuts[k] + offsets[j + 1] for k in ks]
            sens = [rows[(k, c)]["sensitivity"] for k in ks]
            y = [max(abs(s[mean_key] or 0.0), s_floor) for s in sens]
            err = [min(s[se_key] or 0.0, 0.999 * yy) for s, yy in zip(sens, y)]  # a log axis cannot go below 0
            ax.errorbar(x, y, yerr=[err, [s[se_key] or 0.0 for s in sens]], fmt="o", color=color, ms=6, capsize=2,
                        label=c)
            py = [max(rows[(k, c)]["proxy"][proxy_key] or 0.0, p_floor) for k in ks]
            ax2.scatter([xx + 0.3 * width for xx in x], py, marker="D", facecolors="none", edgecolors=color, s=30)
        ax.set_yscale("log")
        ax2.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax2.set_ylabel(y2label)
        ax.set_title(title + " (colours as above)", fontsize=9)

    ticks = [i + 0.5 for i in range(n)]
    labels = [f"b{i}" for i in range(n)]
    if model.get("has_pre"):
        ticks.insert(0, -0.5)
        labels.insert(0, "pre")
    if model.get("has_post"):
        ticks.append(n + 0.5)
        labels.append("post")
    axes[-1].set_xticks(ticks, labels)
    axes[-1].set_xlim(x_lo, x_hi)
    axes[-1].set_xlabel("layers (blocks); dashed lines: cuts; shading: stages")
    fig.suptitle(f"layeredge profile: {model['family']} ({model['parameters']:,} params), {n_stages} stages, cuts "
                 f"{cuts}; codecs {', '.join(codecs)}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Plain-text tables of a run: per-edge traffic and per-stage memory. Pure formatting."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from layeredge_dist.types import Direction, EdgeStats

MB = 1e6


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A text table; the first ``left`` columns are left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    line = fmt(header)
    return "\n".join([line, "-" * len(line)] + [fmt(r) for r in rows])


def traffic_rows(stats: Sequence[EdgeStats]) -> list[dict[str, object]]:
    """One row per (edge, role, codec): the sender's bytes and encode time, the receiver's decode time and
    transfer time (``transfer_s``: first to last byte of each frame at the receiver, summed), the achieved
    bandwidth ``wire_bytes / transfer_s`` and the sender's ``ack_s`` (send() until the ack was read: includes
    waiting for the receiver, and on the TCP data path acks are read lazily, so it is an upper bound)."""
    recv = {(s.edge, s.role, s.codec): s for s in stats if s.direction is Direction.RECV}
    rows = []
    for s in sorted((s for s in stats if s.direction is Direction.SEND), key=lambda s: (s.edge, s.role.value)):
        r = recv.get((s.edge, s.role, s.codec))
        transfer = r.transfer_s if r is not None else None
        rows.append({"edge": str(s.edge), "role": s.role.value, "codec": s.codec, "elements": s.elements,
                     "raw_bytes": s.raw_bytes, "wire_bytes": s.wire_bytes,
                     "ratio": s.compression_ratio if s.wire_bytes else None,
                     "bits_per_element": s.bits_per_element, "encode_s": s.encode_s,
                     "decode_s": r.decode_s if r is not None else None, "transfer_s": transfer,
                     "bandwidth_Bps": s.wire_bytes / transfer if transfer else None, "ack_s": s.transfer_s})
    return rows


def format_traffic(stats: Sequence[EdgeStats], num_stages: int) -> str:
    """The per-edge traffic table (the host, pseudo-stage ``num_stages``, is shown as ``host``)."""
    host = f"s{num_stages}"
    rows = []
    def ms(v: object) -> str:
        return "-" if v is None else f"{float(v) * 1e3:.0f}"  # type: ignore[arg-type]

    for r in traffic_rows(stats):
        edge = str(r["edge"]).replace(host, "host")
        ratio, bw = r["ratio"], r["bandwidth_Bps"]
        rows.append([edge, str(r["role"]), str(r["codec"]), f"{int(r['raw_bytes']) / MB:.1f}",  # type: ignore[call-overload]
                     f"{int(r['wire_bytes']) / MB:.1f}", f"{ratio:.2f}x" if ratio else "-",  # type: ignore[call-overload]
                     f"{float(r['bits_per_element']):.2f}", ms(r["encode_s"]), ms(r["decode_s"]),  # type: ignore[arg-type]
                     ms(r["transfer_s"]), "-" if bw is None else f"{float(bw) / MB:.0f}"])  # type: ignore[arg-type]
    return table(["edge", "role", "codec", "raw MB", "wire MB", "ratio", "bits/elem", "encode ms", "decode ms",
                  "transfer ms", "MB/s"], rows, left=3)


def format_memory(memory: Sequence[Mapping[str, int]]) -> str:
    """Per-stage memory table (MB)."""
    rows = [[f"s{i}", f"{m['param_bytes'] / MB:.1f}", f"{m['optimizer_bytes'] / MB:.1f}",
             f"{m['saved_activation_bytes_peak'] / MB:.1f}", f"{m['rss_bytes'] / MB:.0f}",
             f"{m['peak_rss_bytes'] / MB:.0f}"] for i, m in enumerate(memory)]
    return table(["stage", "params MB", "optim MB", "saved act MB (peak)", "RSS MB", "peak RSS MB"], rows)


def plot_run(path: str, train_curve: Sequence[tuple[float, float]], val_curve: Sequence[tuple[float, float]],
             traffic: Sequence[Mapping[str, object]], steps: int, num_stages: int, title: str) -> str:
    """One PNG of a run: training and validation loss against wall time (left; ``(seconds since the first step
    began, loss)`` pairs) and the wire megabytes per training step of every inter-stage edge and role next to
    what the same tensors are in fp32 (right; ``traffic`` = :func:`traffic_rows`, divided by ``steps``; the
    host's own edges are left out, and activations are scaled to the training steps' share, i.e. the elements of
    the matching gradients, since validation sends activations too). Needs matplotlib (ImportError otherwise);
    returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    if train_curve:
        ax.plot([t for t, _ in train_curve], [v for _, v in train_curve], lw=1, label="train loss")
    if val_curve:
        ax.plot([t for t, _ in val_curve], [v for _, v in val_curve], "o-", ms=4, label="validation loss")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("loss (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    host = f"s{num_stages}"
    rows = [r for r in traffic if r["role"] in ("activation", "gradient") and host not in str(r["edge"]).split("->")]
    labels = [f"{r['edge']} {r['role'][:4]}\n{r['codec']}" for r in rows]
    per = max(1, steps)
    grad_elems = {tuple(reversed(str(r["edge"]).split("->"))): float(r["elements"])  # type: ignore[arg-type]
                  for r in rows if r["role"] == "gradient"}

    def share(r: Mapping[str, object]) -> float:  # training's share of an edge's traffic
        if r["role"] != "activation" or not r["elements"]:
            return 1.0
        g = grad_elems.get(tuple(str(r["edge"]).split("->")))
        return min(1.0, g / float(r["elements"])) if g else 1.0  # type: ignore[arg-type]

    xs = range(len(rows))
    bx.bar([x - 0.2 for x in xs], [float(r["raw_bytes"]) * share(r) / per / MB for r in rows],  # type: ignore
           0.4, label="as fp32 (raw)", color="#bbbbbb")
    bx.bar([x + 0.2 for x in xs], [float(r["wire_bytes"]) * share(r) / per / MB for r in rows],  # type: ignore
           0.4, label="on the wire")
    bx.set_xticks(list(xs), labels, fontsize=7)
    bx.set_ylabel("MB per training step")
    bx.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""The cheap proxy ranks (cut, codec) pairs like the measured sensitivity, on a briefly trained tiny byte GPT."""

from __future__ import annotations

import pytest
import torch

from layeredge_dist.measure import chain_proxies, edge_sensitivity, kendall_tau, spearman
from layeredge_dist.model import (
    ByteGPTConfig, ByteLMWorkload, CorpusConfig, build_partition, byte_gpt_spec, load_corpus, partition_specs,
    train_chain,
)

CFG = ByteGPTConfig(context=16, d_model=32, n_layer=3, n_head=2)
CUTS = (1, 2)
CODECS = ["fp16", "bf16", "int8", "int4", "int2"]


@pytest.fixture(scope="module")
def trained():  # -> (spec, partitions after 30 SGD steps, 4 validation batches, first loss, last loss)
    spec = byte_gpt_spec(CFG, seed=0)
    parts = [build_partition(p) for p in partition_specs(spec, CUTS)]
    work = ByteLMWorkload(load_corpus(CorpusConfig(max_bytes=200_000)), batch_size=16, context=CFG.context, seed=0)
    params = [p for part in parts for p in part.parameters()]
    opt = torch.optim.SGD(params, lr=0.5)
    losses = []
    for step in range(30):
        x, side = work.batch(step)
        opt.zero_grad(set_to_none=True)
        losses.append(train_chain(parts, [x], [side]).loss)
        opt.step()
    opt.zero_grad(set_to_none=True)
    return spec, parts, work.val_batches(4), losses[0], losses[-1]


def test_proxy_ranks_like_measured_sensitivity(trained) -> None:
    spec, parts, batches, first, last = trained
    assert last < first - 1.0  # the 30 steps did train (~5.5 -> ~3 nats)
    table = edge_sensitivity(spec, CUTS, batches, CODECS, mode="train", parts=parts)
    proxies = chain_proxies(parts, batches, CODECS)
    pairs = [(k, c) for k in range(len(CUTS)) for c in CODECS]
    measured = [abs(table.get(k, c).loss_delta_mean) for k, c in pairs]  # type: ignore[arg-type]
    measured_abs = [table.get(k, c).loss_delta_abs_mean for k, c in pairs]
    proxy_sq = [proxies[k][c].taylor_sq_mean for k, c in pairs]
    proxy_abs = [proxies[k][c].taylor_abs_mean for k, c in pairs]
    rho = spearman(proxy_sq, measured)
    rho_abs = spearman(proxy_abs, measured_abs)
    tau = kendall_tau(proxy_sq, measured)
    for (k, c), m, p in zip(pairs, measured, proxy_sq):
        print(f"cut {k} {c:5s} |mean loss delta| {m:.3e}  taylor_sq_mean {p:.3e}")
    print(f"Spearman(taylor_sq_mean, |mean loss delta|) = {rho:.4f}; Kendall tau = {tau:.4f}; "
          f"Spearman(taylor_abs_mean, mean |loss delta|) = {rho_abs:.4f}")
    assert rho >= 0.8
    assert rho_abs >= 0.8
    # backward direction: gradient relative MSE proxy vs measured parameter-gradient error
    g_proxy = [proxies[k][c].rel_mse for k, c in pairs]
    g_meas = [table.get(k, c).grad_rel_error_mean for k, c in pairs]
    rho_g = spearman(g_proxy, g_meas)  # type: ignore[arg-type]
    print(f"Spearman(rel_mse, parameter-gradient relative error) = {rho_g:.4f}")
    assert rho_g >= 0.8

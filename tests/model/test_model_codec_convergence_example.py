"""examples/codec_convergence.py stays runnable: two steps with lossy codecs at the cuts, and its round trips."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from layeredge_dist.config import RunConfig, with_overrides

_PATH = Path(__file__).resolve().parents[2] / "examples" / "codec_convergence.py"


def _example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("codec_convergence", _PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_trains_with_codecs_and_round_trips() -> None:
    ex = _example()
    x = torch.randn(4, 64)
    assert ex.round_trip("fp32")(x, 0) is x
    y = ex.round_trip("int8")(x, 0)
    assert y.shape == x.shape and torch.allclose(y, x, atol=0.05 * float(x.abs().max()))
    ef = ex.round_trip("ef(int2)")
    first = ef(x, "k")
    assert not torch.equal(ef(x, "k"), first)  # the residual of the first call is fed into the second
    cfg = with_overrides(RunConfig(), list(ex.DEMO) + ["model.config.n_layer=3", "model.config.d_model=32",
                                                      "model.config.n_head=2", "data.corpus_bytes=200000"])
    exact = ex.train(cfg, "fp32", "fp32", 2, 1, 1)
    lossy = ex.train(cfg, "int2", "ef(int4)", 2, 1, 1)
    assert [s for s, _ in exact] == [1, 2] and all(v > 0 for _, v in exact + lossy)
    assert exact[0][1] != lossy[0][1]  # the codecs changed the forward pass

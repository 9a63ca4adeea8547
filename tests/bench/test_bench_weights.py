"""layeredge bench weights: every variant's bytes, ratio and error, shipped and verified over the edge transport."""

from __future__ import annotations

import json

import pytest

from layeredge_dist.cli.main import main

SMALL = ["--set", "pipeline.stages=1", "--set", "model.config.n_layer=2", "--set", "model.config.d_model=64",
         "--set", "model.config.n_head=2", "--set", "model.config.context=32", "--set", "data.context=32",
         "--set", "data.corpus_bytes=300000"]


def test_weights_bench_reports_every_variant(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "weights", "--json", "--train-steps", "2", "--eval-batches", "1", "--ship", "thread", *SMALL])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["variant"]: r for r in doc["variants"]}
    assert list(rows) == ["fp32", "bf16", "int8", "int4", "int4+50%magnitude", "int8+2:4"]
    assert rows["fp32"]["ratio_vs_fp32"] <= 1.0 and rows["fp32"]["max_abs_error"] == 0.0
    assert rows["int8"]["ratio_vs_fp32"] >= 3.8 and rows["int8"]["max_block_error_rel_absmax"] <= 1 / 127
    assert rows["int4"]["max_block_error_rel_absmax"] <= 1 / 15 + 1e-6
    assert rows["int4+50%magnitude"]["ratio_vs_fp32"] >= 10.0
    assert rows["int4+50%magnitude"]["max_block_error_rel_absmax"] <= 1 / 15 + 1e-6
    assert rows["int8+2:4"]["index_formats"] == ["nm:2:4"] and rows["int8+2:4"]["ratio_vs_fp32"] > 6.0
    for r in rows.values():
        assert r["verified"] is True and r["wire_bytes"] >= r["payload_bytes"] and r["transfer_s"] > 0
        assert 0 < r["val_loss"] < 6
    assert [t["met"] for t in doc["targets"]] == [True, True]
    # lossier variants cost more loss than lossless ones (the loss is really computed from decoded weights)
    assert rows["fp32"]["val_loss"] == pytest.approx(doc["val_loss_fp32"], abs=1e-6)
    assert rows["int8+2:4"]["rel_l2_vs_original"] > rows["int8"]["rel_l2_vs_original"]


def test_weights_bench_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "weights", "--train-steps", "-1"]) == 2
    assert "--train-steps" in capsys.readouterr().err

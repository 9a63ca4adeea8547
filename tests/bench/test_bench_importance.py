"""layeredge bench importance: runs end to end on a tiny model and reports every method per cut."""

from __future__ import annotations

import json

import pytest

from layeredge_dist.cli.main import main

TINY = ["--set", "model.config.n_layer=3", "--set", "model.config.d_model=32", "--set", "model.config.n_head=2",
        "--set", "model.config.context=32", "--set", "data.context=32", "--set", "data.corpus_bytes=300000"]


def test_importance_bench_reports_each_cut(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "importance", "--json", "--train-steps", "20", "--calib-batches", "2",
                 "--eval-batches", "2", "--random-draws", "2", *TINY])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["cut"] for r in doc["cuts"]] == [0, 1]
    for r in doc["cuts"]:
        assert r["channels"] == 32 and r["removed"] == 16
        # removing channels changes the loss; the unpruned loss is the reference for every method
        assert r["loss_random_mean"] != r["loss_unpruned"] and r["loss_taylor"] != r["loss_unpruned"]
        assert isinstance(r["taylor_beats_random"], bool)


def test_importance_bench_rejects_bad_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "importance", "--fraction", "1.5"]) == 2
    assert "--fraction" in capsys.readouterr().err

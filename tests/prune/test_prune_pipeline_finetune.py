"""``layeredge prune --finetune-on pipeline``: the recovery fine-tuning runs through the real Ray pipeline (the pruned
weights pushed to the stages) and matches the in-process fine-tuning of the same steps."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from layeredge_dist.cli.main import main

TINY = ["--set", "model.config.n_layer=3", "--set", "model.config.d_model=32", "--set", "model.config.n_head=2",
        "--set", "model.config.context=32", "--set", "data.context=32", "--set", "data.corpus_bytes=300000",
        "--set", "cluster.nodes=3", "--set", "cluster.start_timeout_s=60", "--set", "cluster.step_timeout_s=60"]


def _prune(root: Path, out: str, *extra: str) -> dict[str, Any]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["prune", "--json", *TINY, "--run-dir", str(root / "run"), "--out", str(root / out),
                   "--train-steps", "4", "--finetune-steps", "4", "--calib-batches", "1", "--eval-batches", "2",
                   "--cut-rank", "0.5", "--projection-lr-scale", "1", "--ship", "none", *extra])
    assert rc == 0, stderr.getvalue()
    return json.loads(stdout.getvalue())


def test_pipeline_finetune_matches_the_in_process_one(ray_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    local = _prune(tmp_path, "local")
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "baseline.pt").write_bytes((tmp_path / "local" / "baseline.pt").read_bytes())
    piped = _prune(tmp_path, "pipe", "--finetune-on", "pipeline")
    assert piped["baseline"]["source"] == "cache"  # the same baseline, so the same pruned model
    assert piped["loss"]["after_pruning"] == local["loss"]["after_pruning"]
    ft = piped["finetune"]
    assert ft["on"] == "pipeline" and local["finetune"]["on"] == "local" and local["finetune"]["pipeline"] is None
    info = ft["pipeline"]
    assert info["nodes"] == 3 and info["push"]["codec"] == "fp32" and info["push"]["wire_bytes"] > 0
    # fp32 edges and fp32 weight push: the same arithmetic up to summation order
    assert math.isclose(ft["train_loss_last"], local["finetune"]["train_loss_last"], rel_tol=1e-4)
    assert math.isclose(piped["loss"]["finetuned"], local["loss"]["finetuned"], rel_tol=1e-4)
    assert math.isclose(info["val_loss_pipeline"], piped["loss"]["finetuned"], rel_tol=1e-4)
    assert piped["loss"]["finetuned"] < piped["loss"]["after_pruning"]  # it did recover something
    from layeredge_dist.cli.prune_cmd import format_report

    assert "fine-tuned on the Ray pipeline" in format_report(piped)


def test_pipeline_finetune_refuses_what_the_pipeline_cannot_do(tmp_path: Path) -> None:
    from layeredge_dist.pipeline.prune_run import PruneOptions

    with pytest.raises(ValueError, match="projection lr scale to 1"):
        PruneOptions(finetune_on="pipeline")
    with pytest.raises(ValueError, match="weight masks"):
        PruneOptions(finetune_on="pipeline", projection_lr_scale=1.0, weight_sparsity=0.5)

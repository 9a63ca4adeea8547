"""``layeredge prune --json`` end to end on a tiny model, and the pruned model trained on Ray by ``layeredge train``."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from layeredge_dist.cli.main import main

TINY = ["--set", "model.config.n_layer=3", "--set", "model.config.d_model=32", "--set", "model.config.n_head=2",
        "--set", "model.config.context=32", "--set", "data.context=32", "--set", "data.corpus_bytes=300000"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("prune")
    rc, out, err = _run(["prune", "--json", *TINY, "--run-dir", str(root / "run"), "--out", str(root / "out"),
                         "--train-steps", "6", "--finetune-steps", "3", "--calib-batches", "1", "--eval-batches", "2",
                         "--cut-rank", "0.5", "--weight-sparsity", "0.5", "--weight-method", "magnitude",
                         "--weight-codec", "int4", "--curve", "1,0.5"])
    assert rc == 0, err
    return json.loads(out), root


def test_prune_json_reports_edges_losses_and_transfer(pruned: tuple[dict[str, Any], Path]) -> None:
    doc, root = pruned
    assert doc["baseline"] == {**doc["baseline"], "source": "trained", "steps": 6}
    assert [e["edge"] for e in doc["edges"]] == ["s0->s1", "s1->s2"]
    for e in doc["edges"]:
        assert e["channels_before"] == 32 and e["channels_after"] == 16 and not e["prunable"]
        assert "residual stream" in e["reason"] and e["action"].startswith("low-rank projection")
        assert e["fp32_bytes_per_step_after"] * 2 == e["fp32_bytes_per_step_before"]
        assert e["fp32_bytes_per_step_before"] == 2 * 4 * 8 * 32 * 32  # fwd + bwd, 8 x 32 tokens x 32 channels
    loss = doc["loss"]
    for key in ("baseline", "after_cut_pruning", "after_pruning", "finetuned", "unpruned_finetuned"):
        assert math.isfinite(loss[key]) and 0 < loss[key] < 6, key
    assert loss["after_pruning"] != loss["after_cut_pruning"]  # weight pruning changed the model
    assert doc["weights"]["sparsity_masked"] == pytest.approx(0.5, abs=0.01)
    assert doc["weights"]["zeros_after_finetune"] >= doc["weights"]["pruned_elements"]  # kept sparse while training
    curve = {c["rank_fraction"]: c for c in doc["curve"]}
    assert curve[1.0]["val_loss"] == pytest.approx(loss["baseline"], abs=1e-3)  # r = d: nothing removed
    assert curve[0.5]["edge_bytes_per_step"] * 2 == curve[1.0]["edge_bytes_per_step"]
    t = doc["transfer"]
    assert [s["verified"] for s in t["stages"]] == [True, True, True]
    assert t["ratio"] > 6 and all(s["wire_bytes"] >= s["wire_payload_bytes"] for s in t["stages"])
    from layeredge_dist.cli.prune_cmd import format_report

    text = format_report(doc)
    assert "s0->s1" in text and "residual stream" in text and "checksums verified" in text
    out = doc["outputs"]
    assert Path(out["weights"]).is_file() and Path(out["config"]).is_file()
    assert out["train_command"] == f"layeredge train --config {out['config']}"


def test_a_second_run_reuses_the_cached_baseline(pruned: tuple[dict[str, Any], Path]) -> None:
    doc, root = pruned
    (root / "out2").mkdir()
    shutil.copy(root / "out" / "baseline.pt", root / "out2" / "baseline.pt")
    rc, out, err = _run(["prune", "--json", *TINY, "--run-dir", str(root / "run"), "--out", str(root / "out2"),
                         "--train-steps", "6", "--finetune-steps", "0", "--calib-batches", "1", "--eval-batches", "2",
                         "--cut-rank", "1", "--ship", "none"])
    assert rc == 0, err
    again = json.loads(out)
    assert again["baseline"]["source"] == "cache" and again["baseline"]["steps"] == 6
    assert again["loss"]["baseline"] == doc["loss"]["baseline"]
    assert [e["action"] for e in again["edges"]] == ["none", "none"]  # cut rank 1 keeps every channel
    assert again["loss"]["after_pruning"] == again["loss"]["baseline"]


def test_prune_rejects_bad_arguments() -> None:
    rc, _out, err = _run(["prune", "--cut-rank", "1.5", *TINY])
    assert rc == 2 and "cut rank" in err
    rc, _out, err = _run(["prune", "--weight-method", "random", "--weight-sparsity", "0.5", *TINY])
    assert rc == 2 and "method" in err
    rc, _out, err = _run(["prune", "--weight-codec", "int9", *TINY])
    assert rc == 2 and "int9" in err


@pytest.mark.slow
def test_pruned_model_trains_on_ray(pruned: tuple[dict[str, Any], Path],
                                    ray_cluster) -> None:  # type: ignore[no-untyped-def]
    doc, root = pruned
    rc, out, err = _run(["train", "--json", "--config", doc["outputs"]["config"], "--steps", "2",
                         "--set", "train.eval_every=0", "--set", "train.eval_batches=1",
                         "--set", "train.checkpoint_every=0"])
    assert rc == 0, err
    summary = json.loads(out)
    # the stages loaded the pruned, fine-tuned weights (a fresh model starts near ln 256 = 5.55)
    assert summary["final_loss"] < 5.0
    acts = {r["edge"]: r for r in summary["traffic"] if r["role"] == "activation"}
    tokens = acts["s3->s0"]["elements"]  # the host sends every token of every training and evaluation batch
    assert tokens >= 2 * 8 * 32
    for e in ("s0->s1", "s1->s2"):
        assert acts[e]["elements"] == tokens * 16  # 16 channels per token cross each cut (32 unpruned)
        assert acts[e]["raw_bytes"] == tokens * 16 * 4

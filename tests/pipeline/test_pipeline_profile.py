"""``layeredge profile``: calibration only (no Ray) on a tiny model, the PNG figure, errors, and one run with the
pipeline on the session's 3-node Ray cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from layeredge_dist.cli.main import main

#: 3 stages of one block each, 8 x 32 bytes per step, a small corpus.
TINY = ["--set", "model.config.n_layer=3", "--set", "model.config.d_model=32", "--set", "model.config.n_head=2",
        "--set", "model.config.context=32", "--set", "data.context=32", "--set", "data.batch_size=8",
        "--set", "data.corpus_bytes=400000"]
CODECS = "fp32,fp16,int8,int4,int2"


def _doc(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def _row(doc: dict[str, Any], cut: int, direction: str) -> dict[str, Any]:
    (row,) = [e for e in doc["edges"] if e["cut"] == cut and e["direction"] == direction]
    return row


def test_calibration_json(capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(capsys, ["profile", *TINY, "--no-pipeline", "--calib-steps", "5", "--codecs", CODECS, "--json"])
    assert doc["pipeline"] is None
    assert doc["cuts"] == [1, 2] and doc["stages"] == 3 and doc["codecs"] == CODECS.split(",")
    assert {(e["cut"], e["direction"]) for e in doc["edges"]} == {(0, "forward"), (0, "backward"),
                                                                 (1, "forward"), (1, "backward")}
    assert len(doc["train_losses"]) == 5
    for cut in (0, 1):
        fwd, bwd = _row(doc, cut, "forward"), _row(doc, cut, "backward")
        # 8 samples x 32 positions x 32 channels per step, 4 micro-batches of 2; fp32 on the wire
        assert fwd["elements_per_step"] == 8 * 32 * 32 and fwd["elements_per_microbatch"] == 2 * 32 * 32
        assert fwd["raw_bytes_per_step"] == bwd["raw_bytes_per_step"] == 4 * 8 * 32 * 32
        c = fwd["codecs"]
        wire = {k: v["wire_bytes_per_step"] for k, v in c.items()}
        assert wire["int2"] < wire["int4"] < wire["int8"] < wire["fp16"] < wire["fp32"]
        assert wire["fp16"] == fwd["raw_bytes_per_step"] / 2
        # lossless fp32 costs nothing; int2 hurts far more than fp16 in both directions
        assert c["fp32"]["sensitivity"]["loss_delta_mean"] == 0.0
        assert abs(c["int2"]["sensitivity"]["loss_delta_mean"]) > abs(c["fp16"]["sensitivity"]["loss_delta_mean"])
        assert c["int2"]["proxy"]["taylor_sq_mean"] > c["fp16"]["proxy"]["taylor_sq_mean"]
        assert c["int2"]["sensitivity"]["output_kl_mean"] > c["fp16"]["sensitivity"]["output_kl_mean"] >= 0
        g = bwd["codecs"]
        assert g["int2"]["sensitivity"]["grad_rel_error_mean"] > g["fp16"]["sensitivity"]["grad_rel_error_mean"]
        ch = fwd["channels"]
        assert ch["channels"] == 32 and len(ch["top"]) == 5 and 0 < ch["fraction_for_half_importance"] <= 0.5
        assert fwd["stats"]["numel"] == 4 * 8 * 32 * 32  # 4 calibration batches
    assert [w["stage"] for w in doc["weights"]] == [0, 1, 2]
    assert all(w["taylor_total"] > 0 and w["tensors"] for w in doc["weights"])
    sp = doc["spearman"]
    assert sp["pairs"] == 10 and sp["forward"] is not None and sp["forward"] > 0.5
    assert sp["backward"] is not None and sp["backward"] > 0.5


def test_table_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    png = tmp_path / "profile.png"
    rc = main(["profile", *TINY, "--no-pipeline", "--calib-steps", "0", "--calib-batches", "2", "--codecs",
               "fp16,int2", "--plot", str(png)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "cut 0: s0->s1" in out and "cut 1: s1->s2" in out and "Spearman" in out
    assert f"plot: {png}" in out
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert main(["profile", *TINY, "--no-pipeline", "--calib-steps", "0", "--codecs", "int9"]) == 1
    assert "int9" in capsys.readouterr().err
    assert main(["profile", *TINY, "--no-pipeline", "--codecs", " , "]) == 2
    assert main(["profile", *TINY, "--no-pipeline", "--set", "pipeline.stages=1"]) == 1
    assert "single stage" in capsys.readouterr().err
    from layeredge_dist.pipeline.profile import plot_profile

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the bench extra were not installed
    with pytest.raises(RuntimeError, match="bench"):
        plot_profile({}, str(tmp_path / "x.png"))


def test_with_pipeline(ray_cluster, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    doc = _doc(capsys, ["profile", *TINY, "--steps", "3", "--calib-steps", "0", "--calib-batches", "1",
                        "--codecs", "fp16,int8", "--codec-forward", "int8", "--json"])
    pipe = doc["pipeline"]
    assert pipe["steps"] == 3 and len(pipe["step_seconds"]) == 3 and pipe["step_seconds_p50"] > 0
    fwd = {e["edge"]: e for e in pipe["edges"] if e["direction"] == "forward"}
    bwd = {e["edge"]: e for e in pipe["edges"] if e["direction"] == "backward"}
    assert set(fwd) == {"s0->s1", "s1->s2"} and set(bwd) == {"s1->s0", "s2->s1"}
    for edge, e in fwd.items():
        assert e["codec"] == "int8" and e["cuts"] == [int(edge[1])]
        assert e["raw_bytes_per_step"] == 4 * 8 * 32 * 32  # exactly the calibration's figure
        assert 0 < e["wire_bytes_per_step"] < e["raw_bytes_per_step"] / 3  # int8 plus frame headers
        assert e["transfer_s_per_step"] > 0 and e["achieved_Bps"] > 0 and 0 < e["share_of_step"]
        assert e["frames_per_step"] == 4 and 0 < e["link_est_s_per_step"] and 0 < e["link_share_of_step"]
    for e in bwd.values():
        assert e["codec"] == "fp32" and e["wire_bytes_per_step"] >= e["raw_bytes_per_step"]
    links = {lk["link"]: lk for lk in pipe["links"]}
    assert set(links) == {"s0->s1", "s1->s2"}
    assert all(lk["bandwidth_Bps"] > 0 and lk["rtt_s"] > 0 for lk in links.values())
    assert [s["stage"] for s in pipe["stages"]] == [0, 1, 2]
    for s in pipe["stages"]:
        assert 0.0 <= s["bubble_fraction"] <= 1.0
        assert s["forward_s"] > 0 and s["backward_s"] > 0 and s["total_s"] >= s["idle_s"]
    assert len(pipe["memory"]) == 3 and all(m["param_bytes"] > 0 for m in pipe["memory"])
    from layeredge_dist.pipeline.profile import format_profile

    text = format_profile(doc)
    assert "s0->s1  forward   int8" in text and "bubble" in text and "memory per stage" in text

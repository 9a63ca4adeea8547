"""``layeredge bench simulator``: predicted vs measured step times on the session's 3-node Ray cluster (smoke test
on a tiny model, few steps)."""

from __future__ import annotations

import json

import pytest

from layeredge_dist.cli.main import main

TINY = ["--set", "model.config.n_layer=4", "--set", "model.config.d_model=32", "--set", "model.config.n_head=2",
        "--set", "model.config.context=32", "--set", "data.context=32", "--set", "data.corpus_bytes=400000"]


@pytest.mark.slow
def test_simulator_bench_smoke(ray_cluster, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    rc = main(["bench", "simulator", *TINY, "--steps", "2", "--warmup", "1", "--calib-steps", "2",
               "--calib-batches", "1", "--reps", "2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    rows = {r["config"]: r for r in doc["rows"]}
    assert set(rows) == {"fp32 1f1b", "fp32 gpipe", "int8 1f1b", "plan@0.05 1f1b"}
    for r in rows.values():
        assert {"bandwidth", "config", "predicted_s", "measured_s", "rel_error"} <= set(r)
        assert r["predicted_s"] > 0 and r["measured_s"] > 0 and len(r["measured_step_s"]) == 2
        assert r["rel_error"] == pytest.approx((r["predicted_s"] - r["measured_s"]) / r["measured_s"])
        assert r["predicted_cores_s"] >= r["predicted_s"] and r["predicted_stage_compute_s"] > 0
        assert r["compute_slowdown"] > 0 and len(r["measured_stages"]) == 3
        assert "Mbit/s" in r["bandwidth"] or "Gbit/s" in r["bandwidth"]
    assert rows["int8 1f1b"]["codecs"]["s0->s1"] == {"forward": "int8", "backward": "int8"}
    assert rows["fp32 gpipe"]["schedule"] == "gpipe"
    # the probed links went into the simulator's cluster; the plan is the planner's under the budget
    links = doc["cluster"]["links"]
    assert len(links) == 2 and all(float(lk["bandwidth_Bps"]) > 0 and lk["latency_s"] > 0 for lk in links)
    assert doc["plan"]["budget"] == 0.05 and doc["links"] == "loopback, unshaped"
    assert doc["cores"] >= 1 and doc["cores_factor"] >= 1

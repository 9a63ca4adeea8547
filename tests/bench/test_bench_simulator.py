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


def test_testbed_rows_prefer_the_host_model() -> None:
    from layeredge_dist.bench.simulator import _testbed_rows

    pred = {"predicted_s": 0.08, "rel_error": -0.2, "predicted_stage_compute_s": 0.09,
            "rel_error_stage_compute": -0.1, "compute_slowdown": 1.4, "cuts": [2, 4],
            "codecs": {"s0->s1": {"forward": "fp32", "backward": "fp32"}}}
    row = {"bandwidth": "100mbit", "config": "fp32", "step_s": 0.1, "bandwidth_measured_mbit": 95.0,
           "step_seconds": [0.1, 0.1], "stage_medians": []}
    host = dict(pred, predicted_host_s=0.105, rel_error_host=0.05)
    rows = _testbed_rows({"rows": [dict(row, prediction=host), dict(row, config="bf16", prediction=pred),
                                   dict(row, config="strong")]})
    assert [r["config"] for r in rows] == ["fp32", "bf16"]  # a row without a prediction is left out
    assert rows[0]["predicted_s"] == 0.105 and rows[0]["rel_error"] == 0.05
    assert rows[0]["predicted_plain_s"] == 0.08 and rows[0]["rel_error_plain"] == -0.2
    assert rows[1]["predicted_s"] == 0.08 and rows[1]["rel_error"] == -0.2  # no host model: the plain replay
    assert rows[0]["measured_s"] == 0.1 and rows[0]["bandwidth"] == "100mbit"


def test_testbed_mode_rejects_a_bad_rate(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "simulator", "--testbed", "--rates", "100mbit,fast"])
    assert rc == 2
    assert "fast" in capsys.readouterr().err

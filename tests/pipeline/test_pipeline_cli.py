"""``layeredge verify | train | infer`` in-process on the session's 3-node Ray cluster, and the CLI's config errors."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from layeredge_dist.cli.main import main

MODEL = ["--set", "model.config.n_layer=3", "--set", "model.config.d_model=32", "--set", "model.config.n_head=2",
         "--set", "model.config.context=32"]
#: A tiny, quick training run: 3 stages of one block each, 8 x 32 bytes per step, a small corpus, one val batch.
TRAIN = [*MODEL, "--set", "data.context=32", "--set", "data.batch_size=8", "--set", "data.corpus_bytes=400000",
         "--set", "train.eval_every=0", "--set", "train.eval_batches=1", "--set", "train.checkpoint_every=2"]


def _run(argv: Sequence[str]) -> tuple[int, str, str]:
    """``main(argv)`` with its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _json(rc: int, out: str, err: str) -> dict[str, Any]:
    assert out.strip(), f"no JSON printed (exit {rc}); stderr:\n{err}"
    return json.loads(out)


# ---- verify ---------------------------------------------------------------------------------------------------


def test_verify_fp32_pipeline_matches_single_process(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    rc, out, err = _run(["verify", "--json", *MODEL])
    doc = _json(rc, out, err)
    assert rc == 0, err
    assert doc["ok"] is True and doc["stages"] == 3 and doc["microbatches"] == 4
    assert set(doc["schedules"]) == {"gpipe", "1f1b"}
    for name, agreement in doc["schedules"].items():
        assert agreement["max_abs_loss_diff"] <= 1e-5, name
        assert agreement["max_abs_grad_diff"] <= 1e-5, name
        assert agreement["loss"] > 1.0, name  # a real loss was compared (~ln 256 at random init)


def test_verify_reports_int8_mismatch(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    rc, out, err = _run(["verify", "--json", "--codec-forward", "int8", "--schedules", "1f1b", *MODEL])
    doc = _json(rc, out, err)
    assert rc == 1, err  # lossy activations exceed the default tolerance 1e-5: reported, not hidden
    assert doc["ok"] is False and doc["codecs"] == {"forward": "int8", "backward": "fp32"}
    agreement = doc["schedules"]["1f1b"]
    assert agreement["max_abs_grad_diff"] > 1e-6
    assert max(agreement["max_abs_grad_diff"], agreement["max_abs_loss_diff"]) > doc["tolerance"] == 1e-5
    assert agreement["max_abs_grad_diff"] < 0.05  # but close: int8 of activations, not garbage


# ---- train, resume, infer -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Train 4 steps, then restart to 6 (resuming); also 6 steps in one go in another run dir."""
    run = tmp_path_factory.mktemp("run")
    straight = tmp_path_factory.mktemp("straight")
    first = _run(["train", *TRAIN, "--steps", "4", "--run-dir", str(run), "--json"])
    summary4 = json.loads((run / "summary.json").read_text()) if first[0] == 0 else None
    dirs4 = sorted(p.name for p in (run / "checkpoints").glob("step*"))
    second = _run(["train", *TRAIN, "--steps", "6", "--run-dir", str(run), "--json"])
    once = _run(["train", *TRAIN, "--steps", "6", "--run-dir", str(straight), "--json"])
    return {"run": run, "straight": straight, "first": first, "summary4": summary4, "dirs4": dirs4, "second": second,
            "once": once}


def test_train_writes_summary_with_traffic_and_memory(trained: dict[str, Any]) -> None:
    rc, out, err = trained["first"]
    assert rc == 0, err
    doc = _json(rc, out, err)
    summary = trained["summary4"]
    assert summary == json.loads(json.dumps(doc))  # the printed JSON is the summary file
    assert summary["steps_done"] == 4 and summary["start_step"] == 0 and summary["resumed_from"] == []
    assert summary["failures"] == []
    assert 3.0 < summary["final_loss"] < 7.0
    assert len(summary["val_losses"]) == 1 and summary["val_losses"][0]["step"] == 4
    rows = {(r["edge"], r["role"]): r for r in summary["traffic"]}
    act, grad = rows[("s0->s1", "activation")], rows[("s1->s0", "gradient")]
    # 4 training steps of 8 x 32 x 32 activations (fp32) plus the final validation batch's forward
    assert act["elements"] == 5 * 8 * 32 * 32 and act["raw_bytes"] == 4 * act["elements"]
    assert grad["elements"] == 4 * 8 * 32 * 32 and grad["raw_bytes"] == 4 * grad["elements"]
    assert act["wire_bytes"] >= act["raw_bytes"] and act["codec"] == "fp32"
    assert ("s3->s0", "activation") in rows and ("s2->s3", "activation") in rows  # the host's edges
    assert len(summary["memory"]) == 3
    for mem in summary["memory"]:
        assert mem["param_bytes"] > 0 and mem["saved_activation_bytes_peak"] > 0
        # AdamW: two moments per parameter, plus a 4-byte step count per parameter tensor
        assert 2 * mem["param_bytes"] <= mem["optimizer_bytes"] < 2 * mem["param_bytes"] + 1024
    run = trained["run"]
    assert (run / "config.yaml").exists()
    assert summary["plot"] == str(run / "report.png") and (run / "report.png").stat().st_size > 10_000
    assert trained["dirs4"] == ["step00000002", "step00000004"]  # the newest two of 0, 2, 4


def test_restart_resumes_with_no_lost_and_no_doubled_step(trained: dict[str, Any]) -> None:
    rc, out, err = trained["second"]
    assert rc == 0, err
    doc = _json(rc, out, err)
    assert doc["start_step"] == 4 and doc["resumed_from"] == [4] and doc["steps_done"] == 6
    rows = {(r["edge"], r["role"]): r for r in doc["traffic"]}
    assert rows[("s1->s0", "gradient")]["elements"] == 2 * 8 * 32 * 32  # only steps 5 and 6 ran
    rc1, out1, err1 = trained["once"]
    assert rc1 == 0, err1
    once = _json(rc1, out1, err1)
    assert once["start_step"] == 0 and once["steps_done"] == 6
    assert doc["final_loss"] == once["final_loss"]
    # 4 + 2 steps end with exactly the weights of 6 uninterrupted steps
    from layeredge_dist.stage.checkpoint import load_stage

    for stage in range(3):
        a = load_stage(trained["run"] / "checkpoints", 6, stage)
        b = load_stage(trained["straight"] / "checkpoints", 6, stage)
        assert a["steps_done"] == b["steps_done"] == 6
        for x, y in zip(a["model"], b["model"]):
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(x[k], y[k]), (stage, k)


def test_resume_with_another_model_is_refused(trained: dict[str, Any]) -> None:
    run = trained["run"]
    rc, out, err = _run(["train", *TRAIN, "--set", "model.config.d_model=64", "--steps", "8", "--run-dir", str(run),
                         "--json"])
    assert rc == 1
    assert "cannot resume" in err and "checkpoint differs in ['model']" in err
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 6  # untouched


def _reference_generation(prompt: bytes, count: int, checkpoint: Path, step: int) -> bytes:
    """Greedy generation by the single-process model holding the checkpoint's weights."""
    from layeredge_dist.config import load_config
    from layeredge_dist.model import family_for
    from layeredge_dist.model.state import merge_state_dicts
    from layeredge_dist.pipeline import setup
    from layeredge_dist.stage.checkpoint import load_stage

    cfg = load_config(None, [a for a in MODEL if a != "--set"])
    model = setup.model_spec(cfg)
    cuts = setup.cuts(cfg, model)
    native = family_for(model.family, model.config).build_native()
    slices = [load_stage(checkpoint, step, s)["model"][0] for s in range(3)]
    native.load_state_dict(merge_state_dicts(model, cuts, slices), strict=True)
    native.eval()
    data = bytearray(prompt)
    with torch.no_grad():
        for _ in range(count):
            window = torch.tensor(list(data[-32:]), dtype=torch.long).unsqueeze(0)  # (1, T)
            data.append(int(native(window)[0, -1].argmax()))
    return bytes(data[len(prompt):])


def test_infer_generates_from_the_checkpoint(trained: dict[str, Any]) -> None:
    assert trained["second"][0] == 0
    run = trained["run"]
    rc, out, err = _run(["infer", *MODEL, "--set", "data.context=32", "--run-dir", str(run), "--prompt", "def ",
                         "--bytes", "8", "--json"])
    assert rc == 0, err
    doc = _json(rc, out, err)
    assert doc["checkpoint_step"] == 6 and doc["prompt"] == "def "
    want = _reference_generation(b"def ", 8, run / "checkpoints", 6)
    assert len(want) == 8
    assert doc["generated"] == want.decode("utf-8", errors="replace")


def test_infer_serves_requests_in_batches(trained: dict[str, Any]) -> None:
    assert trained["second"][0] == 0
    rc, out, err = _run(["infer", *MODEL, "--set", "data.context=32", "--run-dir", str(trained["run"]),
                         "--requests", "12", "--max-batch", "4", "--json"])
    assert rc == 0, err
    doc = _json(rc, out, err)
    assert doc["checkpoint_step"] == 6
    lat = doc["latency"]
    assert lat["requests"] == 12 and lat["max_batch"] == 4 and lat["batches"] == 3 and lat["mean_batch"] == 4.0
    assert 0 < lat["p50_s"] <= lat["p95_s"] <= lat["max_s"] < 60
    assert lat["requests_per_s"] > 0


# ---- config errors and help (no cluster needed) ---------------------------------------------------------------


def test_bad_override_value_is_a_usage_error(tmp_path: Path) -> None:
    rc, out, err = _run(["train", "--set", "train.steps=abc", "--run-dir", str(tmp_path / "r")])
    assert rc == 2 and out == ""
    assert "train.steps" in err and "config error" in err
    assert not (tmp_path / "r").exists()  # nothing was started or written


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    for command in ("train", "run", "verify"):
        rc, _out, err = _run([command, "--config", str(missing)])
        assert rc == 2, command
        assert "missing.yaml" in err, command


def test_infer_without_prompt_or_requests_is_a_usage_error() -> None:
    rc, _out, err = _run(["infer", "--json"])
    assert rc == 2 and "--prompt" in err


def test_run_help_lists_every_config_section(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for section in ("model.", "data.", "pipeline.", "codecs.", "train.", "cluster.", "transport.", "metrics."):
        assert section in text, section
    for field in ("train.checkpoint_every", "pipeline.schedule", "codecs.forward", "cluster.max_restarts",
                  "transport.data_path", "metrics.port"):
        assert field in text, field
    assert "--steps" in text and "--run-dir" in text

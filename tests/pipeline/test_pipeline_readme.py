"""The README's demo command end to end: ``layeredge run`` in a fresh process with its own embedded Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_layeredge_run_demo_in_a_subprocess(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    argv = [sys.executable, "-m", "layeredge_dist.cli.main", "run", "--steps", "6", "--run-dir", str(run_dir),
            "--set", "train.eval_every=3", "--set", "train.checkpoint_every=3", "--set", "model.config.n_layer=3"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join another test's cluster
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                            start_new_session=True)  # its own process group: on a timeout, Ray's children go too
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"layeredge run did not finish in 300 s\nstdout:\n{out}\nstderr:\n{err[-4000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err[-4000:]}"
    assert "per-edge traffic" in out and "memory per stage" in out
    assert "s0->s1" in out and "s1->s0" in out and "host->s0" in out
    assert "6 steps in" in out
    assert "validation loss after 3 steps" in out and "validation loss after 6 steps" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps_done"] == 6 and summary["start_step"] == 0 and summary["failures"] == []
    assert [v["step"] for v in summary["val_losses"]] == [3, 6]
    assert len(summary["memory"]) == 3
    manifest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert manifest["step"] == 6 and manifest["num_stages"] == 3
    assert (run_dir / "checkpoints" / "step00000006" / "stage2.pt").exists()
    assert (run_dir / "config.yaml").exists()

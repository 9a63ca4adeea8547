"""``layeredge run --testbed``: the main job on an emulated 3-host network with shaped links, ending with the same
report (tables, summary, PNG) as the embedded run. Needs root and iproute2; skips with the reason otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from layeredge_dist.testbed import list_testbeds, unavailable_reason


_REASON = unavailable_reason()
pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(_REASON is not None, reason=f"testbed unavailable: {_REASON}")]


def test_run_on_the_testbed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from layeredge_dist.cli.main import main

    run_dir = tmp_path / "run"
    rc = main(["run", "--testbed", "100mbit", "--steps", "3", "--set", "data.batch_size=4",
               "--set", "pipeline.microbatches=2", "--set", "train.eval_every=3", "--run-dir", str(run_dir)])
    out, err = capfd.readouterr()
    assert rc == 0, err[-3000:]
    assert "testbed" in err and "100mbit" in err and "3 node(s)" in err
    nodes = {line.split("node ")[1].split()[0] for line in err.splitlines() if line.strip().startswith("stage ")}
    assert len(nodes) == 3 and all(ip.startswith("10.") for ip in nodes)  # one stage per emulated host
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps_done"] == 3 and summary["val_losses"]
    assert Path(summary["plot"]).stat().st_size > 10_000
    assert "per-edge traffic" in out and "report.png" in out
    assert not [t for t in list_testbeds() if t["owner"]["pid"] == os.getpid()]  # torn down

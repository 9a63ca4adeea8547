"""The driver killed mid-training: ``layeredge train`` as a subprocess (embedded Ray, checkpoints every 2
steps) is SIGKILLed after a few steps and started again.

* the second run resumes from the last complete checkpoint and ends with exactly the parameters of an
  uninterrupted run (the same spec and batches trained in this process, on the test cluster);
* no process of the killed driver's embedded Ray cluster is left running, and its temp dir
  ``/tmp/le-ray-XXXXXXXX`` is gone: the second run's ``connect()`` sweeps it (owner marker naming a dead
  process) and SIGKILLs the Ray agents it lists that would otherwise linger ~60 s;
* the per-run bearer token (made known here by fixing the generator) is in no file of the run directory
  (``config.yaml``, ``summary.json``, checkpoints, manifests), in neither run's output, nor in the Ray logs the
  killed run left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hardening_support import REPO, descendants, still_alive

pytestmark = pytest.mark.slow

STEPS = 16
TOKEN = "0badc0de" * 4  # what setup.transport's secrets.token_hex(16) returns in the runs below
#: Runs `layeredge` with the per-run token fixed (and nothing else changed), so the test can search for it.
LAUNCH = ("import secrets, sys; _t = secrets.token_hex; "
          f"secrets.token_hex = lambda n=None: {TOKEN!r} if n == 16 else _t(n); "
          "from layeredge_dist.cli.main import main; sys.exit(main(sys.argv[1:]))")
OVERRIDES = ("model.config.context=16", "model.config.d_model=32", "model.config.n_layer=6", "model.config.n_head=2",
             "data.context=16", "data.batch_size=8", "data.corpus_bytes=200000", f"train.steps={STEPS}",
             "train.checkpoint_every=2", "train.eval_every=0", "train.eval_batches=1", "train.log_every=1",
             "cluster.step_timeout_s=120")


def _argv(run_dir: Path) -> list[str]:
    args = [sys.executable, "-c", LAUNCH, "train", "--run-dir", str(run_dir), "--json"]
    for o in OVERRIDES:
        args += ["--set", o]
    return args


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LAYEREDGE_NO_COMPILE"] = "1"
    return env


def _latest(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def _final_state(ckpt: Path, step: int) -> list[dict[str, torch.Tensor]]:
    from layeredge_dist.stage import checkpoint

    return [sd for s in range(3) for sd in checkpoint.load_stage(ckpt, step, s)["model"]]


class Runs:
    """What the two CLI runs left: outputs, leftovers, the killed run's Ray temp dir."""

    def __init__(self) -> None:
        self.killed_at = -1
        self.leftovers: dict[int, str] = {}
        self.ray_dirs: list[str] = []
        self.outputs: list[str] = []
        self.summary: dict[str, Any] = {}
        self.run_dir = Path()
        self.linger_s = 0.0
        self.gone_after: dict[int, float] = {}
        self.token_in_ray_logs: list[str] = []
        self.ray_dirs_left: list[str] = []


#: How long the killed driver's Ray processes may linger. The GCS, raylet and workers die at once (kernel
#: fate-sharing with the driver); Ray's dashboard and runtime-env agents notice the raylet's death at once too,
#: but first try to report it to the (dead) GCS and exit only when that client gives up, about 60 s later -
#: unless the next driver's connect() kills them first (its sweep of orphaned temp dirs), as run 2 does here
#: a few seconds after the kill (its start-up: imports, config; up to ~20 s on a loaded 2-core machine).
LINGER_S = 120.0
SWEPT_S = 45.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    out = Runs()
    tmp = tmp_path_factory.mktemp("driver-kill")
    out.run_dir = run_dir = tmp / "run"
    logs = [tmp / "run1.err", tmp / "run2.err"]
    tree: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    p2: subprocess.Popen[bytes] | None = None
    # ---- run 1: killed once a few checkpoints exist ----
    with open(logs[0], "wb") as err:
        p1 = subprocess.Popen(_argv(run_dir), stdout=subprocess.PIPE, stderr=err, env=_env())
    try:
        deadline = time.monotonic() + 300
        while _latest(run_dir) < 4 and p1.poll() is None and time.monotonic() < deadline:
            tree.update(descendants(p1.pid))
            time.sleep(0.05)
        tree.update(descendants(p1.pid))
        cmdlines = {pid: _cmdline(pid) for pid in tree}
        assert p1.poll() is None, f"run 1 ended before it could be killed (exit {p1.returncode}): " \
                                  f"{logs[0].read_text()[-2000:]}"
        assert _latest(run_dir) >= 4, f"no checkpoint after 4 steps within 300 s: {logs[0].read_text()[-2000:]}"
        out.killed_at = _latest(run_dir)
        os.kill(p1.pid, signal.SIGKILL)  # the driver only: what a crash or an OOM kill does
        killed = time.monotonic()
        p1.wait(10)
        out.outputs.append(p1.stdout.read().decode(errors="replace") if p1.stdout else "")
        out.ray_dirs = sorted({m.group(1) for cmd in cmdlines.values()
                               for m in [re.search(r"--temp-dir=(/tmp/le-ray-[A-Za-z0-9_]+)", cmd)] if m})
        # Ray's session logs of the killed run (workers' stdout/stderr, raylet, GCS), read before run 2 sweeps them
        out.token_in_ray_logs = _files_with(out.ray_dirs, TOKEN.encode())
        # ---- run 2, started at once; meanwhile every process run 1 started must go away (on its own, or killed
        # by run 2's sweep of orphaned temp dirs) ----
        with open(logs[1], "wb") as err:
            p2 = subprocess.Popen(_argv(run_dir), stdout=subprocess.PIPE, stderr=err, env=_env())
        left = still_alive(tree)
        while left and time.monotonic() < killed + LINGER_S:
            for pid in tree:
                if pid not in left and pid not in out.gone_after:
                    out.gone_after[pid] = time.monotonic() - killed
            time.sleep(0.2)
            left = still_alive(tree)
        out.leftovers = left
        out.linger_s = time.monotonic() - killed
        stdout, _ = p2.communicate(timeout=600)
        out.ray_dirs_left = [d for d in out.ray_dirs if os.path.exists(d)]
    finally:
        for p in (p1, p2):
            if p is not None and p.poll() is None:
                p.kill()
        for pid in still_alive(tree):  # clean up after a failure, by PID, only what run 1 started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    out.outputs += [logs[0].read_text(errors="replace"), stdout.decode(errors="replace"),
                    logs[1].read_text(errors="replace")]
    assert p2.returncode == 0, f"run 2 failed ({p2.returncode}): {out.outputs[-1][-3000:]}"
    out.summary = json.loads(stdout.decode().strip().splitlines()[-1])
    print(f"driver killed after checkpoint {out.killed_at}; its {len(tree)} processes: gone after "
          f"{sorted(round(t, 1) for t in out.gone_after.values())} s, all by {out.linger_s:.1f} s; "
          f"Ray temp dirs of run 1: {out.ray_dirs}, left after run 2: {out.ray_dirs_left}")
    yield out
    for d in out.ray_dirs:  # in case the sweep did not remove it (a failure)
        shutil.rmtree(d, ignore_errors=True)


def _files_with(dirs: list[str], needle: bytes) -> list[str]:
    return [str(p) for d in dirs for p in Path(d).rglob("*") if p.is_file() and not p.is_symlink()
            and p.stat().st_size < 64 << 20 and needle in p.read_bytes()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_resumes_from_last_checkpoint_with_uninterrupted_parameters(runs: Runs, ray_cluster,  # type: ignore[no-untyped-def]
                                                                    tmp_path: Path) -> None:
    from layeredge_dist.config import load_config, with_overrides
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.driver import Pipeline
    from layeredge_dist.pipeline.train import LoopConfig, train

    s = runs.summary
    assert s["steps_done"] == STEPS
    assert s["resumed_from"] == [s["start_step"]] and s["start_step"] >= runs.killed_at >= 4, s
    assert s["failures"] == []
    # the uninterrupted reference: the same config (same spec, batches and optimizer) in one go
    cfg = with_overrides(load_config(None), list(OVERRIDES))
    ref_dir = tmp_path / "ref"
    with Pipeline(setup.stage_spec(cfg), setup.placement(cfg)) as pipe:
        result = train(pipe, setup.workload(cfg), LoopConfig(STEPS, checkpoint_every=STEPS, eval_every=-1,
                                                            checkpoint_dir=str(ref_dir)))
    assert result.steps_done == STEPS and result.resumed_from == []
    got = _final_state(runs.run_dir / "checkpoints", STEPS)
    want = _final_state(ref_dir, STEPS)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            assert torch.equal(g[k], w[k]), k


def test_no_ray_process_left_behind(runs: Runs) -> None:
    assert not runs.leftovers, (
        f"{len(runs.leftovers)} process(es) of the killed driver's embedded Ray still run {LINGER_S:.0f} s after "
        "the kill: " + "; ".join(f"{pid}: {cmd}" for pid, cmd in sorted(runs.leftovers.items())))
    # the agents did not wait for their 60 s GCS timeout: run 2's connect() killed them
    assert runs.linger_s < SWEPT_S, f"run 1's Ray processes lingered {runs.linger_s:.1f} s: {runs.gone_after}"


def test_orphaned_ray_temp_dir_is_swept(runs: Runs) -> None:
    assert runs.ray_dirs, "found no --temp-dir=/tmp/le-ray-* on the killed run's Ray processes"
    assert not runs.ray_dirs_left, f"the killed run's Ray temp dir is still there after run 2: " \
                                   f"{runs.ray_dirs_left}"


def test_per_run_token_is_not_persisted(runs: Runs) -> None:
    needle = TOKEN.encode()
    places = [p for p in runs.run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in places) and any(p.name == "summary.json" for p in places)
    found = [str(p) for p in places if needle in p.read_bytes()]
    found += [f"output {i}" for i, text in enumerate(runs.outputs) if TOKEN in text]
    found += runs.token_in_ray_logs  # Ray's session logs of the killed run
    assert not found, f"the per-run token was written to: {found}"

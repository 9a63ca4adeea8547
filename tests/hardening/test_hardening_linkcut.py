"""A testbed link cut for 10 s and restored, during training and during inference.

A 3-host testbed (network namespaces on a bridge, ``layeredge_dist.testbed``) runs a Ray node per host; a driver
(``linkcut_driver.py``) runs inside host 0 with one stage per host (strict_spread, in whatever order Ray chose).
Once a few steps (or inference calls) have completed, the test cuts the link of the host that runs stage 1 (or,
when that is host 0 - the driver's, which must stay reachable - the host of stage 2): the edges to and from that
stage and all Ray traffic to it cross that link. The cut takes the *switch* side of the link down
(``ip -n <switch> link set v<i> down``) for 10 s and brings it up again. That is a blackhole, not a refusal: the
host's eth0 loses carrier (its route stays, flagged ``linkdown``), every packet in either direction is dropped by
the deactivated device queue, nobody gets an error from it (no RST, no ICMP, no ENETUNREACH: a send just sits in
the socket buffer and TCP retransmits with backoff), and established connections carry on after the restore -
what a pulled cable or a dead switch port does. (Taking eth0 down *inside* the host instead would delete its
route, and the host's own sends would fail at once with ENETUNREACH: a gentler fault.)

Acceptable outcomes, checked explicitly:

* training: (a) the step in flight stalls and completes after the restore, or (b) the driver reports a
  StageFailure naming the cut-off stage within the step deadline, recovers and resumes from the last complete
  checkpoint; either way every step 1..N is done, and the losses of every step and the final checkpoint are
  bit-identical (``float.hex`` / ``torch.equal``) to an uninterrupted run of the same config on the same
  testbed. Run with a 4 s step deadline (shorter than the cut: must be (b)) and a 60 s one (must be (a)).
* inference (per call, and served inside ``pipe.serving()``; 4 s deadline): every call either returns outputs
  identical to the reference taken before the cut or fails with a StageFailure naming the cut-off stage within
  the deadline (no hang); after the restore ``recover()`` (after leaving ``serving()``) brings the pipeline back
  and calls return the reference outputs again.

The times to detect and to recover are printed (``-s``) and recorded in docs/hardening.md. Needs root and iproute2.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from layeredge_dist.testbed import Testbed, unavailable_reason


_REASON = unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(_REASON is not None, reason=f"testbed unavailable (needs root and iproute2): "
                                                            f"{_REASON}")]

DRIVER = Path(__file__).with_name("linkcut_driver.py")
CUT_S = 10.0
STEPS = 12
CKPT_EVERY = 2
#: The demo byte GPT shrunk to seconds per run, fp32 edges (lossless: the comparison is exact).
MODEL = ("model.config.context=16", "model.config.d_model=32", "model.config.n_layer=6", "model.config.n_head=2",
         "data.context=16", "data.batch_size=8", "data.corpus_bytes=200000", "pipeline.stages=3",
         "codecs.forward=fp32", "codecs.backward=fp32", "cluster.cpus_per_stage=1", "cluster.max_restarts=1",
         "cluster.start_timeout_s=120", "transport.recv_timeout_s=60",
         "transport.allow_plaintext_token=true", "cluster.placement=strict_spread")
#: Slack on top of the step deadline for reporting a failure: the driver's probe of unresponsive stages (2 s),
#: its wait for a death to surface (3 s), scheduling on a loaded 2-core machine.
SLACK_S = 8.0


@pytest.fixture(scope="module")
def bed() -> Iterator[tuple[Any, Any]]:
    from layeredge_dist.testbed.ray_nodes import RayNodes

    old = os.environ.get("LAYEREDGE_NO_COMPILE")
    os.environ["LAYEREDGE_NO_COMPILE"] = "1"  # the stage actors inherit the Ray nodes' environment
    tb = Testbed()
    try:
        tb.up(3, "unshaped")
        nodes = RayNodes(tb, cpus_per_node=1.0, timeout_s=240.0)
        nodes.start()
        yield tb, nodes
    finally:
        tb.down()
        if old is None:
            os.environ.pop("LAYEREDGE_NO_COMPILE", None)
        else:
            os.environ["LAYEREDGE_NO_COMPILE"] = old


class Driver:
    """A linkcut_driver.py process inside host 0; its JSON lines are collected as they arrive."""

    def __init__(self, nodes: Any, mode: str, job: dict[str, Any], log: Path) -> None:
        self.nodes = nodes
        self.events: list[dict[str, Any]] = []
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._err = open(log, "wb")
        self.log = log
        self.proc = nodes.spawn_driver([sys.executable, str(DRIVER), mode, json.dumps(job)],
                                       env={"LAYEREDGE_NO_COMPILE": "1"}, stdout=subprocess.PIPE, stderr=self._err,
                                       what=f"linkcut-{mode}")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self._q.put(json.loads(raw))
            except ValueError:
                pass
        self._q.put(None)

    def wait_for(self, pred: Any, timeout_s: float) -> dict[str, Any]:
        """Collect events until one satisfies ``pred`` (returned) or the driver ends / the time is up (fail)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ev = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"driver: nothing expected within {timeout_s:.0f} s; events so far "
                                     f"{self.events[-5:]}; log: {self.tail()}") from None
            if ev is None:
                self._q.put(None)
                raise AssertionError(f"driver ended (exit {self.proc.wait(10)}); events {self.events[-5:]}; "
                                     f"log: {self.tail()}")
            self.events.append(ev)
            if ev["ev"] == "crash":
                raise AssertionError(f"driver crashed: {ev['traceback']}")
            if pred(ev):
                return ev

    def finish(self, timeout_s: float) -> dict[str, Any]:
        summary = self.wait_for(lambda e: e["ev"] == "summary", timeout_s)
        assert self.proc.wait(60) == 0, f"driver exit {self.proc.returncode}: {self.tail()}"
        return summary

    def tail(self) -> str:
        self._err.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.nodes.testbed.stop(self.proc, grace_s=5.0)
        self._err.close()


class Link:
    """Host ``i``'s link, cut at the switch port (see the module docstring); always restored by ``restore``."""

    def __init__(self, tb: Any, host: int = -1) -> None:
        self.switch = tb.switch
        self.host = host
        self.cut_at = self.restored_at = 0.0

    def _set(self, state: str) -> None:
        assert self.host > 0, "never cut host 0: the driver runs there"
        subprocess.run(["ip", "-n", self.switch, "link", "set", f"v{self.host}", state], check=True,
                       capture_output=True)

    def cut(self) -> None:
        self._set("down")
        self.cut_at = time.monotonic()

    def restore(self) -> None:
        self._set("up")
        self.restored_at = time.monotonic()


def _victim(tb: Any, placed: dict[str, Any]) -> tuple[int, int]:
    """(stage, host) to cut off: the host of stage 1, unless that is host 0 (the driver's: cutting it would cut
    the driver off from everything), then of stage 2 or 0. STRICT_SPREAD puts one stage per host, in any order."""
    host_of = {i["stage"]: [h.ip for h in tb.hosts].index(i["node_ip"]) for i in placed["infos"]}
    assert sorted(host_of.values()) == [0, 1, 2], f"not one stage per host: {placed}"
    stage = next(s for s in (1, 2, 0) if host_of[s] != 0)
    return stage, host_of[stage]


def _state(ckpt: Path, step: int) -> list[dict[str, torch.Tensor]]:
    from layeredge_dist.stage import checkpoint

    return [sd for s in range(3) for sd in checkpoint.load_stage(ckpt, step, s)["model"]]


def _train(nodes: Any, tmp: Path, name: str, step_timeout_s: float,
           cut: Link | None) -> tuple[list[dict[str, Any]], int]:
    """Train; with ``cut``, cut the link of a stage's host (:func:`_victim`) after a few steps for CUT_S.
    Returns the driver's events and the stage cut off (-1: none)."""
    job = {"address": nodes.address, "steps": STEPS, "checkpoint_every": CKPT_EVERY,
           "checkpoint_dir": str(tmp / name), "overrides": [*MODEL, f"cluster.step_timeout_s={step_timeout_s:g}"]}
    drv = Driver(nodes, "train", job, tmp / f"{name}.err")
    stage = -1
    try:
        placed = drv.wait_for(lambda e: e["ev"] == "placed", 300)
        if cut is not None:
            stage, cut.host = _victim(nodes.testbed, placed)
            drv.wait_for(lambda e: e["ev"] == "checkpointed" and e["step"] >= 4, 300)
            drv.wait_for(lambda e: e["ev"] == "step", 60)  # cut while the next step is in flight
            try:
                cut.cut()
                time.sleep(CUT_S)
            finally:
                cut.restore()
        summary = drv.finish(300)
    finally:
        drv.close()
    assert summary["steps_done"] == STEPS, summary
    return drv.events, stage


@pytest.fixture(scope="module")
def reference(bed: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    tmp = tmp_path_factory.mktemp("linkcut-ref")
    events, _ = _train(bed[1], tmp, "ref", 60.0, None)
    losses = {e["step"]: e["loss"] for e in events if e["ev"] == "step"}
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert not [e for e in events if e["ev"] == "down"]
    return tmp / "ref", losses


@pytest.mark.parametrize("step_timeout_s,expect", [(4.0, "b"), (60.0, "a")], ids=["deadline4s", "deadline60s"])
def test_training_link_cut(bed: tuple[Any, Any], reference: tuple[Path, dict[int, str]], tmp_path: Path,
                           step_timeout_s: float, expect: str) -> None:
    tb, nodes = bed
    link = Link(tb)
    events, victim = _train(nodes, tmp_path, "cut", step_timeout_s, link)
    ref_dir, ref_losses = reference
    steps = [e for e in events if e["ev"] == "step"]
    downs = [e for e in events if e["ev"] == "down"]
    faileds = [e for e in events if e["ev"] == "failed"]
    # no lost step, no silent corruption: every step done, each loss (also of redone steps) bit-identical
    assert {e["step"] for e in steps} == set(range(1, STEPS + 1))
    for e in steps:
        assert e["loss"] == ref_losses[e["step"]], f"step {e['step']}: loss {float.fromhex(e['loss'])} vs " \
                                                   f"uninterrupted {float.fromhex(ref_losses[e['step']])}"
    got, want = _state(tmp_path / "cut", STEPS), _state(ref_dir, STEPS)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and all(torch.equal(g[k], w[k]) for k in g)
    before = [e for e in steps if e["t"] < link.cut_at]
    after = [e for e in steps if e["t"] > link.restored_at]
    during = [e for e in steps if link.cut_at + 1.0 <= e["t"] <= link.restored_at]  # 1 s: a step may end just after
    report = {"step_timeout_s": step_timeout_s, "cut": f"host {link.host} (stage {victim})",
              "cut_s": round(link.restored_at - link.cut_at, 2),
              "steps_done_before_cut": before[-1]["step"] if before else 0,
              "steps_completed_during_cut": [e["step"] for e in during]}
    if downs:  # (b): a clear error within the deadline, naming the stage behind the cut link
        assert expect == "b", f"step deadline {step_timeout_s} s > cut, expected the step to stall: {downs}"
        d = downs[0]
        detect_s = d["at"] - link.cut_at
        assert d["stage"] == victim, f"blamed stage {d['stage']} for the link of host {link.host} (stage " \
                                     f"{victim}): {d['message']} (probe {d['probe']})"
        assert detect_s <= step_timeout_s + SLACK_S, f"failure reported {detect_s:.1f} s after the cut: {d}"
        assert faileds, "no recovery after the failure"
        f = faileds[0]
        ckpts = [e["step"] for e in events if e["ev"] == "checkpointed" and e["t"] < d["t"]]
        assert f["resume"] == max(ckpts), f"resumed from {f['resume']}, last complete checkpoint {max(ckpts)}"
        first_after = next(e for e in steps if e["t"] > f["t"])
        report |= {"behaviour": "b", "failures": len(downs), "detect_s": round(detect_s, 2),
                   "message": d["message"], "probe_after_failure": d["probe"],
                   "recovered_s_after_restore": round(f["t"] - link.restored_at, 2),
                   "resumed_from": f["resume"],
                   "first_step_after_s_after_restore": round(first_after["t"] - link.restored_at, 2)}
        assert len(downs) == 1, f"one cut, {len(downs)} failures: {downs}"
    else:  # (a): the step in flight stalled and completed after the restore
        assert expect == "a", f"step deadline {step_timeout_s} s < cut but no failure was reported"
        assert not during, f"steps completed while host {link.host} was cut off: {during}"
        stalled = after[0]
        assert stalled["t"] - stalled["seconds"] < link.cut_at + 0.5, stalled
        report |= {"behaviour": "a", "stalled_step": stalled["step"], "stalled_step_s": round(stalled["seconds"], 2),
                   "completed_s_after_restore": round(stalled["t"] - link.restored_at, 2)}
    print("LINKCUT training", json.dumps(report))


@pytest.mark.parametrize("serving", [False, True], ids=["per_call", "serving"])
def test_inference_link_cut(bed: tuple[Any, Any], tmp_path: Path, serving: bool) -> None:
    tb, nodes = bed
    step_timeout_s = 4.0
    link = Link(tb)
    stop = tmp_path / "stop"
    job = {"address": nodes.address, "stop_file": str(stop), "pause_s": 0.05, "serving": serving,
           "overrides": [*MODEL, f"cluster.step_timeout_s={step_timeout_s:g}"]}
    drv = Driver(nodes, "infer", job, tmp_path / "infer.err")
    try:
        victim, link.host = _victim(tb, drv.wait_for(lambda e: e["ev"] == "placed", 300))
        drv.wait_for(lambda e: e["ev"] == "ready", 300)
        for _ in range(3):
            drv.wait_for(lambda e: e["ev"] == "call", 60)
        try:
            link.cut()
            time.sleep(CUT_S)
        finally:
            link.restore()
        # after the restore: recovered and back to correct answers within a bounded time
        drv.wait_for(lambda e: e["ev"] == "call" and e["ok"] and e["start"] > link.restored_at, 120)
        for _ in range(3):
            drv.wait_for(lambda e: e["ev"] == "call", 60)
        stop.touch()
        drv.finish(120)
    finally:
        stop.touch()
        drv.close()
    calls = [e for e in drv.events if e["ev"] == "call"]
    final = next(e for e in drv.events if e["ev"] == "final")
    recovered = [e for e in drv.events if e["ev"] == "recovered"]
    bad = [e for e in calls if e["ok"] and not e["equal"]]
    assert not bad and final["equal"], f"silent corruption: {bad or final}"
    hung = [e for e in calls if e["at"] - e["start"] > step_timeout_s + SLACK_S]
    assert not hung, f"calls took longer than the deadline ({step_timeout_s} s + {SLACK_S} s): {hung}"
    failed = [e for e in calls if not e["ok"]]
    assert failed, f"no call failed while host {link.host} was cut off for 10 s with a 4 s deadline"
    assert {e["stage"] for e in failed} == {victim}, (f"host {link.host} (stage {victim}) cut off",
                                                      [(e["stage"], e["message"], e["probe"]) for e in failed])
    assert all(e["error"] == "StageFailure" for e in failed)
    assert not [e for e in calls if e["ok"] and link.cut_at + 0.5 < e["at"] < link.restored_at], \
        "a call succeeded across a cut link"
    first_ok = next(e for e in calls if e["ok"] and e["at"] > link.restored_at)
    first_fail = failed[0]
    report = {"serving": serving, "step_timeout_s": step_timeout_s, "cut": f"host {link.host} (stage {victim})",
              "cut_s": round(link.restored_at - link.cut_at, 2), "calls": len(calls), "failed_calls": len(failed),
              "detect_s": round(first_fail["at"] - max(first_fail["start"], link.cut_at), 2),
              "probe_after_failure": first_fail["probe"],
              "message": first_fail["message"],
              "recover_attempts": [(round(r["t"] - r["start"], 2), r["ok"]) for r in recovered],
              "first_ok_s_after_restore": round(first_ok["at"] - link.restored_at, 2)}
    print("LINKCUT inference", json.dumps(report))

"""The driver of the link-cut tests, run inside testbed host 0 (``ip netns exec``) by test_hardening_linkcut.py.

``python linkcut_driver.py train|infer '<json job>'`` connects to the testbed's Ray cluster (``job["address"]``),
builds the pipeline of ``job["overrides"]`` and prints one JSON object per line on stdout, each with ``t`` =
``time.monotonic()`` (CLOCK_MONOTONIC is system-wide, so the test compares it with the moment it cut the link):

* ``train``: ``train()`` with checkpoints every ``job["checkpoint_every"]`` steps; events ``step`` (steps done,
  loss as ``float.hex``), ``checkpointed``, ``down`` (a StageFailure: stage and message; recovery starts),
  ``failed`` (recovered, resuming from a checkpoint), then ``summary`` (TrainResult fields).
* ``infer``: a reference ``infer`` call on a fixed batch, ``ready``, then calls on that batch back to back until
  the file ``job["stop_file"]`` exists (with ``job["serving"]``: inside ``pipe.serving()``, which is left after
  a failure and entered again after the recovery); each call prints ``call`` (start, end, ``equal`` to the
  reference, or the StageFailure's stage, message, ``at`` = when it was raised, and ``probe``: how long each
  stage then took to answer a control call); after a failure ``pipe.recover()`` is called and timed
  (``recovered``). Finally one more call (``final``) and ``summary``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any


def emit(kind: str, **fields: Any) -> None:
    print(json.dumps({"ev": kind, "t": time.monotonic(), **fields}), flush=True)


def probe(pipe: Any, timeout_s: float = 2.0) -> list[Any]:
    """Diagnostics: how long each stage takes to answer a control call (or the error), one at a time."""
    import ray

    out: list[Any] = []
    refs = [a.memory.remote() for a in pipe.actors]
    t0 = time.monotonic()
    for ref in refs:
        try:
            ray.get(ref, timeout=max(0.01, t0 + timeout_s - time.monotonic()))
            out.append(round(time.monotonic() - t0, 3))
        except Exception as e:  # noqa: BLE001 - recorded
            out.append(f"{type(e).__name__} after {time.monotonic() - t0:.2f} s")
    return out


def main() -> int:
    mode, job = sys.argv[1], json.loads(sys.argv[2])
    from layeredge_dist.config import RunConfig, with_overrides
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.cluster import connect
    from layeredge_dist.pipeline.driver import Pipeline, StageFailure

    cfg = with_overrides(RunConfig(), list(job["overrides"]))
    with connect(address=job["address"], timeout_s=120.0):
        with Pipeline(setup.stage_spec(cfg), setup.placement(cfg)) as pipe:
            emit("placed", infos=[{"stage": i["stage"], "node_ip": i.get("node_ip"), "pid": i.get("pid")}
                                  for i in pipe.infos])
            if mode == "train":
                return _train(pipe, cfg, job)
            return _infer(pipe, cfg, job, StageFailure)


def _train(pipe: Any, cfg: Any, job: dict[str, Any]) -> int:
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.train import Events, LoopConfig, train

    class _Ev(Events):
        def step(self, step: int, loss: float, result: Any) -> None:
            emit("step", step=step, loss=float(loss).hex(), seconds=result.seconds)

        def checkpointed(self, step: int) -> None:
            emit("checkpointed", step=step)

        def down(self, error: Any) -> None:
            at = time.monotonic()
            emit("down", at=at, stage=error.stage, message=str(error), probe=probe(pipe))

        def failed(self, step: int, error: Any, resume_step: int) -> None:
            emit("failed", step=step, stage=error.stage, resume=resume_step)

    loop = LoopConfig(int(job["steps"]), eval_every=-1, checkpoint_every=int(job["checkpoint_every"]),
                      checkpoint_dir=job["checkpoint_dir"])
    result = train(pipe, setup.workload(cfg), loop, _Ev())
    emit("summary", steps_done=result.steps_done, failures=result.failures, resumed_from=result.resumed_from,
         start_step=result.start_step, wall_s=result.wall_s)
    return 0


def _infer(pipe: Any, cfg: Any, job: dict[str, Any], StageFailure: type) -> int:
    import contextlib

    import torch

    from layeredge_dist.pipeline import setup

    batch = setup.workload(cfg).val_batches(1)[0]
    ref = pipe.call(batch, "infer").outputs
    serving = bool(job.get("serving"))

    def same(outputs: list[Any]) -> bool:
        return len(outputs) == len(ref) and all(torch.equal(a, b) for a, b in zip(outputs, ref))

    def stopped() -> bool:
        return os.path.exists(job["stop_file"]) or calls > 5000

    emit("ready", serving=serving)
    calls = failures = 0
    while not stopped():
        failed = False
        # served calls run inside pipe.serving(); after a failure the block is left before recover()
        with pipe.serving() if serving else contextlib.nullcontext():
            while not stopped() and not failed:
                t0 = time.monotonic()
                calls += 1
                try:
                    out = pipe.call(batch, "infer").outputs
                    emit("call", start=t0, at=time.monotonic(), ok=True, equal=same(out))
                except StageFailure as err:
                    failures += 1
                    failed = True
                    at = time.monotonic()
                    emit("call", start=t0, at=at, ok=False, stage=err.stage, message=str(err),
                         error=type(err).__name__, probe=probe(pipe))
                time.sleep(float(job.get("pause_s", 0.05)))
        if failed:
            r0 = time.monotonic()
            try:
                pipe.recover()
                emit("recovered", start=r0, ok=True)
            except StageFailure as err2:  # still cut: try again on the next round
                emit("recovered", start=r0, ok=False, stage=err2.stage, message=str(err2))
    t0 = time.monotonic()
    with pipe.serving() if serving else contextlib.nullcontext():
        out = pipe.call(batch, "infer").outputs
    emit("final", start=t0, equal=same(out))
    emit("summary", calls=calls, failures=failures)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BaseException:
        emit("crash", traceback=traceback.format_exc()[-4000:])
        raise

"""deploy/prometheus: promtool's verdict on the config and the rules, the rules' unit tests, and a real Prometheus
scraping a 3-stage pipeline through the driver's file service discovery, evaluating the recording rules, the
alerts and every query of the Grafana dashboard."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_support import (
    ALERT_RULES,
    PROM_CONFIG,
    RECORDING_RULES,
    RULE_TESTS,
    Prometheus,
    dashboard,
    exported_names,
    http_get,
    metric_names,
    panel_targets,
    promtool,
    recording_rule_names,
    requires_prometheus,
    rule_groups,
    substitute,
    runnable_config,
)

# ---- promtool: config, rules, rule unit tests -------------------------------------------------------------------


@requires_prometheus
def test_promtool_checks_the_config_and_its_rule_files() -> None:
    r = promtool("check", "config", str(PROM_CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 2 rule files found" in r.stdout + r.stderr


@requires_prometheus
def test_promtool_checks_both_rule_files() -> None:
    r = promtool("check", "rules", str(RECORDING_RULES), str(ALERT_RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAILED" not in r.stdout + r.stderr


@requires_prometheus
def test_promtool_rule_unit_tests_pass() -> None:
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


# ---- the rule files, structurally (no binary needed) ------------------------------------------------------------


def test_rules_use_only_declared_metric_names() -> None:
    known = exported_names() | recording_rule_names() | {"up"}
    for path in (RECORDING_RULES, ALERT_RULES):
        for group in rule_groups(path):
            for rule in group["rules"]:
                unknown = metric_names(rule["expr"]) - known
                assert not unknown, f"{path.name}: {rule.get('record') or rule.get('alert')}: unknown {unknown}"


def test_alerts_have_annotations_and_a_for_duration() -> None:
    alerts = {r["alert"]: r for g in rule_groups(ALERT_RULES) for r in g["rules"]}
    assert set(alerts) == {"LayerEdgeEdgeErrorOverBudget", "LayerEdgeLinkBandwidthCollapse", "LayerEdgeStageDown",
                           "LayerEdgeRejectedFrames", "LayerEdgeStepTimeRegression", "LayerEdgeRestartLoop"}
    for name, rule in alerts.items():
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        assert "README.md#" in rule["annotations"]["runbook"], name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert "for" in rule, name
    readme = (PROM_CONFIG.parent / "README.md").read_text()
    # GitHub's anchor of a heading: lower case, punctuation other than '-' dropped, spaces to '-'
    anchors = {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
               for line in readme.splitlines() if line.startswith("#")}
    for name, rule in alerts.items():  # every runbook hint names a section that exists
        anchor = rule["annotations"]["runbook"].split("README.md#")[1].split(":")[0]
        assert anchor in anchors, (name, anchor, sorted(anchors))


def test_metric_name_lexer() -> None:
    expr = ('sum by (edge, role) (rate(layeredge_edge_wire_bytes_total{direction="send", edge=~"s0->s1"}[1m]))'
            ' > on (edge) group_left() 1.5e-3 * foo:bar:rate1m offset 10m or label_replace(up, "a", "b", "c", ".*")')
    assert metric_names(expr) == {"layeredge_edge_wire_bytes_total", "foo:bar:rate1m", "up"}


# ---- a real Prometheus against a real pipeline ------------------------------------------------------------------

#: A tiny 3-stage run: one block per stage, 8 x 32 bytes per step, int8 activations forward, metrics on, link
#: probes and the importance proxy every 2 steps, one Ray restart allowed for the failure drill.
OVERRIDES = [
    "name=deploy-test", "model.config.n_layer=3", "model.config.d_model=32", "model.config.n_head=2",
    "model.config.context=32", "data.context=32", "data.batch_size=8", "data.corpus_bytes=200000",
    "codecs.forward=int8", "metrics.port=0", "metrics.probe_every=2", "metrics.proxy_every=2",
    "cluster.max_restarts=1", "cluster.start_timeout_s=60", "cluster.step_timeout_s=20",
]
STEPS = 40
KILL_AT = 6  # stage 1 is killed while step KILL_AT runs; the loop resumes from the checkpoint after step 5
RESUMED_FROM = 5
#: Pacing: each step starts >= MIN_STEP_S after the previous one, so the 35 steps after the recovery last >= 8.75 s:
#: Prometheus applies file-SD changes in 5 s batches, and the restarted stage's new target must then be scraped
#: at its 1 s interval at least twice while it still trains (rate() of its counters > 0).
MIN_STEP_S = 0.25


def _send_rejected_frames(address: str, transport: Any) -> None:
    """Send stage 2 (at ``address``) a frame on s1->s2 with a corrupted payload and one with a wrong token; both are
    refused before decoding (a far-future call number keeps them out of the run even if one were accepted)."""
    from layeredge_dist.codecs import parse_codec
    from layeredge_dist.stage import edge
    from layeredge_dist.transport import FrameRejected, PeerUnavailable, Unauthenticated, open_sender
    from layeredge_dist.types import TensorRole
    from layeredge_dist.wire import Frame, frame_from_encoded

    frame = frame_from_encoded(parse_codec("fp32").encode(torch.randn(64)), edge(1, 2), TensorRole.ACTIVATION,
                               10**6, 0)
    corrupt = frame.payload.clone()
    corrupt[0] ^= 0xFF
    for config, bad in ((transport, Frame(frame.header, corrupt)), (replace(transport, token="wrong-token"), frame)):
        with open_sender(address, edge(1, 2), TensorRole.ACTIVATION, config) as tx:
            with pytest.raises((FrameRejected, Unauthenticated, PeerUnavailable)):
                tx.send(bad, timeout_s=5)
                tx.flush(timeout_s=5)


@dataclass
class Live:
    prom: Prometheus
    targets_before: dict[str, str]
    targets_after: dict[str, str]
    result: Any
    expositions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def live(ray_cluster, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Prometheus (1 s scrape and rule interval, the deploy rule files) scraping a 3-stage pipeline found through
    the driver's file SD; the run trains STEPS steps with stage 1 killed once (Ray restarts it on a new port,
    the driver rewrites the file SD). Yields while both still run, so instant queries see live targets."""
    from layeredge_dist.config import RunConfig, with_overrides
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.driver import Pipeline
    from layeredge_dist.pipeline.observe import Observer
    from layeredge_dist.pipeline.train import LoopConfig, train

    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("prometheus")
    sd = tmp / "run" / "prometheus" / "targets.json"
    cfg = with_overrides(RunConfig(), OVERRIDES)
    timings: dict[str, float] = {}
    with Pipeline(setup.stage_spec(cfg), setup.placement(cfg)) as pipe:
        timings["pipeline_start_s"] = time.monotonic() - t0
        observer = Observer(cfg.name, pipe, cfg.data.batch_size * cfg.data.context, port=0, sd_path=sd)
        try:
            # Nothing in the runtime sets the per-edge error budget yet (the controller's budget is a total
            # sensitivity). Record one on the driver's registry, through the real helper and label set, so the
            # queries that read it are evaluated against a real series: below int8's relative error (~0.5 %) on
            # s0->s1 (its alert goes pending), far above it on s1->s2.
            observer.metrics.error_budget("s0->s1", "forward", 0.001)
            observer.metrics.error_budget("s1->s2", "forward", 0.5)
            # Two frames stage 2 refuses and counts: a corrupted payload on s1->s2 and a wrong token.
            _send_rejected_frames(pipe.infos[2]["address"], pipe.base.transport)
            targets_before = observer.targets()
            with Prometheus(tmp, runnable_config(sd)) as prom:
                timings["prometheus_ready_s"] = time.monotonic() - t0
                prom.wait_for('up{job="layeredge"} == 1', ok=lambda r: len(r) == 4, timeout_s=15)
                start = time.monotonic()
                killed: list[threading.Thread] = []

                def kill_in_flight(seq: int) -> None:
                    # once the driver has started call seq + 1 (a step takes ~0.1 s), kill stage 1 20 ms into it: a
                    # stage killed between calls can leave the next call waiting for step_timeout_s (20 s here)
                    deadline = time.monotonic() + 10.0
                    while pipe.seq == seq and time.monotonic() < deadline:
                        time.sleep(0.002)
                    time.sleep(0.02)
                    pipe.kill_stage(1)

                last = [time.monotonic()]

                def pace(step: int) -> None:
                    time.sleep(max(0.0, last[0] + MIN_STEP_S - time.monotonic()))
                    last[0] = time.monotonic()
                    if step == KILL_AT and not killed:
                        killed.append(threading.Thread(target=kill_in_flight, args=(pipe.seq,), daemon=True))
                        killed[0].start()

                loop = LoopConfig(STEPS, eval_every=10, eval_batches=1, checkpoint_every=5,
                                  checkpoint_dir=str(tmp / "run" / "checkpoints"), probe_every=2,
                                  probe_bytes=256 << 10)
                result = train(pipe, setup.workload(cfg), loop, observer, before_step=pace)
                for thread in killed:
                    thread.join(timeout=5)
                timings["train_s"] = time.monotonic() - start
                # every exporter of the rewired pipeline is scraped, the old stage 1 target is gone
                prom.wait_for('up{job="layeredge"}', timeout_s=15, ok=lambda r: len(r) == 4 and all(
                    s["value"][1] == "1" for s in r) and {s["metric"]["instance"] for s in r} == set(
                    observer.targets().values()))
                prom.wait_for(f'layeredge_run_step{{run="{observer.run}"}} == {STEPS}', timeout_s=10)
                prom.wait_for("layeredge_stage_restarts_total", timeout_s=10)
                expositions = {name: http_get(f"http://{t}/metrics") for name, t in observer.targets().items()}
                timings["ready_for_queries_s"] = time.monotonic() - t0
                yield Live(prom, targets_before, observer.targets(), result, expositions, timings)
        finally:
            observer.close()


@pytest.mark.slow
@requires_prometheus
def test_live_exposition_of_every_exporter_passes_promtool(live: Live) -> None:
    assert set(live.expositions) == {"driver", "stage0", "stage1", "stage2"}
    for name, text in live.expositions.items():
        assert "layeredge_" in text, name
        r = promtool("check", "metrics", stdin=text)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), f"{name}: {r.stdout}{r.stderr}"


@pytest.mark.slow
@requires_prometheus
def test_prometheus_scrapes_driver_and_stages_through_file_sd(live: Live) -> None:
    assert live.result.steps_done == STEPS and len(live.result.failures) == 1, live.result.failures
    assert live.result.resumed_from == [RESUMED_FROM], live.result.resumed_from
    # the restarted stage exports on another port and the file SD was rewritten with it
    assert live.targets_after["stage1"] != live.targets_before["stage1"]
    assert {k: v for k, v in live.targets_after.items() if k != "stage1"} == \
        {k: v for k, v in live.targets_before.items() if k != "stage1"}
    up = live.prom.query('up{job="layeredge"}')
    assert {s["metric"]["process"]: s["metric"]["instance"] for s in up} == \
        {"driver": live.targets_after["driver"], **{f"stage{i}": live.targets_after[f"stage{i}"] for i in range(3)}}
    assert all(s["value"][1] == "1" for s in up)

    wire = live.prom.query('layeredge_edge_wire_bytes_total{edge="s0->s1", direction="send", role="activation"}')
    assert wire and wire[0]["metric"]["codec"] == "int8" and wire[0]["metric"]["process"] == "stage0"
    assert float(wire[0]["value"][1]) > 0
    step = live.prom.query("layeredge_run_step")
    assert [(s["metric"]["run"], float(s["value"][1])) for s in step] == [("deploy-test", STEPS)]
    # One restart is counted. Its stage label is the driver's StageFailure.stage: usually s1, but when a neighbour's
    # call fails first (PeerUnavailable on the dead stage) the driver blames that neighbour, so any stage is
    # accepted here.
    restarts = live.prom.query("layeredge_stage_restarts_total")
    assert len(restarts) == 1 and float(restarts[0]["value"][1]) == 1.0, restarts
    assert restarts[0]["metric"]["stage"] in ("s0", "s1", "s2")


@pytest.mark.slow
@requires_prometheus
def test_recording_rules_evaluate_on_live_data(live: Live) -> None:
    ratio = live.prom.query('edge_role_codec:layeredge_edge_compression:ratio_rate1m{edge="s0->s1"}')
    assert [(s["metric"]["role"], s["metric"]["codec"]) for s in ratio] == [("activation", "int8")]
    assert 3.0 < float(ratio[0]["value"][1]) < 4.0  # int8 + block scales + framing: ~3.8x of fp32
    util = live.prom.query("stage:layeredge_stage_utilization:ratio_rate1m")
    assert {s["metric"]["stage"] for s in util} == {"s0", "s1", "s2"}
    assert all(0.0 < float(s["value"][1]) <= 1.0 for s in util)
    p95 = live.prom.query('run:layeredge_run_step_seconds:p95_rate1m{run="deploy-test"}')
    assert p95 and 0.0 < float(p95[0]["value"][1]) < 60.0
    # the host's input edge is recorded by its receiver only and is still counted once
    wire = live.prom.query("edge_role_codec:layeredge_edge_wire_bytes:rate1m")
    assert {s["metric"]["edge"] for s in wire} >= {"s0->s1", "s1->s2", "s1->s0", "s2->s1", "s3->s0"}
    budget = live.prom.query("edge_role:layeredge_edge_error_budget:ratio")
    assert {(s["metric"]["edge"], s["metric"]["role"]) for s in budget} == {("s0->s1", "activation"),
                                                                             ("s1->s2", "activation")}


@pytest.mark.slow
@requires_prometheus
def test_alerts_evaluate_on_live_data(live: Live) -> None:
    alerts = live.prom.wait_for('ALERTS{alertname="LayerEdgeEdgeErrorOverBudget"}', timeout_s=5)
    assert [(a["metric"]["edge"], a["metric"]["alertstate"]) for a in alerts] == [("s0->s1", "pending")]
    rejected = live.prom.query('ALERTS{alertname="LayerEdgeRejectedFrames"}')
    assert {(a["metric"]["edge"], a["metric"]["reason"]) for a in rejected} >= {("s1->s2", "checksum"),
                                                                                ("unknown", "auth")}
    # the killed stage's old target left with the file-SD rewrite (Prometheus applies SD changes every 5 s), so
    # its StageDown alert resolves within a rule interval or two instead of going on to fire
    down = live.prom.wait_for('ALERTS{alertname="LayerEdgeStageDown"}', ok=lambda r: r == [], timeout_s=6)
    assert down == [], (down, live.targets_after, live.timings, live.result.failures)
    rules = live.prom.api("rules")
    health = {r["name"]: r["health"] for g in rules["groups"] for r in g["rules"]}
    assert health and all(h == "ok" for h in health.values()), health


@pytest.mark.slow
@requires_prometheus
def test_every_dashboard_query_returns_data(live: Live) -> None:
    """Every target of every panel, with $run/$edge/$stage as '.*' and with concrete values (this run, s1->s2,
    two stages), $__rate_interval as 1m, returns a non-empty result from the real Prometheus."""
    failed = []
    checked = 0
    # s1->s2: sent by the restarted stage 1, and where stage 2 refused a corrupted frame; a two-stage selection as
    # Grafana renders it: s1 (which has an outgoing link) and the stage the restart was counted for (see
    # test_prometheus_scrapes_driver_and_stages_through_file_sd)
    restarted = live.prom.query("layeredge_stage_restarts_total")[0]["metric"]["stage"]
    for values in ({}, {"run": "deploy-test", "edge": "s1->s2", "stage": f"(s1|{restarted})"}):
        for panel, target in panel_targets(dashboard()):
            expr = substitute(target["expr"], values)
            try:
                result = live.prom.query(expr)
            except AssertionError as err:
                failed.append(f"panel {panel['id']} {panel['title']!r} {target['refId']}: {err}")
                continue
            checked += 1
            if not result:
                failed.append(f"panel {panel['id']} {panel['title']!r} {target['refId']} {values}: no data for {expr}")
    assert not failed, "\n".join(failed)
    assert checked == 2 * len(panel_targets(dashboard()))


def test_runnable_config_keeps_the_deploy_rules(tmp_path: Path) -> None:
    doc = runnable_config(tmp_path / "targets.json")
    assert [Path(f).name for f in doc["rule_files"]] == ["recording_rules.yml", "alert_rules.yml"]
    assert all(Path(f).is_file() for f in doc["rule_files"])
    assert doc["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(tmp_path / "targets.json")]

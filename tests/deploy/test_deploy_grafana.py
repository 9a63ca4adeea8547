"""deploy/grafana: the dashboard's structure (Grafana is not installable here; test_deploy_prometheus.py evaluates
every panel query against a real Prometheus) and the provisioning files."""

from __future__ import annotations

import json
import re
from itertools import combinations
from typing import Any

from prometheus_support import (
    DASHBOARD,
    GRAFANA_DIR,
    dashboard,
    exported_names,
    load_yaml,
    metric_names,
    panel_targets,
    recording_rule_names,
    substitute,
)

from layeredge_dist.metrics import FAMILIES

DATASOURCE_UIDS = ("${datasource}", "$datasource")


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels nested in (collapsed) rows included."""
    return [p for top in dash["panels"] for p in (top, *top.get("panels", []))]


def _variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash["templating"]["list"]}


def test_dashboard_is_valid_json_with_a_recent_schema() -> None:
    dash = json.loads(DASHBOARD.read_text())  # raises on invalid JSON
    assert dash["schemaVersion"] >= 36
    assert dash["uid"] == "layeredge" and dash["title"]
    assert dash.get("id") is None  # provisioned / imported dashboards must not carry a database id


def test_dashboard_has_a_prometheus_datasource_variable_and_label_values_variables() -> None:
    dash = dashboard()
    variables = _variables(dash)
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    labels_of = {f.name: f.labels for f in FAMILIES}
    for name in ("run", "edge", "stage"):
        v = variables[name]
        assert v["type"] == "query", name
        assert v["datasource"]["uid"] in DATASOURCE_UIDS, name
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert m is not None, (name, query)
        metric, label = m.groups()
        assert m.group(2) == name and label in labels_of[metric], (name, query)
        assert v["includeAll"] and v["allValue"] == ".*", name  # '.*' is what the queries' =~ matchers expect
    used = " ".join(t["expr"] for _, t in panel_targets(dash))
    for name in ("run", "edge", "stage"):
        assert f"${name}" in used, f"variable ${name} is used by no panel"


def test_panel_ids_are_unique_and_every_panel_uses_the_datasource_variable() -> None:
    panels = _panels(dashboard())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), sorted(ids)
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"])["uid"] in DATASOURCE_UIDS, (p["title"], t["refId"])
            assert t["expr"].strip(), (p["title"], t["refId"])


def test_grid_positions_fit_24_columns_without_overlaps() -> None:
    panels = [p for p in _panels(dashboard())]
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] >= 1 and g["h"] >= 1, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
    for a, b in combinations(panels, 2):
        ga, gb = a["gridPos"], b["gridPos"]
        overlap = (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                   and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"])
        assert not overlap, (a["title"], b["title"])


def test_every_query_names_only_declared_metrics_or_recording_rules() -> None:
    known = exported_names() | recording_rule_names() | {"up"}
    rules = recording_rule_names()
    used_rules = set()
    for panel, target in panel_targets(dashboard()):
        names = metric_names(substitute(target["expr"]))
        assert names, (panel["title"], target["expr"])
        unknown = names - known
        assert not unknown, f"panel {panel['title']!r} {target['refId']}: undeclared {sorted(unknown)}"
        used_rules |= names & rules
    assert used_rules, "the dashboard uses none of the recording rules"


def test_dashboard_covers_every_required_view() -> None:
    """Each view the dashboard promises reads the family (or rule) it is about."""
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in _panels(dashboard()) if p["type"] != "row"}

    def panel_reading(*needles: str) -> str:
        for title, text in exprs.items():
            if all(n in text for n in needles):
                return title
        raise AssertionError(f"no panel reads {needles}")

    panel_reading("layeredge_edge_wire_bytes_total", "rate(", "layeredge_edge_raw_bytes_total")
    panel_reading("compression")
    panel_reading("8 * ", "layeredge_edge_wire_bytes_per_element")  # bits per element
    panel_reading("layeredge_edge_relative_error_ratio", "error_budget")
    panel_reading("layeredge_link_bandwidth_bytes_per_second")
    panel_reading("layeredge_link_rtt_seconds")
    panel_reading("layeredge_stage_compute_seconds_total", "layeredge_stage_idle_seconds_total")  # utilisation
    panel_reading("layeredge_stage_bubble_ratio")
    panel_reading("layeredge_run_loss", "split")  # train and val
    panel_reading("layeredge_run_throughput_tokens_per_second")
    panel_reading("histogram_quantile(0.5", "histogram_quantile(0.95", "layeredge_run_step_seconds_bucket")
    panel_reading("layeredge_stage_restarts_total")
    panel_reading("layeredge_edge_rejected_frames_total")
    panel_reading("layeredge_edge_importance")
    panel_reading("layeredge_stage_up", 'up{job="layeredge"}')


def test_provisioning_points_at_the_dashboard_and_a_prometheus_datasource() -> None:
    ds = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    dashboards = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "layeredge.yml")
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    # the README's mount puts deploy/grafana/dashboards (where the dashboard is) at exactly that path
    assert DASHBOARD.parent == GRAFANA_DIR / "dashboards" and DASHBOARD.suffix == ".json"
    readme = (GRAFANA_DIR / "README.md").read_text()
    assert f'deploy/grafana/dashboards:{path}' in readme
    assert 'deploy/grafana/provisioning:/etc/grafana/provisioning' in readme

"""Helpers of tests/deploy: the ``prometheus`` and ``promtool`` binaries, a real Prometheus on loopback started
and stopped by PID, the deploy files, and PromQL helpers (metric names of an expression, Grafana variables).

Not a test module (no ``test_`` prefix); the test modules import it by its unique basename (pytest puts this
directory on ``sys.path``).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RECORDING_RULES = PROM_DIR / "recording_rules.yml"
ALERT_RULES = PROM_DIR / "alert_rules.yml"
RULE_TESTS = PROM_DIR / "tests" / "alerts_test.yml"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "layeredge.json"

#: urllib without proxies: every request here goes to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
MISSING = ("the prometheus binary (and its promtool) is not installed: on Debian `apt-get install -y "
           "--no-install-recommends prometheus` (.ci/run does this when apt is available)")

#: Skip marker for tests that run ``promtool`` or a real ``prometheus``.
requires_prometheus = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None, reason=MISSING)


def promtool(*args: str, stdin: str | None = None, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS`` in the repository root; stdout and stderr captured as text."""
    assert PROMTOOL is not None, MISSING
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, cwd=REPO,
                          timeout=timeout_s, check=False)


# ---- deploy files -----------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_groups(path: Path) -> list[dict[str, Any]]:
    return list(load_yaml(path)["groups"])


def recording_rule_names() -> set[str]:
    return {r["record"] for g in rule_groups(RECORDING_RULES) for r in g["rules"]}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_targets(dash: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(panel, target)`` for every query target of every panel, rows' nested panels included."""
    out = []
    for panel in dash["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                out.append((p, t))
    return out


#: Grafana variables as the tests substitute them: every template variable becomes the regex ``.*`` (the
#: dashboard uses them only in ``=~`` matchers); Grafana's interval variables get fixed values.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "5s", "__range": "5m"}


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """``expr`` with ``$name`` / ``${name}`` / ``[[name]]`` replaced: interval variables by
    :data:`GRAFANA_INTERVALS`, others by ``values.get(name, ".*")``."""
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        return (values or {}).get(name, ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", repl, expr)


# ---- PromQL -----------------------------------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names an expression selects. A small lexer, enough for our rules and panels:
    drops strings, label matchers, ranges, grouping clauses, offsets, function names, keywords and numbers."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"`[^`]*`", "``", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        tok = m.group(0)
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # exponent of a number literal (1e-3)
        if tok.lower() in _KEYWORDS or s[m.end():].lstrip().startswith("("):
            continue  # keyword or function call
        names.add(tok)
    return names


def exported_names() -> set[str]:
    """Every series name the LayerEdge exporters can produce (families plus histogram and counter suffixes)."""
    from layeredge_dist.metrics import FAMILIES

    names = set()
    for fam in FAMILIES:
        names.add(fam.name)
        if fam.type == "histogram":
            names.update(f"{fam.name}{suffix}" for suffix in ("_bucket", "_sum", "_count", "_created"))
        elif fam.type == "counter":
            names.add(fam.name.removesuffix("_total") + "_created")
    return names


# ---- a real Prometheus ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runnable_config(targets_json: Path, interval: str = "1s") -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml made runnable in a test: only the ``layeredge`` job, its file SD pointing at
    ``targets_json``, ``interval`` for scraping and rule evaluation, the rule files by absolute path."""
    doc = load_yaml(PROM_CONFIG)
    doc["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    doc["rule_files"] = [str((PROM_DIR / f).resolve()) for f in doc["rule_files"]]
    jobs = [j for j in doc["scrape_configs"] if j["job_name"] == "layeredge"]
    assert len(jobs) == 1, "deploy/prometheus/prometheus.yml has no job 'layeredge'"
    jobs[0]["file_sd_configs"] = [{"files": [str(targets_json)], "refresh_interval": "5s"}]
    doc["scrape_configs"] = jobs
    return doc




class Prometheus:
    """A ``prometheus`` process on 127.0.0.1 with ``config`` (a dict), its TSDB and log under ``workdir``.

    A context manager: entering starts it and waits until ``/-/ready``; leaving stops exactly this process by its
    PID (terminate, wait, kill)."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        assert PROMETHEUS is not None, MISSING
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        for _attempt in range(3):  # a free port can be taken between probing and binding
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [PROMETHEUS, f"--config.file={self.config_path}",
                     f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                     "--storage.tsdb.retention.time=1h", "--log.level=info"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
                )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with _OPENER.open(f"{self.url}/-/ready", timeout=2) as r:  # noqa: S310 - loopback
                        if r.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.1)
            if self.proc.poll() is None:
                self.stop()
                raise RuntimeError(f"prometheus not ready after {timeout_s} s; log:\n{self.log_tail()}")
            if "address already in use" not in self.log_tail():
                break
        raise RuntimeError(f"prometheus exited with {self.proc and self.proc.returncode}; log:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop this Prometheus by its PID: SIGTERM, wait 10 s, then SIGKILL. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return ``data``; raises AssertionError with Prometheus' error otherwise."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with _OPENER.open(url, timeout=10) as r:  # noqa: S310 - loopback only
                doc = json.load(r)
        except urllib.error.HTTPError as err:
            doc = json.load(err)
        assert doc.get("status") == "success", f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}"
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at now: the result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data["resultType"]
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def wait_for(self, expr: str, ok: Any = bool, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``ok(result)`` (default: non-empty); returns the last result (maybe not ok)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if ok(result) or time.monotonic() > deadline:
                return result
            time.sleep(0.25)


def http_get(url: str, timeout_s: float = 5.0) -> str:
    with _OPENER.open(url, timeout=timeout_s) as r:  # noqa: S310 - loopback only
        return r.read().decode()


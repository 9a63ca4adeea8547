"""``layeredge bench transport --json`` runs end to end (tiny sizes) and prints the documented fields.

Run in a subprocess: the benchmark tunes the process's malloc, which must not leak into the test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_transport_json() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = ("import sys; from layeredge_dist.cli.main import main; sys.exit(main(['bench', 'transport', '--json', "
            "'--sizes', '65536,1048576', '--seconds', '0.2', '--rounds', '1', '--stream-mib', '32']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    sizes = [r["size_bytes"] for r in doc["results"]]
    assert sizes == [65536, 1048576]
    for r in doc["results"]:
        for key in ("ours_gbps", "tcp_gbps", "ratio", "ours_p50_us", "ours_p99_us", "tcp_rtt_p50_us",
                    "grpc_floor_gbps", "hop_vs_tcp_rtt", "fast_gbps", "fast_ratio", "fast_p50_us",
                    "fast_hop_vs_tcp_rtt"):
            assert r[key] > 0, key
    for key in ("memory", "memory_fast"):
        assert doc[key]["streamed_bytes"] == 32 << 20
        assert doc[key]["growth_vs_window"] < 2

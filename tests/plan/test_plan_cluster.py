"""Links and clusters: bandwidth and duration parsing, link lookup, round trips."""

from __future__ import annotations

import math

import pytest

from layeredge_dist.plan import ClusterSpec, LinkSpec, format_bandwidth, parse_bandwidth, parse_duration


@pytest.mark.parametrize("text,expected", [
    ("100Mbit", 12.5e6),
    ("100 Mbit/s", 12.5e6),
    ("100mbit", 12.5e6),
    ("100MBIT/S", 12.5e6),
    ("1Gbit", 125e6),
    ("1gbit/s", 125e6),
    ("1Gbps", 125e6),
    ("2.5Gbit", 312.5e6),
    ("800bit/s", 100.0),
    ("8 bit/s", 1.0),
    ("1kbit", 125.0),
    ("12.5MB/s", 12.5e6),
    ("12.5mb/s", 12.5e6),
    ("1GB/s", 1e9),
    ("1gb/s", 1e9),
    ("3 B/s", 3.0),
    ("1MiB/s", 1024.0 ** 2),
    ("1e2Mbit", 12.5e6),
    ("inf", math.inf),
    (5e6, 5e6),
    (1000, 1000.0),
])
def test_parse_bandwidth(text, expected) -> None:
    assert parse_bandwidth(text) == pytest.approx(expected)


@pytest.mark.parametrize("text,fragment", [
    ("100", "unit"),
    ("fast", "cannot parse"),
    ("100 furlongs", "cannot parse"),
    ("Mbit", "cannot parse"),
    ("100Mb/s", "ambiguous"),
    ("0Mbit", "> 0"),
    (-5.0, "> 0"),
    ("", "cannot parse"),
    (True, "bandwidth"),
])
def test_parse_bandwidth_rejects(text, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_bandwidth(text)


def test_parse_duration() -> None:
    assert parse_duration("5ms") == pytest.approx(0.005)
    assert parse_duration("250us") == pytest.approx(250e-6)
    assert parse_duration("0.1s") == pytest.approx(0.1)
    assert parse_duration("2") == 2.0
    assert parse_duration(0.5) == 0.5
    for bad in ("5 parsecs", "-1ms", -1.0):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_format_bandwidth() -> None:
    assert format_bandwidth(12.5e6) == "100 Mbit/s"
    assert format_bandwidth(125e6) == "1 Gbit/s"
    assert format_bandwidth(math.inf) == "inf"


def test_link_transfer_and_validation() -> None:
    link = LinkSpec.parse("100Mbit", "2ms")
    assert link.transfer_s(12.5e6) == pytest.approx(1.002)
    assert LinkSpec(math.inf).transfer_s(1e12) == 0.0
    with pytest.raises(ValueError):
        LinkSpec(0.0)
    with pytest.raises(ValueError):
        LinkSpec(1e6, -1.0)


def test_cluster_links_and_wrap() -> None:
    fast, slow = LinkSpec.parse("1Gbit"), LinkSpec.parse("100Mbit")
    c = ClusterSpec(3, (fast, slow))
    assert c.link(0) == fast and c.link(1) == slow
    assert c.link_between(1, 2) == slow and c.link_between(2, 1) == slow
    assert c.link_between(2, 0, 3) == slow  # no wrap link given: the slowest link
    assert ClusterSpec(3, (fast, slow), wrap=fast).link_between(2, 0, 3) == fast
    assert ClusterSpec.uniform(4, "1Gbit").link_between(3, 0, 4) == fast
    with pytest.raises(ValueError, match="2 links"):
        ClusterSpec(3, (fast,))
    with pytest.raises(ValueError, match="not neighbours"):
        ClusterSpec.uniform(4, "1Gbit").link_between(0, 2)
    with pytest.raises(ValueError, match="nodes"):
        ClusterSpec(0, fast)


@pytest.mark.parametrize("cluster", [
    ClusterSpec.uniform(4, "100Mbit", "1ms"),
    ClusterSpec(3, (LinkSpec.parse("1Gbit"), LinkSpec(math.inf)), wrap=LinkSpec.parse("10Mbit")),
])
def test_cluster_round_trip(cluster: ClusterSpec) -> None:
    import json

    assert ClusterSpec.from_dict(json.loads(json.dumps(cluster.to_dict()))) == cluster
    assert "nodes" in cluster.describe()

"""The network the pipeline runs on: one link per pair of consecutive stages.

Stage ``k`` runs on node ``k``; edge ``k`` (stage ``k`` -> ``k + 1``) uses link ``k``. Links are full duplex: the
activation stream (``k -> k+1``) and the gradient stream (``k+1 -> k``) each get the link's bandwidth, and each
direction carries one message at a time. An interleaved schedule also sends from the last stage back to the
first; that wrap-around edge uses ``wrap`` when given, else the uniform link, else the slowest link.

Units: bytes per second, seconds. :func:`parse_bandwidth` and :func:`parse_duration` turn text such as
``"100Mbit"`` or ``"5ms"`` into those units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_NUMBER = r"(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_BANDWIDTH_RE = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[A-Za-z/]+)\s*$")
_DURATION_RE = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[A-Za-zµ]*)\s*$")

_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 1024.0, "mi": 1024.0 ** 2, "gi": 1024.0 ** 3,
           "ti": 1024.0 ** 4}
_BIT_SUFFIXES = ("bit/s", "bits/s", "bit", "bits", "bps")
_BYTE_SUFFIXES = ("bytes/s", "byte/s", "b/s")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0}


def parse_bandwidth(value: str | float | int) -> float:
    """Bytes per second from ``"100Mbit"``, ``"1 Gbit/s"``, ``"1Gbps"``, ``"12.5MB/s"``, ``"1GB/s"``,
    ``"800 bit/s"``, ``"1MiB/s"`` (decimal prefixes k, M, G, T; binary Ki, Mi, Gi, Ti). A number is taken as
    bytes per second already. ``"inf"`` is an infinitely fast link.

    Units are case-insensitive: ``bit``, ``bit/s``, ``bps`` are bits; ``B/s`` (any case: ``mb/s`` is MB/s) is
    bytes. The one exception is the conventional bit spelling with an upper-case prefix and a lower-case ``b``
    (``"100Mb/s"``): it is ambiguous here and rejected. Raises ValueError with the accepted forms otherwise.
    """
    if isinstance(value, bool):
        raise ValueError(f"bandwidth must be a number or text like '100Mbit', got {value!r}")
    if isinstance(value, (int, float)):
        bw = float(value)
    else:
        text = str(value).strip()
        if text.lower() in ("inf", "infinite", "infinity"):
            return math.inf
        m = _BANDWIDTH_RE.match(text)
        if m is None:
            raise ValueError(_bandwidth_help(value))
        unit_raw = m.group("unit")
        unit = unit_raw.lower()
        bw = math.nan
        for suffixes, scale in ((_BIT_SUFFIXES, 1 / 8), (_BYTE_SUFFIXES, 1.0)):
            for suffix in suffixes:
                if unit.endswith(suffix) and unit[: -len(suffix)] in _PREFIX:
                    prefix = unit[: -len(suffix)]
                    if suffix == "b/s" and prefix and unit_raw[0].isupper() and unit_raw[len(prefix)] == "b":
                        raise ValueError(f"bandwidth {value!r} is ambiguous ({unit_raw}: bits or bytes?); write "
                                         f"{m.group('num')}{unit_raw[:len(prefix)]}bit/s or "
                                         f"{m.group('num')}{unit_raw[:len(prefix)]}B/s")
                    bw = float(m.group("num")) * _PREFIX[prefix] * scale
                    break
            if not math.isnan(bw):
                break
        if math.isnan(bw):
            raise ValueError(_bandwidth_help(value))
    if not bw > 0:
        raise ValueError(f"bandwidth must be > 0, got {value!r}")
    return bw


def _bandwidth_help(value: object) -> str:
    return (f"cannot parse bandwidth {value!r}; expected a number and a unit, e.g. '100Mbit', '1Gbit/s', '1Gbps', "
            f"'12.5MB/s', '1GB/s', '800bit/s', '1MiB/s' (bit, bit/s, bps = bits; B/s = bytes), or 'inf'")


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``"5ms"``, ``"250us"``, ``"0.1s"``, ``"2"`` (seconds) or a number (seconds); ValueError
    otherwise or when negative."""
    if isinstance(value, bool):
        raise ValueError(f"duration must be a number or text like '5ms', got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    else:
        m = _DURATION_RE.match(str(value))
        unit = m.group("unit").lower() if m else None
        if m is None or unit not in _DURATION_UNITS:
            raise ValueError(f"cannot parse duration {value!r}; expected e.g. '5ms', '250us', '0.1s' or seconds")
        out = float(m.group("num")) * _DURATION_UNITS[unit]
    if not out >= 0 or math.isinf(out):
        raise ValueError(f"duration must be finite and >= 0, got {value!r}")
    return out


def format_bandwidth(bps: float) -> str:
    """``12500000.0`` -> ``'100 Mbit/s'``."""
    if math.isinf(bps):
        return "inf"
    bits = bps * 8
    for scale, unit in ((1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bits >= scale:
            return f"{bits / scale:.4g} {unit}"
    return f"{bits:.4g} bit/s"


@dataclass(frozen=True)
class LinkSpec:
    """A network link: ``bandwidth_Bps`` bytes per second (``math.inf`` allowed) and a one-way ``latency_s``
    per message; ``burst_bytes`` > 0 makes it a token-bucket shaper (``tc tbf``) of that depth: a message leaves
    at line speed while the bucket has tokens, which refill at ``bandwidth_Bps`` (only the host-aware replay,
    :func:`~.hosts.host_step_time`, models the bucket; the plain replay uses the rate alone). ValueError for a
    bandwidth <= 0 or a negative latency or burst."""

    bandwidth_Bps: float
    latency_s: float = 0.0
    burst_bytes: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bandwidth_Bps", parse_bandwidth(self.bandwidth_Bps))
        object.__setattr__(self, "latency_s", parse_duration(self.latency_s))
        if not (self.burst_bytes >= 0 and math.isfinite(self.burst_bytes)):
            raise ValueError(f"burst_bytes must be finite and >= 0, got {self.burst_bytes!r}")
        object.__setattr__(self, "burst_bytes", float(self.burst_bytes))

    @classmethod
    def parse(cls, bandwidth: str | float, latency: str | float = 0.0) -> LinkSpec:
        """From text: ``LinkSpec.parse("100Mbit", "2ms")``."""
        return cls(parse_bandwidth(bandwidth), parse_duration(latency))

    def transfer_s(self, nbytes: float) -> float:
        """Latency plus ``nbytes / bandwidth`` seconds."""
        return self.latency_s + (0.0 if math.isinf(self.bandwidth_Bps) else nbytes / self.bandwidth_Bps)

    def __str__(self) -> str:
        return f"{format_bandwidth(self.bandwidth_Bps)}, {self.latency_s * 1e3:.4g} ms"

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible (an infinite bandwidth is written as the string ``"inf"``)."""
        out: dict[str, Any] = {"bandwidth_Bps": "inf" if math.isinf(self.bandwidth_Bps) else self.bandwidth_Bps,
                               "latency_s": self.latency_s}
        if self.burst_bytes:
            out["burst_bytes"] = self.burst_bytes
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinkSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(parse_bandwidth(data["bandwidth_Bps"]), float(data.get("latency_s", 0.0)),
                   float(data.get("burst_bytes", 0.0)))


@dataclass(frozen=True)
class ClusterSpec:
    """``nodes`` machines in a chain; ``links`` is one :class:`LinkSpec` for every consecutive pair, or a
    sequence of ``nodes - 1`` of them (link ``k`` joins node ``k`` and ``k + 1``). ``wrap`` joins the last node
    used back to the first (only interleaved schedules use it). ``star``: the nodes hang off one switch, each by
    a single full-duplex port, so all of a node's outgoing messages share its egress and all its incoming ones its
    ingress (the network-namespace testbed); else every pair of neighbours has its own link. Only the host-aware
    replay (:func:`~.hosts.host_step_time`) models the shared ports. ValueError for a wrong number of links."""

    nodes: int
    links: LinkSpec | tuple[LinkSpec, ...]
    wrap: LinkSpec | None = None
    star: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise ValueError(f"nodes must be an integer >= 1, got {self.nodes!r}")
        if not isinstance(self.links, LinkSpec):
            links = tuple(self.links)
            if len(links) != self.nodes - 1:
                raise ValueError(f"{self.nodes} nodes need {self.nodes - 1} links (one per consecutive pair) or "
                                 f"one uniform LinkSpec, got {len(links)}")
            if not all(isinstance(link, LinkSpec) for link in links):
                raise ValueError("links must be LinkSpec objects")
            object.__setattr__(self, "links", links)

    @classmethod
    def uniform(cls, nodes: int, bandwidth: str | float, latency: str | float = 0.0) -> ClusterSpec:
        """``nodes`` machines joined by identical links: ``ClusterSpec.uniform(4, "100Mbit", "1ms")``."""
        return cls(nodes, LinkSpec.parse(bandwidth, latency))

    @property
    def is_uniform(self) -> bool:
        """True when every link is the same."""
        return isinstance(self.links, LinkSpec)

    def link(self, index: int) -> LinkSpec:
        """Link ``index`` (between node ``index`` and ``index + 1``)."""
        if isinstance(self.links, LinkSpec):
            if not 0 <= index < max(self.nodes - 1, 1):
                raise ValueError(f"link {index} outside 0..{self.nodes - 2}")
            return self.links
        return self.links[index]

    def link_between(self, src: int, dst: int, num_stages: int | None = None) -> LinkSpec:
        """The link a message from stage ``src`` to stage ``dst`` uses (neighbours, or the wrap-around pair
        ``num_stages - 1`` / ``0``). ValueError for stages that are not neighbours or beyond the cluster."""
        p = self.nodes if num_stages is None else num_stages
        if p > self.nodes:
            raise ValueError(f"{p} stages need {p} nodes, the cluster has {self.nodes}")
        lo, hi = min(src, dst), max(src, dst)
        if hi - lo == 1:
            return self.link(lo)
        if lo == 0 and hi == p - 1 and p > 1:
            if self.wrap is not None:
                return self.wrap
            if isinstance(self.links, LinkSpec):
                return self.links
            return min(self.links[: p - 1], key=lambda link: (link.bandwidth_Bps, -link.latency_s))
        raise ValueError(f"stages {src} and {dst} are not neighbours in a pipeline of {p} stages")

    def summary(self) -> dict[str, Any]:
        """JSON-compatible description (the same as :meth:`to_dict`)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict; ``ClusterSpec.from_dict(c.to_dict()) == c``."""
        links: Any = (self.links.to_dict() if isinstance(self.links, LinkSpec)
                      else [link.to_dict() for link in self.links])
        out = {"nodes": self.nodes, "links": links, "wrap": None if self.wrap is None else self.wrap.to_dict()}
        if self.star:
            out["star"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterSpec:
        """Inverse of :meth:`to_dict`."""
        raw = data["links"]
        links: LinkSpec | tuple[LinkSpec, ...] = (
            LinkSpec.from_dict(raw) if isinstance(raw, Mapping) else tuple(LinkSpec.from_dict(x) for x in raw))
        wrap = data.get("wrap")
        return cls(int(data["nodes"]), links, None if wrap is None else LinkSpec.from_dict(wrap),
                   bool(data.get("star", False)))

    def describe(self) -> str:
        """One line: ``4 nodes, links 100 Mbit/s, 1 ms``."""
        shape = " on one switch" if self.star else ""
        if isinstance(self.links, LinkSpec):
            return f"{self.nodes} nodes{shape}, links {self.links}"
        return f"{self.nodes} nodes{shape}, links " + " | ".join(str(link) for link in self.links)


def as_cluster(link_or_cluster: LinkSpec | ClusterSpec | str | float, num_stages: int) -> ClusterSpec:
    """A ClusterSpec from a cluster, a single link, or a bandwidth (text or bytes/s) used for every link."""
    if isinstance(link_or_cluster, ClusterSpec):
        if link_or_cluster.nodes < num_stages:
            raise ValueError(f"{num_stages} stages need {num_stages} nodes, the cluster has {link_or_cluster.nodes}")
        return link_or_cluster
    if isinstance(link_or_cluster, LinkSpec):
        return ClusterSpec(num_stages, link_or_cluster)
    if isinstance(link_or_cluster, (str, int, float)):
        return ClusterSpec(num_stages, LinkSpec(parse_bandwidth(link_or_cluster)))
    raise TypeError(f"expected a ClusterSpec, LinkSpec or bandwidth, got {type(link_or_cluster).__name__}")


def links_of(cluster: ClusterSpec, num_stages: int) -> Sequence[LinkSpec]:
    """The ``num_stages - 1`` links a chain of ``num_stages`` stages uses."""
    if num_stages > cluster.nodes:
        raise ValueError(f"{num_stages} stages need {num_stages} nodes, the cluster has {cluster.nodes}")
    return [cluster.link(k) for k in range(num_stages - 1)]

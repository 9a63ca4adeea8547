"""Shaping works: a TCP stream between two testbed hosts measures the configured rate, unshaped is much faster.

Needs root and iproute2 (CI runs as root); skips with the reason otherwise.
"""

from __future__ import annotations

import pytest

from layeredge_dist.testbed import Testbed, unavailable_reason
from layeredge_dist.testbed.bandwidth import measure_bandwidth


_REASON = unavailable_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_REASON is not None, reason=f"testbed unavailable: {_REASON}")]


def test_shaped_100mbit_and_unshaped() -> None:
    with Testbed().up(2, "100mbit") as tb:
        there = measure_bandwidth(tb, 0, 1, seconds=1.5)
        back = measure_bandwidth(tb, 1, 0, seconds=1.5)  # the switch side of the link is shaped too
        tb.set_rate("unshaped")
        free = measure_bandwidth(tb, 0, 1, seconds=1.0)
    for r in (there, back):
        assert 70.0 <= r.mbit_per_s <= 110.0, f"100mbit link measured {r.mbit_per_s:.1f} Mbit/s ({r})"
    assert free.mbit_per_s > 3 * there.mbit_per_s, f"unshaped {free.mbit_per_s:.0f} vs shaped {there.mbit_per_s:.0f}"

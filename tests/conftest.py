"""Session-wide test settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_compile_by_default(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Keep torch.compile out of ordinary tests (its first compile costs ~20 s on 2 cores).

    Tests marked ``compile`` exercise the compiled fast paths explicitly.
    """
    if request.node.get_closest_marker("compile") is None:
        monkeypatch.setenv("LAYEREDGE_NO_COMPILE", "1")
    elif os.environ.get("LAYEREDGE_NO_COMPILE") == "1":
        monkeypatch.delenv("LAYEREDGE_NO_COMPILE")

"""Fixtures of the transport tests: child processes are killed even when a test fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from transport_support import Child, ServerProc


@pytest.fixture
def spawn() -> Iterator[Callable[..., ServerProc]]:
    """``spawn(config_dict)`` starts a StageServer child process; all are killed at teardown."""
    children: list[Child] = []

    def start(config: dict[str, object] | None = None) -> ServerProc:
        child = ServerProc(dict(config or {}))
        children.append(child)
        return child

    yield start
    for c in children:
        c.kill()


@pytest.fixture
def spawn_client() -> Iterator[Callable[[list[str]], Child]]:
    """``spawn_client(argv)`` starts a misbehaving client child; all are killed at teardown."""
    children: list[Child] = []

    def start(argv: list[str]) -> Child:
        child = Child(argv)
        children.append(child)
        return child

    yield start
    for c in children:
        c.kill()

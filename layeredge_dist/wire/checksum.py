"""Payload checksums: CRC-32 (stdlib, always available) and XXH3-64 (PyPI ``xxhash``, ~9x faster).

Measured on the development machines over 64 MiB: ``zlib.crc32`` 2.7-3.2 GB/s, ``xxhash.xxh3_64`` ~27 GB/s,
``google_crc32c`` ~12 GB/s. CRC-32 alone would cap a transfer near 3 GB/s, so XXH3-64 is preferred whenever
``xxhash`` is importable; receivers accept either kind they can compute.
"""

from __future__ import annotations

import enum
import functools
import importlib
import zlib
from types import ModuleType
from typing import Protocol

Buffer = bytes | bytearray | memoryview


class ChecksumKind(enum.Enum):
    """Checksum algorithm of a frame; the value is its wire name."""

    CRC32 = "crc32"
    XXH3_64 = "xxh3_64"


class RunningChecksum(Protocol):
    """Incremental checksum: feed chunks in order, read the value at the end."""

    def update(self, data: Buffer) -> None:
        """Add the next bytes."""

    def value(self) -> int:
        """Checksum of everything added so far."""


@functools.lru_cache(maxsize=1)
def _xxhash() -> ModuleType | None:
    try:
        return importlib.import_module("xxhash")
    except ImportError:
        return None


def available(kind: ChecksumKind) -> bool:
    """Whether this process can compute ``kind``."""
    return kind is ChecksumKind.CRC32 or _xxhash() is not None


def default_kind() -> ChecksumKind:
    """XXH3_64 when ``xxhash`` is installed, else CRC32."""
    return ChecksumKind.XXH3_64 if available(ChecksumKind.XXH3_64) else ChecksumKind.CRC32


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Buffer) -> None:
        self._value = zlib.crc32(data, self._value)

    def value(self) -> int:
        return self._value


class _Xxh3:
    def __init__(self, module: ModuleType) -> None:
        self._h = module.xxh3_64()

    def update(self, data: Buffer) -> None:
        self._h.update(data)

    def value(self) -> int:
        return int(self._h.intdigest())


def _require(kind: ChecksumKind) -> ModuleType | None:
    if kind is ChecksumKind.CRC32:
        return None
    module = _xxhash()
    if module is None:
        raise ValueError(f"checksum kind {kind.value!r} needs the 'xxhash' package, which is not installed")
    return module


def running(kind: ChecksumKind) -> RunningChecksum:
    """A fresh incremental checksum of ``kind``; raises ValueError when ``kind`` is not available here."""
    module = _require(kind)
    return _Crc32() if module is None else _Xxh3(module)


def compute(kind: ChecksumKind, data: Buffer) -> int:
    """Checksum of ``data`` (any contiguous buffer) as an unsigned int below 2**64.

    Raises ValueError when ``kind`` is not available in this process.
    """
    module = _require(kind)
    if module is None:
        return zlib.crc32(data)
    return int(module.xxh3_64_intdigest(data))

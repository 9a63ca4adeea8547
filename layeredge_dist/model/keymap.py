"""Where each tensor of a model's *native* state dict lives in a partition, and back.

Native keys are those of the family's single-process model (``transformer.h.3.attn.c_attn.weight`` for
GPT-2, ``3.weight`` for an ``nn.Sequential``). Partition keys are those of
:class:`~layeredge_dist.model.partition.Partition`: ``pre.<...>``, ``blocks.<local index>.<...>`` and
``post.<...>``, where the local index counts from the stage's first block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Section = Literal["pre", "block", "post"]


@dataclass(frozen=True)
class Route:
    """A native key resolved: the section, the global block index (blocks only) and the key inside it."""

    section: Section
    block: int | None
    rest: str  # key relative to the partition's pre/post module or to the block


@dataclass(frozen=True)
class KeyMap:
    """Prefix rules mapping native state-dict keys onto pre / block / post.

    Attributes:
        pre: ``(native prefix, key prefix inside the pre module)`` pairs; longest match wins.
        block_prefix: native prefix of the block list; block ``i``'s keys are ``f"{block_prefix}{i}.<rest>"``.
        post: like ``pre`` for the post module.
        aliases: ``(old prefix, new prefix)`` rewrites tried, in order, on a key no rule matches (checkpoints
            saved without or with a base-model prefix, e.g. HF GPT-2's ``h.0...`` vs ``transformer.h.0...``).
        ignored: regular expressions (``re.search``) of native keys that are never loaded (stale buffers, heads
            the chosen configuration does not use).
        tied: ``(native key, native source key)`` pairs: the first is a copy of the second in the single-process
            model; when the first is missing from a checkpoint it is filled from the second.
    """

    pre: tuple[tuple[str, str], ...] = ()
    block_prefix: str = ""
    post: tuple[tuple[str, str], ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()
    tied: tuple[tuple[str, str], ...] = ()

    def is_ignored(self, key: str) -> bool:
        """True when ``key`` matches an ``ignored`` pattern."""
        return any(re.search(p, key) for p in self.ignored)

    def route(self, key: str) -> Route:
        """Resolve a native key; raises KeyError naming the key when no rule (nor alias) matches."""
        found = self._route_exact(key)
        if found is not None:
            return found
        for old, new in self.aliases:
            if key.startswith(old):
                found = self._route_exact(new + key[len(old):])
                if found is not None:
                    return found
        raise KeyError(f"state-dict key {key!r} belongs to no pre, block or post part of this model")

    def _route_exact(self, key: str) -> Route | None:
        if key.startswith(self.block_prefix):
            head, _, rest = key[len(self.block_prefix):].partition(".")
            if head.isdigit() and rest:
                return Route("block", int(head), rest)
        for section, pairs in (("pre", self.pre), ("post", self.post)):
            for native, local in sorted(pairs, key=lambda p: -len(p[0])):
                if key.startswith(native):
                    return Route(section, None, local + key[len(native):])  # type: ignore[arg-type]
        return None

    def native_key(self, route: Route) -> str:
        """Inverse of :meth:`route` (without aliases); raises KeyError when no rule produces ``route``."""
        if route.section == "block":
            return f"{self.block_prefix}{route.block}.{route.rest}"
        pairs = self.pre if route.section == "pre" else self.post
        for native, local in sorted(pairs, key=lambda p: -len(p[1])):
            if route.rest.startswith(local):
                return native + route.rest[len(local):]
        raise KeyError(f"no native key for {route.section} key {route.rest!r}")


def partition_key(route: Route, first_block: int) -> str:
    """The partition state-dict key of ``route`` in a stage whose first block is ``first_block``."""
    if route.section == "block":
        assert route.block is not None
        return f"blocks.{route.block - first_block}.{route.rest}"
    return f"{route.section}.{route.rest}"


def parse_partition_key(key: str, first_block: int) -> Route:
    """Inverse of :func:`partition_key`; raises KeyError on a key outside ``pre.``/``blocks.``/``post.``."""
    section, _, rest = key.partition(".")
    if section in ("pre", "post") and rest:
        return Route(section, None, rest)  # type: ignore[arg-type]
    if section == "blocks":
        head, _, rest = rest.partition(".")
        if head.isdigit() and rest:
            return Route("block", first_block + int(head), rest)
    raise KeyError(f"{key!r} is not a partition key (pre.*, blocks.<i>.*, post.*)")

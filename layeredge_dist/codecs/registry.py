"""The registry: from a spec string to a codec object, and the list of every codec family.

Stateless codecs come back as :class:`~layeredge_dist.codecs.base.Codec`; ``ef(...)`` and ``delta(...)``
come back as stateful wrappers whose state the caller creates and holds.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Codec, CodecError
from .cast import CastCodec
from .klt import KLTCodec
from .quant import IntQuantCodec
from .raw import RawCodec
from .sparse import SparseCodec
from .spec import Chain, Term, Wrapped, parse_spec
from .stateful import DeltaCodec, ErrorFeedback

#: Every stateless codec class; the completeness test checks that no Codec subclass is missing here.
CODEC_CLASSES: tuple[type[Codec], ...] = (CastCodec, IntQuantCodec, KLTCodec, SparseCodec, RawCodec)
#: Every stateful wrapper class, by its spec name.
WRAPPER_CLASSES: dict[str, type[ErrorFeedback] | type[DeltaCodec]] = {"ef": ErrorFeedback, "delta": DeltaCodec}

#: One canonical example per family and option; used by --help, the docs and the completeness test.
EXAMPLES: tuple[str, ...] = (
    "raw", "fp32", "fp16", "bf16", "fp8e4m3", "fp8e5m2",
    "int8", "int4", "int3", "int2", "int4/b64", "int8/b4096", "int4/rht", "int2/b64/rht/sr", "int8/sr",
    "klt:3", "klt:2.5",
    "topk:0.05", "atopk:0.01", "randk:0.1", "topk:0.05+int8", "atopk:0.01+fp16", "randk:0.25+int4/sr",
    "ef(int2)", "ef(topk:0.01+int8)", "delta(int4)", "delta(int2/rht)",
)


def _family_builders() -> dict[str, Callable[[Term], Codec]]:
    builders: dict[str, Callable[[Term], Codec]] = {}
    for cls in CODEC_CLASSES:
        for name in cls.NAMES:  # type: ignore[attr-defined]
            builders[name] = cls.from_term  # type: ignore[attr-defined]
    return builders


def known_names() -> list[str]:
    """All codec family names, sorted."""
    return sorted(_family_builders()) + [f"{w}(...)" for w in WRAPPER_CLASSES]


def _build_term(term: Term) -> Codec:
    builder = _family_builders().get(term.name)
    if builder is None:
        raise CodecError(f"unknown codec {term.name!r}; known: {', '.join(known_names())}")
    return builder(term)


def _build_chain(chain: Chain) -> Codec:
    if len(chain.terms) == 1:
        return _build_term(chain.terms[0])
    if len(chain.terms) == 2 and chain.terms[0].name in SparseCodec.NAMES:
        values = _build_term(chain.terms[1])
        if isinstance(values, SparseCodec):
            raise CodecError(f"codec spec {chain}: the kept values of a sparsifier cannot be sparsified again")
        return SparseCodec.from_term(chain.terms[0], values=values)
    raise CodecError(
        f"codec spec {chain}: only 'sparsifier+valuecodec' compositions are supported, e.g. 'topk:0.05+int8'"
    )


def parse_codec(spec: str) -> Codec:
    """Build the stateless codec for ``spec``; raises CodecError for unknown or malformed specs and wrappers."""
    node = parse_spec(spec)
    if isinstance(node, Wrapped):
        raise CodecError(f"{spec!r} is a stateful wrapper; use parse_any() and hold its state object")
    return _build_chain(node)


def parse_any(spec: str) -> Codec | ErrorFeedback | DeltaCodec:
    """Build a stateless codec or a stateful wrapper (``ef(...)``, ``delta(...)``) for ``spec``."""
    node = parse_spec(spec)
    if isinstance(node, Wrapped):
        inner = node.inner
        if isinstance(inner, Wrapped):
            raise CodecError(f"codec spec {spec!r}: wrappers do not nest")
        return WRAPPER_CLASSES[node.wrapper](_build_chain(inner))
    return _build_chain(node)


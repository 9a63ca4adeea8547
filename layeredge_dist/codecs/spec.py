"""Codec spec strings: parse into a small syntax tree and print back.

Grammar (whitespace is not allowed)::

    spec    := wrapped | chain
    wrapped := ("ef" | "delta") "(" spec ")"
    chain   := term ("+" term)*             # e.g. topk:0.05+int8
    term    := name [":" arg] ("/" option)*  # e.g. int4/b64/rht/sr

Parsing knows only the syntax; which names, args and options exist is decided by the registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .base import CodecError

_TERM_RE = re.compile(r"^(?P<name>[a-z][a-z0-9]*)(?::(?P<arg>[0-9.eE+-]+))?(?P<opts>(?:/[a-z0-9.]+)*)$")
WRAPPERS = ("ef", "delta")


@dataclass(frozen=True)
class Term:
    """One codec in a spec: ``name[:arg][/option...]``."""

    name: str
    arg: str | None = None
    options: tuple[str, ...] = ()

    def __str__(self) -> str:
        s = self.name
        if self.arg is not None:
            s += ":" + self.arg
        return s + "".join("/" + o for o in self.options)


@dataclass(frozen=True)
class Chain:
    """Codecs applied in sequence, e.g. a sparsifier whose kept values are quantized."""

    terms: tuple[Term, ...]

    def __str__(self) -> str:
        return "+".join(str(t) for t in self.terms)


@dataclass(frozen=True)
class Wrapped:
    """A stateful wrapper (``ef`` or ``delta``) around an inner spec."""

    wrapper: str
    inner: Chain | Wrapped

    def __str__(self) -> str:
        return f"{self.wrapper}({self.inner})"


SpecNode = Chain | Wrapped


def parse_spec(text: str) -> SpecNode:
    """Parse a spec string into its syntax tree; raises CodecError naming the bad part."""
    if not isinstance(text, str) or not text:
        raise CodecError(f"codec spec must be a non-empty string, got {text!r}")
    for w in WRAPPERS:
        if text.startswith(w + "("):
            if not text.endswith(")"):
                raise CodecError(f"codec spec {text!r}: missing ')' after {w}(")
            return Wrapped(w, parse_spec(text[len(w) + 1 : -1]))
    terms = []
    for part in text.split("+"):
        m = _TERM_RE.match(part)
        if m is None:
            raise CodecError(
                f"codec spec {text!r}: cannot parse {part!r}; expected name[:arg][/option...], e.g. 'int4/b64'"
            )
        opts = tuple(o for o in m.group("opts").split("/") if o)
        terms.append(Term(m.group("name"), m.group("arg"), opts))
    return Chain(tuple(terms))


def format_ratio(r: float) -> str:
    """Shortest decimal that round-trips ``r`` (e.g. 0.050 -> '0.05'); the canonical form of a ratio arg."""
    return repr(float(r))


def number_arg(term: Term, what: str, example: str, family: str) -> float:
    """The required numeric ``:arg`` of a term that takes no options (``topk:0.05``, ``klt:3``).

    CodecError naming the term when the arg is missing (``what`` is required, e.g. ``example``), an option is given
    (``family`` take no options) or the arg is not a number.
    """
    if term.arg is None:
        raise CodecError(f"{term}: {what} is required, e.g. '{example}'")
    if term.options:
        raise CodecError(f"{term}: {family} take no options, got /{'/'.join(term.options)}")
    try:
        return float(term.arg)
    except ValueError:
        raise CodecError(f"{term}: {what} {term.arg!r} is not a number") from None

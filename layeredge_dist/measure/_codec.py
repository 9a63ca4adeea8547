"""One compress-and-restore round trip of a tensor through a codec spec, as a receiver would see it.

Shared by the proxy and the sensitivity estimators. Stateful wrappers get a *fresh* state per call: ``ef(c)``
starts from a zero residual and ``delta(c)`` from a zero reference, so on a single call both reconstruct exactly
what ``c`` does (``delta`` costs its 8-byte version header on top). The estimators here therefore measure the
one-shot error of the inner codec; the benefit these wrappers bring over many steps is not modelled.
"""

from __future__ import annotations

import hashlib

import torch

from ..codecs import Codec, parse_any
from ..codecs.stateful import DeltaCodec, ErrorFeedback

AnyCodec = Codec | ErrorFeedback | DeltaCodec


def load_codec(spec: str | AnyCodec) -> AnyCodec:
    """The codec (or stateful wrapper) for ``spec``; raises CodecError for an unknown or malformed spec."""
    return parse_any(spec) if isinstance(spec, str) else spec


def call_seed(seed: int, index: int, tag: str = "") -> int:
    """A 63-bit seed for the ``index``-th call of an estimator seeded ``seed`` (stochastic codecs only).

    The proxy and the sensitivity estimators derive the generator of calibration batch ``i`` the same way, so a
    stochastic codec reconstructs the same tensor in both.
    """
    digest = hashlib.sha256(f"measure/{seed}/{tag}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def roundtrip(codec: str | AnyCodec, x: torch.Tensor, seed: int | None = None) -> tuple[torch.Tensor, float]:
    """``(decode(encode(x)), exact bits per element of the payload)`` for one codec spec or object.

    ``x`` is detached first. ``seed`` seeds the generator handed to ``encode`` (randomized codecs: ``/sr``,
    ``/rht``, ``randk``); None uses the global RNG. Stateful wrappers use a fresh state (see the module
    docstring). Raises CodecError for an input the codec cannot carry.
    """
    c = load_codec(codec)
    x = x.detach()
    gen = None
    if seed is not None:
        gen = torch.Generator(device=x.device)
        gen.manual_seed(seed)
    if isinstance(c, ErrorFeedback):
        enc = c.encode(x, c.new_state(), generator=gen)
        x_hat = c.decode(enc)
    elif isinstance(c, DeltaCodec):
        enc = c.encode(x, c.new_state(), 0, generator=gen)
        x_hat = c.decode(enc, c.new_state(), 0)
    else:
        enc = c.encode(x, generator=gen)
        x_hat = c.decode(enc)
    return x_hat, enc.bits_per_element

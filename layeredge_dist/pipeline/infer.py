"""Inference through the stage chain: batched requests, per-request latency, greedy byte generation.

Requests are token windows of equal length. A batcher takes up to ``max_batch`` waiting requests whenever the
pipeline is free, pads the batch to a multiple of the micro-batch count (by repeating the last request) and
runs one forward-only call; a request's latency runs from its arrival to the end of its batch's call.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .driver import Pipeline


@dataclass(frozen=True)
class LatencyReport:
    """Latency of ``requests`` requests served in batches of at most ``max_batch``. Seconds."""

    requests: int
    max_batch: int
    batches: int
    p50_s: float
    p95_s: float
    max_s: float
    mean_batch: float
    requests_per_s: float

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def forward(pipe: Pipeline, ids: torch.Tensor) -> torch.Tensor:
    """Model outputs for ``ids`` (B, T): (B, ...) from the last stage. The batch is padded to a multiple of the
    pipeline's micro-batch count by repeating its last row, and the padding is dropped again."""
    m = pipe.base.microbatches
    b = ids.shape[0]
    pad = (-b) % m
    if pad:
        ids = torch.cat([ids, ids[-1:].expand(pad, *ids.shape[1:])], dim=0)  # (B + pad, T)
    out = torch.cat(pipe.call((ids, {}), "infer").outputs, dim=0)  # (B + pad, ...)
    return out[:b]


def generate(pipe: Pipeline, prompt: bytes, new_bytes: int, context: int, temperature: float = 0.0,
             seed: int = 0) -> bytes:
    """Extend ``prompt`` by ``new_bytes`` bytes, one pipeline call per byte (the last ``context`` bytes are the
    window). Greedy when ``temperature`` is 0, else sampled. Raises ValueError for an empty prompt."""
    if not prompt:
        raise ValueError("the prompt must not be empty")
    g = torch.Generator().manual_seed(seed)
    data = bytearray(prompt)
    for _ in range(new_bytes):
        window = torch.tensor(list(data[-context:]), dtype=torch.long).unsqueeze(0)  # (1, T)
        logits = forward(pipe, window)[0, -1]  # (V,)
        if temperature > 0:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=g))
        else:
            nxt = int(logits.argmax())
        data.append(nxt)
    return bytes(data[len(prompt):])


def serve(pipe: Pipeline, requests: Sequence[torch.Tensor], max_batch: int, rate_per_s: float | None = None,
          seed: int = 0) -> LatencyReport:
    """Serve ``requests`` (each (T,)) arriving all at once (``rate_per_s`` None) or as a Poisson stream.

    Raises ValueError for ``max_batch < 1`` or no requests.
    """
    if max_batch < 1 or not requests:
        raise ValueError(f"need max_batch >= 1 and at least one request, got {max_batch}, {len(requests)}")
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in requests:
        arrivals.append(t)
        if rate_per_s:
            t += rng.expovariate(rate_per_s)
    start = time.perf_counter()
    latencies: list[float] = []
    sizes: list[int] = []
    nxt = 0
    while nxt < len(requests):
        now = time.perf_counter() - start
        if arrivals[nxt] > now:
            time.sleep(arrivals[nxt] - now)
            now = arrivals[nxt]
        batch = [i for i in range(nxt, min(len(requests), nxt + max_batch)) if arrivals[i] <= now]
        forward(pipe, torch.stack([requests[i] for i in batch]))
        done = time.perf_counter() - start
        latencies += [done - arrivals[i] for i in batch]
        sizes.append(len(batch))
        nxt = batch[-1] + 1
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    return LatencyReport(len(requests), max_batch, len(sizes), statistics.median(lat),
                         lat[min(len(lat) - 1, int(0.95 * len(lat)))], lat[-1], sum(sizes) / len(sizes),
                         len(requests) / wall)

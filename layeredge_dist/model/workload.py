"""Where a model's batches come from: a :class:`Workload` turns a step number into a batch and side inputs.

- :class:`ByteLMWorkload`: next-byte prediction on the stdlib-source corpus (``byte_gpt``; ``hf_gpt2`` reads the
  bytes as token ids). Batches are a pure function of ``(seed, step)``; validation uses fixed, evenly spaced
  windows of the held-out files.
- :class:`SyntheticWorkload`: seeded random inputs and targets shaped for every built-in family (``byte_gpt``,
  ``sequential``, ``hf_gpt2``, ``hf_bert``), for checks such as ``layeredge verify``.

:func:`workload_for` picks one for a :class:`~layeredge_dist.model.spec.ModelSpec`.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from .batches import BatchSampler, fixed_batches, split_microbatches
from .corpus import CorpusConfig, TextCorpus, load_corpus
from .family import family_for
from .spec import ModelSpec

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


class Workload(abc.ABC):
    """Batches of ``batch_size`` examples: the model input (first dimension = batch) and side inputs."""

    batch_size: int

    @abc.abstractmethod
    def batch(self, step: int) -> Batch:
        """The training batch of ``step`` (deterministic)."""

    @abc.abstractmethod
    def val_batches(self, count: int) -> list[Batch]:
        """``count`` fixed validation batches (the same every call)."""


def split_batch(batch: Batch, microbatches: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Inputs and side inputs per micro-batch; ValueError when the batch does not split evenly."""
    x, side = batch
    xs = split_microbatches(x, microbatches)
    parts = {k: split_microbatches(v, microbatches) for k, v in side.items()}
    return list(xs), [{k: parts[k][i] for k in parts} for i in range(microbatches)]


class ByteLMWorkload(Workload):
    """Random byte windows of the corpus; side input ``targets`` (next bytes) or, with ``labels=True``, ``labels``
    (= the inputs; HF causal LMs shift inside their loss)."""

    def __init__(self, corpus: TextCorpus, batch_size: int, context: int, seed: int = 0,
                 labels: bool = False) -> None:
        self.corpus = corpus
        self.batch_size = batch_size
        self.context = context
        self.labels = labels
        self.sampler = BatchSampler(corpus.train, batch_size, context, seed)

    def _pack(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        return (x, {"labels": x.clone()}) if self.labels else (x, {"targets": y})

    def batch(self, step: int) -> Batch:
        return self._pack(*self.sampler.batch(step))

    def val_batches(self, count: int) -> list[Batch]:
        return [self._pack(x, y) for x, y in fixed_batches(self.corpus.val, self.batch_size, self.context, count)]


def _seed(seed: int, tag: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{tag}/{seed}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


class SyntheticWorkload(Workload):
    """Seeded random batches for a model family: ``make(generator) -> Batch``."""

    def __init__(self, model: ModelSpec, batch_size: int, context: int, seed: int = 0) -> None:
        self.batch_size = batch_size
        self.context = context
        self.seed = seed
        self.family = family_for(model.family, model.config)
        self.name = model.family
        self.config: Mapping[str, Any] = model.config

    def _make(self, g: torch.Generator) -> Batch:
        b, t = self.batch_size, self.context
        if self.name == "sequential":
            layers = [entry for entry in self.config["layers"] if entry.get("type") == "Linear"]
            if not layers:
                raise ValueError("synthetic data for a sequential model needs at least one Linear layer")
            n_in, n_out = layers[0]["args"]["in_features"], layers[-1]["args"]["out_features"]
            x = torch.randn(b, n_in, generator=g)  # (B, in)
            loss = self.config.get("loss", "none")
            target = (torch.randint(0, n_out, (b,), generator=g) if loss == "cross_entropy"
                      else torch.randn(b, n_out, generator=g))  # (B,) or (B, out)
            return x, {"target": target}
        if self.name == "byte_gpt":
            vocab = int(self.config.get("vocab_size", 256))
            ids = torch.randint(0, vocab, (b, t + 1), generator=g)  # (B, T + 1)
            return ids[:, :-1], {"targets": ids[:, 1:]}
        hf = getattr(self.family, "hf", None)
        if hf is None:
            raise ValueError(f"no synthetic data for model family {self.name!r}")
        ids = torch.randint(0, int(hf.vocab_size), (b, t), generator=g)  # (B, T)
        if self.name == "hf_bert":
            labels = torch.randint(0, int(hf.num_labels), (b,), generator=g)  # (B,)
            return ids, {"attention_mask": torch.ones(b, t, dtype=torch.long), "labels": labels}
        return ids, {"labels": ids.clone()}

    def batch(self, step: int) -> Batch:
        return self._make(torch.Generator().manual_seed(_seed(self.seed, f"train/{step}")))

    def val_batches(self, count: int) -> list[Batch]:
        return [self._make(torch.Generator().manual_seed(_seed(self.seed, f"val/{i}"))) for i in range(count)]


def workload_for(model: ModelSpec, batch_size: int, context: int, seed: int = 0,
                 corpus: CorpusConfig | None = None, synthetic: bool = False) -> Workload:
    """The natural workload of ``model``: corpus bytes for ``byte_gpt`` (and ``hf_gpt2`` with a vocabulary of at
    least 256), synthetic data otherwise or when ``synthetic``."""
    if not synthetic and model.family == "byte_gpt":
        return ByteLMWorkload(load_corpus(corpus), batch_size, context, seed)
    if not synthetic and model.family == "hf_gpt2":
        hf = getattr(family_for(model.family, model.config), "hf", None)
        if hf is not None and int(hf.vocab_size) >= 256:
            return ByteLMWorkload(load_corpus(corpus), batch_size, context, seed, labels=True)
    return SyntheticWorkload(model, batch_size, context, seed)

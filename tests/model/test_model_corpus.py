"""The demo corpus: stdlib sources, deterministic, split by file; batches reproducible from (seed, step)."""

from __future__ import annotations

import pytest
import torch

from layeredge_dist.model.batches import BatchSampler, fixed_batches, split_microbatches
from layeredge_dist.model.corpus import CorpusConfig, is_validation_file, load_corpus

SMALL = CorpusConfig(max_bytes=400_000)


def test_corpus_is_deterministic_and_split_by_file() -> None:
    a, b = load_corpus(SMALL), load_corpus(SMALL)
    assert a.fingerprint == b.fingerprint and torch.equal(a.train, b.train)
    assert not set(a.train_files) & set(a.val_files)
    assert all(is_validation_file(f, SMALL.val_fraction) for f in a.val_files)
    assert not any(is_validation_file(f, SMALL.val_fraction) for f in a.train_files)
    assert a.train.numel() <= 360_000 and a.val.numel() <= 40_000 and a.val.numel() > 10_000
    assert not any(part in ("test", "tests", "site-packages") for f in a.train_files for part in f.split("/"))
    assert a.train.dtype == torch.uint8 and b"def " in bytes(a.train[:50_000].tolist())


def test_default_corpus_is_a_few_megabytes() -> None:
    c = load_corpus()
    assert 3_000_000 < c.train.numel() + c.val.numel() <= 4_000_000
    assert len(c.train_files) > 50 and len(c.val_files) > 5


def test_bad_config() -> None:
    with pytest.raises(ValueError):
        CorpusConfig(val_fraction=0.0)
    with pytest.raises(FileNotFoundError):
        load_corpus(CorpusConfig(root="/nonexistent/dir"))


def test_batches_are_pure_functions_of_seed_and_step() -> None:
    data = torch.arange(1000, dtype=torch.int64).to(torch.uint8)
    s = BatchSampler(data, batch_size=4, context=8, seed=1)
    x, y = s.batch(5)
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the next byte
    assert torch.equal(s.batch(5)[0], x) and not torch.equal(s.batch(6)[0], x)
    assert not torch.equal(BatchSampler(data, 4, 8, seed=2).batch(5)[0], x)
    with pytest.raises(ValueError):
        BatchSampler(data[:8], 4, 8)


def test_fixed_batches_and_microbatches() -> None:
    data = torch.arange(200, dtype=torch.int64).to(torch.uint8)
    batches = fixed_batches(data, batch_size=4, context=8, num_batches=3)
    assert len(batches) == 3 and batches[0][0][0, 0] == 0 and batches[-1][1][-1, -1] == 199
    parts = split_microbatches(batches[0][0], 2)
    assert len(parts) == 2 and parts[0].shape == (2, 8)
    with pytest.raises(ValueError, match="equal micro-batches"):
        split_microbatches(batches[0][0], 3)

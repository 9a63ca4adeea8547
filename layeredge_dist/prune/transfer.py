"""Compressed weight transfer: a state dict <-> frames-ready :class:`~layeredge_dist.codecs.Encoded` payloads.

Pure functions (no transport): :func:`encode_state` turns a partition's state dict into an :class:`EncodedState`:
a manifest and a list of parts, each an ``Encoded`` of a registered codec, so every part can travel as one frame
on the edge transport (``TensorRole.WEIGHT``) and any receiver decodes it with the codec its frame names.

- a dense float tensor is one part in the policy's codec (``fp32``, ``bf16``, ``int8``, ``int4``, ``int8/b256``
  ...; blockwise int codecs keep every element within ``absmax(block) / (2 c)`` of the original, ``c = 127.5``
  for int8, ``7.5`` for int4);
- a pruned tensor (a mask is given, or with ``detect_sparse`` at least ``min_sparsity`` of a matrix is exactly
  zero) is two parts: the positions of the kept weights as ``raw`` uint8 bytes, in the cheapest of three codes
  (a bitmap, 1 bit per element; Elias-Fano, ``~2 + log2(n / k)`` bits per kept weight; for N:M masks along the last
  dimension the pattern id of every group of M, e.g. 3 bits per 4 weights for 2:4), and the kept values (a 1-D
  tensor) in the sparse value codec (int8 / int4 ...);
- integer tensors (buffers) travel ``raw``;
- the manifest (a ``raw`` uint8 part, zlib-compressed JSON) lists every tensor's name, shape, dtype, layout, part
  numbers and the XXH3-64 checksum of the *decoded* tensor.

:func:`decode_encoded` (from Encoded parts) and :func:`assemble` (from already decoded part tensors, as an
:class:`~layeredge_dist.stage.Endpoint` hands them over) rebuild the state dict and verify every checksum; a
mismatch raises :class:`WeightChecksumError` naming the tensor, so a corrupted or mis-decoded weight is never
loaded silently. Checksums cover the decoded bytes, the name, the shape and the dtype.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import xxhash

from layeredge_dist.codecs import CodecError, Encoded, parse_codec
from layeredge_dist.codecs import elias_fano
from layeredge_dist.codecs.packing import SUPPORTED_BITS, packed_nbytes, pack_flat, unpack_flat

MANIFEST_SPEC = "raw"
FORMAT = "layeredge-weights/1"


class WeightChecksumError(ValueError):
    """A decoded weight does not match the checksum the sender computed (or the manifest is malformed)."""


@dataclass(frozen=True)
class TransferPolicy:
    """How a state dict is encoded.

    ``codec``: dense float tensors; ``sparse_codec``: the kept values of pruned tensors (default: ``codec``);
    ``vector_codec``: tensors of fewer than 2 dimensions (biases, norm scales; default: ``codec``);
    ``detect_sparse``: without an explicit mask, a tensor of >= 2 dimensions with at least ``min_sparsity`` of
    exact zeros travels sparse.
    """

    codec: str = "int8"
    sparse_codec: str | None = None
    vector_codec: str | None = None
    detect_sparse: bool = True
    min_sparsity: float = 0.25

    def __post_init__(self) -> None:
        for spec in (self.codec, self.sparse_codec, self.vector_codec):
            if spec is not None:
                parse_codec(spec)  # CodecError for a bad spec


@dataclass(frozen=True)
class Part:
    """One frame's worth: the codec spec, the tensor it encodes (what an Endpoint's ``send`` takes) and the
    resulting payload."""

    spec: str
    source: torch.Tensor
    encoded: Encoded


@dataclass(frozen=True)
class EncodedState:
    """A state dict as a manifest plus parts; ``frames()`` is the manifest part followed by the tensor parts."""

    manifest: dict[str, Any]
    manifest_part: Part = field(repr=False)
    parts: list[Part] = field(repr=False)

    @property
    def nbytes(self) -> int:
        """Payload bytes of every part, manifest included (frame headers excluded)."""
        return self.manifest_part.encoded.nbytes + sum(p.encoded.nbytes for p in self.parts)

    @property
    def raw_nbytes(self) -> int:
        """Bytes of the original tensors."""
        return int(self.manifest["raw_bytes"])

    def frames(self) -> list[Part]:
        return [self.manifest_part, *self.parts]


# ---- checksums ------------------------------------------------------------------------------------------------


def tensor_digest(name: str, t: torch.Tensor) -> str:
    """XXH3-64 (hex) of ``name``, shape, dtype and the bytes of ``t`` (C order)."""
    h = xxhash.xxh3_64()
    h.update(f"{name}|{tuple(t.shape)}|{str(t.dtype).removeprefix('torch.')}|".encode())
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel():
        h.update(memoryview(flat.view(torch.uint8).numpy()))  # the bytes as stored, any dtype
    return h.hexdigest()


# ---- index codes ----------------------------------------------------------------------------------------------


def _nm_table(n: int, m: int) -> torch.Tensor:
    """(P, m) bool: the C(m, n) keep patterns of a group, in lexicographic order of their positions."""
    rows = []
    for combo in itertools.combinations(range(m), n):
        row = [False] * m
        for j in combo:
            row[j] = True
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


def _nm_bits(n: int, m: int) -> int | None:
    need = max(1, math.ceil(math.log2(math.comb(m, n))))
    fits = [b for b in sorted(SUPPORTED_BITS) if b >= need]
    return fits[0] if fits else None


def nm_pattern(mask: torch.Tensor) -> tuple[int, int] | None:
    """``(N, M)`` when ``mask`` keeps exactly N of every M along its last dimension (M in 4, 8; smallest M
    first), else None."""
    if mask.dim() < 2:
        return None
    for m in (4, 8):
        if mask.shape[-1] % m:
            continue
        counts = mask.reshape(-1, m).sum(dim=1)
        n = int(counts[0]) if counts.numel() else 0
        if 0 < n < m and bool((counts == n).all()):
            return n, m
    return None


def _encode_nm(mask: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    bits = _nm_bits(n, m)
    if bits is None:
        return None
    table = _nm_table(n, m)
    weights = 1 << torch.arange(m, dtype=torch.int64)
    lut = torch.full((1 << m,), -1, dtype=torch.int64)
    lut[(table.to(torch.int64) * weights).sum(dim=1)] = torch.arange(table.shape[0])
    groups = mask.reshape(-1, m).to(torch.int64)
    ids = lut[(groups * weights).sum(dim=1)]
    return pack_flat(ids.to(torch.uint8), bits)


def encode_indices(mask: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The cheapest index code of the kept positions of ``mask``: ``(format, uint8 bytes)`` with format
    ``bitmap``, ``ef`` or ``nm:N:M``."""
    flat = mask.detach().cpu().reshape(-1).to(torch.bool)
    n = flat.numel()
    options: list[tuple[str, torch.Tensor]] = [("bitmap", elias_fano.pack_bits(flat.to(torch.uint8)))]
    k = int(flat.sum())
    if elias_fano.encoded_nbytes(n, k) < options[0][1].numel():
        options.append(("ef", elias_fano.encode(flat.nonzero().squeeze(1), n)))
    nm = nm_pattern(mask.detach().cpu())
    if nm is not None:
        code = _encode_nm(mask.detach().cpu(), *nm)
        if code is not None:
            options.append((f"nm:{nm[0]}:{nm[1]}", code))
    return min(options, key=lambda o: o[1].numel())


def decode_indices(fmt: str, data: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Sorted flat int64 positions from an index code; WeightChecksumError / CodecError on a malformed one."""
    data = data.reshape(-1).to(torch.uint8)
    if fmt == "bitmap":
        if data.numel() != (n + 7) // 8:
            raise WeightChecksumError(f"bitmap of {data.numel()} B for {n} elements")
        idx = elias_fano.unpack_bits(data)[:n].nonzero().squeeze(1)
    elif fmt == "ef":
        idx = elias_fano.decode(data, n, k)
    elif fmt.startswith("nm:"):
        _, a, b = fmt.split(":")
        nn_, m = int(a), int(b)
        bits = _nm_bits(nn_, m)
        if bits is None or n % m:
            raise WeightChecksumError(f"bad N:M index format {fmt!r} for {n} elements")
        table = _nm_table(nn_, m)
        ids = unpack_flat(data, n // m, bits).to(torch.int64)
        if bool((ids >= table.shape[0]).any()):
            raise WeightChecksumError(f"{fmt}: pattern id out of range")
        idx = table[ids].reshape(-1).nonzero().squeeze(1)
    else:
        raise WeightChecksumError(f"unknown index format {fmt!r}")
    if idx.numel() != k:
        raise WeightChecksumError(f"index code {fmt} yields {idx.numel()} positions, the manifest says {k}")
    return idx


def index_nbytes(fmt: str, n: int, k: int) -> int:
    """Size of an index code without building it."""
    if fmt == "bitmap":
        return (n + 7) // 8
    if fmt == "ef":
        return elias_fano.encoded_nbytes(n, k)
    _, a, b = fmt.split(":")
    bits = _nm_bits(int(a), int(b))
    return packed_nbytes(n // int(b), bits) if bits else (n + 7) // 8


# ---- encode / decode ------------------------------------------------------------------------------------------


def _part(spec: str, source: torch.Tensor) -> Part:
    return Part(spec, source, parse_codec(spec).encode(source))


def _decode_part(enc: Encoded) -> torch.Tensor:
    return parse_codec(enc.spec).decode(enc)


def encode_state(state: Mapping[str, torch.Tensor], policy: TransferPolicy | None = None,
                 masks: Mapping[str, torch.Tensor] | None = None) -> EncodedState:
    """Encode ``state`` (tensors on any device; copied to the CPU) per ``policy``; ``masks`` (True = kept) make
    those tensors travel sparse. Raises CodecError for a dtype a codec cannot carry."""
    policy = policy or TransferPolicy()
    masks = masks or {}
    parts: list[Part] = []
    entries = []
    raw_bytes = 0
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        raw_bytes += t.numel() * t.element_size()
        entry: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        if not t.is_floating_point():
            entry.update(layout="dense", parts=[len(parts)])
            parts.append(_part("raw", t))
            decoded = _decode_part(parts[-1].encoded)
        else:
            mask = masks.get(name)
            if mask is None and policy.detect_sparse and t.dim() >= 2 and t.numel():
                zeros = t == 0
                if float(zeros.float().mean()) >= policy.min_sparsity:
                    mask = ~zeros
            if mask is not None:
                mask = mask.detach().cpu().to(torch.bool).reshape(t.shape)
                fmt, code = encode_indices(mask)
                flat_idx = mask.reshape(-1).nonzero().squeeze(1)
                values = t.reshape(-1)[flat_idx].contiguous()
                spec = policy.sparse_codec or policy.codec
                entry.update(layout="sparse", index=fmt, k=int(flat_idx.numel()), parts=[len(parts), len(parts) + 1])
                parts.append(_part("raw", code))
                parts.append(_part(spec, values))
                decoded = _scatter(t.shape, t.dtype, flat_idx, _decode_part(parts[-1].encoded))
            else:
                spec = policy.vector_codec if (policy.vector_codec and t.dim() < 2) else policy.codec
                entry.update(layout="dense", parts=[len(parts)])
                parts.append(_part(spec, t))
                decoded = _decode_part(parts[-1].encoded)
        entry["xxh3"] = tensor_digest(name, decoded)
        entries.append(entry)
    manifest = {"format": FORMAT, "tensors": entries, "parts": len(parts), "raw_bytes": raw_bytes,
                "specs": [p.spec for p in parts]}
    return EncodedState(manifest, _part(MANIFEST_SPEC, manifest_tensor(manifest)), parts)


def _scatter(shape: Sequence[int], dtype: torch.dtype, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(math.prod(shape), dtype=dtype)
    out[idx] = values.to(dtype)
    return out.view(tuple(shape))


def manifest_tensor(manifest: Mapping[str, Any]) -> torch.Tensor:
    """The manifest as a uint8 tensor (zlib-compressed canonical JSON)."""
    body = zlib.compress(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(), 9)
    return torch.frombuffer(bytearray(body), dtype=torch.uint8)


def load_manifest(data: torch.Tensor) -> dict[str, Any]:
    """Inverse of :func:`manifest_tensor`; WeightChecksumError for anything that is not a manifest."""
    try:
        manifest = json.loads(zlib.decompress(data.detach().cpu().contiguous().numpy().tobytes()))
    except (zlib.error, ValueError) as err:
        raise WeightChecksumError(f"weight manifest is unreadable: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise WeightChecksumError(f"not a {FORMAT} manifest")
    return manifest


def assemble(manifest: Mapping[str, Any], tensors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict from decoded part tensors (``tensors[i]`` = part ``i``); verifies every checksum.

    Raises :class:`WeightChecksumError` naming the first tensor whose decoded bytes differ from the sender's
    checksum, or when the parts do not fit the manifest.
    """
    if len(tensors) != int(manifest["parts"]):
        raise WeightChecksumError(f"{len(tensors)} parts for a manifest of {manifest['parts']}")
    out: dict[str, torch.Tensor] = {}
    for entry in manifest["tensors"]:
        name, shape = entry["name"], tuple(entry["shape"])
        dtype = getattr(torch, entry["dtype"])
        try:
            if entry["layout"] == "dense":
                t = tensors[entry["parts"][0]].reshape(shape)
            else:
                n = math.prod(shape)
                idx = decode_indices(entry["index"], tensors[entry["parts"][0]], n, int(entry["k"]))
                values = tensors[entry["parts"][1]].reshape(-1)
                if values.numel() != idx.numel():
                    raise WeightChecksumError(f"{values.numel()} values for {idx.numel()} positions")
                t = _scatter(shape, dtype, idx, values)
        except (CodecError, RuntimeError) as err:
            raise WeightChecksumError(f"weight {name!r} cannot be decoded: {err}") from None
        if t.dtype != dtype:
            raise WeightChecksumError(f"weight {name!r} decoded as {t.dtype}, the manifest says {dtype}")
        got = tensor_digest(name, t)
        if got != entry["xxh3"]:
            raise WeightChecksumError(
                f"weight {name!r} {list(shape)}: checksum of the decoded tensor is {got}, the sender's is "
                f"{entry['xxh3']}: the payload was corrupted or decoded differently; not loading it")
        out[name] = t
    return out


def decode_encoded(manifest: Mapping[str, Any], parts: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """The state dict from Encoded parts (decoded with the codec each names), checksums verified."""
    decoded = []
    for i, enc in enumerate(parts):
        try:
            decoded.append(_decode_part(enc))
        except CodecError as err:
            raise WeightChecksumError(f"weight part {i} ({enc.spec}) cannot be decoded: {err}") from None
    return assemble(manifest, decoded)


def decode_state(bundle: EncodedState) -> dict[str, torch.Tensor]:
    """Round trip of an :class:`EncodedState` in this process (manifest read back from its own part)."""
    manifest = load_manifest(_decode_part(bundle.manifest_part.encoded))
    return decode_encoded(manifest, [p.encoded for p in bundle.parts])


# ---- figures --------------------------------------------------------------------------------------------------


def block_error(original: torch.Tensor, decoded: torch.Tensor, block: int = 128) -> dict[str, float]:
    """Worst-case error per block of ``block`` consecutive elements (C order): ``max_abs``, and
    ``max_rel_to_absmax`` = max over blocks of ``max|x - x_hat| / absmax(x)`` (0 for all-zero blocks), plus the
    relative L2 error of the whole tensor."""
    x = original.detach().cpu().reshape(-1).to(torch.float64)
    y = decoded.detach().cpu().reshape(-1).to(torch.float64)
    err = (x - y).abs()
    pad = (-x.numel()) % block
    xb = torch.nn.functional.pad(x.abs(), (0, pad)).view(-1, block).amax(dim=1)
    eb = torch.nn.functional.pad(err, (0, pad)).view(-1, block).amax(dim=1)
    rel = torch.where(xb > 0, eb / xb.clamp_min(1e-300), torch.zeros_like(eb))
    norm = float(x.norm())
    return {"max_abs": float(err.max()) if err.numel() else 0.0,
            "max_rel_to_absmax": float(rel.max()) if rel.numel() else 0.0,
            "rel_l2": float((x - y).norm()) / norm if norm > 0 else 0.0}


def summary(bundle: EncodedState) -> dict[str, Any]:
    """Bytes and ratio of a bundle: raw, payload (manifest included), manifest, index and value bytes."""
    index = sum(bundle.parts[e["parts"][0]].encoded.nbytes for e in bundle.manifest["tensors"]
                if e["layout"] == "sparse")
    total = bundle.nbytes
    return {"tensors": len(bundle.manifest["tensors"]), "parts": len(bundle.parts), "raw_bytes": bundle.raw_nbytes,
            "wire_payload_bytes": total, "manifest_bytes": bundle.manifest_part.encoded.nbytes,
            "index_bytes": index, "ratio": bundle.raw_nbytes / total if total else float("inf"),
            "bits_per_element": 8.0 * total / max(1, sum(math.prod(e["shape"]) for e in bundle.manifest["tensors"])),
            "index_formats": sorted({e["index"] for e in bundle.manifest["tensors"] if e["layout"] == "sparse"})}

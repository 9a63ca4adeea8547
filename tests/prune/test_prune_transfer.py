"""Compressed weight transfer: ratios and error bounds, checksums of decoded tensors, the real edge transport."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from layeredge_dist.model import ByteGPTConfig, PartitionSpec, build_partition, byte_gpt_spec
from layeredge_dist.prune import (
    TransferPolicy,
    WeightChecksumError,
    apply_masks,
    decode_encoded,
    decode_state,
    encode_state,
    load_manifest,
    prune_masks,
)
from layeredge_dist.prune.transfer import block_error, decode_indices, encode_indices, summary

#: Half the demo width: big enough that per-tensor overhead does not dominate, small enough to be fast.
CFG = ByteGPTConfig(d_model=64, n_layer=2, n_head=2, context=64)


@pytest.fixture(scope="module")
def part():  # type: ignore[no-untyped-def]
    return build_partition(PartitionSpec(byte_gpt_spec(CFG, seed=4), (), 0))


def test_int8_ratio_and_per_block_error(part) -> None:  # type: ignore[no-untyped-def]
    state = part.state_dict()
    bundle = encode_state(state, TransferPolicy("int8"))
    s = summary(bundle)
    assert s["ratio"] >= 3.8, s
    decoded = decode_state(bundle)
    assert list(decoded) == list(state)
    for k, v in state.items():
        err = block_error(v, decoded[k])
        assert err["max_rel_to_absmax"] <= 1 / 127, k
        assert decoded[k].dtype == v.dtype and decoded[k].shape == v.shape
    fp32 = encode_state(state, TransferPolicy("fp32"))
    assert all(torch.equal(decode_state(fp32)[k], v) for k, v in state.items())  # fp32 is lossless
    assert summary(fp32)["ratio"] <= 1.0


def test_int4_with_half_sparsity_is_ten_times_smaller(part) -> None:  # type: ignore[no-untyped-def]
    pruned = copy.deepcopy(part)
    masks = prune_masks(pruned, "magnitude", sparsity=0.5)
    apply_masks(pruned, masks)
    state = pruned.state_dict()
    bundle = encode_state(state, TransferPolicy("int4"), masks=masks)
    assert summary(bundle)["ratio"] >= 10.0, summary(bundle)
    decoded = decode_state(bundle)
    for name, mask in masks.items():
        assert bool((decoded[name][~mask] == 0).all()), name  # positions exact: pruned weights stay zero
        assert block_error(state[name][mask], decoded[name][mask])["max_rel_to_absmax"] <= 1 / 15 + 1e-6
    # without explicit masks the zeros are detected: same encoding
    assert encode_state(state, TransferPolicy("int4")).nbytes == bundle.nbytes


def test_nm_indices_use_pattern_codes(part) -> None:  # type: ignore[no-untyped-def]
    pruned = copy.deepcopy(part)
    masks = prune_masks(pruned, "2:4")
    apply_masks(pruned, masks)
    bundle = encode_state(pruned.state_dict(), TransferPolicy("int8"), masks=masks)
    s = summary(bundle)
    assert s["index_formats"] == ["nm:2:4"] and s["ratio"] > 6.0
    mask = masks["blocks.0.fc.weight"]
    fmt, code = encode_indices(mask)
    assert fmt == "nm:2:4" and code.numel() * 8 == mask.numel() // 4 * 3  # 3 bits per group of 4
    assert torch.equal(decode_indices(fmt, code, mask.numel(), int(mask.sum())), mask.reshape(-1).nonzero().squeeze(1))
    sparse = torch.zeros(4096, dtype=torch.bool)
    sparse[::64] = True
    assert encode_indices(sparse)[0] == "ef"  # 1.6 % density: Elias-Fano beats a bitmap


def test_flipped_byte_is_detected(part) -> None:  # type: ignore[no-untyped-def]
    bundle = encode_state(part.state_dict(), TransferPolicy("int8"))
    manifest = load_manifest(bundle.manifest_part.encoded.payload)
    encodeds = [p.encoded for p in bundle.parts]
    target = next(i for i, e in enumerate(manifest["tensors"]) if e["name"] == "blocks.1.fc.weight")
    i = manifest["tensors"][target]["parts"][0]
    payload = encodeds[i].payload.clone()
    payload[-10] ^= 0x01  # one code byte of the last block
    encodeds[i] = dataclasses.replace(encodeds[i], payload=payload)
    with pytest.raises(WeightChecksumError, match=r"blocks\.1\.fc\.weight.*checksum"):
        decode_encoded(manifest, encodeds)
    # the untouched bundle verifies
    assert len(decode_encoded(manifest, [p.encoded for p in bundle.parts])) == len(manifest["tensors"])


def test_corrupt_manifest_and_missing_parts_are_errors(part) -> None:  # type: ignore[no-untyped-def]
    bundle = encode_state(part.state_dict(), TransferPolicy("int8"))
    with pytest.raises(WeightChecksumError, match="manifest"):
        load_manifest(torch.zeros(16, dtype=torch.uint8))
    with pytest.raises(WeightChecksumError, match="parts"):
        decode_encoded(bundle.manifest, [p.encoded for p in bundle.parts][:-1])


def test_ship_over_the_edge_transport(part) -> None:  # type: ignore[no-untyped-def]
    from layeredge_dist.pipeline.prune_run import ship_states

    pruned = copy.deepcopy(part)
    masks = prune_masks(pruned, "magnitude", sparsity=0.5)
    apply_masks(pruned, masks)
    bundles = [encode_state(part.state_dict(), TransferPolicy("int8")),
               encode_state(pruned.state_dict(), TransferPolicy("int4"), masks=masks)]
    results = ship_states(bundles, mode="thread", timeout_s=60)
    assert [r["ok"] for r in results] == [True, True]
    for r, b in zip(results, bundles):
        assert r["payload_bytes"] <= r["wire_bytes"] < r["payload_bytes"] * 1.1 + 20_000  # frame headers only
        assert r["frames"] == len(b.parts) + 1
        local = decode_state(b)
        assert all(torch.equal(r["state"][k], v) for k, v in local.items())  # receiver decoded the same tensors
    assert results[1]["wire_bytes"] * 2.5 < results[0]["wire_bytes"]

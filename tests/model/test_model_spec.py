"""Specs are plain data; cuts are checked; key maps route and invert."""

from __future__ import annotations

import pytest
import torch

from layeredge_dist.model import (ModelSpec, PartitionSpec, check_cuts, even_cuts, family_for, known_families,
                                  partition_specs, stage_blocks)
from layeredge_dist.model.keymap import KeyMap, Route, parse_partition_key, partition_key


def test_model_spec_round_trips_through_json_and_hashes() -> None:
    spec = ModelSpec("byte_gpt", {"n_layer": 2, "sizes": (1, 2), "nested": {"a": None}}, seed=7, weights=None)
    assert spec.config["sizes"] == [1, 2]  # canonical JSON form
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and hash(again) == hash(spec)
    part = PartitionSpec(spec, (1,), 1)
    assert PartitionSpec.from_dict(part.to_dict()) == part


def test_model_spec_rejects_non_json_config() -> None:
    with pytest.raises(TypeError, match="not JSON"):
        ModelSpec("byte_gpt", {"w": torch.zeros(1)})
    with pytest.raises(TypeError, match="non-finite"):
        ModelSpec("byte_gpt", {"x": float("nan")})
    with pytest.raises(ValueError):
        ModelSpec("")


def test_config_is_copied() -> None:
    cfg = {"layers": [1]}
    spec = ModelSpec("sequential", cfg)
    cfg["layers"].append(2)
    assert spec.config == {"layers": [1]}


def test_partition_spec_checks_cuts_and_stage() -> None:
    spec = ModelSpec("byte_gpt", {})
    with pytest.raises(ValueError, match="strictly increasing"):
        PartitionSpec(spec, (3, 3), 0)
    with pytest.raises(ValueError, match="out of range"):
        PartitionSpec(spec, (2,), 2)
    parts = partition_specs(spec, (2, 4))
    assert [p.stage for p in parts] == [0, 1, 2] and parts[0].is_first and parts[2].is_last
    assert parts[1].block_range(6) == range(2, 4)


def test_stage_blocks_and_cut_bounds() -> None:
    assert stage_blocks(6, (2, 4)) == (range(0, 2), range(2, 4), range(4, 6))
    check_cuts(6, (0, 6), has_pre=True, has_post=True)  # embeddings-only first, head-only last stage
    with pytest.raises(ValueError, match="leave a stage empty"):
        check_cuts(6, (0,), has_pre=False, has_post=False)
    with pytest.raises(ValueError, match="leave a stage empty"):
        check_cuts(6, (6,), has_pre=True, has_post=False)
    assert even_cuts(6, 3) == (2, 4) and even_cuts(7, 3) == (2, 4) and even_cuts(8, 3) == (2, 5)
    with pytest.raises(ValueError):
        even_cuts(2, 3)


def test_unknown_family_lists_known_ones() -> None:
    assert {"sequential", "byte_gpt", "hf_gpt2", "hf_bert"} <= set(known_families())
    with pytest.raises(KeyError, match="known: "):
        family_for("nope", {})


def test_key_map_routes_inverts_aliases_and_ignores() -> None:
    km = KeyMap(pre=(("transformer.wte.", "wte."),), block_prefix="transformer.h.",
                post=(("lm_head.", "lm_head."),), aliases=(("", "transformer."),), ignored=(r"\.attn\.bias$",))
    r = km.route("transformer.h.3.mlp.c_fc.weight")
    assert r == Route("block", 3, "mlp.c_fc.weight") and km.native_key(r) == "transformer.h.3.mlp.c_fc.weight"
    assert km.route("h.3.mlp.c_fc.weight") == r  # alias: checkpoint without the base prefix
    assert km.route("wte.weight") == Route("pre", None, "wte.weight")
    assert km.is_ignored("transformer.h.0.attn.bias") and not km.is_ignored("transformer.h.0.attn.c_attn.bias")
    with pytest.raises(KeyError, match="belongs to no"):
        km.route("score.weight")
    assert partition_key(r, first_block=2) == "blocks.1.mlp.c_fc.weight"
    assert parse_partition_key("blocks.1.mlp.c_fc.weight", 2) == r
    with pytest.raises(KeyError):
        parse_partition_key("stray.weight", 0)

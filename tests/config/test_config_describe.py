"""Self-documentation of the run configuration: describe_fields and format_help."""

from __future__ import annotations

import dataclasses

import pytest

from layeredge_dist.config import RunConfig, TrainConfig, describe_fields, format_help

SECTIONS = ["model", "data", "pipeline", "codecs", "train", "cluster", "transport", "metrics", "control"]


def _leaf_paths(cls: type, prefix: str = "") -> list[str]:
    """Leaf paths computed independently of describe_fields, straight from dataclasses.fields."""
    out: list[str] = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            out += _leaf_paths(type(default), path)
        else:
            out.append(path)
    return out


def test_describe_fields_covers_every_leaf_in_order() -> None:
    rows = describe_fields()
    assert [r[0] for r in rows] == _leaf_paths(RunConfig)
    assert len(rows) == 61  # 2 top-level + 4+6+6+3+14+8+8+5+5 section fields
    assert rows[0][0] == "name" and rows[-1][0] == "control.min_gain"


def test_every_field_has_help() -> None:
    for path, type_text, default, help_text in describe_fields():
        assert help_text.strip(), f"{path} has no help"
        assert type_text and default, path


def test_describe_fields_values() -> None:
    rows = {r[0]: r[1:] for r in describe_fields()}
    assert rows["train.steps"][:2] == ("int", "200")
    assert rows["train.lr"][:2] == ("float", "0.003")
    assert rows["train.resume"][:2] == ("bool", "true")
    assert rows["model.weights"][:2] == ("str | null", "null")
    assert rows["model.config"][:2] == ("mapping[str, any]", "{}")
    assert rows["pipeline.cuts"][:2] == ("list[int] | null", "null")
    assert rows["pipeline.schedule"][1] == "1f1b"
    assert rows["codecs.edges"][0] == "mapping[str, mapping[str, str]]"
    assert rows["data.corpus_bytes"][1] == "4000000"
    assert "gpipe" in rows["pipeline.schedule"][2] and "interleaved" in rows["pipeline.schedule"][2]
    assert "sgd" in rows["train.optimizer"][2] and "adamw" in rows["train.optimizer"][2]


def test_describe_fields_of_a_section_and_prefix() -> None:
    rows = describe_fields(TrainConfig)
    assert [r[0] for r in rows] == [f.name for f in dataclasses.fields(TrainConfig)]
    assert describe_fields(TrainConfig, "train")[0][0] == "train.steps"
    with pytest.raises(TypeError):
        describe_fields(int)


def test_format_help_mentions_every_field() -> None:
    text = format_help()
    for path, type_text, default, _ in describe_fields():
        assert f"  {path} ({type_text}, default {default}):" in text, path
    assert "  train.steps (int, default 200): optimizer steps" in text


def test_format_help_groups_by_section_and_notes_overrides() -> None:
    text = format_help()
    lines = text.splitlines()
    heads = [line.split(":")[0] for line in lines[1:-1] if line and not line.startswith(" ")]  # header: 1 line
    assert heads == ["run"] + SECTIONS
    assert lines[-1].startswith("Override any field with --set PATH=VALUE") and "--set train.steps=50" in lines[-1]
    # every entry of a section lies below that section's heading, before the next one
    start = lines.index(next(line for line in lines if line.startswith("train:")))
    end = lines.index(next(line for line in lines if line.startswith("cluster:")))
    assert all(line.startswith("  train.") or line.startswith("      ") for line in lines[start + 1:end] if line)


@pytest.mark.parametrize("width", [60, 100, 140])
def test_format_help_respects_width(width: int) -> None:
    text = format_help(width=width)
    for line in text.splitlines():
        # only a single unbreakable token (a long path or example) may overrun the width, alone on its line
        assert len(line) <= width or len(line.split()) == 1, line

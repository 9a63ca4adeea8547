"""What every `layeredge bench` prints: --json, --out FILE (checked first, written whole), progress on stderr."""

from __future__ import annotations

import argparse
import json

from layeredge_dist.bench import output
from layeredge_dist.cli.main import BENCHES, build_parser, main

CODECS = ["bench", "codecs", "--size-mb", "0.25", "--data", "normal", "--reps", "1", "--no-baselines",
          "--codecs", "int8"]


def test_every_benchmark_takes_json_and_out() -> None:
    parser = build_parser()
    for name in BENCHES:
        args = parser.parse_args(["bench", name, "--json", "--out", "x.json"])
        assert args.json is True and args.out == "x.json", name
        assert parser.parse_args(["bench", name]).out is None


def test_out_writes_the_document_beside_the_table(tmp_path, capsys) -> None:  # noqa: ANN001
    path = tmp_path / "codecs.json"
    assert main([*CODECS, "--out", str(path)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(path.read_text())
    assert [(r["codec"], r["data"]) for r in doc["results"]] == [("int8", "normal")]
    assert "int8" in captured.out and not captured.out.lstrip().startswith("{")  # the table, not JSON
    assert f"json: {path}" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codecs.json"]  # no temporary file left
    # with --json too: the same document on stdout
    assert main([*CODECS, "--json", "--out", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["results"][0]["bits_per_element"] == json.loads(path.read_text())["results"][0]["bits_per_element"]


def test_an_unwritable_out_stops_any_benchmark_before_it_runs(tmp_path, capsys) -> None:  # noqa: ANN001
    missing = tmp_path / "no" / "such" / "dir" / "x.json"
    for name in ("codecs", "pipeline", "weights"):
        assert main(["bench", name, "--out", str(missing)]) == 2
        err = capsys.readouterr().err
        assert f"layeredge bench {name}: --out {missing}" in err and "does not exist" in err
    assert not (tmp_path / "no").exists()


def test_progress_is_silent_with_json_and_on_stderr_without(capsys) -> None:  # noqa: ANN001
    output.progress(argparse.Namespace(json=True))("hidden")
    output.progress(argparse.Namespace(json=False))("shown")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "shown\n"
    # a Namespace without the options (a caller that built its own) prints the table and writes nothing
    assert output.emit({"a": 1}, argparse.Namespace()) is False and output.check(argparse.Namespace()) is None

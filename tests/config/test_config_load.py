"""Loading, overriding, validating and round-tripping the run configuration (layeredge_dist.config)."""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import pickle
import types

import pytest
import yaml

from layeredge_dist.config import (
    ClusterConfig,
    CodecConfig,
    ConfigError,
    DataConfig,
    MetricsConfig,
    ModelConfig,
    PipelineConfig,
    RunConfig,
    TrainConfig,
    TransportSettings,
    config_from_dict,
    config_to_dict,
    dump_yaml,
    load_config,
    reseeded,
    with_overrides,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
#: What examples/demo.{yaml,toml} set beyond the defaults: the byte_gpt shape written out.
EXAMPLE_MODEL_CONFIG = {
    "vocab_size": 256, "context": 128, "d_model": 128, "n_layer": 6, "n_head": 4, "mlp_ratio": 4, "dropout": 0.0,
}


def _err(overrides: list[str], base: str | pathlib.Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(base, overrides)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ defaults


def test_defaults_match_the_schema() -> None:
    cfg = RunConfig()
    assert cfg.name == "demo" and cfg.run_dir == "runs/demo"
    assert cfg.model.family == "byte_gpt" and dict(cfg.model.config) == {} and cfg.model.weights is None
    assert (cfg.data.batch_size, cfg.data.context, cfg.data.corpus_bytes) == (16, 128, 4_000_000)
    assert cfg.data.val_fraction == 0.1 and cfg.data.corpus_root is None
    assert (cfg.pipeline.stages, cfg.pipeline.cuts, cfg.pipeline.schedule) == (3, None, "1f1b")
    assert (cfg.pipeline.microbatches, cfg.pipeline.chunks) == (4, 1)
    assert (cfg.codecs.forward, cfg.codecs.backward, dict(cfg.codecs.edges)) == ("fp32", "fp32", {})
    assert (cfg.train.steps, cfg.train.optimizer, cfg.train.lr) == (200, "adamw", 3e-3)
    assert (cfg.train.eval_every, cfg.train.checkpoint_every, cfg.train.resume) == (50, 50, True)
    assert (cfg.cluster.address, cfg.cluster.nodes, cfg.cluster.placement) == (None, 1, "auto")
    assert (cfg.cluster.start_timeout_s, cfg.cluster.step_timeout_s) == (120.0, 300.0)
    assert (cfg.transport.data_path, cfg.transport.tune_malloc) == ("tcp", True)
    assert cfg.metrics.port is None
    assert load_config() == cfg


# ------------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("name", ["demo.yaml", "demo.toml"])
def test_example_files_are_defaults_plus_model_shape(name: str) -> None:
    cfg = load_config(EXAMPLES / name)
    expected = RunConfig(model=ModelConfig(config=EXAMPLE_MODEL_CONFIG))
    assert cfg == expected
    assert dict(cfg.model.config) == EXAMPLE_MODEL_CONFIG
    assert isinstance(cfg.model.config["dropout"], float)


def test_yaml_and_toml_examples_agree() -> None:
    assert load_config(EXAMPLES / "demo.yaml") == load_config(str(EXAMPLES / "demo.toml"))


def test_example_model_shape_is_the_byte_gpt_default() -> None:
    demo = pytest.importorskip("layeredge_dist.model.demo")
    assert dataclasses.asdict(demo.ByteGPTConfig()) == EXAMPLE_MODEL_CONFIG


def test_yaml_file_values_and_yml_suffix(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "run.yml"
    path.write_text(
        "name: small\ntrain:\n  steps: 7\n  lr: 1\npipeline:\n  cuts: [2, 4]\nmetrics:\n"
        "codecs:\n  edges:\n    s1->s2: {backward: bf16}\n"
    )
    cfg = load_config(path)
    assert cfg.name == "small" and cfg.train.steps == 7
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.pipeline.cuts == (2, 4)
    assert cfg.metrics == MetricsConfig()  # a null section means "all defaults"
    assert dict(cfg.codecs.edges["s1->s2"]) == {"backward": "bf16"}


def test_toml_file_values(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'name = "t"\n[data]\nbatch_size = 32\nval_fraction = 0.25\n'
        '[codecs.edges]\n"s0->s1" = { forward = "int8" }\n[cluster]\naddress = "10.0.0.5:6379"\n'
    )
    cfg = load_config(path)
    assert (cfg.name, cfg.data.batch_size, cfg.data.val_fraction) == ("t", 32, 0.25)
    assert dict(cfg.codecs.edges["s0->s1"]) == {"forward": "int8"}
    assert cfg.cluster.address == "10.0.0.5:6379"


def test_empty_yaml_file_is_all_defaults(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == RunConfig()


def test_file_then_overrides(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  steps: -5\n")  # invalid in the file, repaired by the override
    assert load_config(path, ["train.steps=12"]).train.steps == 12


# ------------------------------------------------------------------------------------------------ overrides


def test_override_int_float_bool_null() -> None:
    cfg = load_config(
        None,
        ["train.steps=50", "train.lr=0.5", "train.resume=false", "model.weights=w.safetensors",
         "model.weights=null", "metrics.port=9100", "cluster.cpus_per_stage=2"],
    )
    assert cfg.train.steps == 50 and type(cfg.train.steps) is int
    assert cfg.train.lr == 0.5
    assert cfg.train.resume is False
    assert cfg.model.weights is None
    assert cfg.metrics.port == 9100
    assert cfg.cluster.cpus_per_stage == 2.0 and type(cfg.cluster.cpus_per_stage) is float


def test_override_integral_float_is_accepted_for_int() -> None:
    cfg = load_config(None, ["train.steps=50.0"])
    assert cfg.train.steps == 50 and type(cfg.train.steps) is int


def test_override_list_becomes_tuple() -> None:
    cfg = load_config(None, ["pipeline.cuts=[2, 4]"])
    assert cfg.pipeline.cuts == (2, 4) and isinstance(cfg.pipeline.cuts, tuple)


def test_override_nested_mapping_keys() -> None:
    cfg = load_config(None, ["model.config.d_model=64", "model.config.n_layer=4", "model.config.extra.depth=2"])
    assert dict(cfg.model.config) == {"d_model": 64, "n_layer": 4, "extra": {"depth": 2}}
    cfg2 = with_overrides(cfg, ["model.config.d_model=32"])
    assert dict(cfg2.model.config) == {"d_model": 32, "n_layer": 4, "extra": {"depth": 2}}
    assert cfg.model.config["d_model"] == 64  # the original is untouched
    assert dict(load_config(None, ["model.config={a: 1}"]).model.config) == {"a": 1}


def test_override_edge() -> None:
    cfg = load_config(None, ["codecs.edges.s0->s1.forward=int8", "codecs.edges.s0->s1.backward=topk:0.05+int8"])
    assert dict(cfg.codecs.edges) == {"s0->s1": {"forward": "int8", "backward": "topk:0.05+int8"}}
    cfg2 = with_overrides(cfg, ["codecs.edges.s1->s2.forward=bf16"])
    assert set(cfg2.codecs.edges) == {"s0->s1", "s1->s2"}
    assert cfg2.codecs.edges["s0->s1"]["backward"] == "topk:0.05+int8"


def test_override_string_field_keeps_raw_text() -> None:
    cfg = load_config(None, ["name=2024", "codecs.forward=int4/rht", "cluster.address=auto"])
    assert cfg.name == "2024" and cfg.codecs.forward == "int4/rht" and cfg.cluster.address == "auto"


def test_unparseable_yaml_value_stays_raw_string() -> None:
    assert load_config(None, ["run_dir=runs/[x"]).run_dir == "runs/[x"


def test_with_overrides_applies_in_order_and_keeps_original() -> None:
    base = RunConfig()
    out = with_overrides(base, ["train.steps=5", "train.steps=6"])
    assert out.train.steps == 6 and base.train.steps == 200
    assert with_overrides(base, []) is base
    assert with_overrides(base, "train.steps=9").train.steps == 9  # a lone string is one override


def test_reseeded_shifts_both_seeds_and_leaves_the_base_run_alone() -> None:
    base = with_overrides(RunConfig(), ["data.seed=5", "model.seed=7", "train.steps=9"])
    assert reseeded(base, 0) is base
    two = reseeded(base, 2)
    assert (two.data.seed, two.model.seed, two.train.steps) == (7, 9, 9) and base.data.seed == 5
    with pytest.raises(ValueError, match=">= 0"):
        reseeded(base, -1)


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_key_suggests() -> None:
    msg = _err(["train.stepz=5"])
    assert msg.startswith("train.stepz:") and "did you mean 'train.steps'" in msg and "eval_every" in msg
    msg = _err(["trian.steps=5"])
    assert msg.startswith("trian:") and "did you mean 'train'" in msg


def test_unknown_key_in_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("pipeline:\n  stage: 4\n")
    msg = _err([], path)
    assert msg.startswith("pipeline.stage:") and "did you mean 'pipeline.stages'" in msg
    with pytest.raises(ConfigError, match=r"^data\.batchsize: unknown key"):
        config_from_dict({"data": {"batchsize": 8}})


def test_wrong_type() -> None:
    msg = _err(["data.batch_size=lots"])
    assert msg.startswith("data.batch_size:") and "expected integer" in msg and "'lots'" in msg
    assert _err(["train.lr=fast"]).startswith("train.lr: expected number")
    assert _err(["train.resume=1"]).startswith("train.resume: expected boolean")
    assert _err(["train.steps=2.5"]).startswith("train.steps: expected integer, found 2.5")
    assert _err(["metrics.port=x"]).startswith("metrics.port: expected integer or null, found 'x'")
    assert _err(["pipeline.cuts=5"]).startswith("pipeline.cuts: expected list of integer or null")
    assert _err(["pipeline.cuts=[1, x]"]).startswith("pipeline.cuts[1]: expected integer")
    assert _err(["pipeline=3"]).startswith("pipeline: expected a mapping of PipelineConfig fields")
    assert _err(["model.config=[1]"]).startswith("model.config: expected mapping")
    assert _err(["train.steps.x=1"]).startswith("train.steps: is a scalar field")


def test_bool_is_not_an_int() -> None:
    msg = _err(["train.steps=true"])
    assert msg.startswith("train.steps:") and "True (bool)" in msg and "booleans are not integers" in msg
    with pytest.raises(ConfigError, match=r"^train\.lr:"):
        TrainConfig(lr=True)  # type: ignore[arg-type]


def test_bad_enum() -> None:
    msg = _err(["pipeline.schedule=zigzag"])
    assert msg.startswith("pipeline.schedule:") and "gpipe, 1f1b, interleaved" in msg and "'zigzag'" in msg
    assert _err(["train.optimizer=adam"]).startswith("train.optimizer: expected one of sgd, adamw")
    assert _err(["train.lr_schedule=linear"]).startswith("train.lr_schedule: expected one of constant, cosine")
    assert _err(["train.warmup_steps=-1"]).startswith("train.warmup_steps:")
    assert _err(["train.final_lr_frac=0"]).startswith("train.final_lr_frac: expected a number in (0, 1]")


def test_lr_schedule_reaches_every_stage() -> None:
    from layeredge_dist.pipeline import setup

    cfg = with_overrides(RunConfig(), ["train.steps=120", "train.lr=0.01", "train.lr_schedule=cosine",
                                       "train.warmup_steps=12", "train.final_lr_frac=0.2"])
    opt = setup.stage_spec(cfg).optimizer
    assert (opt.schedule, opt.warmup_steps, opt.total_steps, opt.final_lr_frac) == ("cosine", 12, 120, 0.2)
    assert opt.lr_at(0) == pytest.approx(0.01 / 12) and opt.lr_at(120) == pytest.approx(0.002)
    assert not setup.stage_spec(RunConfig()).optimizer.scheduled  # the default stays a constant rate
    assert _err(["cluster.placement=random"]).startswith("cluster.placement: expected one of")
    assert _err(["transport.data_path=udp"]).startswith("transport.data_path: expected one of tcp, grpc")
    assert _err(["model.family= "]).startswith("model.family:")


def test_cuts_wrong_length_or_not_increasing() -> None:
    msg = _err(["pipeline.cuts=[2]"])
    assert msg.startswith("pipeline.cuts:") and "2 cut(s)" in msg and "[2]" in msg
    msg = _err(["pipeline.cuts=[4, 2]"])
    assert msg.startswith("pipeline.cuts:") and "strictly increasing" in msg
    assert _err(["pipeline.cuts=[3, 3]"]).startswith("pipeline.cuts: expected strictly increasing")
    assert _err(["pipeline.cuts=[-1, 2]"]).startswith("pipeline.cuts[0]:")
    ok = load_config(None, ["pipeline.stages=2", "pipeline.cuts=[0]"])
    assert ok.pipeline.cuts == (0,)


def test_chunks_need_interleaved() -> None:
    msg = _err(["pipeline.chunks=2"])
    assert msg.startswith("pipeline.chunks:") and "interleaved" in msg
    cfg = load_config(None, ["pipeline.schedule=interleaved", "pipeline.chunks=2", "pipeline.stages=2",
                             "pipeline.cuts=[1, 2, 3]"])
    assert (cfg.pipeline.chunks, cfg.pipeline.cuts) == (2, (1, 2, 3))
    msg = _err(["pipeline.schedule=interleaved", "pipeline.stages=3"])  # 4 micro-batches, 3 stages
    assert msg.startswith("pipeline.microbatches:") and "multiple of pipeline.stages (3)" in msg


def test_microbatches_must_divide_batch_size() -> None:
    msg = _err(["pipeline.microbatches=3"])
    assert msg.startswith("pipeline.microbatches:") and "data.batch_size (16)" in msg and "found 3" in msg
    assert load_config(None, ["pipeline.microbatches=8"]).pipeline.microbatches == 8
    with pytest.raises(ConfigError, match=r"^pipeline\.microbatches:"):
        RunConfig(data=DataConfig(batch_size=10), pipeline=PipelineConfig(microbatches=4))


def test_bad_edge_id_and_inner_key() -> None:
    msg = _err(["codecs.edges.s0-s1.forward=int8"])
    assert msg.startswith("codecs.edges.s0-s1:") and "s0->s1" in msg
    msg = _err(["codecs.edges.s0->s1.fwd=int8"])
    assert msg.startswith("codecs.edges.s0->s1.fwd:") and "forward, backward" in msg
    assert "did you mean codecs.edges.s0->s1.forward" in msg
    assert _err(["codecs.edges.s0->s0.forward=int8"]).startswith("codecs.edges.s0->s0:")
    msg = _err(["codecs.edges.s2->s3.forward=int8"])  # only 3 stages: s0..s2
    assert msg.startswith("codecs.edges.s2->s3:") and "s0..s2" in msg
    assert _err(["codecs.edges.s0->s1.forward="]).startswith("codecs.edges.s0->s1.forward:")
    assert _err(["codecs.forward= "]).startswith("codecs.forward:")


def test_edge_ids_are_canonicalised() -> None:
    cfg = CodecConfig(edges={"s01->s2": {"forward": "int8"}})
    assert list(cfg.edges) == ["s1->s2"]
    with pytest.raises(ConfigError, match="repeats 's1->s2'"):
        CodecConfig(edges={"s1->s2": {}, "s01->s2": {}})


def test_range_checks_name_the_path() -> None:
    cases = {
        "train.steps=0": "train.steps:",
        "train.lr=0": "train.lr:",
        "train.momentum=0.9": "train.momentum:",  # momentum needs sgd
        "data.val_fraction=1.0": "data.val_fraction:",
        "data.context=0": "data.context:",
        "pipeline.stages=0": "pipeline.stages:",
        "cluster.step_timeout_s=0": "cluster.step_timeout_s:",
        "cluster.address=nowhere": "cluster.address:",
        "metrics.port=70000": "metrics.port:",
        "model.weights=w.pt": "model.weights:",
        "train.lr=.inf": "train.lr:",
        "transport.recv_timeout_s=-1": "transport.recv_timeout_s:",
    }
    for override, prefix in cases.items():
        assert _err([override]).startswith(prefix), override
    assert load_config(None, ["train.optimizer=sgd", "train.momentum=0.9"]).train.momentum == 0.9
    msg = _err(["cluster.address=auto", "cluster.nodes=2"])
    assert msg.startswith("cluster.nodes:")


def test_model_config_must_be_json_compatible() -> None:
    with pytest.raises(ConfigError, match=r"^model\.config\.f: expected JSON-compatible value"):
        ModelConfig(config={"f": object()})
    with pytest.raises(ConfigError, match=r"^model\.config\.x\[1\]: expected finite number"):
        ModelConfig(config={"x": [1, float("nan")]})


def test_bad_override_syntax() -> None:
    assert "section.field=value" in _err(["train.steps"])
    assert _err(["train..steps=1"]).startswith("train..steps:")


def test_bad_file_extension(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "run.json"
    path.write_text("{}")
    msg = _err([], path)
    assert msg.startswith(str(path)) and "'.json'" in msg and ".yaml, .yml or .toml" in msg


def test_missing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "absent.yaml"
    msg = _err([], path)
    assert msg == f"{path}: config file not found"


def test_syntax_errors_and_bad_top_level(tmp_path: pathlib.Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [unclosed\n")
    assert _err([], bad_yaml).startswith(f"{bad_yaml}: invalid YAML")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("train = = 1\n")
    assert _err([], bad_toml).startswith(f"{bad_toml}: invalid TOML")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("5\n")
    assert "top level must be a mapping" in _err([], scalar)


def test_config_error_is_a_value_error_and_pickles() -> None:
    err = ConfigError("train.steps", "expected integer")
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.message, str(back)) == ("train.steps", "expected integer", "train.steps: expected integer")


# ------------------------------------------------------------------------------------------------ round trip


def _rich_config() -> RunConfig:
    return load_config(
        EXAMPLES / "demo.yaml",
        ["name=rich", "pipeline.cuts=[1, 3]", "codecs.edges.s0->s1.forward=int8", "codecs.edges.s1->s2.backward=bf16",
         "model.config.layers=[1, {a: 2}]", "train.optimizer=sgd", "train.momentum=0.5", "metrics.port=0",
         "cluster.address=127.0.0.1:6379", "data.corpus_root=/src", "train.checkpoint_dir=ck"],
    )


def test_dict_round_trip_is_exact() -> None:
    cfg = _rich_config()
    d = config_to_dict(cfg)
    assert d["pipeline"]["cuts"] == [1, 3] and type(d["pipeline"]["cuts"]) is list
    assert type(d["codecs"]["edges"]) is dict and type(d["codecs"]["edges"]["s0->s1"]) is dict
    assert d["model"]["config"]["layers"] == [1, {"a": 2}]
    back = config_from_dict(d)
    assert back == cfg
    assert config_to_dict(back) == d
    assert config_to_dict(cfg.train) == d["train"]


def test_yaml_round_trip_is_exact(tmp_path: pathlib.Path) -> None:
    cfg = _rich_config()
    text = dump_yaml(cfg)
    assert yaml.safe_load(text) == config_to_dict(cfg)
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert load_config(path) == cfg
    assert dump_yaml(load_config(path)) == text
    assert list(yaml.safe_load(text)) == [f.name for f in dataclasses.fields(RunConfig)]


def test_pickle_and_deepcopy() -> None:
    cfg = _rich_config()
    assert hash(copy.deepcopy(cfg)) == hash(cfg) and len({cfg, copy.deepcopy(cfg), RunConfig()}) == 2
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert copy.deepcopy(cfg) == cfg


# ------------------------------------------------------------------------------------------------ immutability


def test_frozen() -> None:
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 1  # type: ignore[misc]
    cfg = _rich_config()
    assert isinstance(cfg.model.config, types.MappingProxyType)
    with pytest.raises(TypeError):
        cfg.model.config["d_model"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.codecs.edges["s0->s1"]["forward"] = "bf16"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.model.config["layers"][1]["a"] = 3


def test_mapping_fields_are_deep_copies() -> None:
    source = {"d_model": 64, "inner": {"k": [1, 2]}}
    cfg = ModelConfig(config=source)
    source["d_model"] = 1
    source["inner"]["k"].append(3)  # type: ignore[index]
    assert cfg.config["d_model"] == 64
    assert cfg.config["inner"]["k"] == (1, 2)


def test_sections_can_be_built_directly() -> None:
    cfg = RunConfig(
        train=TrainConfig(steps=3), cluster=ClusterConfig(nodes=2), transport=TransportSettings(data_path="grpc"),
        pipeline=PipelineConfig(stages=2, cuts=[3]),  # type: ignore[arg-type]
    )
    assert cfg.pipeline.cuts == (3,) and cfg.cluster.nodes == 2 and cfg.transport.data_path == "grpc"
    with pytest.raises(ConfigError, match=r"^train: expected TrainConfig"):
        RunConfig(train={"steps": 3})  # type: ignore[arg-type]

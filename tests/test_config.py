"""Run configuration: presets, strict keys with suggestions, typed dotted overrides, CLI parsing, hashing."""

from __future__ import annotations

import json

import pytest
import typer

from pgseg_cli.options import parse_overrides
from pgseg_core.config import (
    RunConfig,
    apply_overrides,
    config_hash,
    list_presets,
    load_config,
)
from pgseg_core.errors import ConfigError, PgsegError


def test_list_presets_has_the_bundled_ones():
    presets = list_presets()
    assert presets == sorted(presets)
    assert {"groupvit-s", "pgseg-s", "pgseg-tiny"} <= set(presets)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert isinstance(cfg, RunConfig)
    assert cfg.name == name
    v = cfg.model.vision
    # one entry per stage, one fewer grouping stage
    assert len(v.depths) == len(v.num_heads) == len(v.num_group_tokens) == len(v.num_output_groups) + 1
    assert v.embed_dim % v.num_heads[0] == 0
    assert isinstance(cfg.train.lr, float) and cfg.train.lr > 0


def test_preset_values_are_applied_over_defaults():
    tiny = load_config("pgseg-tiny")
    assert tiny.model.vision.embed_dim == 32
    assert tiny.model.npr.enabled is True and tiny.model.npr.em_iters == 3
    assert tiny.train.steps == 4
    # a key the preset does not list keeps the dataclass default
    assert tiny.train.weight_decay == 0.05
    assert load_config("groupvit-s").model.npr.enabled is False
    assert load_config("pgseg-s").model.npr.enabled is True


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as e:
        load_config("pgseg-tiny", {"train.lrr": 1e-3})
    msg = str(e.value)
    assert "did you mean" in msg and "'lr'" in msg
    assert "train.lrr" in msg


def test_unknown_section_suggests_the_right_one():
    with pytest.raises(ConfigError) as e:
        load_config("pgseg-tiny", {"trian.lr": 1e-3})
    assert "did you mean 'train'" in str(e.value)


def test_unknown_nested_key_in_json_file(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"model": {"vision": {"embed_dimm": 64}}}))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "did you mean 'embed_dim'" in str(e.value)
    assert "model.vision.embed_dimm" in str(e.value)


def test_config_file_loads_and_is_named_after_the_file(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"train": {"lr": 0.5}}))
    cfg = load_config(p)
    assert cfg.name == "mine" and cfg.train.lr == 0.5


def test_dotted_overrides_coerce_types():
    cfg = load_config(
        "pgseg-tiny",
        {
            "train.lr": "3e-4",
            "model.npr.released_code": "true",
            "model.vision.depths": "[1,2]",
            "train.steps": "7",
            "data.hflip": "false",
            "eval.templates": '["a {}.", "the {}."]',
        },
    )
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.npr.released_code is True
    assert cfg.model.vision.depths == [1, 2] and all(type(d) is int for d in cfg.model.vision.depths)
    assert cfg.train.steps == 7 and type(cfg.train.steps) is int
    assert cfg.data.hflip is False
    assert cfg.eval.templates == ["a {}.", "the {}."]


def test_override_int_into_float_field_becomes_float():
    cfg = load_config("pgseg-tiny", {"train.lr": "1"})
    assert type(cfg.train.lr) is float and cfg.train.lr == 1.0


def test_list_override_from_comma_string():
    cfg = apply_overrides(RunConfig(), {"data.crop_scale": "0.3,1.0"})
    assert cfg.data.crop_scale == [0.3, 1.0]


@pytest.mark.parametrize(
    "key,value",
    [
        ("train.steps", "2.5"),  # non-integral float into int
        ("train.lr", "fast"),  # not a number
        ("data.hflip", "maybe"),  # not a boolean
        ("model.vision.depths", "5"),  # not a list
    ],
)
def test_badly_typed_override_raises(key, value):
    with pytest.raises(ConfigError) as e:
        load_config("pgseg-tiny", {key: value})
    assert key in str(e.value)


def test_overrides_do_not_mutate_the_input_config():
    cfg = load_config("pgseg-tiny")
    new = apply_overrides(cfg, {"train.lr": 0.123})
    assert new.train.lr == 0.123
    assert cfg.train.lr == 1e-3


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--train.lr", "1e-3"], {"train.lr": "1e-3"}),
        (["--train.lr=1e-3"], {"train.lr": "1e-3"}),
        (["--train.lr=1e-3", "--eval.top_k", "3"], {"train.lr": "1e-3", "eval.top_k": "3"}),
        (["--train.warmup-steps", "5"], {"train.warmup_steps": "5"}),
        (["--eval.templates=a=b"], {"eval.templates": "a=b"}),
        ([], {}),
    ],
)
def test_parse_cli_overrides_forms(args, expected):
    assert parse_overrides(args) == expected


@pytest.mark.parametrize("args", [["train.lr", "1e-3"], ["--lr", "1e-3"], ["--train.lr"], ["-x"]])
def test_parse_cli_overrides_bad_args(args):
    with pytest.raises(typer.BadParameter):
        parse_overrides(args)


def test_cli_overrides_round_trip_into_typed_config():
    cfg = load_config("pgseg-tiny", parse_overrides(["--train.lr", "2e-3", "--model.npr.enabled=false"]))
    assert cfg.train.lr == pytest.approx(2e-3) and cfg.model.npr.enabled is False


def test_bad_literal_value_raises():
    with pytest.raises(ConfigError) as e:
        load_config("pgseg-tiny", {"eval.mode": "sliding"})
    assert "eval.mode" in str(e.value) and "'slide'" in str(e.value)
    with pytest.raises(ConfigError):
        load_config("pgseg-tiny", {"model.text.tower": "bert"})


def test_unknown_preset_suggests_the_close_one():
    with pytest.raises(ConfigError) as e:
        load_config("pgseg-tny")
    assert "did you mean 'pgseg-tiny'" in str(e.value)
    assert issubclass(ConfigError, PgsegError)


def test_config_errors_are_one_line():
    for bad in ({"train.lrr": 1}, {"eval.mode": "x"}, {"train.steps": "x"}):
        with pytest.raises(ConfigError) as e:
            load_config("pgseg-tiny", bad)
        assert "\n" not in str(e.value)


def test_config_hash_stable_and_model_sensitive():
    a = load_config("pgseg-tiny")
    b = load_config("pgseg-tiny")
    h = config_hash(a)
    assert isinstance(h, str) and len(h) == 16 and int(h, 16) >= 0
    assert h == config_hash(b)
    assert h == config_hash(a.to_dict())
    # a change in the model section changes the hash ...
    assert config_hash(apply_overrides(a, {"model.vision.embed_dim": 48})) != h
    assert config_hash(apply_overrides(a, {"model.npr.em_iters": 4})) != h
    # ... a change elsewhere does not (the default section is "model")
    assert config_hash(apply_overrides(a, {"train.lr": 0.5})) == h
    other_train = apply_overrides(a, {"train.lr": 0.5})
    assert config_hash(other_train, section="train") != config_hash(a, section="train")
    # different presets differ
    assert config_hash(load_config("pgseg-s")) != config_hash(load_config("groupvit-s"))


# ---------------------------------------------------------------------------------------------------------
# numeric ranges: checked once, in the config dataclasses


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("train.steps", "-5", "train.steps must be >= 0, got -5"),
        ("train.batch_size", "0", "train.batch_size must be >= 1, got 0"),
        ("train.lr", "0", "train.lr must be > 0, got 0.0"),
        ("train.lr", "nan", "train.lr must be > 0"),
        ("train.warmup_steps", "-1", "train.warmup_steps must be >= 0"),
        ("train.log_every", "0", "train.log_every must be >= 1"),
        ("train.ckpt_every", "0", "train.ckpt_every must be >= 1"),
        ("train.grad_clip", "0", "train.grad_clip must be > 0"),
        ("train.hard_assign_start", "-1", "train.hard_assign_start must be >= 0"),
        ("train.time_budget_s", "-1", "train.time_budget_s must be >= 0 (0 = no budget), got -1.0"),
        ("train.betas", "0.9,1.5", "train.betas must lie in [0, 1) (each entry), got [0.9, 1.5]"),
        ("train.seed", "-1", "train.seed must lie in [0, 4294967295]"),
        ("data.img_size", "8", "data.img_size must be >= 16 (pixels), got 8"),
        ("data.crop_scale", "0,1", "data.crop_scale must lie in (0, 1] (each entry)"),
        ("data.num_workers", "-1", "data.num_workers must be >= 0"),
        ("eval.bg_thresh", "1.5", "eval.bg_thresh must lie in [0, 1], got 1.5"),
        ("eval.prob_thresh", "-0.1", "eval.prob_thresh must lie in [0, 1]"),
        ("eval.top_k", "-1", "eval.top_k must be >= 0 (0 = all), got -1"),
        ("eval.stride", "0", "eval.stride must be a positive number of pixels, got 0"),
        ("eval.short_side", "0", "eval.short_side must be a positive number of pixels"),
        ("eval.logit_scale", "-1", "eval.logit_scale must be >= 0 (0 = the model's)"),
        ("model.vision.img_size", "8", "model.vision.img_size must be >= 16"),
        ("model.vision.num_heads", "2,0,2", "model.vision.num_heads must be >= 1 (each entry)"),
        ("model.vision.drop_path_rate", "1", "model.vision.drop_path_rate must lie in [0, 1)"),
        ("model.text.heads", "0", "model.text.heads must be >= 1"),
        ("model.npr.momentum", "2", "model.npr.momentum must lie in [0, 1]"),
        ("model.contrast_temperature", "0", "model.contrast_temperature must be > 0"),
    ],
)
def test_out_of_range_value_names_the_dotted_key(key, value, message):
    with pytest.raises(ConfigError) as e:
        load_config("pgseg-tiny", {key: value})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_ranges_hold_for_every_construction_and_the_bundled_presets():
    import dataclasses

    from pgseg_core.config import EvalConfig, TrainConfig, check_ranges

    for name in list_presets():
        cfg = load_config(name)
        load_config(name, cfg.cuda_overrides)
    # direct construction and dataclasses.replace are checked too, not only overrides
    with pytest.raises(ConfigError, match="train.steps must be >= 0"):
        TrainConfig(steps=-1)
    with pytest.raises(ConfigError, match=r"eval.bg_thresh must lie in \[0, 1\]"):
        dataclasses.replace(EvalConfig(), bg_thresh=2.0)
    # boundaries are accepted
    TrainConfig(steps=0, warmup_steps=0, hard_assign_start=0, time_budget_s=0.0, log_every=1, ckpt_every=1)
    EvalConfig(bg_thresh=0.0, prob_thresh=1.0, top_k=0, logit_scale=0.0, stride=1)

    # duck-typed objects (inference's check_eval_config) use the same table
    class Loose:
        bg_thresh = 0.5
        top_k = -2

    with pytest.raises(ConfigError, match="eval.top_k must be >= 0"):
        check_ranges(Loose(), "eval")

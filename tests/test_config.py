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

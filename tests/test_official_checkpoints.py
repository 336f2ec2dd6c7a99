"""Official NVlabs GroupViT / Ferenas PGSeg checkpoints: their key names <-> ours, every such file through
load_checkpoint / init_from / ``pgseg convert``, the pickle policy (the releases pickle an OmegaConf config,
read as inert data; other pickles need ``--trust-pickle``), and one-line CheckpointErrors for bad files.
"""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from pgseg_core.checkpoint import convert_checkpoint, init_from, load_checkpoint, trainable_state_dict
from pgseg_core.checkpoint.formats import (
    config_from_official,
    detect_format,
    official_to_pgseg,
    pgseg_to_official,
)
from pgseg_core.config import load_config
from pgseg_core.errors import CheckpointError, PgsegError
from pgseg_core.models.factory import create_model
from pgseg_core.models.pgseg import PGSeg
from pgseg_core.models.vision import interpolate_pos_embed

pytestmark = pytest.mark.usefixtures("single_thread")


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-degenerate random weights (fan-in scaled), so assignments are decisive and every path matters."""
    g = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith(("position_ids", "num_batches_tracked", "attn_mask")) or name == "logit_scale":
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif any(s in name for s in ("group_token", "position_embedding", "token_embedding")):
            t.copy_(torch.randn(t.shape, generator=g) * 0.5)
        elif t.ndim >= 2:
            t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
        elif name.endswith("weight"):
            t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
        else:
            t.copy_(0.1 * torch.randn(t.shape, generator=g))


# ----------------------------------------------------------------------------------------------------------
# official NVlabs GroupViT / PGSeg names


def _official_reference_state(pgseg: bool, multi_label: bool = False) -> dict[str, torch.Tensor]:
    """A state dict with exactly the names and shapes listed in docs/METHOD.md §5.2 (GroupViT-S)."""
    C, W, D, H, V, L = 384, 256, 256, 4096, 49408, 77
    s: dict[str, torch.Tensor] = {}

    def lin(name, out, inp, conv=False):
        s[f"{name}.weight"] = torch.zeros(out, inp, 1) if conv else torch.zeros(out, inp)
        s[f"{name}.bias"] = torch.zeros(out)

    def ln(name, n=C):
        s[f"{name}.weight"], s[f"{name}.bias"] = torch.ones(n), torch.zeros(n)

    def bn(name, n):
        ln(name, n)
        s[f"{name}.running_mean"], s[f"{name}.running_var"] = torch.zeros(n), torch.ones(n)
        s[f"{name}.num_batches_tracked"] = torch.tensor(0)

    def project_mlp(name, inp, out):
        lin(f"{name}.linear_hidden.0", H, inp, conv=True)
        bn(f"{name}.linear_hidden.1", H)
        lin(f"{name}.linear_out", out, H, conv=True)

    e = "img_encoder"
    s[f"{e}.patch_embed.proj.weight"], s[f"{e}.patch_embed.proj.bias"] = (
        torch.zeros(C, 3, 16, 16),
        torch.zeros(C),
    )
    ln(f"{e}.patch_embed.norm")
    s[f"{e}.pos_embed"] = torch.zeros(1, 196, C)
    for st, depth in enumerate((6, 3, 3)):
        for i in range(depth):
            b = f"{e}.layers.{st}.blocks.{i}"
            ln(f"{b}.norm1"), lin(f"{b}.attn.qkv", 3 * C, C), lin(f"{b}.attn.proj", C, C)
            ln(f"{b}.norm2"), lin(f"{b}.mlp.fc1", 4 * C, C), lin(f"{b}.mlp.fc2", C, 4 * C)
    for st, S in ((0, 64), (1, 8)):
        s[f"{e}.layers.{st}.group_token"] = torch.zeros(1, S, C)
        d = f"{e}.layers.{st}.downsample"
        for n in (
            "norm_tokens",
            "norm_post_tokens",
            "norm_x",
            "norm_new_x",
            "pre_assign_attn.norm_post",
            "pre_assign_attn.norm2",
        ):
            ln(f"{d}.{n}")
        lin(f"{d}.mlp_inter.fc1", C // 2, S), lin(f"{d}.mlp_inter.fc2", S, C // 2)
        lin(f"{d}.mlp_channels.fc1", 4 * C, C), lin(f"{d}.mlp_channels.fc2", C, 4 * C)
        for n in ("q_proj", "k_proj", "v_proj", "proj"):
            lin(f"{d}.pre_assign_attn.attn.{n}", C, C), lin(f"{d}.assign.{n}", C, C)
        lin(f"{d}.pre_assign_attn.mlp.fc1", 4 * C, C), lin(f"{d}.pre_assign_attn.mlp.fc2", C, 4 * C)
        if pgseg:
            s[f"{e}.layers.{st}.downsample_spatial.mu"] = torch.zeros(1, S, C)
            project_mlp(f"{e}.layers.{st}.downsample_spatial.mapping_x", C, C)
    ln(f"{e}.layers.1.group_projector.0")
    (
        lin(f"{e}.layers.1.group_projector.1.fc1", C // 2, 64),
        lin(f"{e}.layers.1.group_projector.1.fc2", 8, C // 2),
    )
    ln(f"{e}.norm")
    t = "text_encoder"
    s[f"{t}.token_embedding.weight"], s[f"{t}.positional_embedding"] = torch.zeros(V, W), torch.zeros(L, W)
    for i in range(12):
        r = f"{t}.transformer.resblocks.{i}"
        s[f"{r}.attn.in_proj_weight"], s[f"{r}.attn.in_proj_bias"] = torch.zeros(3 * W, W), torch.zeros(3 * W)
        lin(f"{r}.attn.out_proj", W, W), ln(f"{r}.ln_1", W), ln(f"{r}.ln_2", W)
        lin(f"{r}.mlp.c_fc", 4 * W, W), lin(f"{r}.mlp.c_proj", W, 4 * W)
    ln(f"{t}.ln_final", W)
    project_mlp("img_projector", C, D)
    project_mlp("text_projector", W, D)
    s["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    if multi_label:
        s["multi_label_logit_scale"] = torch.tensor(math.log(1 / 0.07))
    if pgseg:
        s[f"{e}.logit_scale"] = torch.tensor(math.log(10.0))
        project_mlp(f"{e}.mapping_text", C, D)
        s[f"{t}.Atten.mu"] = torch.zeros(1, 8, 1)
    return s


@pytest.fixture(scope="module")
def reference_states():
    return {
        "groupvit": _official_reference_state(False, multi_label=True),
        "pgseg": _official_reference_state(True),
    }


def test_reference_state_matches_documented_entry_counts(reference_states):
    # docs/METHOD.md §5.2 counts 412 entries for GroupViT (multi_label=3) and 442 for PGSeg. The names it
    # lists give 407 and 437: 5 fewer in both, which it does not name (not a BatchNorm or projector we
    # lack: every listed name loads strictly below). The PGSeg extras agree: 442 - (412 - 1) = 31.
    assert len(reference_states["groupvit"]) == 407
    assert len(reference_states["pgseg"]) - (len(reference_states["groupvit"]) - 1) == 442 - (412 - 1)
    assert detect_format({"model": reference_states["groupvit"], "epoch": 3}) == "nvlabs-groupvit"
    assert detect_format({"model": reference_states["pgseg"], "epoch": 3}) == "nvlabs-pgseg"


@pytest.mark.parametrize("kind", ["groupvit", "pgseg"])
def test_official_reference_state_loads_strictly(reference_states, kind):
    state = reference_states[kind]
    ours, notes = official_to_pgseg(state, keep_mapping_text=True)
    if kind == "groupvit":
        cfg = load_config("groupvit-s").model
        assert any("multi_label_logit_scale" in n for n in notes)
    else:
        cfg = load_config(
            "pgseg-s", {"model.npr.with_mapping_text": True, "model.npr.released_code": True}
        ).model
        assert "text_npr.mu" in ours and "text_encoder.Atten.mu" not in ours
    model = PGSeg(cfg)
    model.load_state_dict(ours, strict=True)  # no missing, no unexpected keys
    inferred = config_from_official(state)
    assert inferred.vision == cfg.vision
    assert inferred.text == cfg.text and inferred.embed_dim == cfg.embed_dim
    assert inferred.npr.enabled == cfg.npr.enabled
    if kind == "pgseg":
        assert (
            inferred.npr.released_code
            and inferred.npr.with_mapping_text
            and inferred.npr.text_prototypes == 8
        )
        dropped, notes = official_to_pgseg(state)
        assert not any(k.startswith("img_encoder.mapping_text.") for k in dropped)
        assert any("mapping_text" in n for n in notes)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"model.npr.released_code": True, "model.npr.with_mapping_text": True},
        {"model.npr.enabled": False},
    ],
)
def test_official_names_round_trip_is_lossless(overrides):
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", overrides))
    state = model.state_dict()
    official = pgseg_to_official(state)
    if model.text_npr is not None:
        assert "text_encoder.Atten.mu" in official and "text_npr.mu" not in official
    back, _ = official_to_pgseg(official, keep_mapping_text=True)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    wrapped = {"model": {f"module.{k}": v for k, v in official.items()}}  # DDP prefix is removed too
    assert detect_format(wrapped) == (
        "nvlabs-groupvit" if overrides.get("model.npr.enabled") is False else "nvlabs-pgseg"
    )
    inferred = config_from_official(official)
    assert inferred.vision.depths == model.cfg.vision.depths
    assert inferred.npr.enabled == model.cfg.npr.enabled
    if model.cfg.npr.enabled:
        assert inferred.npr.released_code == model.cfg.npr.released_code


def _official_file(tmp_path, model, name="official.pth", extra=None):
    """An NVlabs-style checkpoint file of a tiny model (official names, plain tensors)."""
    ckpt = {"model": pgseg_to_official(trainable_state_dict(model)), "epoch": 2, "max_miou": 0.0}
    ckpt.update(extra or {})
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def test_load_official_checkpoint_file(tmp_path):
    torch.manual_seed(1)
    cfg = load_config("pgseg-tiny", {"model.npr.released_code": True})
    model = create_model(cfg).eval()
    randomise(model, 3)
    heads = cfg.model.vision.num_heads  # tiny: 2 heads of width 16, not inferable from weights
    path = _official_file(tmp_path, model)
    loaded, info = load_checkpoint(path)
    assert info.source_format == "nvlabs-pgseg" and info.config.model.npr.released_code
    assert info.config.model.vision.num_heads != heads  # assumed head width 64 -> noted
    assert any("heads" in n for n in info.notes)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_init_pgseg_from_groupvit_reports_new_keys(tmp_path):
    """init_from (train --init): GroupViT weights into PGSeg; exactly the PGSeg-only keys are new."""
    torch.manual_seed(0)
    gv_cfg = load_config("pgseg-tiny", {"model.npr.enabled": False})
    groupvit = create_model(gv_cfg)
    randomise(groupvit, 4)
    official = _official_file(tmp_path, groupvit)
    from pgseg_core.checkpoint import save_checkpoint

    ours = save_checkpoint(tmp_path / "gv.pt", groupvit, gv_cfg, step=5)
    for path, fmt in ((ours, "pgseg"), (official, "nvlabs-groupvit")):
        pgseg = create_model(load_config("pgseg-tiny"))
        expected_new = set(pgseg.state_dict()) - set(groupvit.state_dict())
        assert expected_new and all(
            "downsample_spatial" in k or k in ("img_encoder.logit_scale", "text_npr.mu") for k in expected_new
        )
        report = init_from(pgseg, path)
        assert report["source_format"] == fmt
        assert set(report["new_keys"]) == expected_new and report["ignored_keys"] == []
        for k, v in groupvit.state_dict().items():
            assert torch.equal(pgseg.state_dict()[k], v), k
    # another pos-embed grid: resized bicubically, and said so
    big = create_model(load_config("pgseg-tiny", {"model.vision.img_size": 96}))
    report = init_from(big, ours)
    assert any("resized" in n for n in report["notes"])
    torch.testing.assert_close(
        big.img_encoder.pos_embed.detach(),
        interpolate_pos_embed(groupvit.img_encoder.pos_embed.detach(), (4, 4), (6, 6)),
    )


def test_pgseg_checkpoint_converts_to_safetensors_pair(tmp_path):
    from pgseg_core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = load_config("pgseg-tiny")
    model = create_model(cfg)
    randomise(model, 6)
    ck = save_checkpoint(tmp_path / "ck.pt", model, cfg, step=7, metrics={"loss": 1.0})
    summary = convert_checkpoint(ck, tmp_path / "pair.safetensors")
    assert summary["source_format"] == "pgseg" and summary["weights"].endswith("pair.safetensors")
    loaded, info = load_checkpoint(tmp_path / "pair.json")
    assert info.step == 7 and info.metrics == {"loss": 1.0} and info.config.to_dict() == cfg.to_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ----------------------------------------------------------------------------------------------------------
# pickles that need code (the official releases pickle an OmegaConf config) and other bad inputs


def _file_with_foreign_class(tmp_path, model):
    """An official-style file whose 'config' is an instance of a class from a module that is not installed."""
    mod = types.ModuleType("fake_omegaconf_dictconfig")

    class DictConfig:
        def __init__(self, content):
            self._content = content

    DictConfig.__module__ = mod.__name__
    DictConfig.__qualname__ = "DictConfig"
    mod.DictConfig = DictConfig
    sys.modules[mod.__name__] = mod
    try:
        config = DictConfig({"model": {"type": "GroupViT"}})
        path = _official_file(tmp_path, model, "release.pth", {"config": config})
    finally:
        del sys.modules[mod.__name__]
    return path


def test_pickle_needing_code_requires_trust_pickle(tmp_path):
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", {"model.npr.enabled": False})).eval()
    path = _file_with_foreign_class(tmp_path, model)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and "weights_only" in msg and "pgseg convert" in msg and "--trust-pickle" in msg
    with pytest.raises(CheckpointError, match="trust-pickle"):
        convert_checkpoint(path, tmp_path / "out")
    summary = convert_checkpoint(path, tmp_path / "out", trust_pickle=True)
    assert summary["source_format"] == "nvlabs-groupvit"
    loaded, info = load_checkpoint(tmp_path / "out.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_cli_convert(tmp_path):
    from typer.testing import CliRunner

    from pgseg_cli.app import app

    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", {"model.npr.released_code": True}))
    path = _file_with_foreign_class(tmp_path, model)
    runner = CliRunner()
    bad = runner.invoke(app, ["convert", str(path), str(tmp_path / "x")])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    err_lines = [ln for ln in bad.output.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "--trust-pickle" in bad.output
    good = runner.invoke(app, ["convert", str(path), str(tmp_path / "x"), "--trust-pickle"])
    assert good.exit_code == 0, good.output
    assert "converted nvlabs-pgseg" in good.output
    assert (tmp_path / "x.safetensors").exists() and (tmp_path / "x.json").exists()


def _assert_error(path, *fragments):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, PgsegError), msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_other_model_kinds_are_refused(tmp_path):
    resnet = {
        "conv1.weight": torch.zeros(8, 3, 7, 7),
        "fc.weight": torch.zeros(10, 8),
        "fc.bias": torch.zeros(10),
    }
    torch.save(resnet, tmp_path / "resnet.pth")
    _assert_error(tmp_path / "resnet.pth", "not a pgseg checkpoint", "conv1.weight")
    torch.save({"model": resnet, "epoch": 1}, tmp_path / "resnet_wrapped.pth")
    _assert_error(tmp_path / "resnet_wrapped.pth", "not a pgseg checkpoint")
    # a CLIP state dict in HF names looks like HF GroupViT at first sight, but has foreign keys
    clip = {
        "vision_model.embeddings.class_embedding": torch.zeros(32),
        "text_model.final_layer_norm.weight": torch.zeros(32),
        "vision_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(32, 32),
    }
    torch.save(clip, tmp_path / "clip.bin")
    _assert_error(tmp_path / "clip.bin", "without a pgseg counterpart")
    (tmp_path / "cfg.json").write_text(json.dumps({"model_type": "clip"}))
    _assert_error(tmp_path / "cfg.json", "not a checkpoint")


def test_truncated_files_are_refused(tmp_path):
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", {"model.npr.enabled": False}))
    official = _official_file(tmp_path, model)
    data = official.read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    _assert_error(tmp_path / "half.pth", "truncated or corrupt")
    convert_checkpoint(official, tmp_path / "pair")
    weights = tmp_path / "pair.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _assert_error(weights, "truncated or corrupt")


def test_pickle_module_is_not_used_without_trust(tmp_path, monkeypatch):
    """Without --trust-pickle nothing is ever unpickled with weights_only=False."""
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", {"model.npr.enabled": False}))
    path = _file_with_foreign_class(tmp_path, model)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        init_from(model, path)
    assert calls and all(c is True for c in calls)


# ----------------------------------------------------------------------------------------------------------
# the official releases as published: weights plus a pickled OmegaConf config, loaded without trusting code


def _omegaconf_release(tmp_path, model, extra=None):
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create(
        {
            "model": {
                "type": "MultiLabelContrastive",
                "img_encoder": {"type": "GroupViT", "depths": [6, 3, 3], "num_group_tokens": [64, 8, 0]},
            },
            "train": {"base_lr": 1.6e-3},
            "data": {"dataset": {"meta": ["gcc3m", "gcc12m"]}, "workers": None},
        }
    )
    return _official_file(tmp_path, model, "group_vit_release.pth", {"config": config, **(extra or {})})


@pytest.mark.parametrize("npr", [False, True])
def test_official_release_with_omegaconf_config_loads_directly(tmp_path, monkeypatch, npr):
    omegaconf = pytest.importorskip("omegaconf")
    torch.manual_seed(0)
    cfg = load_config("pgseg-tiny", {"model.npr.enabled": npr, "model.npr.released_code": npr})
    model = create_model(cfg).eval()
    randomise(model, 5)
    path = _omegaconf_release(tmp_path, model)

    def run_no_config_code(*args, **kwargs):  # reading the file must not execute OmegaConf's code
        raise AssertionError("OmegaConf code ran while loading a checkpoint")

    monkeypatch.setattr(omegaconf.DictConfig, "__setstate__", run_no_config_code)
    monkeypatch.setattr(omegaconf.DictConfig, "__init__", run_no_config_code)
    loaded, info = load_checkpoint(path)
    assert info.source_format == ("nvlabs-pgseg" if npr else "nvlabs-groupvit")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_official_release_with_a_foreign_global_is_still_refused(tmp_path):
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", {"model.npr.enabled": False})).eval()
    mod = types.ModuleType("release_tools")

    class Hook:
        pass

    Hook.__module__, Hook.__qualname__ = mod.__name__, "Hook"
    mod.Hook = Hook
    sys.modules[mod.__name__] = mod
    try:
        path = _omegaconf_release(tmp_path, model, {"hook": Hook()})
    finally:
        del sys.modules[mod.__name__]
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert (
        "release_tools.Hook" in str(e.value) and "--trust-pickle" in str(e.value) and "\n" not in str(e.value)
    )


def test_cli_segment_on_an_official_release(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from pgseg_cli.app import app

    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", {"model.npr.released_code": True})).eval()
    path = _omegaconf_release(tmp_path, model)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
        tmp_path / "a.png"
    )
    res = CliRunner().invoke(
        app,
        [
            "segment",
            str(tmp_path / "a.png"),
            "--checkpoint",
            str(path),
            "--classes",
            "cat,dog",
            "--out",
            str(tmp_path / "seg"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    label = np.asarray(Image.open(tmp_path / "seg" / "a_label.png"))
    assert label.shape == (40, 56) and label.max() <= 2

"""HF GroupViT interoperability: parity with transformers' GroupViTModel, HF names <-> ours, HF directories
through load_checkpoint / ``pgseg convert`` (official NVlabs / PGSeg files: test_official_checkpoints.py).

Parity: a GroupViTModel with random (deliberately non-degenerate) weights is converted with ``hf_to_pgseg`` +
``config_from_hf`` and both models must agree in float32 eval mode to a relative tolerance of 1e-5 (max abs
difference <= 1e-5 x max abs value): image and text embeddings, logits_per_image, every grouping stage's soft
assignment (HF ``vision_model_output.attentions``: the noise-free softmax over groups of each
GroupViTAssignAttention, [B, S, N], which is our ``assign_soft``) and the hard assignment's argmax, at 224 and
448 (interpolated pos-embed: the HF embeddings' ``interpolate_pos_encoding`` flag is driven directly, as its
top-level forward does not pass it through).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pgseg_core.checkpoint import convert_checkpoint, detect_format, load_checkpoint
from pgseg_core.checkpoint.hf import config_from_hf, hf_config_from_model_config, hf_to_pgseg, pgseg_to_hf
from pgseg_core.config import load_config
from pgseg_core.errors import CheckpointError
from pgseg_core.models.factory import create_model
from pgseg_core.models.pgseg import PGSeg
from pgseg_core.models.text import tokenize
from test_official_checkpoints import randomise

transformers = pytest.importorskip("transformers")
from transformers import GroupViTConfig, GroupViTModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = ["a photo of a cat", "two dogs playing on the grass", "a red car"]

SMALL = {
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 128,
        "depths": [1, 1, 1],
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_group_tokens": [8, 4, 0],
        "num_output_groups": [8, 4, 4],
    },
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
    },
    "projection_dim": 32,
    "projection_intermediate_dim": 64,
}
PAPER: dict = {}  # transformers' defaults are the released GroupViT-S (55,726,609 parameters)


def _close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5, what: str = "") -> None:
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    err = (ours.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    assert err <= rel * scale, f"{what}: max abs diff {err:.3g} > {rel} x {scale:.3g}"


def _hf_model(spec: dict, seed: int = 0) -> GroupViTModel:
    torch.manual_seed(seed)
    model = GroupViTModel(GroupViTConfig(**spec)).eval()
    randomise(model, seed + 1)
    return model


def _converted(hf: GroupViTModel) -> PGSeg:
    state, _ = hf_to_pgseg(hf.state_dict())
    model = PGSeg(config_from_hf(hf.config)).eval()
    model.load_state_dict(state, strict=True)
    return model


@torch.no_grad()
def _hf_vision(hf: GroupViTModel, pixels: torch.Tensor):
    """HF image branch with interpolate_pos_encoding=True on the embeddings: (normalised image_embeds,
    group embeddings [B, S, D] (visual_projection of each final token), attentions)."""
    vm = hf.vision_model
    hidden = vm.embeddings(pixels, interpolate_pos_encoding=True)
    enc = vm.encoder(hidden_states=hidden, output_attentions=True, return_dict=True)
    last = vm.layernorm(enc.last_hidden_state)
    image = hf.visual_projection(last.mean(dim=1))
    groups = hf.visual_projection(last.reshape(-1, last.shape[-1])).reshape(last.shape[0], last.shape[1], -1)
    return F.normalize(image, dim=-1), groups, enc.attentions


def _check_assignments(ours_img, hf_attentions, what: str) -> None:
    assert len(ours_img.assign_soft) == len(hf_attentions) >= 2
    for i, (soft, hard, ref) in enumerate(zip(ours_img.assign_soft, ours_img.assign_hard, hf_attentions)):
        _close(soft, ref, what=f"{what} stage {i} soft assignment")
        assert torch.equal(hard.argmax(dim=1), ref.argmax(dim=1)), f"{what} stage {i} hard assignment"
        assert torch.equal(hard.sum(dim=1), torch.ones_like(hard.sum(dim=1)))  # one-hot over groups


def _parity(hf: GroupViTModel, ours: PGSeg, seed: int) -> None:
    ctx = ours.cfg.text.context_length
    ids = tokenize(TEXTS, ctx)
    assert (ids.argmax(dim=-1) == (ids == 49407).int().argmax(dim=-1)).all()  # HF pools at the first EOT
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # 224: the plain top-level forward
        pix = torch.randn(2, 3, 224, 224, generator=g)
        ref = hf(input_ids=ids, pixel_values=pix, output_attentions=True)
        img = ours.encode_image(pix, dense=True)
        txt = ours.encode_text(ids)
        _close(F.normalize(img.image_emb, dim=-1), ref.image_embeds, what="image embeds 224")
        _close(F.normalize(txt, dim=-1), ref.text_embeds, what="text embeds")
        logits = ours.logit_scale.exp() * F.normalize(img.image_emb, dim=-1) @ F.normalize(txt, dim=-1).T
        _close(logits, ref.logits_per_image, what="logits_per_image")
        _check_assignments(img, ref.vision_model_output.attentions, "224")
        _, groups, _ = _hf_vision(hf, pix)
        _close(img.group_emb, groups, what="group embeddings 224")
        # 448: interpolated pos-embed (bicubic 14x14 -> 28x28 on both sides)
        pix = torch.randn(2, 3, 448, 448, generator=g)
        ref_img, ref_groups, ref_att = _hf_vision(hf, pix)
        img = ours.encode_image(pix, dense=True)
        _close(F.normalize(img.image_emb, dim=-1), ref_img, what="image embeds 448")
        _close(img.group_emb, ref_groups, what="group embeddings 448")
        _check_assignments(img, ref_att, "448")


def test_hf_parity_small_config():
    hf = _hf_model(SMALL, seed=0)
    _parity(hf, _converted(hf), seed=10)


@pytest.fixture(scope="module")
def paper_pair():
    hf = _hf_model(PAPER, seed=3)
    return hf, _converted(hf)


def test_hf_paper_config_maps_to_groupvit_s(paper_pair):
    hf, ours = paper_pair
    assert sum(p.numel() for p in hf.parameters()) == 55_726_609
    assert sum(p.numel() for p in ours.parameters()) == 55_726_609
    ref = load_config("groupvit-s").model
    cfg = ours.cfg
    assert cfg.vision.embed_dim == ref.vision.embed_dim and cfg.vision.depths == ref.vision.depths
    assert cfg.vision.num_heads == ref.vision.num_heads
    assert cfg.vision.num_group_tokens == ref.vision.num_group_tokens
    assert cfg.vision.num_output_groups == ref.vision.num_output_groups and cfg.text == ref.text
    assert (cfg.embed_dim, cfg.proj_hidden) == (ref.embed_dim, ref.proj_hidden)


def test_hf_parity_paper_config(paper_pair):
    hf, ours = paper_pair
    _parity(hf, ours, seed=11)


def test_hf_key_round_trip_and_reverse_export():
    """HF -> ours -> HF is lossless; our tiny GroupViT (non-square input) exported to HF gives its outputs."""
    hf = _hf_model(SMALL, seed=5)
    state = hf.state_dict()
    back = pgseg_to_hf(hf_to_pgseg(state)[0])
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)

    torch.manual_seed(0)
    ours = create_model(load_config("pgseg-tiny", {"model.npr.enabled": False})).eval()
    randomise(ours, 9)
    exported = GroupViTModel(GroupViTConfig(**hf_config_from_model_config(ours.cfg))).eval()
    exported.load_state_dict(pgseg_to_hf(ours.state_dict()), strict=True)
    back_cfg = config_from_hf(exported.config)
    back_cfg.vision.drop_path_rate = ours.cfg.vision.drop_path_rate  # training-only, not in HF configs
    assert back_cfg.vision == ours.cfg.vision and back_cfg.text == ours.cfg.text
    pix = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_img, ref_groups, ref_att = _hf_vision(exported, pix)
        img = ours.encode_image(pix, dense=True)
        ids = tokenize(TEXTS, ours.cfg.text.context_length)
        ref_txt = exported.get_text_features(input_ids=ids).pooler_output
        _close(ours.encode_text(ids), ref_txt, what="text features")
    _close(F.normalize(img.image_emb, dim=-1), ref_img, what="image embeds")
    _close(img.group_emb, ref_groups, what="group embeddings")
    _check_assignments(img, ref_att, "96x64")
    with pytest.raises(CheckpointError, match="NPR"):
        pgseg_to_hf(create_model(load_config("pgseg-tiny")).state_dict())


def test_hf_directory_load_and_convert(tmp_path):
    hf = _hf_model(SMALL, seed=7)
    hf.save_pretrained(tmp_path / "hf")
    assert detect_format(hf.state_dict()) == "hf-groupvit"
    pix = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    ids = tokenize(TEXTS, 16)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix)
    for path in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors", tmp_path / "hf" / "config.json"):
        model, info = load_checkpoint(path)
        assert info.source_format == "hf-groupvit" and not model.training
        with torch.no_grad():
            _close(F.normalize(model.encode_image(pix).image_emb, dim=-1), ref.image_embeds, what=str(path))
    legacy = tmp_path / "hf_bin"  # older HF layout: pytorch_model.bin (+ a persisted position_ids)
    legacy.mkdir()
    (legacy / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(
        {**hf.state_dict(), "text_model.embeddings.position_ids": torch.arange(16)[None]},
        legacy / "pytorch_model.bin",
    )
    model, info = load_checkpoint(legacy)
    with torch.no_grad():
        _close(F.normalize(model.encode_text(ids), dim=-1), ref.text_embeds, what="pytorch_model.bin")
    summary = convert_checkpoint(tmp_path / "hf", tmp_path / "conv" / "groupvit-small")
    assert summary["source_format"] == "hf-groupvit" and summary["parameters"] == sum(
        p.numel() for p in hf.parameters()
    )
    meta = json.loads((tmp_path / "conv" / "groupvit-small.json").read_text())
    assert meta["format"] == "pgseg-checkpoint" and meta["source_format"] == "hf-groupvit"
    for path in ("groupvit-small.safetensors", "groupvit-small.json", "groupvit-small"):
        model, info = load_checkpoint(tmp_path / "conv" / path)
        assert info.source_format == "pgseg" and any("hf-groupvit" in n for n in info.notes)
        with torch.no_grad():
            _close(F.normalize(model.encode_text(ids), dim=-1), ref.text_embeds, what=path)


def test_incomplete_hf_state_is_refused():
    hf = _hf_model(SMALL, seed=0)
    state = {k: v for k, v in hf.state_dict().items() if not k.endswith("layers.0.self_attn.k_proj.weight")}
    with pytest.raises(CheckpointError, match="needs q, k and v"):
        hf_to_pgseg(state)
    with pytest.raises(CheckpointError, match="not GroupViT"):
        config_from_hf({"model_type": "clip"})
    with pytest.raises(CheckpointError, match="hidden_act"):
        config_from_hf({"vision_config": {"hidden_act": "relu"}})

"""Training loop on a tiny synthetic shard set: outputs, resume, time budget, device errors; optimizer
parameter groups and the warm-up + cosine schedule vs a formula."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pgseg_core.config import load_config
from pgseg_core.data.shards import read_index
from pgseg_core.errors import ConfigError, DeviceError
from pgseg_core.checkpoint import load_checkpoint, read_checkpoint_file
from pgseg_core.models.factory import create_model
from pgseg_core.train.loop import fit
from pgseg_core.train.optim import build_optimizer, build_scheduler, param_groups

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = [
    "a red square",
    "a blue circle",
    "a green tree",
    "a yellow car",
    "a small dog",
    "a big cat",
    "two birds",
    "an old house",
]


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    import webdataset as wds

    d = tmp_path_factory.mktemp("shards")
    with wds.TarWriter(str(d / "train-000000.tar")) as sink:
        for i, cap in enumerate(CAPTIONS):
            sink.write({"__key__": f"s{i:06d}", "jpg": _jpeg(i), "txt": cap})
    index = {
        "schema": 1,
        "kind": "pgseg-shards",
        "created_by": "pgseg tests",
        "seed": 0,
        "splits": {"train": {"shards": ["train-000000.tar"], "count": len(CAPTIONS)}},
        "vocabulary": {"caption": [], "heldout": []},
        "sources": [],
        "skipped": {},
    }
    (d / "index.json").write_text(json.dumps(index))
    assert read_index(d)["splits"]["train"]["count"] == len(CAPTIONS)
    return d


def _cfg(shard_dir, **overrides):
    base = {
        "train.steps": 3,
        "data.num_workers": 0,
        "data.train": str(shard_dir),
        "train.device": "cpu",
        "train.batch_size": 4,
        "train.log_every": 1,
    }
    base.update(overrides)
    return load_config("pgseg-tiny", base)


def _records(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def expected_lr(t: int, *, lr: float, warmup_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Per-step schedule: linear warm-up from warmup_lr to lr over `warmup` steps, then cosine from lr to
    min_lr evaluated at the absolute step t over `total` steps, min_lr afterwards."""
    if t < warmup:
        return warmup_lr + t * (lr - warmup_lr) / warmup
    if t >= total:
        return min_lr
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t / total))


def _lr_kwargs(cfg):
    t = cfg.train
    return dict(lr=t.lr, warmup_lr=t.warmup_lr, min_lr=t.min_lr, warmup=t.warmup_steps, total=t.steps)


# ---------------------------------------------------------------------------------------------------------
# fit


@pytest.fixture(scope="module")
def first_run(shard_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = _cfg(shard_dir)
    result = fit(cfg, out)
    return cfg, out, result


def test_fit_writes_outputs(first_run):
    cfg, out, result = first_run
    assert result.steps == 3 and not result.stopped_early and result.device == "cpu"
    assert (out / "last.pt").is_file() and result.checkpoint == str(out / "last.pt")
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()
    recs = _records(out)
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["images_per_s"] > 0
        assert {"loss_itc", "loss_pg", "lr", "grad_norm", "logit_scale"} <= set(r)
        assert all(0.0 <= r[k] <= 1.0 for k in ("hrs_kept_1", "hrs_kept_2", "hrs_kept_text"))  # HRS kept
    assert result.final["step"] == 3
    ck = read_checkpoint_file(out / "last.pt")
    assert ck["step"] == 3 and "optimizer" in ck
    # the schedule is rebuilt from the run config on resume, so no scheduler state is stored
    assert "scheduler" not in ck


def test_fit_logs_the_scheduled_learning_rate(first_run):
    cfg, out, _ = first_run
    for r in _records(out)[:3]:
        assert r["lr"] == pytest.approx(expected_lr(r["step"] - 1, **_lr_kwargs(cfg)), rel=1e-9)


def test_fit_checkpoint_loads_and_weights_changed(first_run):
    cfg, out, _ = first_run
    model, info = load_checkpoint(out)
    assert info.step == 3
    torch.manual_seed(cfg.train.seed)
    fresh = create_model(cfg.model)
    changed = [
        k
        for k, v in fresh.state_dict().items()
        if v.dtype.is_floating_point and not torch.equal(v, model.state_dict()[k])
    ]
    assert "img_encoder.pos_embed" in changed and "text_projector.linear_out.weight" in changed


@pytest.fixture(scope="module")
def resumed_run(first_run, shard_dir):
    cfg, out, _ = first_run
    before = {k: v.clone() for k, v in read_checkpoint_file(out / "last.pt")["model"].items()}
    cfg5 = _cfg(shard_dir, **{"train.steps": 5})
    result = fit(cfg5, out, resume=True)
    return cfg5, out, result, before


def test_resume_continues_from_last_step(resumed_run):
    cfg5, out, result, before = resumed_run
    assert result.steps == 5
    recs = _records(out)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    ck = read_checkpoint_file(out / "last.pt")
    assert ck["step"] == 5
    # the optimizer state was restored: AdamW has taken 3 + 2 steps on each parameter
    steps = {int(s["step"]) for s in ck["optimizer"]["state"].values()}
    assert steps == {5}
    assert any(not torch.equal(v, ck["model"][k]) for k, v in before.items())


def test_resume_with_more_steps_follows_the_new_schedule(resumed_run):
    cfg5, out, _, _ = resumed_run
    recs = {r["step"]: r for r in _records(out)}
    for step in (4, 5):
        assert recs[step]["lr"] == pytest.approx(expected_lr(step - 1, **_lr_kwargs(cfg5)), rel=1e-6)


def test_time_budget_stops_early(shard_dir, tmp_path):
    cfg = _cfg(shard_dir, **{"train.steps": 50, "train.time_budget_s": 0.001})
    result = fit(cfg, tmp_path)
    assert result.stopped_early
    assert result.steps < 50
    ck = read_checkpoint_file(tmp_path / "last.pt")
    assert ck["step"] == result.steps
    assert len(_records(tmp_path)) <= result.steps


def test_cuda_device_unavailable_raises(shard_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError) as e:
        fit(_cfg(shard_dir, **{"train.device": "cuda"}), tmp_path / "run")
    assert "CUDA" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_fit_without_data_raises(tmp_path):
    with pytest.raises(ConfigError):
        fit(load_config("pgseg-tiny", {"train.device": "cpu"}), tmp_path)


# ---------------------------------------------------------------------------------------------------------
# optimizer and schedule


def test_param_groups_weight_decay():
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny"))
    model.text_encoder.positional_embedding.requires_grad_(False)  # frozen parameters are skipped
    groups = param_groups(model, 0.05)
    by_id = {}
    for grp in groups:
        for p in grp["params"]:
            assert id(p) not in by_id, "parameter in two groups"
            by_id[id(p)] = grp["weight_decay"]
    named = dict(model.named_parameters())
    assert id(named["text_encoder.positional_embedding"]) not in by_id
    assert len(by_id) == sum(1 for p in model.parameters() if p.requires_grad)
    for name, p in named.items():
        if not p.requires_grad:
            continue
        wd = by_id[id(p)]
        if p.ndim == 1 or name.endswith(".bias"):
            assert wd == 0.0, name
        else:
            assert wd == 0.05, name
    for name in (
        "img_encoder.pos_embed",
        "img_encoder.layers.0.group_token",
        "img_encoder.layers.1.group_token",
        "logit_scale",
        "img_encoder.logit_scale",
        "img_encoder.layers.0.blocks.0.attn.qkv.weight",
    ):
        assert by_id[id(named[name])] == 0.05, name
    for name in (
        "img_encoder.norm.weight",
        "img_encoder.norm.bias",
        "img_projector.linear_hidden.1.weight",
        "img_encoder.layers.0.blocks.0.attn.qkv.bias",
    ):
        assert by_id[id(named[name])] == 0.0, name


def test_build_optimizer_uses_config():
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny"))
    cfg = load_config("pgseg-tiny", {"train.lr": 0.02, "train.betas": [0.8, 0.95], "train.weight_decay": 0.3})
    opt = build_optimizer(model, cfg.train, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.3]
    for g in opt.param_groups:
        assert g["lr"] == 0.02 and tuple(g["betas"]) == (0.8, 0.95)


@pytest.mark.parametrize("warmup,total", [(4, 20), (1, 3), (10, 100)])
def test_scheduler_warmup_then_cosine(warmup, total):
    cfg = load_config(
        "pgseg-tiny",
        {
            "train.lr": 1e-3,
            "train.warmup_lr": 1e-6,
            "train.min_lr": 1e-5,
            "train.warmup_steps": warmup,
            "train.steps": total,
        },
    )
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=cfg.train.lr)
    sched = build_scheduler(opt, cfg.train)
    kw = _lr_kwargs(cfg)
    checkpoints = sorted(
        {0, warmup // 2, max(warmup - 1, 0), warmup, (warmup + total) // 2, total - 1, total, total + 3}
    )
    for t in checkpoints:
        sched.step_update(t)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected_lr(t, **kw), rel=1e-9, abs=1e-15), t
    # shape: starts at warmup_lr, peaks at lr right after warm-up, ends at min_lr
    sched.step_update(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6)
    sched.step_update(total + 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_hard_assignment_starts_at_hard_assign_start(shard_dir, tmp_path, monkeypatch):
    """Steps before train.hard_assign_start use the soft assignment, then Gumbel hard (pgseg-demo: 300)."""
    from pgseg_core.models.grouping import AssignAttention

    seen: list[bool] = []
    original = AssignAttention.forward

    def spy(self, *args, **kwargs):
        if self.training:
            seen.append(self.hard)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AssignAttention, "forward", spy)
    fit(_cfg(shard_dir, **{"train.steps": 4, "train.hard_assign_start": 2}), tmp_path)
    per_step = len(seen) // 4
    assert per_step >= 1 and len(seen) == 4 * per_step
    assert seen == [False] * (2 * per_step) + [True] * (2 * per_step)


def test_demo_preset_switches_to_hard_assignment_at_the_same_fraction_on_cuda():
    cfg = load_config("pgseg-demo")
    cuda = load_config("pgseg-demo", cfg.cuda_overrides)
    assert 0 < cfg.train.hard_assign_start < cfg.train.steps
    assert cuda.train.hard_assign_start / cuda.train.steps == pytest.approx(
        cfg.train.hard_assign_start / cfg.train.steps
    )


class _FakeStemModel(torch.nn.Module):
    """Stands in for a hybrid PGSeg: ``stem_features`` maps [B, 3, H, W] to [B, 112, H/16, W/16]."""

    def __init__(self):
        super().__init__()
        self.modes: list[bool] = []

    def stem_features(self, x):
        self.modes.append(self.training)
        b, _, h, w = x.shape
        return torch.ones(b, 112, h // 16, w // 16)


def test_stem_cache_build_hands_the_model_back_in_train_mode(shard_dir, tmp_path):
    """Regression: fit builds the cache lazily with the model already in train mode; the build switched it to
    eval and left it there, so a first run trained without Gumbel noise and with BatchNorm running stats."""
    from pgseg_core.cache.stem import build_stem_cache

    model = _FakeStemModel().train()
    cache = build_stem_cache(
        model, str(shard_dir), tmp_path / "stem.h5", 32, torch.device("cpu"), batch_size=2
    )
    assert len(cache) == len(CAPTIONS) and tuple(cache.feats.shape[1:]) == (112, 2, 2)
    assert model.modes and not any(model.modes)  # encoded in eval mode
    assert model.training
    model.eval()
    build_stem_cache(model, str(shard_dir), tmp_path / "stem2.h5", 32, torch.device("cpu"), batch_size=2)
    assert not model.training  # the caller's mode is restored, whichever it was

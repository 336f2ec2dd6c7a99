"""Checkpoints: save_checkpoint -> load_checkpoint round trip, one-line CheckpointErrors for bad files, and
the one resolution of a user path (file, run directory, convert pair, HF directory) with its one identity."""

from __future__ import annotations

import collections
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from pgseg_core.config import apply_overrides, load_config
from pgseg_core.errors import CheckpointError, PgsegError
from pgseg_core.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_sha256,
    convert_checkpoint,
    load_checkpoint,
    read_checkpoint_file,
    resolve,
    save_checkpoint,
)
from pgseg_core.models.factory import create_model

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = ["a red car", "a small dog on grass", "a tree"]


class NeedsCode:
    """A custom class: unpickling it needs code, which weights_only loading refuses."""

    def __init__(self):
        self.value = 3


def _trained_model(cfg):
    """A tiny model whose weights and buffers differ from a fresh build (one training forward/backward)."""
    torch.manual_seed(0)
    model = create_model(cfg)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.forward_train(CAPTIONS, torch.randn(3, 3, 64, 64))["loss"].backward()
    opt.step()
    return model


def _outputs(model):
    model.eval()
    imgs = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        img = model.encode_image(imgs, dense=True)
        txt = model.encode_text(CAPTIONS)
    return img.image_emb, img.group_emb, img.assign_soft[0], txt


def _assert_checkpoint_error(path, *fragments):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    for frag in fragments:
        assert frag in msg, msg
    assert isinstance(e.value, PgsegError)
    return msg


@pytest.mark.parametrize("overrides", [{}, {"model.npr.released_code": True}, {"model.npr.enabled": False}])
def test_round_trip_gives_identical_outputs(tmp_path, overrides):
    cfg = load_config("pgseg-tiny", overrides)
    model = _trained_model(cfg)
    path = save_checkpoint(tmp_path / "ck.pt", model, cfg, step=17, metrics={"loss": 1.5})
    assert path.exists()
    expected = _outputs(model)

    torch.manual_seed(123)  # a different init: everything must come from the file
    loaded, info = load_checkpoint(path)
    assert not loaded.training
    assert info.step == 17 and info.metrics == {"loss": 1.5}
    assert info.config.to_dict() == cfg.to_dict()
    for a, b in zip(expected, _outputs(loaded)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # buffers (NPR prototypes, BN running stats) are restored bit-exactly
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_checkpoint_contents_and_directory_loading(tmp_path):
    cfg = load_config("pgseg-tiny")
    model = _trained_model(cfg)
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "last.pt", model, cfg, step=3, optimizer=opt)
    raw = read_checkpoint_file(tmp_path / "last.pt")
    assert raw["format"] == CHECKPOINT_FORMAT and raw["schema"] == 1 and raw["step"] == 3
    assert "optimizer" in raw and "scheduler" not in raw
    assert set(raw["model"]) == set(model.state_dict())
    loaded, info = load_checkpoint(tmp_path)  # a run directory with last.pt
    assert info.step == 3
    for a, b in zip(_outputs(model), _outputs(loaded)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_temporary_files_left(tmp_path):
    cfg = load_config("pgseg-tiny")
    save_checkpoint(tmp_path / "ck.pt", create_model(cfg), cfg, step=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_missing_file(tmp_path):
    _assert_checkpoint_error(tmp_path / "nope.pt", "not found")


def test_directory_without_last_pt(tmp_path):
    _assert_checkpoint_error(tmp_path, "last.pt")


def test_truncated_file(tmp_path):
    cfg = load_config("pgseg-tiny")
    good = save_checkpoint(tmp_path / "good.pt", create_model(cfg), cfg, step=1)
    data = good.read_bytes()
    bad = tmp_path / "half.pt"
    bad.write_bytes(data[: len(data) // 2])
    _assert_checkpoint_error(bad, "truncated or corrupt")


def test_garbage_file(tmp_path):
    p = tmp_path / "garbage.pt"
    p.write_bytes(b"this is not a checkpoint at all" * 10)
    _assert_checkpoint_error(p)


def test_not_a_pgseg_checkpoint(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"model": {}}, p)
    _assert_checkpoint_error(p, "not a pgseg checkpoint")
    q = tmp_path / "plain_state.pt"
    torch.save(collections.OrderedDict(w=torch.zeros(2)), q)
    _assert_checkpoint_error(q, "not a pgseg checkpoint")
    r = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), r)
    _assert_checkpoint_error(r, "not a pgseg checkpoint")


def test_pickle_needing_code_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": NeedsCode()}, p)
    _assert_checkpoint_error(p, "weights_only")


def test_newer_schema_is_refused(tmp_path):
    cfg = load_config("pgseg-tiny")
    path = save_checkpoint(tmp_path / "ck.pt", create_model(cfg), cfg, step=0)
    ck = torch.load(path, weights_only=True)
    ck["schema"] = 99
    torch.save(ck, path)
    _assert_checkpoint_error(path, "schema")


def test_invalid_stored_config(tmp_path):
    cfg = load_config("pgseg-tiny")
    path = save_checkpoint(tmp_path / "ck.pt", create_model(cfg), cfg, step=0)
    ck = torch.load(path, weights_only=True)
    ck["config"]["train"]["lrr"] = 1.0
    torch.save(ck, path)
    _assert_checkpoint_error(path, "stored config is invalid")


def test_weights_missing_for_the_stored_config(tmp_path):
    """Weights of a GroupViT model stored under a PGSeg config: the NPR keys are missing."""
    cfg = load_config("pgseg-tiny")
    groupvit = create_model(apply_overrides(cfg, {"model.npr.enabled": False}))
    path = save_checkpoint(tmp_path / "ck.pt", groupvit, cfg, step=0)
    _assert_checkpoint_error(path, "do not match")


def test_unexpected_weights_for_the_stored_config(tmp_path):
    cfg = load_config("pgseg-tiny")
    pgseg = create_model(cfg)
    stored = apply_overrides(cfg, {"model.npr.enabled": False})
    path = save_checkpoint(tmp_path / "ck.pt", pgseg, stored, step=0)
    _assert_checkpoint_error(path, "do not match")


def test_check_weights_fit_messages_for_load_and_convert():
    from pgseg_core.checkpoint.io import check_weights_fit

    miss, extra = [f"m{i}" for i in range(9)], ["x0", "x1", "x2", "x3"]
    mismatch = "ck: weights do not match {} (9 missing, e.g. ['m0', 'm1']; 0 unexpected, e.g. [])"
    for kw, against in (
        ({}, "the stored config"),
        ({"against": "their config", "explain_unexpected": False}, "their config"),
    ):
        notes: list[str] = []
        with pytest.raises(CheckpointError) as e:
            check_weights_fit("ck", "pgseg", miss, [], notes, **kw)
        assert str(e.value) == mismatch.format(against)
        with pytest.raises(CheckpointError, match=rf"^ck: weights do not match {against} \(0 missing"):
            check_weights_fit("ck", "pgseg", [], extra, notes, **kw)
        check_weights_fit("ck", "hf", miss, [], notes, **kw)
        check_weights_fit("ck", "hf", miss[:2], [], notes, **kw)
        check_weights_fit("ck", "pgseg", [], [], notes, **kw)
        assert notes == [
            "9 new keys initialised at random: m0, m1, m2, m3, m4, m5, m6, m7 ...",
            "2 new keys initialised at random: m0, m1",
        ]
    with pytest.raises(CheckpointError) as e:
        check_weights_fit("ck", "hf", miss, extra, [])
    assert str(e.value) == "ck: 4 hf weights have no place in the inferred model, e.g. ['x0', 'x1', 'x2']"
    with pytest.raises(CheckpointError, match=r"^ck: weights do not match their config \(9 missing"):
        check_weights_fit("ck", "hf", miss, extra, [], against="their config", explain_unexpected=False)


def test_wrongly_shaped_weights_for_the_stored_config(tmp_path):
    """Same keys, other shapes: weights of an embed_dim=32 model stored under an embed_dim=48 config."""
    cfg = load_config("pgseg-tiny")
    model = create_model(cfg)
    stored = apply_overrides(cfg, {"model.vision.embed_dim": 48})
    path = save_checkpoint(tmp_path / "ck.pt", model, stored, step=0)
    _assert_checkpoint_error(path)


def test_checkpoint_without_weights(tmp_path):
    cfg = load_config("pgseg-tiny")
    path = save_checkpoint(tmp_path / "ck.pt", create_model(cfg), cfg, step=0)
    ck = torch.load(path, weights_only=True)
    del ck["model"]
    torch.save(ck, path)
    _assert_checkpoint_error(path)


# ----------------------------------------------------------------------------------------------------------
# one resolution of a user path, one identity


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _combined(*files) -> str:
    """The identity of several files: sha256 over their sorted ``NAME:SHA256`` lines."""
    lines = "".join(f"{f.name}:{_sha(f)}\n" for f in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def test_file_and_run_directory_resolve_to_the_same_file_and_identity(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "last.pt")
    (run / "metrics.json").write_text("{}")  # files beside last.pt are not part of the checkpoint
    (run / "step_3.pt").write_bytes(b"older")
    by_file, by_dir = resolve(run / "last.pt"), resolve(run)
    assert (by_file.kind, by_dir.kind) == ("file", "run")
    assert by_file.files == by_dir.files == (run / "last.pt",)
    assert checkpoint_sha256(run) == checkpoint_sha256(run / "last.pt") == _sha(tiny_checkpoint)
    _, info = load_checkpoint(run)
    assert info.resolved == by_dir and info.sha256 == _sha(tiny_checkpoint)

    old = tmp_path / "old_run"  # a run directory with checkpoint.pt only
    old.mkdir()
    shutil.copy(tiny_checkpoint, old / "checkpoint.pt")
    (old / "config.json").write_text("{}")
    assert resolve(old).files == (old / "checkpoint.pt",)
    assert checkpoint_sha256(old) == _sha(tiny_checkpoint)


def test_convert_pair_named_by_either_file_or_stem_has_one_identity(tiny_checkpoint, tmp_path):
    convert_checkpoint(tiny_checkpoint, tmp_path / "tiny")
    weights, meta = tmp_path / "tiny.safetensors", tmp_path / "tiny.json"
    want = _combined(weights, meta)
    for name in (tmp_path / "tiny", weights, meta):
        res = resolve(name)
        assert res.kind == "pair" and res.files == (meta, weights) and res.weights == (weights,), name
        assert checkpoint_sha256(name) == want, name
        _, info = load_checkpoint(name)
        assert info.sha256 == want
    assert want != _sha(weights)


def _fake_hf_dir(folder, sharded=False):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "groupvit"}))
    (folder / "tokenizer.json").write_text("{}")  # not part of the checkpoint
    if sharded:
        index = {"weight_map": {"a": "model-00002.safetensors", "b": "model-00001.safetensors"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        for i in (1, 2):
            (folder / f"model-0000{i}.safetensors").write_bytes(bytes([i]) * 64)
    else:
        (folder / "model.safetensors").write_bytes(b"w" * 64)
    return folder


def test_hf_directory_named_by_directory_config_or_weights_has_one_identity(tmp_path):
    hf = _fake_hf_dir(tmp_path / "hf")
    want_files = (hf / "config.json", hf / "model.safetensors")
    want = _combined(*want_files)
    for name in (hf, hf / "config.json", hf / "model.safetensors"):
        res = resolve(name)
        assert res.kind == "hf" and res.files == want_files, name
        assert checkpoint_sha256(name) == want, name
    assert resolve(hf).source == hf and resolve(hf / "model.safetensors").source == hf / "model.safetensors"

    sharded = _fake_hf_dir(tmp_path / "sharded", sharded=True)
    res = resolve(sharded)
    shards = (sharded / "model-00001.safetensors", sharded / "model-00002.safetensors")
    assert res.weights == shards and res.index == sharded / "model.safetensors.index.json"
    assert res.files == tuple(sorted((*shards, res.index, sharded / "config.json")))
    assert checkpoint_sha256(sharded) == _combined(*res.files)


def test_identity_changes_with_the_bytes_and_resolve_refuses_what_is_no_checkpoint(tiny_checkpoint, tmp_path):
    copy = tmp_path / "copy.pt"
    shutil.copy(tiny_checkpoint, copy)
    before = checkpoint_sha256(copy)
    with open(copy, "ab") as f:
        f.write(b"\0")
    assert checkpoint_sha256(copy) != before
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.json").write_text("{}")
    for bad, fragment in (
        (tmp_path / "missing.pt", "not found"),
        (tmp_path / "empty", "without last.pt"),
        (tmp_path / "notes.json", "not a checkpoint"),
    ):
        with pytest.raises(CheckpointError, match=fragment):
            checkpoint_sha256(bad)


def test_text_cache_key_uses_the_identity_whatever_the_checkpoint_is_called(
    tiny_checkpoint, tmp_path, monkeypatch
):
    import pgseg_core.segment.text_cache as text_cache
    from pgseg_core.api import segment_files

    Image.new("RGB", (40, 32), (200, 30, 30)).save(tmp_path / "a.png")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "last.pt")
    digests = []
    real = text_cache.cached_class_embeddings

    def spy(*args, **kwargs):
        digests.append(kwargs["digest"])
        return real(*args, **kwargs)

    monkeypatch.setattr(text_cache, "cached_class_embeddings", spy)
    from pgseg_core.segment.options import SegmentOptions

    options = SegmentOptions(device="cpu", formats="json", text_cache=tmp_path / "tc")
    common = dict(classes="red,green", options=options)
    first = segment_files([str(tmp_path / "a.png")], tiny_checkpoint, tmp_path / "o1", **common)
    second = segment_files([str(tmp_path / "a.png")], run, tmp_path / "o2", **common)
    assert digests == [checkpoint_sha256(tiny_checkpoint)[:16]] * 2
    assert (first.text_cache, second.text_cache) == ("miss", "hit")


def test_onnx_sidecar_records_the_identity_and_accepts_any_name_of_the_checkpoint(tiny_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from pgseg_core.api import export_onnx
    from pgseg_core.segment.onnx import OnnxEncoder

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "last.pt")
    meta = export_onnx(run, tmp_path / "enc.onnx", size=64)
    assert meta["checkpoint_digest"] == checkpoint_sha256(tiny_checkpoint)[:16]
    OnnxEncoder(tmp_path / "enc.onnx", checkpoint_digest=checkpoint_sha256(tiny_checkpoint)[:16])
    with pytest.raises(CheckpointError, match="another checkpoint"):
        OnnxEncoder(tmp_path / "enc.onnx", checkpoint_digest="0" * 16)

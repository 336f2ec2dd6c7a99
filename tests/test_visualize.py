"""visualize-prototypes: collected maps, matching = the loss's, HRS = independent computation, files, CLI."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pgseg_cli.app import app
from pgseg_core.api import visualize_prototypes
from pgseg_core.checkpoint import load_checkpoint, save_checkpoint
from pgseg_core.config import load_config
from pgseg_core.data.transforms import to_tensor_normalized
from pgseg_core.errors import CheckpointError
from pgseg_core.models import pgseg as pgseg_module
from pgseg_core.models.factory import create_model
from pgseg_core.models.npr import em_prototypes
from pgseg_core.viz.prototype_render import render_matching, render_panel
from pgseg_core.viz.patch_bank import PatchBank
from pgseg_core.viz.prototypes import collect_image_state, prepare_image

runner = CliRunner()


def _photo(seed: int, h: int = 70, w: int = 90) -> np.ndarray:
    """A blocky image with a few coloured regions (more structure than noise)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:] = rng.integers(0, 255, 3)
    for _ in range(4):
        y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
        img[y : y + rng.integers(8, 30), x : x + rng.integers(8, 30)] = rng.integers(0, 255, 3)
    return img + rng.integers(0, 12, img.shape, dtype=np.uint8)


def _model(overrides: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    cfg = load_config("pgseg-tiny", overrides or {})
    return create_model(cfg.model).eval(), cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory, single_thread):
    """Checkpoints of pgseg-tiny (intent and released-code) and of a tiny GroupViT, plus a photo folder."""
    root = tmp_path_factory.mktemp("viz")
    ckpts = {}
    for name, overrides in {
        "pgseg": {},
        "released": {"model.npr.released_code": True},
        "groupvit": {"model.npr.enabled": False},
    }.items():
        model, cfg = _model(overrides)
        ckpts[name] = save_checkpoint(root / f"{name}.pt", model, cfg, step=0)
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(_photo(1)).save(photos / "a.jpg")
    Image.fromarray(_photo(2, 96, 64)).save(photos / "b.png")
    Image.fromarray(_photo(3)[..., 0], mode="L").save(photos / "grey.png")
    return {"root": root, "ckpt": ckpts, "photos": photos}


def _state(model, seed: int = 1, short: int = 64):
    return collect_image_state(model, prepare_image(_photo(seed), short, 2048, name=f"img{seed}"))


# --------------------------------------------------------------------------------------------------------
# collected maps


def test_hook_keeps_default_forward_and_records_stage_inputs(single_thread):
    model, _ = _model()
    x = to_tensor_normalized(_photo(4)[:64, :64])[None]
    plain = model.encode_image(x)
    hooked = model.encode_image(x, stage_inputs=True)
    assert plain.vision.stage_inputs == []
    assert len(hooked.vision.stage_inputs) == 2
    torch.testing.assert_close(plain.image_emb, hooked.image_emb, rtol=0, atol=0)
    assert hooked.vision.stage_inputs[0].shape == (1, 16, 32)  # 4x4 patch tokens
    assert hooked.vision.stage_inputs[1].shape == (1, 8, 32)  # the 8 stage-0 segments


def test_collected_shapes_and_value_ranges(single_thread):
    model, cfg = _model()
    st0, st1 = (state := _state(model)).stages
    h, w = state.grid
    assert state.image.shape == (64, 80, 3) and (h, w) == (4, 5) and state.npr
    for st, S, N in ((st0, 8, 20), (st1, 4, 8)):
        assert st.assign_hard.shape == st.assign_soft.shape == (S, N)
        assert set(np.unique(st.assign_hard)) <= {0.0, 1.0}
        np.testing.assert_allclose(st.assign_hard.sum(0), 1.0)
        np.testing.assert_allclose(st.assign_soft.sum(0), 1.0, atol=1e-5)
        assert st.group_probs.shape == (S, h, w) and st.group_probs.min() >= 0 and st.group_probs.max() <= 1
        np.testing.assert_allclose(st.group_probs.sum(0), 1.0, atol=1e-5)
        assert st.group_map.shape == (h, w) and 0 <= st.group_map.min() and st.group_map.max() < S
        assert st.prototypes.shape == (S, 32)
        np.testing.assert_allclose(np.linalg.norm(st.prototypes, axis=1), 1.0, atol=1e-4)
        assert st.responsibilities.shape == (N, S) and st.responsibilities.min() >= 0
        np.testing.assert_allclose(st.responsibilities.sum(0), 1.0, atol=1e-4)  # column-normalised
        assert st.proto_probs.shape == (S, h, w) and st.proto_probs.min() >= 0
        np.testing.assert_allclose(st.proto_probs.sum(0), 1.0, atol=1e-5)
        assert st.proto_map.shape == (h, w) and st.proto_map.max() < S
        assert st.similarity.shape == (S, S) and np.abs(st.similarity).max() <= 1 + 1e-5
        assert sorted(st.match.tolist()) == list(range(S))  # a one-to-one matching
        assert st.hrs_keep_gp.dtype == bool and st.hrs_keep_gp.shape == (S,)
        assert st.cell_masks.shape == (N, h, w)
    # stage 0: the hard map is the argmax of the stage-0 hard assignment on the grid
    np.testing.assert_array_equal(st0.group_map, st0.assign_hard.argmax(0).reshape(h, w))
    # stage 1 chains: the cell's stage-0 group, then that segment's stage-1 group
    np.testing.assert_array_equal(st1.group_map, st1.assign_hard.argmax(0)[st0.group_map])
    # stage-1 tokens are the stage-0 segments: their cells partition the grid
    np.testing.assert_array_equal(st1.cell_masks.sum(0), np.ones((h, w)))
    np.testing.assert_array_equal(st1.cell_masks[3], st0.group_map == 3)


def test_prototypes_are_the_em_of_the_stage_inputs(single_thread):
    """EM is deterministic given the tokens: re-running it on the recorded inputs gives the same result."""
    model, cfg = _model()
    state = _state(model)
    for st, layer in zip(state.stages, model.img_encoder.layers):
        npr = layer.downsample_spatial
        mu, z = em_prototypes(torch.from_numpy(st.input_tokens)[None], npr.mu, cfg.model.npr.em_iters)
        np.testing.assert_allclose(st.prototypes, mu[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(st.responsibilities, z[0].numpy(), atol=1e-5)


@pytest.mark.parametrize("released", [False, True])
def test_matching_equals_the_loss_matching(monkeypatch, released, single_thread):
    model, _ = _model({"model.npr.released_code": released})
    sample = prepare_image(_photo(5), 64, 2048, name="x")
    state = collect_image_state(model, sample)
    seen = []
    original = pgseg_module.hungarian_match

    def spy(groups, prototypes, maximize=True):
        perm = original(groups, prototypes, maximize=maximize)
        seen.append((perm.clone(), maximize))
        return perm

    monkeypatch.setattr(pgseg_module, "hungarian_match", spy)
    with torch.no_grad():
        model.forward_train(["a photo of a cat."], to_tensor_normalized(sample.image)[None])
    assert len(seen) == 3  # two image stages, then the text NPR
    for st, (perm, maximize) in zip(state.stages, seen[:2]):
        assert maximize is (not released)
        np.testing.assert_array_equal(st.match, perm[0].numpy())


def _independent_hrs(centres, prototypes, match, phi, released):
    """HRS in numpy (docs/METHOD.md §3.4): released, column 0's min-max normalised entry > phi; default, the
    matched entry within phi·(max - min) of its column's best."""
    g = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    p = prototypes[match] / np.linalg.norm(prototypes[match], axis=1, keepdims=True)
    keep = {}
    for name, sim in (("gp", g @ p.T), ("pg", p @ g.T)):  # sim[i, j]: query i vs key j
        lo, hi = sim.min(axis=0), sim.max(axis=0)  # over the queries, per key
        norm = (sim - lo) / (hi - lo + 1e-6)
        keep[name] = norm[:, 0] > phi if released else hi - np.diag(sim) <= phi * (hi - lo)
    return keep


@pytest.mark.parametrize("released", [False, True])
@pytest.mark.parametrize("phi", [0.1, 0.6])
def test_hrs_kept_pairs_equal_an_independent_computation(released, phi, single_thread):
    model, _ = _model({"model.npr.released_code": released, "model.npr.hrs_threshold": phi})
    flags = []
    for seed in (1, 2, 3):
        state = _state(model, seed)
        assert state.released_code is released and state.hrs_threshold == phi
        for st in state.stages:
            keep = _independent_hrs(
                st.centres.astype(np.float64), st.prototypes.astype(np.float64), st.match, phi, released
            )
            np.testing.assert_array_equal(st.hrs_keep_gp, keep["gp"])
            np.testing.assert_array_equal(st.hrs_keep_pg, keep["pg"])
            flags += st.hrs_keep_gp.tolist() + st.hrs_keep_pg.tolist()
    if phi == 0.6:
        assert True in flags and False in flags  # the comparison sees both outcomes


def test_groupvit_without_npr_collects_group_maps_only(single_thread):
    model, _ = _model({"model.npr.enabled": False})
    state = _state(model)
    assert not state.npr and len(state.stages) == 2
    assert all(st.prototypes is None and st.match is None for st in state.stages)
    assert render_matching(state) is None
    panel = render_panel(state)
    assert panel.width > 3 * 200  # image + two stages
    bank = PatchBank(top=2)
    bank.add(state)
    assert bank.stages() == []


def test_patch_bank_keeps_the_most_similar_tokens(single_thread):
    model, _ = _model()
    states = [_state(model, s) for s in (1, 2, 3)]
    bank = PatchBank(top=3, tile=16)
    for st in states:
        bank.add(st)
    assert bank.stages() == [0, 1]
    for stage in (0, 1):
        for k, hits in enumerate(bank.hits(stage)):
            # brute force over every non-empty token of every image
            scores = []
            for s in states:
                st = s.stages[stage]
                x = st.input_tokens / np.linalg.norm(st.input_tokens, axis=1, keepdims=True)
                ok = st.cell_masks.reshape(len(st.cell_masks), -1).any(1)
                scores += [float(v) for v in (x @ st.prototypes[k])[ok]]
            best = sorted(scores, reverse=True)[:3]
            np.testing.assert_allclose([h.score for h in hits], best, atol=1e-6)
            assert all(h.thumb.shape == (bank.tile_for(stage),) * 2 + (3,) for h in hits)


# --------------------------------------------------------------------------------------------------------
# files and index.html


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src"):
                self.links.append(value)


def _check_links(out: Path) -> list[str]:
    parser = _Links()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    assert parser.links
    for link in parser.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), link
        assert (out / unquote(parsed.path)).is_file(), link
    return parser.links


def test_visualize_writes_pngs_json_and_index(files, tmp_path):
    (files["photos"] / "broken.jpg").write_bytes(b"not an image")
    try:
        summary = visualize_prototypes(
            [str(files["photos"])],
            files["ckpt"]["pgseg"],
            tmp_path / "out",
            patches_per_prototype=3,
            device="cpu",
        )
    finally:
        (files["photos"] / "broken.jpg").unlink()
    out = tmp_path / "out"
    assert summary["processed"] == 3 and summary["num_failed"] == 1 and summary["npr"]
    assert "broken.jpg" in summary["failed"][0]["image"]
    for rec in summary["outputs"]:
        for key in ("panel", "matching", "json"):
            assert (out / rec[key]).is_file()
        with Image.open(out / rec["panel"]) as im:
            assert im.mode == "RGB" and im.width > 4 * 224
        data = json.loads((out / rec["json"]).read_text())
        assert [s["stage"] for s in data["stages"]] == [1, 2]
        assert len(data["stages"][0]["matching"]) == 8
    assert [g["png"] for g in summary["patch_grids"]] == ["patches_stage1.png", "patches_stage2.png"]
    links = _check_links(out)
    assert "patches_stage1.png" in links and "images/a_panel.png" in links
    page = (out / "index.html").read_text()
    assert "broken.jpg" in page and "1 failed" in page
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries
    assert json.loads((out / "summary.json").read_text())["num_failed"] == 1


def test_groupvit_page_says_group_maps_only(files, tmp_path):
    summary = visualize_prototypes(
        [str(files["photos"])], files["ckpt"]["groupvit"], tmp_path / "gv", max_images=2, device="cpu"
    )
    out = tmp_path / "gv"
    assert summary["processed"] == 2 and not summary["npr"] and summary["patch_grids"] == []
    assert all(rec["matching"] is None for rec in summary["outputs"])
    assert "no NPR" in (out / "index.html").read_text()
    assert not list(out.glob("patches_stage*.png"))
    _check_links(out)


def test_missing_checkpoint_is_one_line(files, tmp_path):
    with pytest.raises(CheckpointError) as e:
        visualize_prototypes([str(files["photos"])], tmp_path / "missing.pt", tmp_path / "o", device="cpu")
    assert "checkpoint not found" in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_loads_for_the_renderer(files):
    model, info = load_checkpoint(files["ckpt"]["released"])
    state = collect_image_state(model, prepare_image(_photo(7), 64, 2048))
    assert state.released_code and state.npr


# --------------------------------------------------------------------------------------------------------
# CLI


def _run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_renders_and_exits_zero(files, tmp_path):
    result = _run(
        "visualize-prototypes",
        files["photos"] / "a.jpg",
        files["photos"] / "b.png",
        "-c",
        files["ckpt"]["pgseg"],
        "--out",
        tmp_path / "o",
        "--patches",
        "2",
        "--device",
        "cpu",
        "--short-side",
        "48",
    )
    assert result.exit_code == 0, result.output
    assert "rendered 2 image(s)" in result.output
    _check_links(tmp_path / "o")
    data = json.loads((tmp_path / "o" / "images" / "a.json").read_text())
    assert data["height"] == 48 and data["grid"] == [3, 3]  # 70x90 -> 48x62 -> cropped to 48x48


def test_cli_skips_a_corrupt_image_and_exits_nonzero(files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = _run(
        "visualize-prototypes",
        files["photos"] / "a.jpg",
        bad,
        "-c",
        files["ckpt"]["pgseg"],
        "--out",
        tmp_path / "o",
        "--device",
        "cpu",
    )
    assert result.exit_code == 1, result.output
    assert "rendered 1 image(s)" in result.output and "1 image(s) failed" in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "o" / "images" / "a_panel.png").is_file()


def test_cli_missing_checkpoint_one_line(files, tmp_path):
    result = _run(
        "visualize-prototypes", files["photos"], "-c", tmp_path / "nope.pt", "--out", tmp_path / "o"
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "checkpoint not found" in errors[0]


def test_cli_rejects_a_bad_option_value(files, tmp_path):
    result = _run(
        "visualize-prototypes",
        files["photos"],
        "-c",
        files["ckpt"]["pgseg"],
        "--out",
        tmp_path / "o",
        "--max-images",
        "0",
    )
    assert result.exit_code == 2  # a usage error, naming the flag
    assert [ln for ln in result.output.splitlines() if ln.startswith("Error:")] == [
        "Error: Invalid value for '--max-images': Input should be greater than or equal to 1"
    ]

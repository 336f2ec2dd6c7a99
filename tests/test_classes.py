"""Class vocabularies: class-file parsing, synonyms (max over phrases) and background words."""

from __future__ import annotations

import pytest
import torch

from pgseg_core.errors import ConfigError, DataError
from pgseg_core.inference import (
    ClassEmbeddings,
    ClassSpec,
    CropFeatures,
    crop_scores,
    parse_class_lines,
    parse_class_spec,
    read_class_file,
    read_templates,
)


def test_parse_lines_synonyms_background_and_comments():
    spec = parse_class_lines(
        [
            "# VOC-like",
            "",
            "background: sky, wall",
            "aeroplane, airplane",
            "person  # people",
            "tv, television monitor",
        ]
    )
    assert spec.names == ["aeroplane", "person", "tv"]
    assert spec.prompts[0] == ("aeroplane", "airplane")
    assert spec.prompts[2] == ("tv", "television monitor")
    assert spec.background_words == ("sky", "wall")
    assert len(spec) == 3


def test_bare_background_line_means_no_words():
    spec = parse_class_lines(["background", "cat"])
    assert spec.names == ["cat"] and spec.background_words == ()


@pytest.mark.parametrize(
    "lines, msg",
    [
        ([], "no classes"),
        (["cat", "cat"], "duplicate"),
        (["cat, ", "dog"], "empty"),
        (["background: sky", "background: wall", "cat"], "two background"),
    ],
)
def test_parse_lines_errors(lines, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_class_lines(lines)


def test_background_is_not_a_class_name():
    with pytest.raises(ConfigError, match="implicit"):
        ClassSpec.from_names(["cat", "Background"])


def test_read_class_file_and_errors(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("cat, kitten\ndog\n", encoding="utf-8")
    assert read_class_file(f).prompts == (("cat", "kitten"), ("dog",))
    with pytest.raises(DataError, match="not found"):
        read_class_file(tmp_path / "missing.txt")
    bad = tmp_path / "c.json"
    bad.write_text("[]")
    with pytest.raises(DataError, match="unknown class-file format '.json'"):
        read_class_file(bad)


def test_unreadable_files_name_what_and_where(tmp_path):
    from pgseg_core.data.captions import read_caption_table
    from pgseg_core.utils.io import read_text_file

    for name in ("c.txt", "t.txt", "captions.tsv"):
        (tmp_path / name).write_bytes(b"\xff\xfe\xfa bad utf-8")
    with pytest.raises(DataError, match=r"^cannot read class file .*c\.txt: "):
        read_class_file(tmp_path / "c.txt")
    with pytest.raises(DataError, match=r"^cannot read templates file .*t\.txt: "):
        read_templates(None, tmp_path / "t.txt")
    with pytest.raises(DataError, match=r"^cannot read caption file .*captions\.tsv: "):
        read_caption_table(tmp_path / "captions.tsv")
    with pytest.raises(DataError, match=r"^cannot read thing .*missing: "):
        read_text_file(tmp_path / "missing", "thing")
    assert read_text_file(tmp_path / "c.txt", "x", encoding="latin-1").startswith("\xff")


def test_parse_class_spec_merges_cli_file_and_bg_words(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("background: road\nbird, parrot\n")
    spec = parse_class_spec("cat,dog", f, "sky, road")
    assert spec.names == ["cat", "dog", "bird"]
    assert spec.background_words == ("road", "sky")
    with pytest.raises(ConfigError, match="no classes"):
        parse_class_spec(None, None, "sky")
    assert parse_class_spec("a,b").fingerprint() != parse_class_spec("a,c").fingerprint()


def test_reduce_is_max_over_each_class_rows():
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 3])  # 3 classes, then one background word (owner C=3)
    ce = ClassEmbeddings(torch.zeros(7, 4), owner, 3, True)
    scores = torch.randn(2, 5, 7)
    got = ce.reduce(scores)
    assert got.shape == (2, 5, 4)
    for c in range(4):
        want = scores[..., owner == c].amax(dim=-1)
        torch.testing.assert_close(got[..., c], want)


def _features(b=1, s=3, d=8, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ge = torch.nn.functional.normalize(torch.randn(b, s, d, generator=g), dim=-1)
    ie = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    probs = torch.rand(b, s, h, w, generator=g)
    return CropFeatures(ge, ie, probs / probs.sum(1, keepdim=True))


def test_crop_scores_with_synonyms_equals_best_synonym_embedding_per_class():
    feats = _features()
    g = torch.Generator().manual_seed(1)
    t = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    owner = torch.tensor([0, 0, 1, 1, 1])
    ce = ClassEmbeddings(t, owner, 2, False)
    got = crop_scores(feats, ce, 10.0, 0.5, 0, (4, 4))
    # independent: per group, per class, max of the scaled logits over the class's synonyms
    logits = 10.0 * torch.einsum("bsd,md->bsm", feats.group_emb, t)
    aff = torch.stack([logits[..., :2].amax(-1), logits[..., 2:].amax(-1)], dim=-1)  # [B,S,2]
    aff = aff.softmax(-1) * aff.softmax(-1)
    idx = feats.group_probs.argmax(1)  # [B,H,W]
    maps = aff[0][idx[0]].permute(2, 0, 1)  # [2,H,W]
    thr = min(0.5, float(aff.max()))
    bg = (maps.amax(0) < thr).float()
    torch.testing.assert_close(got[0], torch.cat([bg[None], maps]))


def test_background_words_turn_their_pixels_into_background():
    feats = _features(s=2, seed=3)
    # class 0 aligned with group 0, the background word aligned with group 1
    t = torch.stack([feats.group_emb[0, 0], feats.group_emb[0, 1]])
    ce = ClassEmbeddings(t, torch.tensor([0, 1]), 1, True)
    scores = crop_scores(feats, ce, 50.0, 0.0, 0, (4, 4))  # bg_thresh 0: only the words make background
    assert scores.shape == (1, 2, 4, 4)
    label = scores[0].argmax(0)
    group = feats.group_probs[0].argmax(0)
    assert torch.equal(label == 0, group == 1)
    plain = crop_scores(feats, ClassEmbeddings.plain(t[:1]), 50.0, 0.0, 0, (4, 4))
    assert bool((plain[0].argmax(0) == 1).all())  # without the word every pixel is the one class

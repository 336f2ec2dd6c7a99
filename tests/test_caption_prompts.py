"""Multi-label prompts (docs/METHOD.md §2.2): the 80 ImageNet templates, template sampling, padding to M
prompts with the caption, and the two noun sources (nltk's tagger where installed, the rule set otherwise)."""

from __future__ import annotations

import pytest
import torch

from pgseg_core.config import load_config
from pgseg_core.errors import ConfigError, DependencyError
from pgseg_core.losses import caption_nouns as cn
from pgseg_core.losses.caption_prompts import build_prompts, merge_prompt_sets
from pgseg_core.models.factory import create_model
from pgseg_core.prompt_templates import template_set

IMAGENET80 = template_set("imagenet80")


def _rules(caption):
    return cn.caption_nouns(caption)


def test_imagenet80_set():
    assert len(IMAGENET80) == 80 and len(set(IMAGENET80)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET80)
    assert IMAGENET80[0] == "a bad photo of a {}." and IMAGENET80[-1] == "a tattoo of the {}."
    assert "a photo of a {}." in IMAGENET80 and "itap of my {}." in IMAGENET80
    assert template_set("imagenet80") is not template_set("imagenet80")  # callers may modify their copy
    with pytest.raises(ConfigError, match="imagenet80"):
        template_set("imagenet81")


def _template_of(prompt: str, noun: str) -> str | None:
    """The IMAGENET80 template that, filled with ``noun``, gives ``prompt`` (None if none does)."""
    found = [t for t in IMAGENET80 if t.format(noun) == prompt]
    assert len(found) <= 1
    return found[0] if found else None


def test_templates_are_drawn_per_prompt_uniformly_enough():
    torch.manual_seed(0)
    captions = [f"a photo of a thing{i}." for i in range(800)]
    prompts, targets = build_prompts(captions, 3, _rules, IMAGENET80, pad=False)
    used = []
    for b, caption in enumerate(captions):
        (row,) = [prompts[j] for j in targets[b].nonzero().flatten().tolist()]
        template = _template_of(row, f"thing{b}")
        assert template is not None, row
        used.append(template)
    counts = {t: used.count(t) for t in IMAGENET80}
    assert min(counts.values()) >= 2 and max(counts.values()) <= 25  # 10 expected per template


def test_padding_to_m_prompts_with_the_caption():
    caps = ["a cat.", "a photo of a cat and a dog.", "", "a cat, a dog, a bus and a tree."]
    torch.manual_seed(0)
    prompts, targets = build_prompts(caps, 3, _rules, ["a photo of a {}."], pad=True)
    rows = [{prompts[j] for j in targets[b].nonzero().flatten().tolist()} for b in range(4)]
    assert rows[0] == {"a photo of a cat.", "a cat."}  # one noun + the caption (twice, merged)
    assert rows[1] == {"a photo of a cat.", "a photo of a dog.", "a photo of a cat and a dog."}
    assert rows[2] == {""}  # no noun: the caption fills every slot
    assert len(rows[3]) == 3 and not rows[3] & set(caps)  # 4 nouns: 3 sampled, no padding
    # without padding the caption is used only when there is no noun
    prompts, targets = build_prompts(caps, 3, _rules, ["a photo of a {}."], pad=False)
    rows = [{prompts[j] for j in targets[b].nonzero().flatten().tolist()} for b in range(4)]
    assert rows[0] == {"a photo of a cat."} and rows[2] == {""}


def test_one_template_draws_no_random_number():
    torch.manual_seed(3)
    build_prompts(["a cat and a dog."] * 5, 3, _rules, ["a photo of a {}."], pad=True)
    after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(1), after)  # the demo's single-template runs keep their random stream


def test_merging_per_rank_prompt_sets_equals_building_the_whole_batch_once():
    """What every rank computes from the gathered (prompts, targets) of the ranks (models/pgseg.py under DDP)
    is what one process builds from all the captions: same prompt order (first use), same targets."""
    caps = ["a cat.", "a dog and a cat.", "a bus.", "a cat and a bus.", "", "a tree and a dog.", "a dog."]
    tpl = ["a photo of a {}."]
    whole = build_prompts(caps, 3, _rules, tpl, pad=True)
    for cut in ([3], [2, 5], [1, 2, 6]):
        bounds = [0, *cut, len(caps)]
        parts = [build_prompts(caps[i:j], 3, _rules, tpl, pad=True) for i, j in zip(bounds, bounds[1:])]
        merged = merge_prompt_sets(parts)
        assert merged[0] == whole[0]
        assert torch.equal(merged[1], whole[1])
    assert len(whole[0]) < sum(len(prompts) for prompts, _ in parts)  # prompts shared across the parts


def _tiny_tagger():
    """A real nltk PerceptronTagger trained here on a few tagged sentences (no tagger data needed)."""
    nltk_tag = pytest.importorskip("nltk.tag")
    sentences = [
        [
            ("a", "DT"),
            ("dog", "NN"),
            ("runs", "VBZ"),
            ("on", "IN"),
            ("the", "DT"),
            ("beach", "NN"),
            (".", "."),
        ],
        [("two", "CD"), ("cats", "NNS"), ("sleep", "VBP"), ("near", "IN"), ("a", "DT"), ("window", "NN")],
        [("Paris", "NNP"), ("is", "VBZ"), ("a", "DT"), ("city", "NN"), (".", ".")],
        [("the", "DT"), ("red", "JJ"), ("car", "NN"), ("is", "VBZ"), ("parked", "VBN")],
    ]
    tagger = nltk_tag.PerceptronTagger(load=False)
    tagger.train(sentences * 5, nr_iter=10)
    return tagger, sentences


def test_nltk_nouns_with_a_real_nltk_tagger():
    tagger, sentences = _tiny_tagger()
    for sent in sentences:  # the tiny tagger has learnt its training sentences
        assert tagger.tag([w for w, _ in sent]) == sent
    assert cn.tagged_nouns("a dog runs on the beach.", tagger) == ["dog", "beach"]
    assert cn.tagged_nouns("Paris is a city.", tagger) == ["paris", "city"]  # NNP kept, lower-cased
    assert cn.tagged_nouns("the red car is parked", tagger) == ["car"]  # verbs and adjectives dropped


def test_noun_source_auto_uses_nltk_when_its_tagger_is_there_and_the_rules_otherwise(monkeypatch):
    tagger, _ = _tiny_tagger()
    monkeypatch.setattr(cn, "nltk_tagger", lambda: tagger)
    assert cn.noun_source("auto")("a dog runs on the beach.") == ["dog", "beach"]
    assert cn.noun_source("nltk")("two cats sleep near a window") == ["cats", "window"]
    assert cn.noun_source("rules")("there is a cat next to an apple.") == ["cat", "apple"]
    monkeypatch.setattr(cn, "nltk_tagger", lambda: None)
    assert cn.noun_source("auto") is cn.caption_nouns
    with pytest.raises(DependencyError, match="averaged_perceptron_tagger_eng"):
        cn.noun_source("nltk")
    with pytest.raises(ValueError):
        cn.noun_source("spacy")


def test_installed_nltk_tagger_data_if_present():
    if cn.nltk_tagger() is None:
        pytest.skip("nltk or its averaged_perceptron_tagger data is not installed")
    nouns = cn.tagged_nouns("A dog is running on the beach with a red ball.", cn.nltk_tagger())
    assert {"dog", "beach", "ball"} <= set(nouns) and "running" not in nouns


def test_model_default_recipe_samples_imagenet80_and_pads(monkeypatch):
    monkeypatch.setattr(cn, "nltk_tagger", lambda: None)  # the rules, whatever is installed
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", {"model.multi_label": 3}))
    prompts, targets = model.caption_prompts(["a photo of a cat and a dog.", "a tree."])
    row0 = [prompts[j] for j in targets[0].nonzero().flatten().tolist()]
    assert len(row0) == 3 and "a photo of a cat and a dog." in row0
    assert {_template_of(p, "cat") or _template_of(p, "dog") for p in row0[:2]} <= set(IMAGENET80)
    assert _template_of(row0[0], "cat") and _template_of(row0[1], "dog")
    row1 = [prompts[j] for j in targets[1].nonzero().flatten().tolist()]
    assert _template_of(row1[0], "tree") and row1[1:] == ["a tree."]
    demo = load_config("pgseg-demo").model
    assert (demo.multi_label_templates, demo.multi_label_pad, demo.multi_label_nouns) == (
        "single",
        False,
        "rules",
    )

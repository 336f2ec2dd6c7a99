"""GradCache (docs/TRAINING.md §4): 4 chunks give the direct step's gradients where the maths says they must
(no BatchNorm in the heads, no Gumbel noise), and the contrastive loss is over the whole batch."""

from __future__ import annotations

import pytest
import torch

from _fixtures import assert_grads_close, exact_zero_grads
from pgseg_core.config import load_config
from pgseg_core.errors import ConfigError
from pgseg_core.losses.contrastive import image_text_contrastive
from pgseg_core.models.factory import create_model
from pgseg_core.train.distributed import TrainForward
from pgseg_core.train.gradcache import grad_cache_step

pytestmark = pytest.mark.usefixtures("single_thread")

B = 8


def _model(**overrides):
    cfg = load_config("pgseg-tiny", overrides)
    torch.manual_seed(0)
    model = create_model(cfg.model).train()
    model.img_encoder.set_hard_assignment(False)  # soft assignment: no Gumbel noise
    return model


def _batch():
    g = torch.Generator().manual_seed(2)
    images = torch.randn(B, 3, 64, 64, generator=g)
    return [f"a photo of a thing called number {i}" for i in range(B)], {"images": images}


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_four_chunks_equal_the_direct_step_without_batchnorm():
    """GroupViT without BatchNorm in the heads and without Gumbel noise: the 4-chunk step's gradients equal
    the direct step's (PGSeg's NPR heads hold a BatchNorm: docs/TRAINING.md §4)."""
    captions, inputs = _batch()
    over = {"model.proj_layers": 1, "model.npr.enabled": False}
    direct, losses, cached, out, zero = _direct_and_cached(over, captions, inputs)
    assert float(out["loss_itc"]) == pytest.approx(float(losses["loss_itc"].detach()), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(losses["loss"].detach()), rel=1e-5)
    _assert_same_grads(direct, cached, zero)


def _direct_and_cached(over: dict, captions: list[str], inputs: dict):
    """The direct step (forward + backward) and the 4-chunk GradCache step of two identical models, and the
    parameters whose exact gradient is 0 (found in float64)."""
    direct = _model(**over)
    zero = exact_zero_grads(
        direct, lambda m: m.forward_train(captions, images=inputs["images"].double())["loss"]
    )
    losses = direct.forward_train(captions, **inputs)
    losses["loss"].backward()
    cached = _model(**over)
    return direct, losses, cached, grad_cache_step(cached, TrainForward(cached), captions, inputs, 4), zero


def _assert_same_grads(direct, cached, zero: dict) -> None:
    """Float rounding only: 1e-4 of each tensor's scale + 1e-6 of the largest gradient; elements whose exact
    gradient is 0 carry rounding noise only (``_fixtures.assert_grads_close``)."""
    assert_grads_close(_grads(direct), _grads(cached), zero, floor=1e-6)


@pytest.mark.parametrize("pool", ["image", "groups"])
def test_four_chunks_with_the_multi_label_loss_equal_the_direct_step(pool):
    """GroupViT's multi-label loss under GradCache: the step's prompts are built once from all captions (one
    template, at most M nouns: nothing drawn), each chunk encodes a slice of them, L_ml is taken over the
    whole step; without BatchNorm and Gumbel noise the gradients are the direct step's."""
    over = {"model.proj_layers": 1, "model.npr.enabled": False, "model.multi_label": 3,
            "model.multi_label_templates": "single", "model.multi_label_nouns": "rules",
            "model.multi_label_pool": pool}  # fmt: skip
    first, second = ["cat", "dog", "bird"], ["tree", "car", "boat", "lamp", "cat"]
    captions = [f"a {first[i % 3]} and a {second[i % 5]}" for i in range(B)]
    direct, losses, cached, out, zero = _direct_and_cached(over, captions, _batch()[1])
    for key in ("loss_itc", "loss_multi_label", "loss"):
        assert float(out[key]) == pytest.approx(float(losses[key].detach()), rel=1e-5), key
    assert cached.multi_label_logit_scale.grad is not None
    _assert_same_grads(direct, cached, zero)


def test_the_contrastive_loss_is_over_the_whole_batch():
    captions, inputs = _batch()
    model = _model(**{"model.proj_layers": 1, "model.npr.enabled": False})
    with torch.no_grad():
        img = model.encode_image(inputs["images"]).image_emb
        txt = model.encode_text(captions)
        whole = image_text_contrastive(img, txt, model.logit_scale)
        per_chunk = sum(image_text_contrastive(img[i : i + 2], txt[i : i + 2], model.logit_scale) for i in
                        range(0, B, 2)) / 4  # fmt: skip
    out = grad_cache_step(model, TrainForward(model), captions, inputs, 4)
    assert out["loss_itc"] == pytest.approx(float(whole), rel=1e-5)
    assert abs(float(out["loss_itc"]) - float(per_chunk)) > 0.1  # 8 candidates per row, not 2


def test_rng_replay_and_bad_chunking():
    """With Gumbel noise the second pass replays each chunk's noise: the step leaves the RNG where the
    chunked forwards leave it, and a batch that does not divide is refused in one line."""
    captions, inputs = _batch()
    model = _model()
    model.img_encoder.set_hard_assignment(True)
    torch.manual_seed(5)
    with torch.no_grad():
        for i in range(0, B, 2):
            model.forward_train(captions[i : i + 2], images=inputs["images"][i : i + 2])
    expected = torch.get_rng_state()
    model = _model()
    model.img_encoder.set_hard_assignment(True)
    torch.manual_seed(5)
    grad_cache_step(model, TrainForward(model), captions, inputs, 4)
    assert torch.equal(torch.get_rng_state(), expected)
    with pytest.raises(ConfigError, match="must divide the per-process batch"):
        grad_cache_step(model, TrainForward(model), captions, inputs, 3)


def test_activation_checkpointing_gives_the_same_gradients():
    from pgseg_core.train.speed import checkpoint_activations

    captions, inputs = _batch()
    plain = _model()
    plain.forward_train(captions, **inputs)["loss"].backward()
    ckpt = _model()
    assert checkpoint_activations(ckpt) == 4  # pgseg-tiny: 3 image blocks, 1 text block
    ckpt.forward_train(captions, **inputs)["loss"].backward()
    ga, gb = _grads(plain), _grads(ckpt)
    assert ga.keys() == gb.keys()
    assert all(torch.equal(ga[k], gb[k]) for k in ga)

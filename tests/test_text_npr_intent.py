"""Default-mode text term L_T (docs/METHOD.md §3.5): padding out of every statistic, and its gradient path.

The oracle is a plain numpy projection head (Conv1d k=1 as a matrix product, BatchNorm with the mean and
biased variance of the real tokens only, ReLU, output layer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgseg_core.config import load_config
from pgseg_core.models.factory import create_model
from pgseg_core.models.layers import ProjectMLP
from pgseg_core.models.text_npr_inputs import project_frozen, project_valid_tokens, text_npr_mask

pytestmark = pytest.mark.usefixtures("single_thread")


def _np_head(head: ProjectMLP, x: np.ndarray, running: bool) -> np.ndarray:
    """x [M, W] -> [M, D]; BatchNorm with the batch statistics of x (biased variance) or the running ones."""
    conv, bn = head.linear_hidden[0], head.linear_hidden[1]
    w1 = conv.weight.detach().double().numpy()[:, :, 0]
    h = x @ w1.T + conv.bias.detach().double().numpy()
    if running:
        mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    else:
        mean, var = h.mean(axis=0), h.var(axis=0)
    h = (h - mean) / np.sqrt(
        var + bn.eps
    ) * bn.weight.detach().double().numpy() + bn.bias.detach().double().numpy()
    h = np.maximum(h, 0.0)
    w2 = head.linear_out.weight.detach().double().numpy()[:, :, 0]
    return h @ w2.T + head.linear_out.bias.detach().double().numpy()


def _head(seed=0, w=6, d=4):
    torch.manual_seed(seed)
    head = ProjectMLP(w, 16, d)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        head.linear_hidden[1].running_mean.normal_()
        head.linear_hidden[1].running_var.uniform_(0.5, 2.0)
        head.linear_hidden[1].weight.normal_()
    return head


def _tokens_and_mask(L=9, w=6, seed=1):
    tokens = torch.randn(3, L, w, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(3, L, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :7] = True
    mask[2, :2] = True
    return tokens, mask


@pytest.mark.parametrize("training", [True, False])
def test_projection_uses_only_real_tokens_and_matches_numpy(training):
    head = _head()
    head.train(training)
    running = [b.clone() for b in head.buffers()]
    tokens, mask = _tokens_and_mask()
    out = project_valid_tokens(head, tokens, mask)
    ref = _np_head(head, tokens.double().numpy()[mask.numpy()], running=not training)
    assert out.shape == (3, 9, 4) and not out.requires_grad
    np.testing.assert_allclose(out[mask].double().numpy(), ref, rtol=1e-4, atol=1e-5)
    assert torch.all(out[~mask] == 0)
    # the running statistics are not moved by the auxiliary projection
    for before, after in zip(running, head.buffers()):
        assert torch.equal(before, after)
    # padding values and the amount of padding change nothing
    garbage = tokens.clone()
    garbage[~mask] = 1e3
    longer = torch.cat([garbage, torch.full((3, 5, 6), -7.0)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(project_valid_tokens(head, garbage, mask), out)
    torch.testing.assert_close(project_valid_tokens(head, longer, longer_mask)[:, :9], out)


def test_projection_over_padded_positions_would_differ():
    """The check above can fail: BatchNorm over all B×L positions (the former behaviour) differs."""
    head = _head()
    head.train()
    tokens, mask = _tokens_and_mask()
    with torch.no_grad():
        all_positions = head(tokens, update_stats=False)
    assert not torch.allclose(all_positions[mask], project_valid_tokens(head, tokens, mask)[mask], atol=1e-3)


def test_text_npr_mask_drops_sot_of_the_causal_tower_only():
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    causal = text_npr_mask(mask, causal=True)
    assert causal.tolist() == [[False, True, True, False], [False, True, False, False]]
    assert text_npr_mask(mask, causal=False).tolist() == mask.tolist()
    assert mask[0, 0]  # the input is not modified


def test_frozen_head_passes_gradient_to_the_input_only():
    head = _head(w=5, d=3)
    head.train()
    x = torch.randn(2, 4, 5, requires_grad=True)
    y = project_frozen(head, x)
    with torch.no_grad():
        ref = head(x, update_stats=False)
    torch.testing.assert_close(y, ref)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.parameters())


def test_default_mode_text_term_reaches_centres_not_the_heads():
    torch.manual_seed(0)
    cfg = load_config("pgseg-tiny", {})
    model = create_model(cfg)
    model.train()
    captions = ["a cat on a mat", "two dogs", "a tree", "an old car on a road"]
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    img = model.encode_image(images)
    text_feats = model.text_encoder(captions)
    out = model._prototype_losses(img.vision, text_feats)
    out["loss_pg"].backward()
    # the image L_PG terms never touch the heads either; so any head gradient would come from L_T
    for name, p in list(model.img_projector.named_parameters()) + list(
        model.text_projector.named_parameters()
    ):
        assert p.grad is None or float(p.grad.abs().sum()) == 0.0, name
    last_block = model.img_encoder.layers[1].downsample.pre_assign_attn
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in last_block.parameters())


def test_text_term_alone_trains_the_encoder_through_the_centres(monkeypatch):
    """Only L_T's gradient (the image terms are multiplied by 0): the grouping block that makes the final
    centres gets a gradient, the heads do not."""
    import pgseg_core.models.pgseg as pgseg_module

    real = pgseg_module.prototype_group_loss
    calls = []

    def text_only(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss if len(calls) == 3 else loss * 0.0  # calls 1, 2: image stages; 3: the text term

    monkeypatch.setattr(pgseg_module, "prototype_group_loss", text_only)
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", {}))
    model.train()
    captions = ["a cat on a mat", "two dogs", "a tree", "an old car on a road"]
    img = model.encode_image(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    out = model._prototype_losses(img.vision, model.text_encoder(captions))
    assert len(calls) == 3 and out["loss_pg_text"] > 0
    out["loss_pg"].backward()
    last_block = model.img_encoder.layers[1].downsample.pre_assign_attn
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in last_block.parameters())
    heads = list(model.img_projector.parameters()) + list(model.text_projector.parameters())
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in heads)
    assert all(p.grad is None for p in model.text_encoder.parameters())  # the text side is a constant

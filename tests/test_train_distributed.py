"""Several processes (docs/TRAINING.md §3): a 2-process gloo run of the training engine equals the 1-process
run at the same global batch (fp32, same data order, global-batch BatchNorm, gathered contrastive loss)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, out: Path, *args: str, timeout: float = 240) -> None:
    """``tests/_dist_child.py`` as ``world`` gloo processes on 127.0.0.1."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}  # fmt: skip
        cmd = [sys.executable, str(REPO / "tests" / "_dist_child.py"), str(out), *args]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err[-3000:])
    assert not errors, errors


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    import _dist_child

    out = tmp_path_factory.mktemp("one") / "one.pt"
    _dist_child.run(str(out))
    return torch.load(out, weights_only=True)


def test_two_gloo_processes_equal_one_at_the_same_global_batch(one_process, tmp_path):
    run_ranks(2, tmp_path / "two.pt")
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    a, b = one_process["state"], two["state"]
    assert a.keys() == b.keys()
    worst = max(
        ((a[k].double() - b[k].double()).abs().max().item(), k) for k in a if a[k].is_floating_point()
    )
    assert worst[0] <= 1e-5, worst
    # the steps did train: the weights moved well beyond the tolerance
    moved = max((a[k].double() - b0).abs().max().item() for k, b0 in _initial().items() if k in a)
    assert moved > 1e-4


def _initial(overrides: dict | None = None) -> dict[str, torch.Tensor]:
    from pgseg_core.config import load_config
    from pgseg_core.models.factory import create_model

    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", overrides).model)
    return {k: v.double() for k, v in model.state_dict().items() if v.is_floating_point()}


@pytest.mark.parametrize("multi_label", [0, 3])
def test_two_processes_with_gradcache_equal_one_direct_process(multi_label, tmp_path):
    """GradCache under DDP (2 chunks of 2 per rank, no_sync until the last chunk, the logit scale's cached
    gradient): the same weights as one process stepping the whole batch of 8 directly, where GradCache is
    exact (no BatchNorm in the heads, GroupViT: docs/TRAINING.md §4); also with the multi-label loss (its
    prompts gathered across ranks, each rank's share encoded in chunks)."""
    import json

    import _dist_child

    extra = {"model.proj_layers": 1, "model.npr.enabled": False}
    if multi_label:
        extra |= {"model.multi_label": multi_label, "model.multi_label_templates": "single",
                  "model.multi_label_nouns": "rules", "_shared_nouns": True}  # fmt: skip
    _dist_child.run(str(tmp_path / "one.pt"), 1, extra)
    run_ranks(2, tmp_path / "two.pt", "2", json.dumps(extra))
    a = torch.load(tmp_path / "one.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "two.pt", weights_only=True)["state"]
    worst = max(
        ((a[k].double() - b[k].double()).abs().max().item(), k) for k in a if a[k].is_floating_point()
    )
    assert worst[0] <= 1e-5, worst


@pytest.mark.parametrize("pool", ["image", "groups"])
def test_two_processes_with_the_multi_label_loss_equal_one(pool, tmp_path):
    """GroupViT's multi-label loss across ranks (losses/multi_label.py): every rank's caption prompts merged
    into the global batch's distinct prompts (shared across the ranks' halves), each rank encodes its share
    and the loss is split so that DDP's average is the one-process gradient. One template and at most M
    nouns per caption, so prompt building draws nothing and both runs see the same prompts."""
    import json

    import _dist_child

    extra = {"model.multi_label": 3, "model.multi_label_templates": "single",
             "model.multi_label_nouns": "rules", "model.multi_label_pool": pool,
             "_shared_nouns": True}  # fmt: skip
    _dist_child.run(str(tmp_path / "one.pt"), 1, extra)
    run_ranks(2, tmp_path / "two.pt", "1", json.dumps(extra))
    a = torch.load(tmp_path / "one.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "two.pt", weights_only=True)["state"]
    assert "multi_label_logit_scale" in a
    worst = max(
        ((a[k].double() - b[k].double()).abs().max().item(), k) for k in a if a[k].is_floating_point()
    )
    assert worst[0] <= 1e-5, worst
    start = _initial({"model.multi_label": 3})["multi_label_logit_scale"]
    assert (a["multi_label_logit_scale"].double() - start).abs().item() > 1e-6  # the loss did train

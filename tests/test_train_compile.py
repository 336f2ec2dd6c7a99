"""The ``train.compile`` switch (docs/TRAINING.md §7): a compiled training run computes the eager run's step.

``aot_eager`` (Dynamo capture + AOTAutograd, no code generation) runs in the default suite through the CLI;
the inductor backend, which generates C++ for the CPU and compiles for minutes, is a slow test of one step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _fixtures import assert_grads_close, exact_zero_grads, write_captioned_shard
from pgseg_cli.app import app
from pgseg_core.checkpoint import read_checkpoint_file
from pgseg_core.config import load_config
from pgseg_core.errors import ConfigError
from pgseg_core.models.factory import create_model
from pgseg_core.train.distributed import TrainForward
from pgseg_core.train.speed import maybe_compile

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_captioned_shard(tmp_path_factory.mktemp("compile_shards"), 8)


def _train(shards: Path, out: Path, *extra: str):
    args = [
        "train", "--model", "pgseg-tiny", "--data", str(shards), "--out", str(out), "--device", "cpu",
        "--train.steps", "2", "--train.batch_size", "4", "--train.log_every", "1", "--train.curves", "false",
        *extra,
    ]  # fmt: skip
    return runner.invoke(app, args, catch_exceptions=False)


def _zero_grad_params() -> dict[str, torch.Tensor]:
    """Per pgseg-tiny parameter, the mask of its elements whose exact gradient is 0
    (``_fixtures.exact_zero_grads``)."""
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    captions = [f"a red thing number {i}" for i in range(4)]
    return exact_zero_grads(_model(), lambda m: m.forward_train(captions, images=images)["loss"])


def test_a_compiled_run_trains_the_eager_runs_weights(shards, tmp_path):
    eager = _train(shards, tmp_path / "eager")
    assert eager.exit_code == 0, eager.output
    compiled = _train(shards, tmp_path / "compiled", "--train.compile", "true",
                      "--train.compile_backend", "aot_eager")  # fmt: skip
    assert compiled.exit_code == 0, compiled.output
    assert "torch.compile (backend aot_eager)" in " ".join(compiled.output.split())
    a = read_checkpoint_file(tmp_path / "eager" / "last.pt")["model"]
    b = read_checkpoint_file(tmp_path / "compiled" / "last.pt")["model"]
    zero = _zero_grad_params()
    assert zero and all(k in a for k in zero)
    # AdamW turns the rounding noise of an exact-zero gradient into steps of up to lr (1e-3) per step: those
    # elements are compared within 2 steps' worth; every other one within float rounding
    bound = 2 * 2 * load_config("pgseg-tiny").train.lr
    for k, mask in zero.items():
        assert (a[k] - b[k]).abs()[mask].max().item() <= bound, k
        a[k], b[k] = a[k].masked_fill(mask, 0.0), b[k].masked_fill(mask, 0.0)
    keys = [k for k in a if a[k].is_floating_point()]
    assert_grads_close({k: a[k] for k in keys}, {k: b[k] for k in keys}, {}, rel=1e-4, floor=1e-5)


def test_an_unknown_backend_is_one_line(shards, tmp_path):
    result = _train(shards, tmp_path / "run", "--train.compile", "true", "--train.compile_backend", "inductr")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if "compile_backend" in ln]
    assert len(lines) == 1 and "did you mean 'inductor'" in lines[0], result.output


def test_a_backend_is_only_checked_when_compiling():
    forward = torch.nn.Identity()
    assert maybe_compile(forward, False, "no-such-backend") is forward
    with pytest.raises(ConfigError, match="not a torch.compile backend"):
        maybe_compile(forward, True, "no-such-backend")


def _model():
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny").model).train()
    model.img_encoder.set_hard_assignment(False)  # soft assignment: no Gumbel noise, the same step twice
    return model


@pytest.mark.slow
def test_the_inductor_step_equals_the_eager_step():
    """One forward + backward of pgseg-tiny under inductor (about 3-4 minutes of compiling on 2 CPU cores)."""
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    captions = [f"a photo of a thing called number {i}" for i in range(8)]
    eager, compiled = _model(), _model()
    la = TrainForward(eager)(captions, images=images)
    la["loss"].backward()
    lb = maybe_compile(TrainForward(compiled), True, "inductor")(captions, images=images)
    lb["loss"].backward()
    for k in ("loss", "loss_itc", "loss_pg"):
        assert float(lb[k]) == pytest.approx(float(la[k]), rel=1e-5), k
    grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None} for m in (eager, compiled)]
    assert_grads_close(*grads, _zero_grad_params(), rel=1e-3, floor=1e-5)

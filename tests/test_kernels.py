"""Each Triton kernel of pgseg_core.kernels against its plain reference (docs/KERNELS.md).

On the CPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, set by tests/conftest.py
before triton is imported), so shapes stay tiny; ``@pytest.mark.cuda`` tests repeat the
comparisons at the paper's shapes on a GPU.

Tolerances (max abs difference, kernel vs reference):
- assign_attention: fp32 1e-5 (values and gradients); bf16 2e-2; fp16 4e-3. The reference rounds the
  noisy logits and the softmax to the dtype, the kernel keeps float32 until the store.
- npr_em: 2e-5 for every input dtype (both compute in float32; only the summation order differs).
- linear_assignment: the total cost of the kernel's assignment equals scipy's optimal cost to 1e-9
  relative (float64 sums of the same entries; ties may pick another permutation).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'pgseg[kernels]')", allow_module_level=True)

from pgseg_core.errors import ConfigError, DeviceError  # noqa: E402
from pgseg_core.kernels import assign_attention, linear_assignment, npr_em, use_triton  # noqa: E402
from pgseg_core.kernels.npr_em import npr_em_reference  # noqa: E402
from pgseg_core.kernels.select import triton_interpreter  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


#: the CPU tests need the interpreter, which tests/conftest.py switches on before triton is imported
#: (on machines without CUDA); with CUDA only the ``cuda`` tests below run
cpu_interpreter = pytest.mark.skipif(
    not triton_interpreter(), reason="needs TRITON_INTERPRET=1 before triton is imported (tests/conftest.py)"
)


# ---------------------------------------------------------------------------------------------------------
# selection


@cpu_interpreter
def test_backend_selection(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.delenv("PGSEG_KERNELS", raising=False)
    assert not use_triton(x)  # auto on the CPU: the reference
    assert not use_triton(x, "torch")
    assert use_triton(x, "triton")  # the interpreter is on in this module
    monkeypatch.setenv("PGSEG_KERNELS", "triton")
    assert use_triton(x)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(DeviceError, match="TRITON_INTERPRET=1"):
        use_triton(x)
    monkeypatch.setenv("PGSEG_KERNELS", "cuda")
    with pytest.raises(ConfigError, match="PGSEG_KERNELS must be one of auto, torch, triton"):
        use_triton(x)


def test_config_key_sets_the_default_and_the_environment_wins(monkeypatch):
    from pgseg_core.config import load_config
    from pgseg_core.kernels import configure, requested_backend

    monkeypatch.delenv("PGSEG_KERNELS", raising=False)
    cfg = load_config("pgseg-tiny", {"train.kernels": "torch"})
    with pytest.raises(ConfigError, match="train.kernels"):
        load_config("pgseg-tiny", {"train.kernels": "cuda"})
    try:
        configure(cfg.train.kernels)
        assert requested_backend() == "torch"
        monkeypatch.setenv("PGSEG_KERNELS", "auto")
        assert requested_backend() == "auto" and requested_backend("triton") == "triton"
    finally:
        configure("auto")


# ---------------------------------------------------------------------------------------------------------
# assign_attention


def _logits(B, S, N, dtype, seed=0):
    """Logits with one clear winner per token, so bf16 rounding cannot move the argmax."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, S, N, generator=g) * 0.3
    base.scatter_add_(1, torch.randint(0, S, (B, 1, N), generator=g), torch.full((B, 1, N), 3.0))
    return base.to(dtype)


@cpu_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hard,gumbel", [(True, True), (True, False), (False, False), (False, True)])
def test_assign_attention_matches_reference(dtype, hard, gumbel):
    B, S, N = 2, 5, 37  # S not a power of two, N not a multiple of the block
    noise = torch.randn(B, S, N, generator=torch.Generator().manual_seed(1)) * 0.1
    weight = torch.linspace(-1, 1, N)
    results = {}
    for backend in ("torch", "triton"):
        logits = _logits(B, S, N, dtype).requires_grad_()
        out = assign_attention(logits, hard, gumbel, tau=0.7, eps=1.0, noise=noise, backend=backend)
        ((out.weights.float() * weight).sum() + (out.attn.float() ** 2).sum()).backward()
        assert out.soft.grad_fn is None and not out.soft.requires_grad
        results[backend] = (*out, logits.grad)
    for ref, got, name in zip(results["torch"], results["triton"], ("attn", "soft", "weights", "grad")):
        assert got.dtype == ref.dtype, name
        torch.testing.assert_close(got.float(), ref.float(), atol=ATOL[dtype], rtol=0, msg=name)
    if hard:
        assert torch.equal(results["triton"][0].float().round(), results["torch"][0].float().round())


@cpu_interpreter
def test_assign_attention_draws_the_reference_noise():
    logits = _logits(1, 3, 20, torch.float32)
    torch.manual_seed(5)
    a = assign_attention(logits, True, True, backend="torch")
    torch.manual_seed(5)
    b = assign_attention(logits, True, True, backend="triton")
    torch.testing.assert_close(b.weights, a.weights, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# npr_em


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,normalize,masked",
    [
        ((2, 37, 24, 5), "channels", False),
        ((2, 37, 24, 5), "channels", True),
        ((3, 19, 1, 8), "prototypes", False),
    ],
)
@cpu_interpreter
def test_npr_em_matches_reference(dtype, shape, normalize, masked):
    B, N, C, K = shape
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, N, C, generator=g).to(dtype)
    mu0 = torch.nn.functional.normalize(torch.randn(1, K, C, generator=g), dim=-1).expand(B, -1, -1)
    mask = torch.rand(B, N, generator=g) > 0.3 if masked else None
    ref = npr_em_reference(x, mu0, 3, mask, normalize)
    got = npr_em(x, mu0, 3, mask, normalize, backend="triton")
    for r, o in zip(ref, got):
        assert o.dtype == torch.float32 and o.shape == r.shape
        torch.testing.assert_close(o, r, atol=2e-5, rtol=0)
    if masked:
        assert (got[1][~mask] == 0).all()


@cpu_interpreter
def test_npr_em_checks_its_arguments():
    with pytest.raises(ValueError, match="at least one iteration"):
        npr_em(torch.zeros(1, 2, 3), torch.ones(1, 2, 3), 0, backend="triton")
    with pytest.raises(ValueError, match="normalize"):
        npr_em(torch.zeros(1, 2, 3), torch.ones(1, 2, 3), 1, normalize="rows", backend="triton")


# ---------------------------------------------------------------------------------------------------------
# linear_assignment


def _matrices(K: int, g: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(K, generator=g)
    rect = torch.zeros(K, K)  # a K x (K-1) problem padded to square with a zero column
    rect[:, : max(K - 1, 0)] = torch.rand(K, max(K - 1, 0), generator=g)
    return [
        torch.rand(K, K, generator=g),  # random
        torch.randint(0, 3, (K, K), generator=g).float(),  # integer, many ties
        torch.full((K, K), 2.5),  # constant
        torch.eye(K),  # identity
        torch.eye(K)[perm] * 5 - 1,  # permutation
        rect,  # rectangular padded to square
        torch.rand(K, K, generator=g) * 10.0 ** torch.randint(-6, 7, (K, K), generator=g).float(),  # range
    ]


def _total(cost: np.ndarray, cols: np.ndarray) -> float:
    return float(cost[np.arange(len(cols)), cols].sum())


@cpu_interpreter
@pytest.mark.parametrize("K", [1, 3, 6])
@pytest.mark.parametrize("maximize", [False, True])
def test_linear_assignment_is_optimal(K, maximize):
    g = torch.Generator().manual_seed(K)
    cost = torch.stack(_matrices(K, g))
    cols = linear_assignment(cost, maximize, backend="triton")
    assert cols.dtype == torch.int64 and cols.shape == (len(cost), K)
    for m, c in zip(cost.double().numpy(), cols.numpy()):
        assert sorted(c.tolist()) == list(range(K))
        best = _total(m, linear_sum_assignment(m, maximize=maximize)[1])
        assert abs(_total(m, c) - best) <= 1e-9 * max(1.0, abs(best))


@cpu_interpreter
def test_linear_assignment_rectangular_padding_keeps_the_real_rows_optimal():
    g = torch.Generator().manual_seed(7)
    real = torch.rand(3, 5, generator=g)  # 3 rows, 5 columns
    padded = torch.zeros(1, 5, 5)
    padded[0, :3] = real
    cols = linear_assignment(padded, backend="triton")[0, :3].numpy()
    best = _total(real.double().numpy(), linear_sum_assignment(real.double().numpy())[1])
    assert abs(_total(real.double().numpy(), cols) - best) <= 1e-12


@cpu_interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_assignment_half_precision(dtype):
    cost = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3)).to(dtype)
    cols = linear_assignment(cost, backend="triton")
    ref = linear_assignment(cost, backend="torch")
    m = cost.double().numpy()
    for b in range(2):
        assert abs(_total(m[b], cols[b].numpy()) - _total(m[b], ref[b].numpy())) <= 1e-9


@cpu_interpreter
def test_linear_assignment_rejects_non_square():
    with pytest.raises(ValueError, match=r"square matrices \[B, K, K\]"):
        linear_assignment(torch.zeros(2, 3, 4))


# ---------------------------------------------------------------------------------------------------------
# the whole PGSeg training step, kernels on vs off


@cpu_interpreter
@pytest.mark.parametrize("variant", [{}, {"model.npr.released_code": True}])
def test_training_step_with_kernels_matches_reference(monkeypatch, variant):
    from pgseg_core.config import load_config
    from pgseg_core.models.factory import create_model

    import pgseg_core.losses.prototype as prototype

    if variant:
        # every matching is solved by both backends: the costs must agree, the reference's permutation is used
        def same_cost_matching(sim, maximize, backend=None):
            ref = linear_assignment(sim, maximize, backend="torch")
            got = linear_assignment(sim, maximize, backend="triton")
            total = [sim.double().gather(2, c.unsqueeze(-1)).sum() for c in (ref, got)]
            assert abs(total[0] - total[1]) <= 1e-9 * max(1.0, abs(total[0]))
            return ref

        monkeypatch.setattr(prototype, "linear_assignment", same_cost_matching)
    torch.manual_seed(0)
    model = create_model(load_config("pgseg-tiny", variant))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    captions = ["a cat on a red mat", "two dogs in the snow"]
    runs = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("PGSEG_KERNELS", backend)
        model.load_state_dict(state)  # the NPR buffers move in a training forward
        model.zero_grad()
        torch.manual_seed(2)  # the same Gumbel draws for both
        losses = model.forward_train(captions, images)
        losses["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        runs[backend] = ({k: v.item() for k, v in losses.items()}, grads)
    (ref_losses, ref_grads), (got_losses, got_grads) = runs["torch"], runs["triton"]
    assert set(got_losses) == set(ref_losses) and "loss_pg_text" in got_losses
    if variant:
        # the released text term normalises 1-d features, i.e. takes the sign of a mean near 0: float32
        # sums in another order flip some signs (a +-1 similarity becomes -+1), so only the image terms and
        # the image-text loss are compared
        ref_losses = {k: ref_losses[k] for k in ("loss_itc", "loss_pg_1", "loss_pg_2")}
    for k, v in ref_losses.items():
        assert got_losses[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    # float32 sums in another order: the gradients agree to ~1e-5 of their norm
    assert variant or (got_grads - ref_grads).norm() <= 1e-4 * ref_grads.norm()


# ---------------------------------------------------------------------------------------------------------
# torch.library registrations: schema, fake tensors, autograd


@cpu_interpreter
def test_custom_ops_pass_opcheck():
    from torch.library import opcheck

    opcheck(torch.ops.pgseg.linear_assignment.default, (torch.rand(2, 3, 3), True))
    opcheck(torch.ops.pgseg.linear_assignment_scipy.default, (torch.rand(2, 3, 3), False))
    x, mu = torch.randn(1, 9, 4), torch.nn.functional.normalize(torch.randn(1, 3, 4), dim=-1)
    opcheck(torch.ops.pgseg.npr_em.default, (x, mu, 2, None, "channels"))
    logits = _logits(1, 3, 9, torch.float32).requires_grad_()
    opcheck(torch.ops.pgseg.assign_attention.default, (logits, torch.zeros(1, 3, 9), True, True, 1.0, 1.0))


# ---------------------------------------------------------------------------------------------------------
# the benchmark script


def test_bench_kernels_quick_writes_its_json(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "k.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(root)}  # references only: fast
    cmd = [sys.executable, str(root / "benchmarks/bench_kernels.py"), "--quick", "--device", "cpu"]
    subprocess.run([*cmd, "--out", str(out)], check=True, env=env, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["quick"] and not result["timing_claims"]
    assert {"command", "torch", "uptime_at_start", "device"} <= set(result["env"])
    for section in ("assignment", "npr_em", "assign_attention"):
        for entry in result[section].values():
            t = entry["timings"]["scipy_loop" if section == "assignment" else "reference"]
            assert t["min_ms"] <= t["median_ms"] <= t["max_ms"] and len(t["samples_ms"]) == 2
    assert "kernels_off" in result["pgseg_step"]["timings"]


@pytest.mark.slow
def test_kernels_compile_for_a_gpu_without_one():
    """Every kernel compiles to PTX / cubin for sm_90 (no GPU needed; the interpreter skips this step)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root)
    run = subprocess.run([sys.executable, str(root / "tests/_kernels_aot.py")], env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("compiled") == 6


# ---------------------------------------------------------------------------------------------------------
# CUDA: the compiled kernels at the paper's shapes


@pytest.mark.cuda
@pytest.mark.parametrize("K", [8, 64, 100, 256])
def test_linear_assignment_cuda_is_optimal(K):
    cost = torch.rand(64, K, K, device="cuda")
    for maximize in (False, True):
        cols = linear_assignment(cost, maximize, backend="triton").cpu().numpy()
        for m, c in zip(cost.double().cpu().numpy(), cols):
            best = _total(m, linear_sum_assignment(m, maximize=maximize)[1])
            assert abs(_total(m, c) - best) <= 1e-9 * max(1.0, abs(best))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_npr_em_and_assign_attention_cuda(dtype):
    x = torch.randn(16, 196, 384, device="cuda").to(dtype)
    mu0 = torch.nn.functional.normalize(torch.randn(1, 64, 384, device="cuda"), dim=-1).expand(16, -1, -1)
    for r, o in zip(npr_em_reference(x, mu0, 10), npr_em(x, mu0, 10, backend="triton")):
        torch.testing.assert_close(o, r, atol=1e-4, rtol=0)
    logits = _logits(16, 64, 196, dtype).cuda()
    noise = torch.randn(16, 64, 196, device="cuda") * 0.1
    outs = []
    for backend in ("torch", "triton"):
        leaf = logits.clone().requires_grad_()
        out = assign_attention(leaf, True, True, noise=noise, backend=backend)
        out.weights.float().square().sum().backward()
        outs.append((*out, leaf.grad))
    for r, o in zip(*outs):
        torch.testing.assert_close(o.float(), r.float(), atol=ATOL[dtype], rtol=0)

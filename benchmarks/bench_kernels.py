"""Kernels vs their references (docs/KERNELS.md), contenders interleaved round-robin, one run.

* ``assignment``: B matrices of K×K (B=1024, K=64 and K=8): ``scipy_loop`` (pgseg's torch backend: the copy
  to the host, scipy's ``linear_sum_assignment`` per matrix, the copy back: what L_PG paid per step) vs the
  Triton kernel vs ``torch_linear_assignment.batch_linear_assignment`` when that package imports. The
  optimal costs are checked equal.
* ``npr_em``: NPR's EM at the paper's shapes (B=256, C=384, T=10; N=196, K=64 and N=64, K=8): torch loop vs
  the fused kernel; outputs compared.
* ``assign_attention``: GroupViT's hard Gumbel assignment forward + backward (B=256; S=64, N=196 and S=8,
  N=64): torch reference vs the kernels.
* ``pgseg_step``: one PGSeg-S training forward + backward (``--step-batch`` images, bf16 autocast on CUDA)
  with ``PGSEG_KERNELS=torch`` vs ``triton``.

Every timing is the median of ``--rounds`` interleaved rounds (min and max beside it). Without CUDA only the
references are timed, except that ``--quick`` with ``TRITON_INTERPRET=1`` runs the kernels at tiny shapes
through the interpreter to check that the script works: such numbers are never timing claims
(``"timing_claims": false`` in the JSON).

Usage::

    python benchmarks/bench_kernels.py --device cuda --out benchmarks/results/bench_kernels_cuda.json
    python benchmarks/bench_kernels.py --device cpu --out benchmarks/results/bench_kernels_cpu.json
    TRITON_INTERPRET=1 python benchmarks/bench_kernels.py --quick --device cpu --out /tmp/k.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _timing import environment, print_table, ratios, round_robin, write_results  # noqa: E402
from pgseg_core.kernels import assign_attention, linear_assignment, npr_em  # noqa: E402
from pgseg_core.kernels.select import triton_interpreter  # noqa: E402


def _total(cost: torch.Tensor, cols: torch.Tensor) -> np.ndarray:
    return cost.double().gather(2, cols.unsqueeze(-1)).sum(dim=(1, 2)).cpu().numpy()


def bench_assignment(device, shapes, triton_ok, rounds, inner) -> dict:
    out = {}
    for B, K in shapes:
        cost = torch.rand(B, K, K, device=device, generator=None)
        contenders = {"scipy_loop": lambda c=cost: linear_assignment(c, backend="torch")}
        if triton_ok:
            contenders["pgseg_triton"] = lambda c=cost: linear_assignment(c, backend="triton")
        try:
            from torch_linear_assignment import batch_linear_assignment

            if device.type == "cuda":
                contenders["torch_linear_assignment"] = lambda c=cost: batch_linear_assignment(c)
        except ImportError:
            pass
        ref = _total(cost, contenders["scipy_loop"]())
        gaps = {n: float(np.abs(_total(cost, f().long()) - ref).max()) for n, f in contenders.items()}
        timings = round_robin(contenders, rounds=rounds, inner=inner, device=device)
        key = f"B{B}_K{K}"
        out[key] = {"timings": timings, "speedup_vs_scipy_loop": ratios(timings, "scipy_loop"),
                    "max_cost_gap_vs_scipy": gaps}  # fmt: skip
        print_table(f"assignment {key}", timings, "scipy_loop")
    return out


def bench_npr_em(device, shapes, C, iters, triton_ok, rounds, inner) -> dict:
    out = {}
    for B, N, K in shapes:
        x = torch.randn(B, N, C, device=device)
        mu0 = torch.nn.functional.normalize(torch.randn(1, K, C, device=device), dim=-1).expand(B, -1, -1)
        contenders = {"reference": lambda: npr_em(x, mu0, iters, backend="torch")}
        diff = None
        if triton_ok:
            contenders["fused"] = lambda: npr_em(x, mu0, iters, backend="triton")
            ref, got = contenders["reference"](), contenders["fused"]()
            diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
        timings = round_robin(contenders, rounds=rounds, inner=inner, device=device)
        key = f"B{B}_N{N}_K{K}_C{C}_T{iters}"
        out[key] = {"timings": timings, "speedup_vs_reference": ratios(timings, "reference"),
                    "max_abs_diff": diff}  # fmt: skip
        print_table(f"npr_em {key}", timings, "reference")
    return out


def bench_assign(device, shapes, triton_ok, rounds, inner) -> dict:
    out = {}
    for B, S, N in shapes:
        logits = torch.randn(B, S, N, device=device, requires_grad=True)
        noise = -torch.empty(B, S, N, device=device).exponential_().log()
        grad = torch.randn(B, S, N, device=device)

        def step(backend):
            a = assign_attention(logits, True, True, noise=noise, backend=backend)
            return torch.autograd.grad((a.weights * grad).sum() + a.attn.sum(), logits)[0]

        contenders = {"reference": lambda: step("torch")}
        diff = None
        if triton_ok:
            contenders["kernel"] = lambda: step("triton")
            diff = float((step("torch") - step("triton")).abs().max())
        timings = round_robin(contenders, rounds=rounds, inner=inner, device=device)
        key = f"B{B}_S{S}_N{N}_fwd_bwd"
        out[key] = {"timings": timings, "speedup_vs_reference": ratios(timings, "reference"),
                    "max_abs_grad_diff": diff}  # fmt: skip
        print_table(f"assign_attention {key}", timings, "reference")
    return out


def bench_step(device, preset, batch, triton_ok, rounds) -> dict:
    from pgseg_core.config import load_config
    from pgseg_core.models.factory import create_model

    cfg = load_config(preset)
    torch.manual_seed(0)
    model = create_model(cfg).to(device).train()
    size = cfg.data.img_size
    images = torch.randn(batch, 3, size, size, device=device)
    captions = [f"a photo of a cat and a dog number {i}" for i in range(batch)]
    amp = device.type == "cuda"

    def step(backend):
        os.environ["PGSEG_KERNELS"] = backend
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            losses = model.forward_train(captions, images)
        losses["loss"].backward()
        model.zero_grad(set_to_none=True)
        return losses

    contenders = {"kernels_off": lambda: step("torch")}
    if triton_ok:
        contenders["kernels_on"] = lambda: step("triton")
    before = os.environ.get("PGSEG_KERNELS")
    try:
        timings = round_robin(contenders, rounds=rounds, device=device)
    finally:
        os.environ.pop("PGSEG_KERNELS", None) if before is None else os.environ.update(PGSEG_KERNELS=before)
    print_table(f"pgseg_step {preset} batch {batch}", timings, "kernels_off")
    return {"preset": preset, "batch": batch, "timings": timings,
            "speedup_vs_kernels_off": ratios(timings, "kernels_off")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    ap.add_argument(
        "--step-batch",
        type=int,
        default=0,
        help="images per step, >= 2 for BatchNorm (0: 64 on CUDA, 4 on CPU)",
    )
    ap.add_argument("--skip-step", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds: checks that the script runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    interpreted = device.type == "cpu" and triton_interpreter()
    try:
        import triton  # noqa: F401

        triton_ok = device.type == "cuda" or (interpreted and args.quick)
    except ImportError:
        triton_ok = False
    rounds, inner = (2, 1) if args.quick else (args.rounds, 10 if device.type == "cuda" else 1)
    torch.manual_seed(0)
    results: dict = {
        "quick": args.quick,
        "interpreter": interpreted and triton_ok,
        "timing_claims": not args.quick and not interpreted,
        "triton_timed": triton_ok,
    }
    results["env"] = environment(device, rounds=rounds, inner=inner)
    if args.quick:
        results["assignment"] = bench_assignment(device, [(4, 6), (4, 3)], triton_ok, rounds, inner)
        results["npr_em"] = bench_npr_em(device, [(2, 20, 5), (2, 9, 3)], 16, 3, triton_ok, rounds, inner)
        results["assign_attention"] = bench_assign(device, [(2, 5, 20)], triton_ok, rounds, inner)
        step_args = ("pgseg-tiny", 2, False)
    else:
        results["assignment"] = bench_assignment(device, [(1024, 64), (1024, 8)], triton_ok, rounds, inner)
        em_shapes = [(256, 196, 64), (256, 64, 8)]
        results["npr_em"] = bench_npr_em(device, em_shapes, 384, 10, triton_ok, rounds, inner)
        results["assign_attention"] = bench_assign(
            device, [(256, 64, 196), (256, 8, 64)], triton_ok, rounds, inner
        )
        step_args = ("pgseg-s", max(2, args.step_batch or (64 if device.type == "cuda" else 4)), triton_ok)
    if not args.skip_step:
        results["pgseg_step"] = bench_step(device, *step_args, rounds=rounds)
    if args.out:
        write_results(args.out, results)


if __name__ == "__main__":
    main()

"""Compile every Triton kernel of pgseg_core.kernels for an sm_90 GPU (Hopper) without one: catches what
the interpreter does not (types of loop-carried values, unsupported ops, layouts). Run by
tests/test_kernels.py in a subprocess without TRITON_INTERPRET; prints one line per kernel, exits 1 on a
failure."""

import sys

import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from pgseg_core.kernels.linear_assignment.kernel import _hungarian
from pgseg_core.kernels.npr_em.kernel import _npr_em
from pgseg_core.kernels.assign_attention.kernel import _assign_fwd, _assign_bwd

target = GPUTarget("cuda", 90, 32)
jobs = [
    (
        _hungarian,
        {"cost_ptr": "*fp32", "out_ptr": "*i64", "K": "i32", "sign": "fp32", "BLOCK": "constexpr"},
        {"BLOCK": 128},
    ),
    (
        _hungarian,
        {"cost_ptr": "*bf16", "out_ptr": "*i64", "K": "i32", "sign": "fp32", "BLOCK": "constexpr"},
        {"BLOCK": 512},
    ),
]
em_sig = {
    "x_ptr": "*fp32",
    "mu_ptr": "*fp32",
    "z_ptr": "*fp32",
    "m_ptr": "*i8",
    "N": "i32",
    "K": "i32",
    "C": "i32",
    "iters": "i32",
    "x_sb": "i32",
    "x_sn": "i32",
    "HAS_MASK": "constexpr",
    "NORM_K": "constexpr",
    "BLOCK_N": "constexpr",
    "BLOCK_K": "constexpr",
    "BLOCK_C": "constexpr",
}
jobs.append(
    (_npr_em, em_sig, {"HAS_MASK": True, "NORM_K": False, "BLOCK_N": 32, "BLOCK_K": 64, "BLOCK_C": 64})
)
jobs.append(
    (
        _npr_em,
        dict(em_sig, x_ptr="*bf16"),
        {"HAS_MASK": False, "NORM_K": True, "BLOCK_N": 32, "BLOCK_K": 16, "BLOCK_C": 16},
    )
)
fs = {
    "logits_ptr": "*bf16",
    "noise_ptr": "*fp32",
    "attn_ptr": "*bf16",
    "soft_ptr": "*bf16",
    "w_ptr": "*bf16",
    "S": "i32",
    "N": "i32",
    "inv_tau": "fp32",
    "eps": "fp32",
    "GUMBEL": "constexpr",
    "HARD": "constexpr",
    "BLOCK_S": "constexpr",
    "BLOCK_N": "constexpr",
}
jobs.append((_assign_fwd, fs, {"GUMBEL": True, "HARD": True, "BLOCK_S": 64, "BLOCK_N": 64}))
bs = {
    "logits_ptr": "*fp32",
    "noise_ptr": "*fp32",
    "attn_ptr": "*fp32",
    "g_attn_ptr": "*fp32",
    "g_w_ptr": "*fp32",
    "g_logits_ptr": "*fp32",
    "S": "i32",
    "N": "i32",
    "inv_tau": "fp32",
    "eps": "fp32",
    "GUMBEL": "constexpr",
    "HARD": "constexpr",
    "BLOCK_S": "constexpr",
    "BLOCK_N": "constexpr",
}
jobs.append((_assign_bwd, bs, {"GUMBEL": False, "HARD": True, "BLOCK_S": 8, "BLOCK_N": 512}))
failed = 0
for fn, sig, consts in jobs:
    try:
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target)
        print("compiled", fn.__name__, consts)
    except Exception as e:  # noqa: BLE001 - report every kernel
        failed += 1
        print("FAILED", fn.__name__, consts, repr(e)[:2000])
sys.exit(1 if failed else 0)

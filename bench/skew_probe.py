"""Static probe (no GPU, nothing timed): what a band tile costs in Triton when its position terms come from dots
inside the tile instead of gathers from the materialized [N, 2S] C2P / P2C.

The idea (issue 3's "in-tile" design): for queries i0 .. i0 + BM and keys j0 .. j0 + BN the pairs' distances
i - j span W = BM + BN - 1 values, so with the W position rows they use gathered once, PK_w[w] = pos_key[d(delta_w)],
    c2p[i, j] = (Q PK_w^T)[i, (i - i0) - (j - j0) + BN - 1]     (and p2c likewise from PQ_w K^T),
a [BM, W] dot and a fixed "skew" gather (tl.gather along the window axis); no [N, 2S] tensor in memory.

This compiles a minimal forward loop of that form for sm_90 (the ptxas and nvdisasm in Triton's wheel) with each
term on / off, and prints registers, spills, shared memory and SASS counts. Run with the installed Triton or
another one (``PYTHONPATH=/path/to/triton-3.6``); TRITON_INTERPRET must be unset.

    python bench/skew_probe.py

What it found (2026-11-23, Triton 3.6 and 3.8, bf16, head dim 64): tl.gather lowers to warp shuffles (136 SHFL per
term at 64 x 64 under 8 warps); 64 x 64 under 8 warps with both terms: 255 registers, 196 bytes of spills (3.6),
139 KB of shared memory, 2144 SASS instructions in the kernel against 504 for the same kernel without position
terms (the loop is most of both); under 4 warps 900 bytes of spills. So a band tile would issue about 4 times a
plain tile's instructions before any memory stall: not a way to bring band tiles near a plain tile's cost, which
the issue's N 2048 targets need. Static counts, never timed.
"""

from __future__ import annotations

import argparse
import os
import re

import triton
import triton.language as tl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from deberta_fast.kernels import compile_check


@triton.jit
def _skew_loop(Q, K, V, PK, PQ, TABLE, O, N, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, W: tl.constexpr,
               C2P: tl.constexpr, P2C: tl.constexpr):
    i0 = tl.program_id(0) * BM
    om = tl.arange(0, BM)
    on = tl.arange(0, BN)
    od = tl.arange(0, D)
    ow = tl.arange(0, W)
    q = tl.load(Q + (i0 + om)[:, None] * D + od[None, :])
    acc = tl.zeros([BM, D], tl.float32)
    m_i = tl.full([BM], -float("inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    skew = om[:, None] - on[None, :] + (BN - 1)  # the window column of pair (i, j)
    for j0 in range(0, N, BN):
        k = tl.load(K + (j0 + on)[:, None] * D + od[None, :])
        v = tl.load(V + (j0 + on)[:, None] * D + od[None, :])
        s = tl.dot(q, tl.trans(k))
        delta = i0 - j0 - (BN - 1) + ow
        d = tl.load(TABLE + delta + N - 1, mask=(delta > -N) & (delta < N), other=0)
        if C2P:
            pk = tl.load(PK + d[:, None] * D + od[None, :])
            s += tl.gather(tl.dot(q, tl.trans(pk)), skew, 1)
        if P2C:
            pq = tl.load(PQ + d[:, None] * D + od[None, :])
            s += tl.gather(tl.dot(pq, tl.trans(k)), skew, 0)
        m_new = tl.maximum(m_i, tl.max(s, 1) * 0.125)
        p = tl.math.exp2(s * 0.125 - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    tl.store(O + (i0 + om)[:, None] * D + od[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty))


def compile_probe(block_m, block_n, warps, stages, c2p, p2c):
    signature = dict(Q="*bf16", K="*bf16", V="*bf16", PK="*bf16", PQ="*bf16", TABLE="*i32", O="*bf16", N="i32",
                     D="constexpr", BM="constexpr", BN="constexpr", W="constexpr", C2P="constexpr", P2C="constexpr")
    constexprs = dict(D=64, BM=block_m, BN=block_n, W=triton.next_power_of_2(block_m + block_n), C2P=c2p, P2C=p2c)
    attrs = {(index,): BaseBackend.parse_attr("D") for index in range(8)}  # 16-byte aligned pointers, N % 16 == 0
    source = ASTSource(_skew_loop, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def sass_report(compiled) -> dict:
    """compile_check.ptxas_report (registers, spills, shared memory) and counts of SASS instructions, shuffles,
    shared-memory loads / stores and barriers."""
    text = compile_check.sass(compiled)
    count = lambda pattern: len(re.findall(pattern, text))  # noqa: E731
    return dict(compile_check.ptxas_report(compiled), sass=count(r"/\*[0-9a-f]+\*/\s"), shfl=count("SHFL"),
                lds=count(r"\bLDS"), sts=count(r"\bSTS"), bar=count("BAR.SYNC"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="64x64x4x2,64x64x8x2,128x64x8x2,64x32x4x2",
                        help="block_m x block_n x warps x stages, comma-separated")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: this compiles the loop for sm_90")
    print(f"Triton {triton.__version__}, sm_90, bf16, head dim 64; (block_m, block_n, warps, stages)")
    reports = {}
    for config in [tuple(int(x) for x in item.split("x")) for item in args.configs.split(",")]:
        for terms in [(False, False), (True, False), (False, True), (True, True)]:
            report = sass_report(compile_probe(*config, *terms))
            label = "+".join(name for name, on in zip(("c2p", "p2c"), terms) if on) or "none"
            reports[config, label] = report
            print(f"{str(config):18s} {label:8s} " + " ".join(f"{key} {value}" for key, value in report.items()))
    return reports


if __name__ == "__main__":
    main()

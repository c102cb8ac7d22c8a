"""Where a fused backend's time goes: torch.profiler's table of CUDA kernels for forward and backward.

    python bench/profile_attention.py --backend cuda --seqlens 512,2048 [--tokens 16384] [--sync-debug] [--out DIR]
    ncu --kernel-name regex:_dq_kernel --launch-skip 2 --launch-count 1 --set full \
        python bench/profile_attention.py --backend triton --seqlens 512 --no-profiler   # one kernel, in depth

v3 settings (buckets 256, max relative 512), H 12, D 64, bf16, no padding, B * N = --tokens. First, without
the profiler, the host's time to issue a forward+backward step against the step's GPU time: when the two are
close, the step is bound by the host (Python, dispatch, launches), not by the kernels. Then the kernels sorted
by total CUDA time; with --out, each table goes to DIR/profile_<backend>_N<N>.txt. --host-profile adds
cProfile's table of the host's Python work over 20 steps (which functions the host's time to issue a step goes
to: the op's glue, the Triton launcher, torch's dispatch), to DIR/host_<backend>_N<N>.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

import deberta_fast as df


def issue_times(step, steps: int = 10) -> tuple[float, float]:
    """(host ms, GPU ms) of one step, medians over ``steps``: the host's wall time from the call to its
    return (the GPU idle before it, so no queue hides the host's work) and the CUDA-event span of its work,
    which the host's pace stretches: a span close to the host time means the host is the bound."""
    host, gpu = [], []
    for _ in range(steps):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        step()
        end.record()
        host.append(1e3 * (time.perf_counter() - t0))
        torch.cuda.synchronize()
        gpu.append(start.elapsed_time(end))
    return sorted(host)[steps // 2], sorted(gpu)[steps // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cuda")
    p.add_argument("--seqlens", default="512,2048")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--rows", type=int, default=25, help="kernels listed")
    p.add_argument("--sync-debug", action="store_true", help="report host-device synchronizations of one step")
    p.add_argument("--no-profiler", action="store_true",
                   help="only run the steps (for an outside profiler such as Nsight Compute)")
    p.add_argument("--host-profile", action="store_true", help="cProfile the host's Python work of 20 steps")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_attention.py needs a CUDA device")
    H, D = args.heads, args.head_dim
    for n in (int(x) for x in args.seqlens.split(",")):
        b = max(1, args.tokens // n)
        q, k, v = (torch.randn(b, n, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        pk, pq = (torch.randn(512, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))

        def step(q=q, k=k, v=v, pk=pk, pq=pq):
            out = df.disentangled_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                            pk.transpose(0, 1), pq.transpose(0, 1), backend=args.backend)
            out.backward(torch.ones_like(out))

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        if args.no_profiler:
            continue
        host, gpu = issue_times(step)
        timing = (f"host issue {host:.3f} ms a step, GPU span {gpu:.3f} ms a step (median of 10 single steps; "
                  f"{'host-bound' if host >= 0.8 * gpu else 'GPU-bound'})")
        print(f"backend {args.backend}, N {n}: {timing}", flush=True)
        if args.host_profile:
            title = f"backend {args.backend}, N {n}"
            write(args, f"host_{args.backend}_N{n}.txt", host_profile(step, args.rows, title))
        if args.sync_debug:  # every operation that waits for the GPU (a blocking copy, .item()) warns, with where
            torch.cuda.set_sync_debug_mode("warn")
            step()
            torch.cuda.set_sync_debug_mode("default")
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=90)
        header = f"backend {args.backend}, B {b}, N {n}, H {H}, D {D}, bf16, 5 forward+backward steps; {timing}"
        write(args, f"profile_{args.backend}_N{n}.txt", header + "\n" + table)


def host_profile(step, rows: int, title: str, steps: int = 20) -> str:
    """cProfile's table (by own time, then by cumulative time) of ``steps`` steps issued back to back, the GPU
    synchronized only after the last: the host's Python work per function."""
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    text.write(f"{title}: cProfile of {steps} forward+backward steps\n")
    for key in ("tottime", "cumulative"):
        pstats.Stats(prof, stream=text).sort_stats(key).print_stats(rows)
    return text.getvalue()


def write(args, name: str, text: str) -> None:
    """Print ``text``; with --out also write it to DIR/name."""
    print(text, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, name), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

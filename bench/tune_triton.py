"""Time every block config of the Triton kernels, one kernel at a time, and record the JSON that
bench/make_tuned.py turns into deberta_fast/kernels/tuned.py (the defaults used when autotuning is off).

    python bench/tune_triton.py --dtype bfloat16 --head-dims 64,128 --seqlens 512,2048,8192

For each head dim and sequence length (B = tokens // N, H 12, v3 position settings, no padding, no dropout):
the forward op is timed once per forward config; the backward op once per dK/dV config (dQ at its
prune-first config) and once per dQ config (dK/dV at its prune-first config). Each timing is the whole op
(its GEMMs and buffers included), so rows of one kernel differ only by that kernel's config. Every config
the prune filter keeps for the shape is timed, and the fused backward (DEBERTA_FAST_TRITON_BACKWARD=fused,
kernel "dkdv+dq") once per dK/dV config; a config that fails (compile error, out of resources) is
recorded with its error, not timed. ``--band bias`` times the same under DEBERTA_FAST_TRITON_BAND=bias (band
tiles read the precomputed band bias), as kernels "fwd+bias", "dkdv+bias", "dq+bias" and "dkdv+dq+bias" (the
names common.measured_config looks up in that mode). On the CPU (TRITON_INTERPRET=1 set before anything imports
triton) it runs the single interpreter config: a smoke test of this script, not a measurement.

``--jobs J``: J processes first run every config once, untimed, so that Triton compiles them in parallel into
its disk cache; the timing then runs alone, on compiled kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import traceback
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attention import DTYPES, _quantile, time_fn  # noqa: E402
from common import environment, progress, write_json  # noqa: E402

# "dkdv+dq": the fused backward (DEBERTA_FAST_TRITON_BACKWARD=fused), the dK/dV kernel that also adds dQ.
KERNEL_NAMES = ("fwd", "dkdv", "dq", "dkdv+dq")


def _kernels():
    from deberta_fast.kernels import attention_bwd, attention_fwd, common

    kernels = {"fwd": attention_fwd._attn_fwd_kernel, "dkdv": attention_bwd._dkdv_kernel, "dq": attention_bwd._dq_kernel,
               "dkdv+dq": attention_bwd._dkdv_kernel}
    return kernels, attention_fwd, attention_bwd, common


def inputs(B: int, N: int, H: int, D: int, S: int, dtype: torch.dtype, device: str, seed: int = 0):
    """q, k, v ``[B, H, N, D]`` views of ``[B, N, H, D]``, pos tables ``[H, 2S, D]`` views of ``[2S, H, D]``
    (the model's layouts), and dO like q."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*size):
        return torch.randn(*size, generator=g).to(device=device, dtype=dtype)

    q, k, v, dout = (rnd(B, N, H, D).transpose(1, 2) for _ in range(4))
    pos_key, pos_query = (rnd(2 * S, H, D).transpose(0, 1) for _ in range(2))
    return q, k, v, pos_key, pos_query, dout


def shape_rows(D: int, N: int, args, take=None) -> list[dict]:
    """Timed rows of every kept config of the three kernels at one head dim and sequence length, every run under
    DEBERTA_FAST_TRITON_BAND = ``args.band``.

    ``take(i)``: compile only (a ``--jobs`` worker): run the op once, untimed, with the i-th (config, kernel)
    of the shape where ``take(i)`` is true, so the timing process finds every kernel in Triton's disk cache."""
    with mock.patch.dict(os.environ, {_kernels()[3].BAND_ENV: args.band}):
        return _shape_rows(D, N, args, take)


def _shape_rows(D: int, N: int, args, take) -> list[dict]:
    kernels, attention_fwd, attention_bwd, common = _kernels()
    dtype = DTYPES[args.dtype]
    B = max(1, args.tokens // N)
    S = args.buckets
    q, k, v, pos_key, pos_query, dout = inputs(B, N, args.heads, D, S, dtype, args.device)
    settings = dict(position_buckets=args.buckets, max_relative_positions=args.max_rel, scale=D ** -0.5,
                    dropout_p=0.0, masked_zero=False, precision="ieee")
    named = {"N": N, "Q": q}

    def kept(name):
        kernel = kernels[name]
        return kernel.early_config_prune(kernel.configs, named, HEAD_DIM=D)

    first = {name: kept(name)[0] for name in KERNEL_NAMES}  # the other kernels' configs, held fixed
    with common.forced_config(kernels["fwd"], first["fwd"]):
        out, lse = attention_fwd.attention_forward(q, k, v, pos_key, pos_query, None, None, **settings)

    def run_forward():
        attention_fwd.attention_forward(q, k, v, pos_key, pos_query, None, None, **settings)

    def backward(variant):  # the switch set either way: unset, the backend would pick by its measured table
        def run():
            with mock.patch.dict(os.environ, {attention_bwd.BACKWARD_ENV: variant}):
                attention_bwd.attention_backward(dout, q, k, v, pos_key, pos_query, None, None, out, lse, **settings)
        return run

    runs = {"fwd": run_forward, "dkdv": backward("split"), "dq": backward("split"), "dkdv+dq": backward("fused")}
    suffix = "" if args.band == "gather" else f"+{args.band}"

    device = torch.device(args.device)
    rows = []
    plan = [(name, config) for name in KERNEL_NAMES for config in kept(name)]
    for index, (name, config) in enumerate(plan):
        if take is not None and not take(index):
            continue
        row = dict(kernel=name + suffix, band=args.band, dtype=args.dtype, D=D, N=N, B=B, H=args.heads,
                   position_buckets=args.buckets, max_relative_positions=args.max_rel,
                   config=list(common.config_shape(config)),
                   prune_first=common.config_shape(config) == common.config_shape(first[name]),
                   timed="forward op" if name == "fwd" else "backward op" + (" (fused)" if name == "dkdv+dq" else ""))
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(common.forced_config(kernels[name], config))
                for other in {"dkdv": ["dq"], "dq": ["dkdv"]}.get(name, []):
                    stack.enter_context(common.forced_config(kernels[other], first[other]))
                if take is not None:
                    runs[name]()
                    continue
                times = time_fn(runs[name], device, args.rep, args.warmup)
            row.update(status="ok", times_ms=times, median_ms=statistics.median(times),
                       p20_ms=_quantile(times, 0.2), p80_ms=_quantile(times, 0.8))
        except Exception as exc:  # e.g. out of shared memory on this GPU: recorded, not timed
            row.update(status=f"error: {type(exc).__name__}: {exc}"[:500])
            if take is not None:
                continue  # the timing process meets and records the same error
            traceback.print_exc()
        print(f"{name + suffix:5s} D {D:3d} N {N:6d} {row['config']} {row['status']:>3s} "
              f"{row.get('median_ms', float('nan')):9.3f} ms", flush=True)
        rows.append(row)
    return rows


def compile_in_parallel(argv: list[str], jobs: int) -> None:
    """Run ``jobs`` compile workers (this script with ``--shard k/jobs``) to their end. A worker's failure is
    reported and otherwise ignored: the timing run compiles whatever is missing, and records real errors."""
    base = [sys.executable, str(Path(__file__).resolve()), *argv, "--jobs", "1"]
    workers = [subprocess.Popen(base + ["--shard", f"{k}/{jobs}"], stdout=subprocess.DEVNULL) for k in range(jobs)]
    for k, worker in enumerate(workers):
        if worker.wait() != 0:
            print(f"compile worker {k}/{jobs} exited with status {worker.returncode}", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--head-dims", default="64,128")
    p.add_argument("--seqlens", default="512,2048,8192")
    p.add_argument("--tokens", type=int, default=16384, help="B * N of every shape")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--buckets", type=int, default=256)
    p.add_argument("--max-rel", type=int, default=512)
    p.add_argument("--band", default="gather", choices=["gather", "oriented", "bias"],
                   help="DEBERTA_FAST_TRITON_BAND of every timed run (kernel names get '+oriented' / '+bias')")
    p.add_argument("--rep", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/triton_configs_<device>_<dtype>.json)")
    p.add_argument("--jobs", type=int, default=1,
                   help="processes that first compile every config (untimed, one op each) into Triton's disk "
                        "cache, so the timing runs alone and warm; compiling is CPU work, one kernel at a time "
                        "per process")
    p.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # "k/n": one of those processes
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (on the CPU, set TRITON_INTERPRET=1 and pass --device cpu)")
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--device cpu runs the kernels under Triton's interpreter: set TRITON_INTERPRET=1")
    if args.buckets <= 0:
        raise SystemExit("--buckets must be positive (the v3 setting is 256)")
    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    shapes = [(int(d), int(n)) for d in args.head_dims.split(",") for n in args.seqlens.split(",")]
    if args.shard is not None:  # a compile worker: every n-th config of every shape, untimed, no JSON
        k, n = (int(x) for x in args.shard.split("/"))
        for D, N in shapes:
            shape_rows(D, N, args, take=lambda index: index % n == k)
        return 0
    if args.jobs > 1:
        compile_in_parallel(argv if argv is not None else sys.argv[1:], args.jobs)
    band = "" if args.band == "gather" else f"_{args.band}"
    out = args.out or Path(__file__).resolve().parent / "results" / f"triton_configs_{args.device.split(':')[0]}_{args.dtype}{band}.json"
    rows = []
    for D, N in progress(shapes, "tune"):
        rows.extend(shape_rows(D, N, args))
        write_json(out, {"benchmark": "triton_configs", "env": environment(), "args": vars(args) | {"out": str(out)},
                         "rows": rows})  # after every shape: a cut-off run keeps what it measured
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

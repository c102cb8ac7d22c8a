"""Attention benchmarks: deberta_fast's backends against PyTorch SDPA, transformers and peer kernels.

Two levels, both recorded as JSON rows (data first; tables and plots are made from the JSON by
bench/report.py):

- ``op``: the attention core on [B, H, N, D] inputs. Providers: ``df-torch``, ``df-triton``, ``df-cuda``
  (deberta_fast.disentangled_attention with that backend), ``sdpa-bias`` (PyTorch SDPA with the two position
  terms materialized as an additive [B, H, N, N] bias: the best stock PyTorch offers) and ``sdpa-floor``
  (SDPA's flash backend with no bias at all, its memory-efficient one in float32: plain attention of the same
  shape, the floor). The Triton
  backend's six variants, each measured with both switches set for the whole forward and backward:
  ``df-triton-gather`` (DEBERTA_FAST_TRITON_BAND=gather, DEBERTA_FAST_TRITON_BACKWARD=split),
  ``df-triton-bias`` (bias, split), ``df-triton-fused`` (gather, fused), ``df-triton-bias-fused`` (bias,
  fused), ``df-triton-oriented`` (oriented, split) and ``df-triton-oriented-fused`` (oriented, fused);
  bench/make_selection.py makes the backend's per-shape choice (with the switches unset) of them.
  ``df-triton-noprefetch``: the Triton backend's own choice with DEBERTA_FAST_TRITON_PREFETCH=0 (INNER band tiles
  load their position terms where used, not one tile ahead; bench/common.py TRITON_SWITCHED).
  ``df-cuda-staged``: the cuda backend with DEBERTA_FAST_CUDA_BAND=staged (the band tiles of its three kernels read
  C2P / P2C from slabs staged in shared memory); ``df-cuda-staged-128x32`` / ``df-cuda-staged-64x64`` with the
  forward's opt-in tiles too (DEBERTA_FAST_CUDA_FWD_TILES), ``df-cuda-64x64`` those tiles gathering;
  ``df-cuda-wgmma`` / ``df-cuda-wgmma-staged`` / ``df-cuda-wgmma-plain`` the kernels' products by warpgroup MMA
  (DEBERTA_FAST_CUDA_MMA=wgmma; head dim 64, an sm_90a build) gathering / staged / on plain attention (none of
  these is part of ``auto``'s choice; bench/common.py CUDA_VARIANTS).
  ``df-triton-plain`` / ``df-cuda-plain`` (and ``df-torch-plain``): the fused kernel on the floor's own problem,
  no position terms and no mask, compared with the torch backend's plain attention: how far the kernels' base
  loop is from SDPA flash, apart from the position terms.
- ``layer``: a whole DisentangledSelfAttention module (q/k/v/position projections + core) on hidden states
  [B, N, hidden], the same weights for every provider. Providers: ``hf-eager`` (transformers), ``df-<backend>``
  (deberta_fast's module), ``flashdeberta`` and ``disentangled-flash`` (PyPI packages, when installed).

Every provider's output (and, for backward modes, input gradient) is checked against deberta_fast's torch
backend in float32 before it is timed; one that disagrees is recorded with status "mismatch" and not timed;
one that fails with status "error" and its message.

Timing: CUDA through triton.testing.do_bench when available (it flushes the L2 cache between runs), else
CUDA events; CPU through perf_counter. Medians with 20th/80th percentiles over ``--rep`` runs, and inputs
rotated over ``--rotate`` copies so caches do not flatter. Peak memory: torch.cuda.max_memory_allocated
above the inputs (CUDA only).

FLOPs (the FlashAttention convention, so figures compare with plain attention of the same shape):
    forward   = 4 * B * H * N^2 * D                (QK^T and PV)
    backward  = 2.5 * forward                      (five N^2 D matmuls against two)
    fwd+bwd   = 3.5 * forward
The position terms add 2 * 2 * B * H * N * 2S * D in the forward (two [N, D] x [D, 2S] GEMMs); they are not
counted, so the TFLOP/s of a disentangled provider reads as "plain-attention-equivalent" throughput.

    python bench/attention.py                              # CPU smoke run (small N), writes bench/results/
    python bench/attention.py --device cuda --dtype bfloat16 --seqlens 128,256,512,1024,2048,4096,8192,16384
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    CUDA_VARIANTS, TRITON_SWITCHED, TRITON_VARIANTS, environment, progress, results_dir, usable_backends, write_json,
)

import deberta_fast as df  # noqa: E402
from deberta_fast.positions import relative_position_index  # noqa: E402

MODES = ("fwd", "bwd", "fwd_bwd")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def attention_flops(B: int, H: int, N: int, D: int, mode: str) -> float:
    fwd = 4.0 * B * H * N * N * D
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd_bwd": 3.5 * fwd}[mode]


# --- inputs ----------------------------------------------------------------------------------


class Shape:
    def __init__(self, args: argparse.Namespace, N: int):
        self.N = N
        self.B = max(1, args.tokens // N)
        self.H, self.D = args.heads, args.head_dim
        self.buckets, self.max_rel = args.buckets, args.max_rel
        self.S = self.buckets if self.buckets > 0 else self.max_rel
        self.padded = args.padded
        self.dtype = DTYPES[args.dtype]
        self.device = torch.device(args.device)

    def mask(self) -> torch.Tensor | None:
        if not self.padded:
            return None
        m = torch.ones(self.B, self.N, dtype=torch.bool, device=self.device)
        lengths = torch.linspace(self.N // 2, self.N, self.B).long()  # a padded batch: lengths N/2 .. N
        for b, n in enumerate(lengths.tolist()):
            m[b, n:] = False
        return m

    def describe(self) -> dict:
        return dict(B=self.B, H=self.H, N=self.N, D=self.D, S=self.S, position_buckets=self.buckets,
                    max_relative_positions=self.max_rel, dtype=str(self.dtype).removeprefix("torch."),
                    padded=self.padded, device=self.device.type)


def op_inputs(shape: Shape, seed: int, requires_grad: bool):
    """q, k, v as [B, N, H, D] views transposed to [B, H, N, D] (the model's layout), pos tables [H, 2S, D]."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, H, N, D, S = shape.B, shape.H, shape.N, shape.D, shape.S

    def rnd(*size):
        t = torch.randn(*size, generator=g).to(device=shape.device, dtype=shape.dtype)
        return t.requires_grad_(requires_grad)

    q, k, v = (rnd(B, N, H, D) for _ in range(3))
    pk, pq = rnd(2 * S, H, D), rnd(2 * S, H, D)
    views = [t.transpose(1, 2) for t in (q, k, v)] + [t.transpose(0, 1) for t in (pk, pq)]
    return [q, k, v, pk, pq], views


# --- op-level providers: fn(views, mask, scale) -> out [B, H, N, D] ---------------------------


def df_op(backend: str):
    def run(views, mask, shape, scale):
        return df.disentangled_attention(*views, mask, position_buckets=shape.buckets,
                                         max_relative_positions=shape.max_rel, scale=scale, backend=backend)
    return run


def df_plain(backend: str):
    """The fused kernel on plain attention (no position terms, no mask), the floor's own problem: how close the
    kernel's base loop comes to SDPA flash, apart from the position terms."""
    def run(views, mask, shape, scale):
        return df.disentangled_attention(*views[:3], scale=scale, backend=backend)
    return run


PLAIN_SUFFIX = "-plain"  # df-<backend>-plain: df_plain(backend)


def variant_switches(provider: str) -> dict:
    """The environment a Triton or cuda variant provider is measured under (forward and backward); {} for the
    others (df-triton itself runs whatever the switches say, by default the backend's own per-shape choice)."""
    if provider in CUDA_VARIANTS:
        return dict(CUDA_VARIANTS[provider])
    if provider in TRITON_SWITCHED:
        return dict(TRITON_SWITCHED[provider])
    if provider not in TRITON_VARIANTS:
        return {}
    from deberta_fast.kernels.common import BACKWARD_ENV, BAND_ENV

    band, backward = TRITON_VARIANTS[provider]
    return {BAND_ENV: band, BACKWARD_ENV: backward}


def sdpa_bias(views, mask, shape, scale):
    """Stock PyTorch: the position terms gathered into an additive bias, then SDPA."""
    q, k, v, pk, pq = views
    index = relative_position_index(shape.N, shape.buckets, shape.max_rel, device=q.device)
    index = index.expand(shape.B, shape.H, shape.N, shape.N)
    c2p = torch.gather(torch.matmul(q, pk.transpose(-1, -2)), -1, index)
    p2c = torch.gather(torch.matmul(pq, k.transpose(-1, -2)), -2, index)
    bias = (c2p + p2c) * scale
    if mask is not None:
        pair = mask[:, None, :, None] & mask[:, None, None, :]
        bias = bias.masked_fill(~pair, torch.finfo(bias.dtype).min)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def sdpa_floor(views, mask, shape, scale):
    """Plain attention of the same shape, no bias and no mask: the floor a fused kernel aims at. On CUDA SDPA's
    flash backend; in float32, which it does not take, the memory-efficient backend."""
    q, k, v = views[:3]
    if q.device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = SDPBackend.EFFICIENT_ATTENTION if q.dtype == torch.float32 else SDPBackend.FLASH_ATTENTION
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


# --- layer-level providers: build(hf_config, state_dict, device, dtype) -> fn(hidden, mask2d, rel) ----


def _hf_config(shape: Shape):
    from transformers import DebertaV2Config

    return DebertaV2Config(
        hidden_size=shape.H * shape.D, num_attention_heads=shape.H, intermediate_size=4 * shape.H * shape.D,
        relative_attention=True, position_buckets=shape.buckets, max_relative_positions=shape.max_rel,
        pos_att_type="p2c|c2p", share_att_key=True, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0,
    )


def _hf_mask(mask2d, B, N, device):
    m = mask2d if mask2d is not None else torch.ones(B, N, dtype=torch.bool, device=device)
    m = m.long()
    return m[:, None, None, :] * m[:, None, :, None]  # transformers' encoder passes [B, 1, N, N]


def layer_hf(cfg, state, device, dtype):
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

    module = DisentangledSelfAttention(cfg).to(device=device, dtype=dtype).eval()
    module.load_state_dict(state)

    def run(hidden, mask2d, rel):
        return module(hidden, _hf_mask(mask2d, hidden.shape[0], hidden.shape[1], hidden.device),
                      rel_embeddings=rel)[0]
    return run


def layer_df(backend):
    def build(cfg, state, device, dtype):
        from deberta_fast.modeling import DisentangledSelfAttention

        config = df.DebertaV2Config.from_dict(cfg.to_dict(), attn_backend=backend)
        module = DisentangledSelfAttention(config).to(device=device, dtype=dtype).eval()
        module.load_state_dict(state)

        def run(hidden, mask2d, rel):
            # the position projections are part of the layer's work, as in the other providers
            return module(hidden, mask2d, module.position_tables(rel))[0]
        return run
    return build


def layer_flashdeberta(cfg, state, device, dtype):
    from flashdeberta.model import FlashDisentangledSelfAttention

    module = FlashDisentangledSelfAttention(cfg).to(device=device, dtype=dtype).eval()
    module.load_state_dict(state)

    def run(hidden, mask2d, rel):
        return module(hidden, _hf_mask(mask2d, hidden.shape[0], hidden.shape[1], hidden.device),
                      rel_embeddings=rel)[0]
    return run


def layer_disentangled_flash(cfg, state, device, dtype, training: bool):
    if training:
        from disentangled_flash import TritonTrainingDisentangledSelfAttention as Module
    else:
        from disentangled_flash.kernel import InferenceDisentangledSelfAttention as Module
    module = Module(cfg).to(device=device, dtype=dtype).eval()
    module.load_state_dict(state, strict=False)

    def run(hidden, mask2d, rel):
        m = mask2d if mask2d is not None else torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return module(hidden, m.long(), rel_embeddings=rel)[0]
    return run


# --- timing ----------------------------------------------------------------------------------


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device: torch.device, rep: int, warmup: int) -> list[float]:
    """Run times in milliseconds."""
    if device.type == "cuda":
        try:
            import triton.testing

            return list(triton.testing.do_bench(fn, warmup=warmup * 10, rep=rep * 10, return_mode="all"))
        except (ImportError, TypeError):
            pass
        times = []
        for i in range(warmup + rep):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(end))
        return times
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def _real_rows(t: torch.Tensor, mask: torch.Tensor | None, n_dim: int) -> torch.Tensor:
    """``t`` with the rows of padding tokens (dimension ``n_dim`` is N) zeroed: what padded rows get is a
    convention (transformers, SDPA with a bias and the fused kernels differ there), real rows must agree."""
    if mask is None:
        return t.detach().float()
    shape = [1] * t.dim()
    shape[0], shape[n_dim] = mask.shape
    return t.detach().float() * mask.view(shape)


def measure(name, level, run, make_args, leaves_of, reference, shape, mode, args) -> dict:
    """Check ``run`` against ``reference`` (output, first-input gradient; None: not comparable, only run) on
    the rows of real tokens, then time it in ``mode``."""
    row = dict(level=level, provider=name, mode=mode, **shape.describe())
    device = shape.device
    try:
        sets = [make_args(seed) for seed in range(args.rotate)]
        call_args = sets[0]
        with torch.set_grad_enabled(mode != "fwd"):  # forward mode is checked as it is timed: without autograd
            out = run(*call_args)
        if mode != "fwd":
            grad = torch.ones_like(out) / math.sqrt(out.numel())
            out.backward(grad)
        if reference is not None:
            mask = shape.mask()
            out_n_dim = 2 if level == "op" else 1  # op outputs [B, H, N, D]; layers [B, N, hidden]
            err = _max_err(_real_rows(out, mask, out_n_dim), _real_rows(reference[0], mask, out_n_dim))
            tol = args.tolerance * max(1.0, reference[0].abs().max().item())
            if mode != "fwd":
                g = leaves_of(call_args)[0].grad  # the leaf is [B, N, ...] at both levels
                err = max(err, _max_err(_real_rows(g, mask, 1), _real_rows(reference[1], mask, 1))
                          / max(1.0, reference[1].abs().max().item()))
            row["max_err"] = err
            if not math.isfinite(err) or err > tol:
                row.update(status="mismatch", note=f"max error {err:.3e} > tolerance {tol:.3e}; not timed")
                return row
        for s in sets:
            for t in leaves_of(s):
                t.grad = None
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        it = iter(range(1 << 30))

        if mode == "fwd":
            def step():
                with torch.no_grad():
                    run(*sets[next(it) % len(sets)])
        elif mode == "fwd_bwd":
            def step():
                a = sets[next(it) % len(sets)]
                o = run(*a)
                o.backward(torch.ones_like(o))
        else:  # bwd: forward graphs built once, only the backward timed
            outs = [run(*a) for a in sets]
            grads = [torch.ones_like(o) for o in outs]

            def step():
                i = next(it) % len(sets)
                outs[i].backward(grads[i], retain_graph=True)

        times = time_fn(step, device, args.rep, args.warmup)
        median = statistics.median(times)
        row.update(status="ok", times_ms=times, median_ms=median, p20_ms=_quantile(times, 0.2),
                   p80_ms=_quantile(times, 0.8),
                   tflops=attention_flops(shape.B, shape.H, shape.N, shape.D, mode) / (median * 1e-3) / 1e12)
        if device.type == "cuda":
            row["peak_memory_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    except Exception as exc:  # a provider that cannot run this case is reported, not fatal
        row.update(status="error", note=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        if args.verbose:
            traceback.print_exc()
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


# --- the runs --------------------------------------------------------------------------------


def op_table() -> dict:
    """Every op-level provider by name: ``fn(views, mask, shape, scale) -> [B, H, N, D]``."""
    table = {"df-torch": df_op("torch"), "df-triton": df_op("triton"), "df-cuda": df_op("cuda"),
             "sdpa-bias": sdpa_bias, "sdpa-floor": sdpa_floor}
    table.update({name: df_op("triton") for name in (*TRITON_VARIANTS, *TRITON_SWITCHED)})
    table.update({name: (df_plain if name.endswith(PLAIN_SUFFIX) else df_op)("cuda") for name in CUDA_VARIANTS})
    table.update({f"df-{backend}{PLAIN_SUFFIX}": df_plain(backend) for backend in ("torch", "triton", "cuda")})
    return table


LAYER_PROVIDERS = ("hf-eager", "df-torch", "df-triton", "df-cuda", "flashdeberta", "disentangled-flash")


def op_rows(shape: Shape, providers: list[str], args) -> list[dict]:
    scale = 1.0 / math.sqrt(3 * shape.D)
    mask = shape.mask()
    table = op_table()
    rows = []
    for mode in args.modes:
        need_grad = mode != "fwd"

        def make_args(seed, need_grad=need_grad):
            leaves, views = op_inputs(shape, seed, need_grad)
            return views, mask, shape, scale, leaves

        # reference: the torch backend in float32 on the first input set
        leaves32, views32 = op_inputs(shape, 0, need_grad)
        views32 = [t.float() for t in views32]
        ref_out = df.disentangled_attention(*views32, mask, position_buckets=shape.buckets,
                                            max_relative_positions=shape.max_rel, scale=scale, backend="torch")
        ref_grad = None
        if need_grad:
            ref_out.backward(torch.ones_like(ref_out) / math.sqrt(ref_out.numel()))
            ref_grad = leaves32[0].grad
        plain_ref = None
        if any(name.endswith(PLAIN_SUFFIX) for name in providers):  # plain attention, unmasked, the same inputs
            plain_leaves, plain_views = op_inputs(shape, 0, need_grad)
            plain_out = df.disentangled_attention(*[t.float() for t in plain_views[:3]], scale=scale, backend="torch")
            if need_grad:
                plain_out.backward(torch.ones_like(plain_out) / math.sqrt(plain_out.numel()))
            plain_ref = (plain_out.detach(), plain_leaves[0].grad if need_grad else None)
        for name in providers:
            run = table[name]
            # sdpa-floor computes plain attention without a mask (different math): it is run and timed, not
            # compared; the -plain providers compute that too, compared with the torch backend's plain attention
            reference = plain_ref if name.endswith(PLAIN_SUFFIX) else (ref_out.detach(), ref_grad)
            reference = None if name == "sdpa-floor" else reference
            with mock.patch.dict(os.environ, variant_switches(name)):
                rows.append(measure(name, "op", lambda v, m, s, sc, leaves, run=run: run(v, m, s, sc), make_args,
                                    lambda a: [a[4][0]], reference, shape, mode, args))
    return rows


def layer_rows(shape: Shape, providers: list[str], args) -> list[dict]:
    try:
        cfg = _hf_config(shape)
        from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention
    except ImportError as exc:
        return [dict(level="layer", provider="hf-eager", status="error", note=f"transformers missing: {exc}",
                     **shape.describe())]
    torch.manual_seed(0)
    state = DisentangledSelfAttention(cfg).state_dict()
    hidden_size = shape.H * shape.D
    mask = shape.mask()
    builders = {"hf-eager": layer_hf, "df-torch": layer_df("torch"), "df-triton": layer_df("triton"),
                "df-cuda": layer_df("cuda"), "flashdeberta": layer_flashdeberta}
    rows = []
    for mode in args.modes:
        need_grad = mode != "fwd"

        def make_args(seed, need_grad=need_grad):
            g = torch.Generator().manual_seed(seed)
            hidden = torch.randn(shape.B, shape.N, hidden_size, generator=g).to(shape.device, shape.dtype)
            rel = torch.randn(2 * shape.S, hidden_size, generator=g).to(shape.device, shape.dtype)
            return hidden.requires_grad_(need_grad), mask, rel

        ref_run = layer_df("torch")(cfg, state, shape.device, torch.float32)
        h, m, r = make_args(0)
        h32 = h.detach().float().requires_grad_(need_grad)
        ref_out = ref_run(h32, m, r.float())
        ref_grad = None
        if need_grad:
            ref_out.backward(torch.ones_like(ref_out) / math.sqrt(ref_out.numel()))
            ref_grad = h32.grad
        for name in providers:
            if name == "disentangled-flash":
                def build(cfg, state, device, dtype, training=need_grad):
                    return layer_disentangled_flash(cfg, state, device, dtype, training)
            else:
                build = builders[name]
            try:
                run = build(cfg, state, shape.device, shape.dtype)
            except Exception as exc:
                rows.append(dict(level="layer", provider=name, mode=mode, status="error",
                                 note=f"{type(exc).__name__}: {exc}".splitlines()[0][:500], **shape.describe()))
                continue
            rows.append(measure(name, "layer", run, make_args, lambda a: [a[0]], (ref_out.detach(), ref_grad),
                                shape, mode, args))
    return rows


def default_providers(device: str, head_dim: int) -> tuple[list[str], list[str]]:
    usable = usable_backends(device, head_dim)
    ops = [f"df-{name}" for name in usable] + ["sdpa-bias", "sdpa-floor"]
    ops += [f"df-{name}{PLAIN_SUFFIX}" for name in usable if name != "torch"]  # the kernels' base loop vs the floor
    layers = ["hf-eager"] + [f"df-{name}" for name in usable]
    for package, provider in (("flashdeberta", "flashdeberta"), ("disentangled_flash", "disentangled-flash")):
        try:
            __import__(package)
            layers.append(provider)
        except Exception:
            pass
    return ops, layers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--seqlens", default=None, help="comma-separated N (default: 128..16384 on CUDA, 128,256 on CPU)")
    p.add_argument("--tokens", type=int, default=None, help="B * N held constant (default 16384 CUDA, 512 CPU)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--buckets", type=int, default=256)
    p.add_argument("--max-rel", type=int, default=512)
    p.add_argument("--padded", action="store_true", help="a padded batch (lengths N/2 .. N)")
    p.add_argument("--modes", default="fwd,bwd,fwd_bwd")
    p.add_argument("--levels", default="op,layer")
    p.add_argument("--op-providers", default=None, help="comma-separated; default: everything usable here")
    p.add_argument("--layer-providers", default=None)
    p.add_argument("--rep", type=int, default=None, help="timed runs (default 30 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--rotate", type=int, default=2, help="input sets cycled through while timing")
    p.add_argument("--tolerance", type=float, default=None, help="max |error| vs the float32 torch backend")
    p.add_argument("--out", default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    seqlens = [int(x) for x in (args.seqlens or ("128,256,512,1024,2048,4096,8192,16384" if cuda else "128,256"))
               .split(",")]
    args.tokens = args.tokens or (16384 if cuda else 512)
    args.rep = args.rep or (30 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.tolerance = args.tolerance or (5e-2 if args.dtype != "float32" else 1e-3)
    args.modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown modes {bad}; choose from {MODES}")
    ops, layers = default_providers(args.device, args.head_dim)
    ops = args.op_providers.split(",") if args.op_providers else ops
    layers = args.layer_providers.split(",") if args.layer_providers else layers
    known_ops = op_table()
    unknown = [name for name in ops if name not in known_ops] + [name for name in layers if name not in LAYER_PROVIDERS]
    if unknown:  # a misspelt provider would otherwise cost a GPU run its rows, unnoticed
        raise SystemExit(f"unknown providers {unknown}; op level: {', '.join(known_ops)}; "
                         f"layer level: {', '.join(LAYER_PROVIDERS)}")
    levels = args.levels.split(",")
    out = Path(args.out) if args.out else results_dir() / (
        f"attention_{args.device}_{args.dtype}{'_padded' if args.padded else ''}.json")

    rows = []
    for N in progress(seqlens, "sequence lengths"):
        shape = Shape(args, N)
        if "op" in levels:
            rows += op_rows(shape, ops, args)
        if "layer" in levels:
            rows += layer_rows(shape, layers, args)
        write_json(out, {"benchmark": "attention", "env": environment(), "args": vars(args), "rows": rows})
    from report import attention_table

    print(attention_table(rows))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

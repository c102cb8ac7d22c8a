"""The cuda backend (C++/CUDA kernels) on a GPU: forward and every gradient against the float64 reference.

Skips without CUDA. With CUDA the extension must load (setup.py build, or a just-in-time build on first
use): its absence fails the first test instead of skipping. Tolerance rule (DESIGN.md): err(cuda) <= 2
err(torch backend in the same dtype) + floor, both against the torch backend in float64 on the same GPU.
The grid mirrors tests/test_ops_triton.py (odd shapes, masks, position settings; head dims 32 / 64 / 128,
the ones with kernels) and tests/test_gpu_triton.py (realistic sizes), in float16, bfloat16 and float32.
compute-sanitizer (memcheck, racecheck) runs a small case in a subprocess when it is on PATH.

Run alone: ``pytest -q tests/test_gpu_cuda.py``; a GPU session records the log and a JSON summary of the
run under bench/results/ (issue 6).
"""

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import deberta_fast  # noqa: E402
from deberta_fast import disentangled_attention  # noqa: E402
from deberta_fast.backends import cuda_backend, get_backend  # noqa: E402
from deberta_fast.backends.call import make_call  # noqa: E402
from deberta_fast.positions import relative_index_table  # noqa: E402

from attention_cases import Case, assert_within_rule, call_kwargs, make_inputs, max_err, reference  # noqa: E402
from gpu_cases import (  # noqa: E402
    V3, launched_cuda_kernels, model_batch, model_config, peak_bytes, run_model, step_without_sync,
)

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
REPO = Path(__file__).resolve().parents[1]
GRADS = ["dq", "dk", "dv", "dpos_key", "dpos_query"]
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
LOW = [torch.bfloat16, torch.float16]


def run_cuda(case, tensors, mask, dtype, grad_out, dropout_p=0.0, seed=1234):
    """Output and gradients of the cuda backend, in ``dtype``, from float64 leaves on the GPU."""
    leaves = [t.detach().to(DEVICE, dtype).requires_grad_(True) if t is not None else None for t in tensors]
    torch.manual_seed(seed)
    out = disentangled_attention(*leaves, mask, dropout_p=dropout_p, backend="cuda", **call_kwargs(case))
    assert out.dtype == dtype and out.shape == (case.B, case.H, case.N, case.D)
    out.backward(grad_out.to(dtype))
    return out.detach(), [t.grad if t is not None else None for t in leaves]


def check(case, dtype, *, dropout_p=0.0, keep=None, seed=1234, strided=True):
    """Forward and the five gradients against the float64 reference (with dropout: replaying ``keep``)."""
    tensors, mask = make_inputs(case, device=DEVICE, strided=strided)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out, grads = run_cuda(case, tensors, mask, dtype, grad_out, dropout_p, seed)
    ref, ref_grads = reference(case, tensors, mask, dropout_p=dropout_p, dropout_mask=keep, grad_out=grad_out)
    low, low_grads = reference(case, [t.to(dtype) if t is not None else None for t in tensors], mask,
                               dropout_p=dropout_p, dropout_mask=keep, grad_out=grad_out)
    floor = FLOOR[dtype]
    assert_within_rule("out", out, low, ref, floor * max(1.0, ref.abs().max().item()))
    for name, g, g_low, g_ref in zip(GRADS, grads, low_grads, ref_grads):
        if g_ref is None:
            assert g is None, name
            continue
        assert g.dtype == dtype, name
        assert_within_rule(name, g, g_low, g_ref, floor * max(1.0, g_ref.abs().max().item()))


def test_backend_is_available_here():
    """On a GPU machine the extension must load (a missing build fails here rather than skipping)."""
    status = cuda_backend.extension_status()
    assert get_backend("cuda").availability_reasons() == [], status
    call = make_call(*(torch.zeros(1, 2, 8, 64, device=DEVICE, dtype=torch.bfloat16) for _ in range(3)))
    assert get_backend("cuda").not_supported_reasons(call) == []


# --- the CPU grid of the triton tests, on the GPU, in every dtype ------------------------------

CASES = [
    Case(N=1, D=32),
    Case(B=1, N=1, D=64, mask="all_pad"),
    Case(N=17, D=64, mask="right"),
    Case(N=17, D=64, mask="left", masked_rows="zero"),
    Case(N=17, D=32, buckets=-1, max_rel=3, mask="mixed"),
    Case(N=97, D=32),
    Case(N=97, D=32, mask="right"),
    Case(N=97, D=64, mask="left"),
    Case(N=97, D=32, mask="all_pad", masked_rows="uniform"),
    Case(N=97, D=64, mask="all_pad", masked_rows="zero"),
    Case(N=97, D=128, p2c=False, mask="left"),
    Case(N=97, D=32, c2p=False, mask="right", masked_rows="zero"),
    Case(N=97, D=64, c2p=False, p2c=False, mask="all_pad"),
    Case(N=97, D=32, c2p=False, p2c=False),
    Case(N=97, D=32, buckets=-1, max_rel=24, mask="mixed"),
    Case(N=97, D=32, c2p=False, buckets=0, max_rel=40, mask="left"),
    Case(N=97, D=32, buckets=256, max_rel=512, mask="right"),
    Case(B=2, H=1, N=300, D=128, mask="right"),
    Case(B=1, H=2, N=300, D=64, buckets=16, max_rel=64, masked_rows="zero", mask="all_pad"),
    Case(B=1, H=2, N=300, D=32, c2p=False, p2c=False),
    Case(B=2, H=2, N=1025, D=64, buckets=8, max_rel=32, mask="mixed"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_grid_matches_reference(case, dtype):
    check(case, dtype)


FEATURE_GRID = [
    Case(N=70, D=32, c2p=c2p, p2c=p2c, buckets=b, max_rel=m, mask=mask, masked_rows=rows)
    for (c2p, p2c), (b, m), (mask, rows) in itertools.product(
        [(True, True), (True, False), (False, True), (False, False)],
        [(4, 8), (-1, 6)],
        [("none", "uniform"), ("left", "uniform"), ("right", "zero"), ("all_pad", "uniform"), ("all_pad", "zero")],
    )
    if c2p or p2c or b == 4
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", FEATURE_GRID, ids=str)
def test_feature_grid(case, dtype):
    check(case, dtype)


def test_contiguous_and_strided_inputs_agree():
    case = Case(N=40, D=64, mask="left")
    check(case, torch.bfloat16, strided=False)
    tensors, mask = make_inputs(case, device=DEVICE, strided=True)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64, device=DEVICE)
    a = run_cuda(case, tensors, mask, torch.float32, grad_out)
    b = run_cuda(case, [t.contiguous() for t in tensors], mask, torch.float32, grad_out)
    assert torch.equal(a[0], b[0])
    for ga, gb in zip(a[1], b[1]):
        assert torch.equal(ga, gb)


def test_misaligned_and_odd_strides_are_handled():
    """Views the kernels cannot read directly (unaligned storage offset, non-unit last stride) are copied."""
    case = Case(N=33, D=64, mask="right")
    tensors, mask = make_inputs(case, device=DEVICE)
    q, k, v, pk, pq = (t.to(torch.bfloat16) for t in tensors)
    ref = disentangled_attention(q, k, v, pk, pq, mask, backend="cuda", **call_kwargs(case))
    flat = torch.empty(q.numel() + 1, dtype=q.dtype, device=DEVICE)
    q_off = flat[1:].view_as(q).copy_(q)  # storage offset of one element: not 16-byte aligned
    k_t = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # last-dim stride != 1
    out = disentangled_attention(q_off, k_t, v, pk, pq, mask, backend="cuda", **call_kwargs(case))
    assert torch.equal(out, ref)


def test_strided_position_tables():
    case = Case(N=50, D=32, mask="right")
    tensors, mask = make_inputs(case, device=DEVICE)
    q, k, v, pk, pq = tensors
    pk = pk.transpose(0, 1).contiguous().transpose(0, 1)
    pq = pq.transpose(0, 1).contiguous().transpose(0, 1)
    assert not pk.is_contiguous()
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64, device=DEVICE)
    out, grads = run_cuda(case, [q, k, v, pk, pq], mask, torch.float32, grad_out)
    ref, ref_grads = reference(case, [q, k, v, pk, pq], mask, grad_out=grad_out)
    assert max_err(out, ref) < 1e-5
    for g, r in zip(grads, ref_grads):
        assert max_err(g, r) < 1e-5 * max(1.0, r.abs().max().item())


def test_unsupported_head_dim_is_rejected():
    case = Case(N=17, D=48)
    tensors, _ = make_inputs(case, device=DEVICE, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head dim 48 is not supported"):
        disentangled_attention(*tensors, backend="cuda", **call_kwargs(case))


# --- realistic sizes, v3 settings --------------------------------------------------------------

REALISTIC = [
    (Case(B=2, H=4, N=512, D=64, mask="right", **V3), torch.bfloat16),
    (Case(B=2, H=2, N=512, D=128, mask="all_pad", masked_rows="zero", **V3), torch.float16),
    (Case(B=2, H=2, N=2048, D=64, mask="left", **V3), torch.bfloat16),
    (Case(B=1, H=2, N=2048, D=128, mask="right", **V3), torch.bfloat16),
    (Case(B=1, H=4, N=2048, D=64, **V3), torch.float16),
    (Case(B=2, H=2, N=1531, D=32, mask="all_pad", **V3), torch.bfloat16),
    (Case(B=1, H=2, N=8192, D=64, mask="right", **V3), torch.bfloat16),
    (Case(B=1, H=1, N=8192, D=128, mask="right", **V3), torch.float16),
]


@pytest.mark.parametrize("case,dtype", REALISTIC, ids=str)
def test_realistic_sizes(case, dtype):
    check(case, dtype)


FEATURES = [
    Case(B=2, H=2, N=2048, D=64, p2c=False, mask="right", **V3),
    Case(B=2, H=2, N=2048, D=64, c2p=False, mask="left", **V3),
    Case(B=2, H=2, N=2048, D=64, c2p=False, p2c=False, mask="right", **V3),
    Case(B=2, H=2, N=2048, D=64, buckets=-1, max_rel=512, mask="mixed"),
    Case(B=2, H=2, N=1025, D=32, buckets=-1, max_rel=24, mask="all_pad", masked_rows="zero"),
    Case(B=2, H=2, N=300, D=128, buckets=8, max_rel=32, mask="right"),
]


@pytest.mark.parametrize("case", FEATURES, ids=str)
@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_features(case, dtype):
    check(case, dtype)


TILE_KINDS = [  # the score code per tile kind (csrc/score_terms.h) in every kernel: band, saturated and plain tiles,
    # each term alone, masks, every dtype and head dim, N below one tile and over the band on both sides
    (Case(N=1, D=32), torch.bfloat16),
    (Case(N=17, D=64, mask="left", masked_rows="zero"), torch.float16),
    (Case(N=97, D=128, p2c=False, mask="left"), torch.bfloat16),
    (Case(N=97, D=32, c2p=False, mask="right", masked_rows="zero"), torch.float32),
    (Case(N=97, D=64, c2p=False, p2c=False, mask="all_pad"), torch.bfloat16),
    (Case(N=97, D=32, buckets=-1, max_rel=24, mask="mixed"), torch.float16),
    (Case(B=1, H=2, N=300, D=64, buckets=16, max_rel=64, masked_rows="zero", mask="all_pad"), torch.float32),
    (Case(B=2, H=2, N=1025, D=64, buckets=8, max_rel=32, mask="mixed"), torch.bfloat16),
    (Case(B=2, H=2, N=2048, D=64, mask="right", **V3), torch.bfloat16),
    (Case(B=1, H=2, N=8192, D=64, mask="right", **V3), torch.bfloat16),
    (Case(B=1, H=1, N=2048, D=128, **V3), torch.float16),
]


@pytest.mark.parametrize("case,dtype", TILE_KINDS, ids=str)
def test_tile_kinds(case, dtype):
    check(case, dtype)


STAGED = TILE_KINDS + [  # position rows that step by 2 (buckets 256, max 257): the gathers instead of the slabs
    (Case(B=1, H=2, N=300, D=64, buckets=256, max_rel=257, mask="right"), torch.bfloat16),
]


def _output_and_grads(case, tensors, mask, dropout_p=0.0):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    torch.manual_seed(5)
    out = disentangled_attention(*leaves, mask, dropout_p=dropout_p, backend="cuda", **call_kwargs(case))
    out.backward(torch.ones_like(out))
    return [out.detach()] + [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("case,dtype", STAGED, ids=str)
def test_staged_band(case, dtype, monkeypatch):
    """DEBERTA_FAST_CUDA_BAND=staged (the band tiles of the three kernels read C2P / P2C from slabs in shared
    memory): within the rule, and its output and gradients bit for bit the gathering kernels' (the same additions
    in the same order; the backward has no atomics)."""
    tensors, mask = make_inputs(case, device=DEVICE, dtype=dtype, strided=True)
    gathered = _output_and_grads(case, tensors, mask)
    monkeypatch.setenv("DEBERTA_FAST_CUDA_BAND", "staged")
    runs = []
    kernels = launched_cuda_kernels(lambda: runs.append(_output_and_grads(case, tensors, mask)))
    # the switch reached the kernels, where the slabs apply: position terms whose rows step by 0 or 1
    expected = (case.c2p or case.p2c) and (case.buckets, case.max_rel) != (256, 257)
    assert "fwd" in {k.kind for k in kernels} and all(k.staged == expected for k in kernels), kernels
    assert all(torch.equal(a, b) for a, b in zip(runs[0], gathered))
    check(case, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_staged_band_with_dropout(dtype, monkeypatch):
    case = Case(B=2, H=2, N=700, D=64, mask="mixed", **V3)
    tensors, mask = make_inputs(case, device=DEVICE, dtype=dtype, strided=True)
    runs = []
    for band in ("gather", "staged"):
        monkeypatch.setenv("DEBERTA_FAST_CUDA_BAND", band)
        runs.append(_output_and_grads(case, tensors, mask, dropout_p=0.2))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_staged_band_declines_a_decreasing_table(monkeypatch):
    """Buckets 256 with max relative 128 (the log bucket's rows go down past the linear part): the front end
    rejects the setting, the op itself takes it; the staged slabs, which need rows that step by 0 or 1, must leave
    it to the gathers (same output and gradients bit for bit), not read other rows of their slabs."""
    B, H, N, D, span = 1, 2, 700, 64, 256
    gen = torch.Generator().manual_seed(3)
    q, k, v, grad = (torch.randn(B, N, H, D, generator=gen).to(DEVICE, torch.bfloat16).transpose(1, 2)
                     for _ in range(4))
    pos_key, pos_query = (torch.randn(H, 2 * span, D, generator=gen).to(DEVICE, torch.bfloat16) for _ in range(2))
    _, _, _, unit_steps = cuda_backend.position_geometry(q, N, span, 128)
    assert not unit_steps
    runs = []
    settings = (span, 128, D ** -0.5, 0.0, False)

    def run():
        out, lse = torch.ops.deberta_fast.cuda_attention_fwd(q, k, v, pos_key, pos_query, None, None, *settings)
        grads = torch.ops.deberta_fast.cuda_attention_bwd(grad, q, k, v, pos_key, pos_query, None, None, out, lse,
                                                          *settings)
        runs.append([out, lse, *grads])

    monkeypatch.setenv("DEBERTA_FAST_CUDA_BAND", "gather")
    run()
    monkeypatch.setenv("DEBERTA_FAST_CUDA_BAND", "staged")
    assert not any(kernel.staged for kernel in launched_cuda_kernels(run))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


FORWARD_TILES = [  # the opt-in fp16 / bf16 forward tiles: band, saturated and plain tiles, masks, each head dim
    (Case(N=17, D=64, mask="left", masked_rows="zero"), torch.float16),
    (Case(N=97, D=128, p2c=False, mask="left"), torch.bfloat16),
    (Case(N=97, D=32, buckets=-1, max_rel=24, mask="mixed"), torch.float16),
    (Case(B=2, H=2, N=1025, D=64, buckets=8, max_rel=32, mask="mixed"), torch.bfloat16),
    (Case(B=2, H=2, N=2048, D=64, mask="right", **V3), torch.bfloat16),
]


@pytest.mark.parametrize("band", ["gather", "staged"])
@pytest.mark.parametrize("tiles", ["128x32", "64x64"])
@pytest.mark.parametrize("case,dtype", FORWARD_TILES, ids=str)
def test_forward_tiles(case, dtype, tiles, band, monkeypatch):
    """DEBERTA_FAST_CUDA_FWD_TILES (csrc/kernel_traits.h): within the rule with either band mode, and with dropout
    the default tiles' output to rounding (the mask is a function of (row, column) in 16 x 16 blocks, not of the
    tiling; a different mask at p = 0.3 would change the output by far more)."""
    monkeypatch.setenv("DEBERTA_FAST_CUDA_FWD_TILES", tiles)
    monkeypatch.setenv("DEBERTA_FAST_CUDA_BAND", band)
    kernels = launched_cuda_kernels(lambda: check(case, dtype))
    rows, cols = (int(x) for x in tiles.split("x"))
    forward = [k for k in kernels if k.kind == "fwd"]  # the switches reached the forward kernel
    assert forward and all(k.tile == (rows, cols, 4) and k.staged == (band == "staged") for k in forward), kernels
    tensors, mask = make_inputs(case, device=DEVICE, dtype=dtype, strided=True)
    torch.manual_seed(3)
    out = disentangled_attention(*tensors, mask, dropout_p=0.3, backend="cuda", **call_kwargs(case))
    monkeypatch.delenv("DEBERTA_FAST_CUDA_FWD_TILES")
    torch.manual_seed(3)
    ref = disentangled_attention(*tensors, mask, dropout_p=0.3, backend="cuda", **call_kwargs(case))
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)  # bf16: a few ulps


def wgmma_expected() -> bool:
    """Whether DEBERTA_FAST_CUDA_MMA=wgmma can run here: an sm_90 GPU and an extension built for sm_90a (what
    bench/gpu_suite.sh builds)."""
    archs = getattr(cuda_backend.load_extension(), "cuda_archs", "")
    return torch.cuda.get_device_capability()[0] == 9 and "sm90a" in archs.split("_")


def require_wgmma() -> None:
    if not wgmma_expected():
        pytest.skip("wgmma needs an sm_90 GPU and an extension built for sm_90a (TORCH_CUDA_ARCH_LIST=9.0a)")


WGMMA_CASES = [  # head dim 64 runs wgmma (band, saturated and plain tiles, masks); 32 and 128 keep mma.sync
    (Case(N=17, D=64, mask="left", masked_rows="zero"), torch.float16),
    (Case(N=97, D=64, p2c=False, mask="right"), torch.bfloat16),
    (Case(N=300, D=64, c2p=False, p2c=False), torch.bfloat16),
    (Case(B=2, H=2, N=1025, D=64, buckets=8, max_rel=32, mask="mixed"), torch.bfloat16),
    (Case(B=2, H=2, N=2048, D=64, mask="right", **V3), torch.bfloat16),
    (Case(N=97, D=32, buckets=-1, max_rel=24, mask="mixed"), torch.float16),
]


@pytest.mark.parametrize("band", ["gather", "staged"])
@pytest.mark.parametrize("case,dtype", WGMMA_CASES, ids=str)
def test_wgmma(case, dtype, band, monkeypatch):
    """DEBERTA_FAST_CUDA_MMA=wgmma (csrc/wgmma.cuh): the forward's, dK/dV's and dQ's products by warpgroup MMA,
    output and gradients within the rule with either band mode; with dropout the mma.sync kernels' output and
    gradients to rounding (the same mask, a different accumulation order); at head dims without wgmma kernels, the
    mma.sync kernels' results bit for bit."""
    require_wgmma()
    monkeypatch.setenv("DEBERTA_FAST_CUDA_MMA", "wgmma")
    monkeypatch.setenv("DEBERTA_FAST_CUDA_BAND", band)
    kernels = launched_cuda_kernels(lambda: check(case, dtype))
    staged = band == "staged" and (case.c2p or case.p2c)  # the switches reached all three kernels
    assert {k.kind for k in kernels} == {"fwd", "dkdv", "dq"}, kernels
    assert all(k.wgmma == (case.D == 64) and k.staged == staged for k in kernels), kernels
    tensors, mask = make_inputs(case, device=DEVICE, dtype=dtype, strided=True)
    got = _output_and_grads(case, tensors, mask, dropout_p=0.3)
    monkeypatch.setenv("DEBERTA_FAST_CUDA_MMA", "mma.sync")
    want = _output_and_grads(case, tensors, mask, dropout_p=0.3)
    assert len(got) == len(want)
    for i, (x, y) in enumerate(zip(got, want)):  # the output, then the gradients of the inputs given
        if case.D == 64:
            scale = max(1.0, y.abs().max().item())  # a position table's gradient sums many pairs
            torch.testing.assert_close(x.float(), y.float(), rtol=2e-2, atol=2e-2 * scale, msg=f"result {i}")
        else:
            assert torch.equal(x, y), f"result {i}"


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("rn", [False, True], ids=["nt", "rn"])
def test_wgmma_products(rn, dtype):
    """The two wgmma products alone (csrc/wgmma.cuh through the cuda_wgmma_probe hook): a b^T from two K-major tiles
    (the descriptors) and a b from register fragments and a transposed tile. Sums of 64 exact products in the tensor
    cores' float32 accumulation: within 1e-2 of float64 (entries are about 8 in size); a misread layout is off by
    about that size."""
    require_wgmma()
    gen = torch.Generator().manual_seed(11)
    a, b = (torch.randn(64, 64, generator=gen).to(DEVICE, dtype) for _ in range(2))
    got = torch.ops.deberta_fast.cuda_wgmma_probe(a, b, rn)
    want = a.double() @ (b.double() if rn else b.double().T)
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-2)


def test_wgmma_switch_errors(monkeypatch):
    """The wgmma switch with other forward tiles is an error; without sm_90a kernels, an error that says what it needs
    (never a silent mma.sync run). (Unknown values: test_cuda_switches_reject_unknown_values.)"""
    case = Case(N=17, D=64)
    tensors, mask = make_inputs(case, device=DEVICE, dtype=torch.bfloat16)
    monkeypatch.setenv("DEBERTA_FAST_CUDA_MMA", "wgmma")
    if wgmma_expected():
        monkeypatch.setenv("DEBERTA_FAST_CUDA_FWD_TILES", "64x64")
        with pytest.raises(RuntimeError, match="runs the forward's 128x64 tiles only"):
            disentangled_attention(*tensors, mask, backend="cuda", **call_kwargs(case))
        monkeypatch.delenv("DEBERTA_FAST_CUDA_FWD_TILES")
        disentangled_attention(*tensors, mask, backend="cuda", **call_kwargs(case))
    else:
        with pytest.raises(RuntimeError, match="needs the extension built for sm_90a"):
            disentangled_attention(*tensors, mask, backend="cuda", **call_kwargs(case))


@pytest.mark.parametrize("env,value,message", [
    ("DEBERTA_FAST_CUDA_BAND", "smem", "DEBERTA_FAST_CUDA_BAND must be 'gather' or 'staged'"),
    ("DEBERTA_FAST_CUDA_FWD_TILES", "256x64", "DEBERTA_FAST_CUDA_FWD_TILES must be"),
    ("DEBERTA_FAST_CUDA_MMA", "hgmma", "DEBERTA_FAST_CUDA_MMA must be 'mma.sync' or 'wgmma'"),
])
def test_cuda_switches_reject_unknown_values(env, value, message, monkeypatch):
    case = Case(N=17, D=64)
    tensors, mask = make_inputs(case, device=DEVICE, dtype=torch.bfloat16)
    monkeypatch.setenv(env, value)
    with pytest.raises(RuntimeError, match=message):
        disentangled_attention(*tensors, mask, backend="cuda", **call_kwargs(case))


@pytest.mark.parametrize("case", [Case(B=2, H=2, N=1024, D=64, mask="right", **V3), Case(N=97, D=128, mask="left")],
                         ids=str)
def test_fp32_exact(case):
    check(case, torch.float32)


def test_agrees_with_the_triton_backend():
    """Same inputs, no dropout: the two GPU backends agree to bf16 rounding."""
    pytest.importorskip("triton")
    case = Case(B=2, H=4, N=1000, D=64, mask="right", **V3)
    tensors, mask = make_inputs(case, device=DEVICE, dtype=torch.bfloat16, strided=True)
    a = disentangled_attention(*tensors, mask, backend="cuda", **call_kwargs(case))
    b = disentangled_attention(*tensors, mask, backend="triton", **call_kwargs(case))
    assert max_err(a, b) < 2e-2


def test_batch_slices_give_the_same_results():
    """Position buffers over budget (DEBERTA_FAST_CUDA_CHUNK_BYTES=1): one sequence at a time, same dropout."""
    case = Case(B=3, H=2, N=50, D=32, mask="mixed")
    tensors, mask = make_inputs(case, device=DEVICE, strided=True)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64, device=DEVICE)
    results = []
    for budget in ("", "1"):
        os.environ["DEBERTA_FAST_CUDA_CHUNK_BYTES"] = budget
        try:
            results.append(run_cuda(case, tensors, mask, torch.float32, grad_out, dropout_p=0.3, seed=7))
        finally:
            os.environ.pop("DEBERTA_FAST_CUDA_CHUNK_BYTES", None)
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    for name, a, b in zip(GRADS, grads_a, grads_b):
        assert max_err(a, b) <= 1e-6 * max(1.0, a.abs().max().item()), name


# --- position geometry and dropout --------------------------------------------------------------


@pytest.mark.parametrize("buckets,max_rel", [(256, 512), (8, 32), (-1, 24)])
def test_position_table_on_the_gpu_is_relative_index_table(buckets, max_rel):
    n = 4096
    table, r_hi, r_lo, _ = cuda_backend.position_geometry(torch.empty(0, device=DEVICE), n, buckets, max_rel)
    assert table.is_cuda and torch.equal(table, relative_index_table(n, buckets, max_rel, DEVICE))


def test_dropout_mask_is_the_same_on_cpu_and_gpu():
    philox = torch.tensor([31337, 7], dtype=torch.int64)
    gpu = cuda_backend.dropout_keep_mask(philox.to(DEVICE), 2, 3, 333, 0.1).cpu()
    cpu = cuda_backend.dropout_keep_mask(philox, 2, 3, 333, 0.1)
    assert torch.equal(gpu, cpu)


@pytest.mark.parametrize(
    "case,p,dtype",
    [(Case(B=2, H=2, N=1024, D=64, mask="right", **V3), 0.1, torch.bfloat16),
     (Case(N=97, D=32, mask="right"), 0.2, torch.float32),
     (Case(N=70, D=64, p2c=False, buckets=4, max_rel=8, mask="all_pad"), 0.3, torch.float32),
     (Case(N=17, D=128, c2p=False, mask="all_pad", masked_rows="zero"), 0.5, torch.float16),
     (Case(N=40, D=32, c2p=False, p2c=False, mask="left"), 0.1, torch.float32)],
    ids=str,
)
def test_dropout_matches_torch_given_the_kernel_mask(case, p, dtype):
    """Forward and both backward kernels use one mask: the torch backend replaying it gives the same values
    and gradients."""
    torch.manual_seed(99)
    philox = cuda_backend.draw_philox(DEVICE)
    keep = cuda_backend.dropout_keep_mask(philox, case.B, case.H, case.N, p)
    check(case, dtype, dropout_p=p, keep=keep, seed=99)  # the backend draws the same philox after seed 99


def test_dropout_keep_rate_and_reproducibility():
    philox = torch.tensor([31337, 7], dtype=torch.int64, device=DEVICE)
    keep = cuda_backend.dropout_keep_mask(philox, 2, 4, 2048, 0.1).double()
    sigma = (0.1 * 0.9 / keep.numel()) ** 0.5
    assert abs(keep.mean().item() - 0.9) < 6 * sigma
    case = Case(N=33, D=32, mask="right")
    tensors, mask = make_inputs(case, device=DEVICE, dtype=torch.float32)

    def run(seed):
        torch.manual_seed(seed)
        return disentangled_attention(*tensors, mask, backend="cuda", dropout_p=0.3, **call_kwargs(case))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    a = disentangled_attention(*tensors, mask, backend="cuda", dropout_p=0.0, **call_kwargs(case))
    b = disentangled_attention(*tensors, mask, backend="cuda", **call_kwargs(case))
    assert torch.equal(a, b)


# --- ops: opcheck and torch.compile ------------------------------------------------------------


def _op_inputs(case, dtype=torch.float32):
    tensors, mask = make_inputs(case, device=DEVICE, strided=True)
    return [t.to(dtype).requires_grad_(True) if t is not None else None for t in tensors], mask


@pytest.mark.parametrize("dropout", [False, True], ids=["no-dropout", "dropout"])
def test_opcheck_forward(dropout):
    (q, k, v, pk, pq), mask = _op_inputs(Case(B=1, H=2, N=17, D=32, mask="right"))
    philox = torch.tensor([123, 4], dtype=torch.int64, device=DEVICE) if dropout else None
    args = (q, k, v, pk, None if dropout else pq, mask, philox, 8, 32, 0.1, 0.2 if dropout else 0.0, dropout)
    torch.library.opcheck(torch.ops.deberta_fast.cuda_attention_fwd.default, args)


def test_opcheck_backward_and_mask():
    (q, k, v, pk, pq), mask = _op_inputs(Case(B=1, H=2, N=17, D=32, mask="left"))
    settings = (8, 32, 0.1, 0.0, False)
    out, lse = torch.ops.deberta_fast.cuda_attention_fwd(q, k, v, pk, pq, mask, None, *settings)
    args = (torch.randn_like(out), *(t.detach() for t in (q, k, v, pk, pq)), mask, None, out.detach(), lse.detach(),
            *settings)
    torch.library.opcheck(torch.ops.deberta_fast.cuda_attention_bwd.default, args)
    philox = torch.tensor([5, 6], dtype=torch.int64, device=DEVICE)
    torch.library.opcheck(torch.ops.deberta_fast.cuda_dropout_mask.default, (philox, 2, 2, 19, 0.25))


def test_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    case = Case(B=2, H=2, N=24, D=32, mask="right")
    tensors, mask = _op_inputs(case)

    def loss_fn(q, k, v, pk, pq, mask):
        out = disentangled_attention(q, k, v, pk, pq, mask, backend="cuda", **call_kwargs(case))
        return (out.float() ** 2).sum()

    compiled = torch.compile(loss_fn, fullgraph=True)
    loss = compiled(*tensors, mask)
    loss.backward()
    grads = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    eager = loss_fn(*tensors, mask)
    eager.backward()
    assert max_err(loss, eager) <= 1e-6 * max(1.0, abs(eager.item()))
    for name, g, t in zip(GRADS, grads, tensors):
        assert max_err(g, t.grad) <= 1e-6 * max(1.0, t.grad.abs().max().item()), name


# --- memory -----------------------------------------------------------------------------------


def test_forward_backward_never_waits_for_the_gpu():
    # A host-device synchronization in the backward (there was one: an indexed assignment) stalls every
    # training step's launch queue; torch's sync debug mode turns any into an error.
    step_without_sync("cuda", device=DEVICE)


def _peak_bytes(n):
    return peak_bytes("cuda", n, DEVICE)


def test_memory_is_linear_in_sequence_length():
    _peak_bytes(1024)
    small, large = _peak_bytes(4096), _peak_bytes(8192)
    assert large < 2.5 * small, (small, large)
    assert large < 12 * 8192 * 8192 * 4


# --- the model --------------------------------------------------------------------------------


def _batch(B=2, N=1100):
    return model_batch(B, N, DEVICE)


def test_model_end_to_end_against_torch_backend():
    ids, mask = _batch()
    ref, ref_grads = run_model("torch", torch.float64, ids, mask)
    low, low_grads = run_model("torch", torch.bfloat16, ids, mask)
    got, grads = run_model("cuda", torch.bfloat16, ids, mask)
    assert_within_rule("last_hidden_state", got, low, ref, 1e-2 * max(1.0, ref.abs().max().item()))
    assert grads.keys() == low_grads.keys() == ref_grads.keys()  # no parameter left without a gradient
    for name, g in grads.items():
        floor = 1e-2 * max(1.0, ref_grads[name].abs().max().item())
        assert_within_rule(name, g, low_grads[name], ref_grads[name], floor)
    # fp32: the two backends agree closely, output and every gradient
    a, a_grads = run_model("torch", torch.float32, ids, mask)
    b, b_grads = run_model("cuda", torch.float32, ids, mask)
    assert max_err(a, b) < 1e-3 and a_grads.keys() == b_grads.keys()
    for name, g in a_grads.items():
        assert max_err(b_grads[name], g) <= 1e-3 * max(1.0, g.abs().max().item()), name


def test_model_compiles_fullgraph_with_cuda():
    torch._dynamo.reset()
    ids, mask = _batch(B=2, N=600)
    torch.manual_seed(0)
    model = deberta_fast.DebertaV2Model(model_config(), attn_backend="cuda").to(DEVICE, torch.bfloat16).train()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(ids, attention_mask=mask).last_hidden_state
    out.float().sum().backward()
    ref = model(ids, attention_mask=mask).last_hidden_state
    assert max_err(out, ref) < 5e-2


# --- compute-sanitizer ------------------------------------------------------------------------

SANITIZER_CASE = """
import torch
from deberta_fast import disentangled_attention
torch.manual_seed(0)
for dtype, D in ((torch.bfloat16, 64), (torch.float16, 128), (torch.float32, 32)):
    B, H, N, S = 2, 2, 97, 8
    q, k, v = (torch.randn(B, N, H, D, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_() for _ in range(3))
    pk, pq = (torch.randn(H, 2 * S, D, device="cuda", dtype=dtype).requires_grad_() for _ in range(2))
    mask = torch.ones(B, N, dtype=torch.bool, device="cuda")
    mask[1, 60:] = False
    for rows in ("uniform", "zero"):
        out = disentangled_attention(q, k, v, pk, pq, mask, position_buckets=S, max_relative_positions=32,
                                     dropout_p=0.1, masked_rows=rows, backend="cuda")
        out.float().sum().backward()
torch.cuda.synchronize()
print("sanitizer case done")
"""


@pytest.mark.parametrize("band,tiles,mma", [("gather", "128x64", "mma.sync"), ("staged", "128x64", "mma.sync"),
                                            ("staged", "128x32", "mma.sync"), ("staged", "64x64", "mma.sync"),
                                            ("gather", "128x64", "wgmma"), ("staged", "128x64", "wgmma")])
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer_is_clean(tool, band, tiles, mma):
    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer is None:
        pytest.skip("compute-sanitizer is not on PATH")
    if mma == "wgmma":
        require_wgmma()
    cmd = [sanitizer, f"--tool={tool}", "--error-exitcode=1", "--target-processes=all"]
    if tool == "memcheck":
        cmd.append("--leak-check=no")
    env = dict(os.environ, DEBERTA_FAST_CUDA_BAND=band, DEBERTA_FAST_CUDA_FWD_TILES=tiles,
               DEBERTA_FAST_CUDA_MMA=mma)
    result = subprocess.run(cmd + [sys.executable, "-c", SANITIZER_CASE], cwd=REPO.parent, capture_output=True,
                            text=True, timeout=540, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "sanitizer case done" in output, output[-6000:]
    assert "ERROR SUMMARY: 0 errors" in output or "RACECHECK SUMMARY: 0 hazards" in output, output[-6000:]

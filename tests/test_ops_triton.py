"""The triton backend against the float64 torch reference, on small odd shapes.

Without CUDA the kernels run on the CPU under Triton's interpreter (TRITON_INTERPRET=1, set here before
anything imports triton); with CUDA the same tests run on the GPU. Small position settings (8 buckets
over 32 positions: the index clamps beyond |i - j| ~ 16) make short sequences cross the saturation
distance, so saturated tiles, band tiles and band tiles holding saturated pairs are all exercised with
the interpreter's 32 x 32 tiles. The interpreter's bf16 tl.dot is wrong, so there bf16 dots run on
fp32 upcasts (fp32 is the main CPU check; bf16 / fp16 at realistic sizes are in test_gpu_triton.py).
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (triton.jit reads it per kernel)

pytest.importorskip("triton")

import deberta_fast  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from deberta_fast import disentangled_attention  # noqa: E402
from deberta_fast.backends import get_backend  # noqa: E402
from deberta_fast.backends.call import make_call  # noqa: E402
from deberta_fast.backends.torch_backend import torch_attention  # noqa: E402
from deberta_fast.positions import relative_position_index  # noqa: E402

from attention_cases import (  # noqa: E402
    Case, assert_within_rule, call_kwargs, make_inputs, max_err, record_launches, reference,
)

triton_backend = pytest.importorskip("deberta_fast.backends.triton_backend")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_backend.INTERPRET:  # pragma: no cover - depends on import order
    pytest.skip("deberta_fast.kernels was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)

from deberta_fast.kernels import common as kernel_common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GRADS = ["dq", "dk", "dv", "dpos_key", "dpos_query"]
# Floors of the tolerance rule, relative to the reference's magnitude.
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def run_triton(case, tensors, mask, dtype, grad_out, dropout_p=0.0):
    """Triton output and gradients on DEVICE, in ``dtype``, from float64 leaves."""
    leaves = [t.detach().to(DEVICE, dtype).requires_grad_(True) if t is not None else None for t in tensors]
    out = disentangled_attention(
        *leaves, mask.to(DEVICE) if mask is not None else None,
        dropout_p=dropout_p, backend="triton", **call_kwargs(case),
    )
    assert out.dtype == dtype and out.shape == (case.B, case.H, case.N, case.D)
    out.backward(grad_out.to(DEVICE, dtype))
    return out.detach().cpu(), [t.grad.cpu() if t is not None else None for t in leaves]


def check_against_reference(case, dtype, *, strided=True, dropout_p=0.0, keep=None):
    """Forward and all five gradients obey err(triton) <= 2 err(torch, same dtype) + floor.

    With dropout, ``keep`` is the kernel's mask for the generator state at the call (the torch runs
    replay it and draw nothing).
    """
    tensors, mask = make_inputs(case, strided=strided)
    generator = torch.Generator().manual_seed(1)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64, generator=generator)
    out, grads = run_triton(case, tensors, mask, dtype, grad_out, dropout_p)
    ref, ref_grads = reference(case, tensors, mask, dropout_p=dropout_p, dropout_mask=keep, grad_out=grad_out)
    low_inputs = [t.to(dtype) if t is not None else None for t in tensors]
    low, low_grads = reference(case, low_inputs, mask, dropout_p=dropout_p, dropout_mask=keep, grad_out=grad_out)
    floor = FLOOR[dtype]
    assert_within_rule("out", out, low, ref, floor * max(1.0, ref.abs().max().item()))
    for name, g, g_low, g_ref in zip(GRADS, grads, low_grads, ref_grads):
        if g_ref is None:
            assert g is None, name
            continue
        assert g.dtype == dtype, name
        assert_within_rule(name, g, g_low, g_ref, floor * max(1.0, g_ref.abs().max().item()))


def check_dropout(case, p):
    """check_against_reference (fp32) with dropout p, the torch runs replaying the kernel's mask."""
    torch.manual_seed(1234)
    keep = triton_backend.dropout_keep_mask(triton_backend.draw_philox(DEVICE), case.B, case.H, case.N, p).cpu()
    assert keep.dtype == torch.bool and keep.shape == (case.B, case.H, case.N, case.N)
    torch.manual_seed(1234)  # the backend draws the same philox from the generator
    check_against_reference(case, torch.float32, dropout_p=p, keep=keep)


def runs_per_setting(monkeypatch, env, values, case=Case(B=2, H=2, N=97, D=32, mask="mixed"), launches=None):
    """run_triton (fp32) of one (padded) case under each value of the environment variable ``env``; with
    ``launches`` (:func:`record_launches`' list) each value's launches are kept in ``results[value][2]``."""
    tensors, mask = make_inputs(case)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64)
    results = {}
    for value in values:
        monkeypatch.setenv(env, value)
        first = len(launches) if launches is not None else 0
        results[value] = (*run_triton(case, tensors, mask, torch.float32, grad_out),
                          launches[first:] if launches is not None else None)
    return results


# --- forward and gradients against the float64 reference (fp32) -------------------------------

CASES = [
    # N = 1 and an all-padding sequence of one token
    Case(N=1, D=32),
    Case(B=1, N=1, D=48, mask="all_pad"),
    # N = 17: one tile; band tiles whose pairs partly saturate
    Case(N=17, D=48, mask="right"),
    Case(N=17, D=64, mask="left", masked_rows="zero"),
    Case(N=17, D=32, buckets=-1, max_rel=3, mask="mixed"),  # tiny span: most pairs clamp
    # log settings undefined beyond distance 32 (max_rel - 1 <= buckets // 2) that N 17 never reaches: the plain
    # distances, while the kernels' saturation distances come from a longer table holding that region
    Case(N=17, D=32, buckets=64, max_rel=16, mask="right"),
    # N = 97: saturated-high, band and saturated-low tiles, partial last tiles
    Case(N=97, D=32),
    Case(N=97, D=32, mask="right"),
    Case(N=97, D=48, mask="left"),
    Case(N=97, D=32, mask="all_pad", masked_rows="uniform"),
    Case(N=97, D=64, mask="all_pad", masked_rows="zero"),
    Case(N=97, D=48, p2c=False, mask="left"),
    Case(N=97, D=32, c2p=False, mask="right", masked_rows="zero"),
    Case(N=97, D=64, c2p=False, p2c=False, mask="all_pad"),
    Case(N=97, D=32, c2p=False, p2c=False),
    Case(N=97, D=32, buckets=-1, max_rel=24, mask="mixed"),  # bucketing off: the identity, clamped
    Case(N=97, D=32, c2p=False, buckets=0, max_rel=40, mask="left"),
    Case(N=97, D=32, buckets=256, max_rel=512, mask="right"),  # DeBERTa-v3 settings: all band here
    # N = 300: many saturated tiles
    Case(B=2, H=1, N=300, D=48, mask="right"),
    Case(B=1, H=2, N=300, D=64, buckets=16, max_rel=64, masked_rows="zero", mask="all_pad"),
    Case(B=1, H=2, N=300, D=32, c2p=False, p2c=False),
    # band edges inside the sequence on both sides (r_hi 47, r_lo 64): inner band tiles between edge ones
    Case(B=2, H=1, N=300, D=32, buckets=16, max_rel=64, mask="right"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fp32_forward_and_grads_match_reference(case):
    check_against_reference(case, torch.float32)


# Every combination of position terms, bucketing, masks and masked_rows, on a shape (70 tokens, tiny
# spans: the index clamps beyond |i - j| ~ 6) that has saturated, band and partial tiles.
FEATURE_GRID = [
    Case(N=70, D=32, c2p=c2p, p2c=p2c, buckets=b, max_rel=m, mask=mask, masked_rows=rows)
    for (c2p, p2c), (b, m), (mask, rows) in itertools.product(
        [(True, True), (True, False), (False, True), (False, False)],
        [(4, 8), (-1, 6)],
        [("none", "uniform"), ("left", "uniform"), ("right", "zero"), ("all_pad", "uniform"), ("all_pad", "zero")],
    )
    if c2p or p2c or b == 4  # without position terms the settings do not matter
]


@pytest.mark.parametrize("case", FEATURE_GRID, ids=str)
def test_feature_grid(case):
    check_against_reference(case, torch.float32)


def test_contiguous_and_strided_inputs_agree():
    case = Case(N=40, D=48, mask="left")
    check_against_reference(case, torch.float32, strided=False)
    tensors, mask = make_inputs(case, strided=True)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64)
    a = run_triton(case, tensors, mask, torch.float32, grad_out)
    b = run_triton(case, [t.contiguous() for t in tensors], mask, torch.float32, grad_out)
    assert torch.equal(a[0], b[0])
    for ga, gb in zip(a[1], b[1]):
        assert torch.equal(ga, gb)


def test_strided_position_tables():
    """pos_key / pos_query as [2S, H, D] views transposed to [H, 2S, D] (the model's layout)."""
    case = Case(N=50, D=32, mask="right")
    tensors, mask = make_inputs(case)
    q, k, v, pk, pq = tensors
    pk = pk.transpose(0, 1).contiguous().transpose(0, 1)
    pq = pq.transpose(0, 1).contiguous().transpose(0, 1)
    assert not pk.is_contiguous()
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64)
    got = run_triton(case, [q, k, v, pk, pq], mask, torch.float32, grad_out)
    ref, ref_grads = reference(case, [q, k, v, pk, pq], mask, grad_out=grad_out)
    assert max_err(got[0], ref) < 1e-5
    for g, r in zip(got[1], ref_grads):
        assert max_err(g, r) < 1e-5 * max(1.0, r.abs().max().item())


@pytest.mark.parametrize(
    "case,dtype",
    [(Case(N=97, D=32, mask="right"), torch.bfloat16),
     (Case(N=97, D=48, mask="all_pad", masked_rows="zero"), torch.float16),
     (Case(N=17, D=64, p2c=False, mask="left"), torch.bfloat16)],
    ids=str,
)
def test_low_precision_matches_reference(case, dtype):
    check_against_reference(case, dtype)


def test_tf32_switch(monkeypatch):
    """fp32 dots use TF32 where torch's fp32 CUDA matmuls may (here: fp32_precision = "tf32"), else IEEE: the
    kernels are launched with that precision, forward and backward."""
    assert triton_backend.fp32_dot_precision() == "ieee"
    launches = record_launches(monkeypatch)
    case = Case(N=33, D=32, mask="right")
    tensors, mask = make_inputs(case)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64)
    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        assert triton_backend.fp32_dot_precision() == "tf32"
        out, _ = run_triton(case, tensors, mask, torch.float32, grad_out)
        ref = reference(case, tensors, mask)[0]
        assert max_err(out.cpu(), ref) < 5e-3  # TF32 has a 10-bit mantissa
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous
    assert triton_backend.fp32_dot_precision() == "ieee"
    tf32 = len(launches)
    run_triton(case, tensors, mask, torch.float32, grad_out)
    assert {name for name, _ in launches[:tf32]} >= {"fwd", "dkdv"}
    assert [k["PREC"] for _, k in launches] == ["tf32"] * tf32 + ["ieee"] * (len(launches) - tf32)


def test_batch_slices_give_the_same_results(monkeypatch):
    """Position buffers over budget: the batch runs one sequence at a time, with the same dropout mask."""
    case = Case(B=3, H=2, N=50, D=32, mask="mixed")
    tensors, mask = make_inputs(case, strided=True)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64)
    results = []
    for budget in (kernel_common.CHUNK_BYTES, 1):
        monkeypatch.setattr(kernel_common, "CHUNK_BYTES", budget)
        torch.manual_seed(7)
        results.append(run_triton(case, tensors, mask, torch.float32, grad_out, dropout_p=0.3))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    for name, a, b in zip(GRADS, grads_a, grads_b):
        assert max_err(a, b) <= 1e-6 * max(1.0, a.abs().max().item()), name


@pytest.mark.parametrize("batch, fit", [(8, 7), (32, 28), (2, 1), (1, 1), (5, 5), (7, 3), (16, 100), (9, 4)])
def test_batch_slices_are_few_and_even(monkeypatch, batch, fit):
    """As few slices as the budget allows, in order, covering the batch once, each within the budget, sizes at
    most one apart (8 sequences, 7 fitting: 4 + 4, not 7 + 1)."""
    monkeypatch.setattr(kernel_common, "CHUNK_BYTES", fit * 1000 + 999)
    slices = kernel_common.batch_slices(batch, 1000)
    sizes = [part.stop - part.start for part in slices]
    assert [part.start for part in slices] == [0] + [part.stop for part in slices[:-1]]
    assert slices[-1].stop == batch and min(sizes) >= 1 and max(sizes) <= fit
    assert len(slices) == -(-batch // fit) and max(sizes) - min(sizes) <= 1


def test_default_config_without_autotuning(monkeypatch):
    """DEBERTA_FAST_TRITON_AUTOTUNE=0 launches the prune filter's first config, no benchmarking: every launch
    asks launch_config in mode "0" and runs the config it gets (not the autotuner)."""
    monkeypatch.setenv(kernel_common.AUTOTUNE_ENV, "0")
    monkeypatch.setattr(kernel_common, "INTERPRET", False)  # take the non-interpreter launch path
    asked, original = [], kernel_common.launch_config

    def spy(kernel, named_args, mode, *args, **kwargs):
        config = original(kernel, named_args, mode, *args, **kwargs)
        asked.append((kernel.deberta_name, mode, config))
        return config

    monkeypatch.setattr(kernel_common, "launch_config", spy)
    check_against_reference(Case(N=20, D=32, mask="right"), torch.float32)
    assert {name for name, _, _ in asked} >= {"fwd", "dkdv"}
    assert all(mode == "0" and config is not None for _, mode, config in asked), asked


# --- the position geometry behind the saturated-tile fast path --------------------------------


@pytest.mark.parametrize("buckets,max_rel", [(8, 32), (16, 64), (256, 512), (-1, 24), (0, 3), (-1, 1)])
def test_saturation_distances_match_the_index(buckets, max_rel):
    n = 1100
    geometry = kernel_common.position_geometry(n, buckets, max_rel, "cpu")
    index = relative_position_index(n, buckets, max_rel)  # [n, n], d(i, j)
    rel = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    top = 2 * (buckets if buckets > 0 else max_rel) - 1  # the last row, 2S - 1
    assert bool((index[rel >= geometry.r_hi] == top).all())
    assert bool((index[rel <= -geometry.r_lo] == 0).all())
    # tight: the last unsaturated distance on each side is not clamped
    if geometry.r_hi > 0:
        assert index[geometry.r_hi - 1, 0].item() != top
    assert index[0, geometry.r_lo - 1].item() != 0
    # the band's columns name the rows the index gives
    band = geometry.band_index
    assert band.numel() == geometry.width
    distances = torch.arange(geometry.width) - (geometry.r_lo - 1)
    assert torch.equal(band, geometry.table[distances + n - 1].long())
    if (buckets, max_rel) == (256, 512):
        # DESIGN.md: ~506-512. Row 2S - 1 needs f >= S - 1 but row 0 needs f <= -S: one bucket apart.
        assert (geometry.r_hi, geometry.r_lo) == (506, 512)


def test_test_cases_reach_saturated_tiles():
    """The N = 97 and 300 cases above have whole tiles beyond the saturation distance."""
    geometry = kernel_common.position_geometry(97, 8, 32, "cpu")
    assert geometry.r_hi + 2 * 32 <= 97 and geometry.r_lo + 2 * 32 <= 97


def test_test_cases_reach_inner_and_edge_band_tiles():
    """Band tiles come in two kinds (common.inner_band): INNER ones, whose pairs all lie inside the band and the
    sequence (no edge or bounds tests), and the others. With the interpreter's 32 x 32 tiles, the N = 300 case with
    buckets 16 / max_rel 64 has inner tiles and tiles across each band edge and across N; the DeBERTa-v3 N = 97 case
    (all band) has inner tiles and tiles across N."""
    tile = 32
    cases = [(300, 16, 64, {"inner", "r_hi", "r_lo", "N"}), (97, 256, 512, {"inner", "N"})]
    for n, buckets, max_rel, expected in cases:
        geometry = kernel_common.position_geometry(n, buckets, max_rel, "cpu")
        kinds = set()
        for i0 in range(0, n, tile):
            for j0 in range(0, n, tile):
                lo, hi = i0 - j0 - (tile - 1), i0 - j0 + (tile - 1)  # the tile's distances i - j
                if lo >= geometry.r_hi or hi <= -geometry.r_lo:
                    continue  # saturated
                crosses = {"r_hi"} if hi >= geometry.r_hi else set()
                crosses |= {"r_lo"} if lo <= -geometry.r_lo else set()
                crosses |= {"N"} if max(i0, j0) + tile > n else set()
                kinds |= crosses or {"inner"}
        assert expected <= kinds, (n, kinds)


# --- dropout ----------------------------------------------------------------------------------


def test_dropout_zero_is_exact():
    case = Case(N=33, D=32, mask="right")
    tensors, mask = make_inputs(case)
    q, k, v, pk, pq = (t.to(DEVICE, torch.float32) for t in tensors)
    m = mask.to(DEVICE)
    a = disentangled_attention(q, k, v, pk, pq, m, backend="triton", dropout_p=0.0, **call_kwargs(case))
    b = disentangled_attention(q, k, v, pk, pq, m, backend="triton", **call_kwargs(case))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "case,p",
    [(Case(N=97, D=32, mask="right"), 0.2),
     (Case(N=70, D=48, p2c=False, buckets=4, max_rel=8, mask="all_pad"), 0.3),
     (Case(N=17, D=48, c2p=False, mask="all_pad", masked_rows="zero"), 0.5),
     (Case(N=40, D=32, c2p=False, p2c=False, mask="left"), 0.1)],
    ids=str,
)
def test_dropout_matches_torch_given_the_kernel_mask(case, p):
    """Forward and backward use one mask: the torch backend replaying it gives the same values and grads."""
    check_dropout(case, p)


@pytest.mark.parametrize("n,buckets,max_rel", [(1, 8, 32), (23, 8, 32), (70, 4, 8), (40, -1, 100), (97, 256, 512)])
@pytest.mark.parametrize("rows_are_queries", [True, False], ids=["band_q", "band_k"])
def test_band_buffer_zeroes_exactly_the_slots_no_pair_writes(n, buckets, max_rel, rows_are_queries):
    """The backward's band buffers start uninitialized: _band_edges_kernel must zero every slot no (query,
    key) pair writes (row padding, distances reaching outside the sequence) and leave the others to the
    kernels. Checked on a NaN-filled buffer against the slots enumerated from the pairs."""
    from deberta_fast.kernels import attention_bwd

    geometry = kernel_common.position_geometry(n, buckets, max_rel, DEVICE)
    width, r_lo, r_hi = geometry.width, geometry.r_lo, geometry.r_hi
    stride = attention_bwd._band_stride(width)
    heads, batch = 2, 3
    band = torch.full((heads, batch, n, stride), float("nan"), device=DEVICE)
    rows_per_program = triton.cdiv(n, attention_bwd._EDGE_ROWS)
    attention_bwd._band_edges_kernel[(rows_per_program * heads * batch,)](
        band, rows_per_program, n, width, stride, r_lo, ROWS_ARE_QUERIES=rows_are_queries,
        BLOCK_R=attention_bwd._EDGE_ROWS, BLOCK_C=attention_bwd._EDGE_COLS,
    )
    written = torch.zeros(n, stride, dtype=torch.bool)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    r = i - j
    pairs = (r > -r_lo) & (r < r_hi)
    rows = (i if rows_are_queries else j)[pairs]
    written[rows, (r + r_lo - 1)[pairs]] = True
    band = band.cpu()
    assert bool(torch.isnan(band[..., written]).all()), "a slot some pair writes was overwritten"
    assert bool((band[..., ~written] == 0).all()), "a slot no pair writes was left uninitialized"


@pytest.mark.parametrize("n,buckets,max_rel", [(97, 8, 32), (300, 16, 64), (97, 256, 512)])
def test_band_rows_index_is_padded_to_the_buffer_row(n, buckets, max_rel):
    """The backward gathers the band's position rows with an index as long as a band buffer's row: the W band
    distances' rows, then row 0 for the padding slots (harmless: those columns of the buffers are zero, as the
    test above checks), and a one-hot of the W distances for dpos. The geometry is cached per length."""
    from deberta_fast.kernels import attention_bwd

    geometry = kernel_common.position_geometry(n, buckets, max_rel, DEVICE)
    assert kernel_common.position_geometry(n, buckets, max_rel, DEVICE) is geometry
    width, two_s = geometry.width, 2 * (buckets if buckets > 0 else max_rel)
    stride = attention_bwd._band_stride(width)
    assert stride > width  # these cases have padding slots
    index, onehot = attention_bwd._band_rows(geometry, two_s, stride)
    assert index.shape == (stride,) and onehot.shape == (two_s, width)
    assert torch.equal(index[:width].cpu(), geometry.band_index.cpu())
    assert bool((index[width:] == 0).all())
    assert torch.equal(onehot.argmax(0).cpu(), geometry.band_index.cpu()) and bool((onehot.sum(0) == 1).all())


def test_position_scores_are_head_major_and_copy_nothing():
    """C2P / P2C as [H, B, N, 2S]; for the model's [B, N, H, D] views and [2S, H, D]-transposed tables, one
    GEMM per head and no copy of the inputs."""
    B, N, H, D, two_s = 3, 11, 2, 16, 8
    q, k = (torch.randn(B, N, H, D).transpose(1, 2) for _ in range(2))
    pk, pq = (torch.randn(two_s, H, D).transpose(0, 1) for _ in range(2))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        c2p, p2c = kernel_common.position_scores(q, k, pk, pq)
    copies = [e.key for e in prof.key_averages() if e.key in ("aten::copy_", "aten::clone", "aten::contiguous")]
    assert copies == [], copies
    assert c2p.is_contiguous() and c2p.shape == (H, B, N, two_s)
    torch.testing.assert_close(c2p, torch.einsum("bhnd,hsd->hbns", q, pk))
    torch.testing.assert_close(p2c, torch.einsum("bhnd,hsd->hbns", k, pq))
    assert kernel_common.position_scores(q, k, None, pq)[0] is None


@triton.jit
def _span_probe(RANGE, MASK, OUT, N, i0, BLOCK: tl.constexpr, TILE: tl.constexpr, PADDED_NEED_ALL: tl.constexpr):
    b = tl.program_id(0)
    offs = i0 + tl.arange(0, TILE)
    inside = offs < N
    ok = tl.load(MASK + b * N + offs, mask=inside, other=1) != 0
    lo, hi = kernel_common.token_span(RANGE, b, ok, inside, N, BLOCK, PADDED_NEED_ALL)
    tl.store(OUT + b * 2, lo)
    tl.store(OUT + b * 2 + 1, hi)


def test_padded_tiles_visit_only_the_token_hull():
    """token_ranges / token_span: the index range a tile of a padded sequence visits (the kernels skip the
    rest). Rows: right padding, left padding, a hole-free middle, no token at all."""
    N, tile = 100, 32
    mask = torch.zeros(4, N, dtype=torch.bool)
    mask[0, :70] = True
    mask[1, 40:] = True
    mask[2, 35:60] = True
    ranges = kernel_common.token_ranges(mask.to(DEVICE))
    assert ranges.tolist() == [[0, 70], [40, 100], [35, 60], [N, 0]]

    def span(i0, padded_need_all):
        out = torch.empty(4, 2, dtype=torch.int32, device=DEVICE)
        _span_probe[(4,)](ranges, mask.to(DEVICE, torch.uint8), out, N, i0, BLOCK=16, TILE=tile,
                          PADDED_NEED_ALL=padded_need_all)
        return [tuple(row) for row in out.tolist()]

    # tile [0, 32): all tokens in row 0, all padding in rows 1 to 3
    assert span(0, False) == [(0, 70), (32, 0), (32, 0), (96, 0)]
    assert span(0, True) == [(0, 70), (0, N), (0, N), (0, N)]  # "uniform": a padded row needs every key
    # tile [32, 64): mixed in rows 0 (no), 1 and 2; token hull lo rounded down to BLOCK
    assert span(32, False) == [(0, 70), (32, 100), (32, 60), (96, 0)]
    assert span(32, True) == [(0, 70), (0, N), (0, N), (0, N)]


# --- the fused backward (DEBERTA_FAST_TRITON_BACKWARD=fused): dQ added atomically by the dK/dV kernel ---

FUSED_CASES = [
    Case(N=1, D=32),
    Case(N=17, D=64, mask="left", masked_rows="zero"),
    Case(N=97, D=32, mask="right"),  # saturated-high, band and saturated-low tiles
    Case(N=97, D=48, p2c=False, mask="left"),
    Case(N=97, D=32, c2p=False, mask="right", masked_rows="zero"),
    Case(N=97, D=32, c2p=False, p2c=False, mask="all_pad"),
    Case(N=97, D=32, buckets=-1, max_rel=24, mask="mixed"),
    Case(B=1, H=2, N=300, D=64, buckets=16, max_rel=64, masked_rows="zero", mask="all_pad"),
]


@pytest.fixture
def fused_backward(monkeypatch):
    from deberta_fast.kernels import attention_bwd

    monkeypatch.setenv(attention_bwd.BACKWARD_ENV, "fused")
    assert attention_bwd.backward_mode() == "fused"


@pytest.mark.parametrize("case", FUSED_CASES, ids=str)
def test_fused_backward_matches_reference(case, fused_backward):
    check_against_reference(case, torch.float32)


def test_fused_backward_low_precision_and_dropout(fused_backward):
    check_against_reference(Case(N=97, D=32, mask="right"), torch.bfloat16)
    check_dropout(Case(N=70, D=48, buckets=4, max_rel=8, mask="all_pad"), 0.3)


def test_fused_backward_agrees_with_split(monkeypatch):
    """The two backwards compute the same sums in different orders: equal up to fp32 rounding."""
    from deberta_fast.kernels import attention_bwd

    results = runs_per_setting(monkeypatch, attention_bwd.BACKWARD_ENV, ("split", "fused"))
    assert torch.equal(results["split"][0], results["fused"][0])  # the forward is shared
    for name, a, b in zip(GRADS, results["split"][1], results["fused"][1]):
        assert max_err(a, b) <= 1e-5 * max(1.0, a.abs().max().item()), name
    monkeypatch.setenv(attention_bwd.BACKWARD_ENV, "both")
    with pytest.raises(ValueError, match="DEBERTA_FAST_TRITON_BACKWARD must be 'auto', 'split' or 'fused'"):
        attention_bwd.backward_mode()


# --- band bias (DEBERTA_FAST_TRITON_BAND=bias): the band pairs' position terms stored once, read back ------


@pytest.mark.parametrize(
    "n,buckets,max_rel,c2p,p2c",
    [(1, 8, 32, True, True), (23, 8, 32, True, True), (70, 4, 8, True, False), (70, 4, 8, False, True),
     (40, -1, 100, True, True), (97, 256, 512, True, True), (300, 16, 64, True, True)],
)
def test_band_bias_holds_every_band_pair(n, buckets, max_rel, c2p, p2c):
    """band_bias stores C2P[i, d(i, j)] + P2C[j, d(i, j)] of every band pair (-r_lo < i - j < r_hi) at
    i * row + j + offset of its (head, sequence)'s plane; the layout keeps distinct band pairs apart and every
    pair of the sequence inside the plane (the kernels load without a band test)."""
    heads, batch, two_s = 2, 3, 2 * (buckets if buckets > 0 else max_rel)
    geometry = kernel_common.position_geometry(n, buckets, max_rel, DEVICE)
    generator = torch.Generator().manual_seed(n)
    scores = [torch.randn(heads, batch, n, two_s, generator=generator).to(DEVICE) if on else None for on in (c2p, p2c)]
    layout = kernel_common.BiasLayout.of(geometry, n)
    bias = kernel_common.band_bias(*scores, geometry, layout)
    assert bias.shape == (heads * batch, layout.plane) and bias.dtype == torch.float32
    assert layout.row % 16 == 0 and layout.offset % 16 == 0 and layout.plane % 16 == 0

    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    r = i - j
    band = (r > -geometry.r_lo) & (r < geometry.r_hi)
    address = i * layout.row + j + layout.offset
    assert int(address.min()) >= 0 and int(address.max()) < layout.plane  # every pair: inside the plane
    assert address[band].unique().numel() == int(band.sum())  # band pairs: one slot each
    d = relative_position_index(n, buckets, max_rel)[band]  # [pairs]
    expected = torch.zeros(heads, batch, d.numel())
    if c2p:
        expected += scores[0].cpu()[:, :, i[band], d]
    if p2c:
        expected += scores[1].cpu()[:, :, j[band], d]
    got = bias.cpu().view(heads, batch, -1)[:, :, address[band]]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# the fused backward's cases that have a position term, and DeBERTa-v3 settings (all band at this length)
BIAS_CASES = [c for c in FUSED_CASES if c.c2p or c.p2c] + [Case(N=97, D=32, buckets=256, max_rel=512, mask="right")]


@pytest.fixture
def band_bias(monkeypatch):
    monkeypatch.setenv(kernel_common.BAND_ENV, "bias")
    assert kernel_common.band_mode() == "bias"
    calls = []
    original = kernel_common.band_bias

    def counting(*args):
        calls.append(args[0] if args[0] is not None else args[1])
        return original(*args)

    from deberta_fast.kernels import attention_bwd, attention_fwd

    monkeypatch.setattr(attention_fwd, "band_bias", counting)
    monkeypatch.setattr(attention_bwd, "band_bias", counting)
    return calls


@pytest.mark.parametrize("case", BIAS_CASES, ids=str)
def test_band_bias_matches_reference(case, band_bias):
    check_against_reference(case, torch.float32)
    assert len(band_bias) == 2  # built by the forward and again by the backward


def test_band_bias_low_precision_dropout_and_fused_backward(band_bias, monkeypatch):
    from deberta_fast.kernels import attention_bwd

    check_against_reference(Case(N=97, D=32, mask="right"), torch.bfloat16)
    check_dropout(Case(N=70, D=48, buckets=4, max_rel=8, mask="all_pad"), 0.3)
    monkeypatch.setenv(attention_bwd.BACKWARD_ENV, "fused")
    check_against_reference(Case(N=97, D=32, mask="mixed"), torch.float32)
    assert len(band_bias) == 6


def test_band_bias_agrees_with_gathers(monkeypatch):
    """Both band modes add the same fp32 values (c2p + p2c) to the same scores: equal outputs and gradients."""
    results = runs_per_setting(monkeypatch, kernel_common.BAND_ENV, ("gather", "bias"))
    assert max_err(results["gather"][0], results["bias"][0]) <= 1e-6
    for name, a, b in zip(GRADS, results["gather"][1], results["bias"][1]):
        assert max_err(a, b) <= 1e-6 * max(1.0, a.abs().max().item()), name
    monkeypatch.setenv(kernel_common.BAND_ENV, "table")
    with pytest.raises(ValueError, match="DEBERTA_FAST_TRITON_BAND must be 'auto', 'gather', 'oriented' or 'bias'"):
        kernel_common.band_mode()


# --- band mode "oriented": each position term gathered on a tile oriented for it ---------------------------


@pytest.mark.parametrize("along_fast_axis", [True, False], ids=["fast-axis", "slow-axis"])
@pytest.mark.parametrize("case", [Case(N=97, D=32, mask="right"), Case(N=97, D=32, buckets=256, max_rel=512),
                                  Case(N=70, D=48, buckets=4, max_rel=8, mask="left", masked_rows="zero"),
                                  Case(N=97, D=32, p2c=False, mask="mixed"), Case(N=97, D=32, c2p=False)], ids=str)
def test_oriented_gathers_match_reference(case, along_fast_axis, monkeypatch):
    """Band mode "oriented" gathers one term per kernel (and stores BAND_Q, in the dQ kernel or the fused dK/dV one)
    on the transposed tile, which one depending on the lanes' axis (slow-axis: Triton 3.6's, fast-axis: 3.7's
    on): both give the reference's values, with the split and the fused backward, each term alone too."""
    from deberta_fast.kernels import attention_bwd

    monkeypatch.setattr(kernel_common, "INDEX_ALONG_FAST_AXIS", along_fast_axis)
    monkeypatch.setenv(kernel_common.BAND_ENV, "oriented")
    launches = record_launches(monkeypatch)
    for backward in ("split", "fused"):
        monkeypatch.setenv(attention_bwd.BACKWARD_ENV, backward)
        assert kernel_common.triton_variant("bwd", torch.empty(1, 1, case.N, case.D)) == ("oriented", backward)
        first = len(launches)
        check_against_reference(case, torch.float32)
        names = [name for name, _ in launches[first:]]
        assert set(names) == ({"fwd", "dkdv", "dq"} if backward == "split" else {"fwd", "dkdv"}), names
        assert all(k["ORIENTED"] for _, k in launches[first:])


def test_oriented_gathers_agree_with_gathers(monkeypatch):
    """The same fp32 values (c2p + p2c) added to the same scores in the same order: identical results."""
    results = runs_per_setting(monkeypatch, kernel_common.BAND_ENV, ("gather", "oriented"),
                               launches=record_launches(monkeypatch))
    for mode in ("gather", "oriented"):
        assert results[mode][2] and all(k["ORIENTED"] == (mode == "oriented") for _, k in results[mode][2])
    assert torch.equal(results["gather"][0], results["oriented"][0])
    for name, a, b in zip(GRADS, results["gather"][1], results["oriented"][1]):
        assert torch.equal(a, b), name


# --- INNER band tiles' position terms loaded one tile ahead (DEBERTA_FAST_TRITON_PREFETCH) -------------------


@pytest.mark.parametrize("band,backward", [("gather", "split"), ("gather", "fused"), ("oriented", "split")])
@pytest.mark.parametrize("case", [Case(B=2, H=2, N=97, D=32, buckets=256, max_rel=512, mask="mixed"),
                                  Case(B=1, H=2, N=300, D=32, buckets=16, max_rel=64, mask="right")], ids=str)
def test_prefetch_changes_when_terms_load_not_the_results(case, band, backward, monkeypatch):
    """Loaded one iteration ahead (the default) or where used, an INNER tile's position terms are the same values
    added in the same order: identical outputs and gradients, in the forward and every backward kernel. Both cases
    have runs of several INNER tiles under the interpreter's 32 x 32 tiles (DeBERTa-v3 settings at N = 97: three a
    full row of query tiles; test_test_cases_reach_inner_and_edge_band_tiles), so the loads ahead move along the run
    and the last tile reloads its own."""
    from deberta_fast.kernels import attention_bwd

    monkeypatch.setenv(kernel_common.BAND_ENV, band)
    monkeypatch.setenv(attention_bwd.BACKWARD_ENV, backward)
    results = runs_per_setting(monkeypatch, kernel_common.PREFETCH_ENV, ("1", "0"), case,
                               launches=record_launches(monkeypatch))
    for value in ("1", "0"):  # the switch reaches every kernel
        assert {name for name, _ in results[value][2]} >= {"fwd", "dkdv"}
        assert all(k["PREFETCH"] == (value == "1") for _, k in results[value][2])
    assert torch.equal(results["1"][0], results["0"][0])
    for name, a, b in zip(GRADS, results["1"][1], results["0"][1]):
        assert (a is None and b is None) or torch.equal(a, b), name


def test_prefetch_switch_rejects_other_values(monkeypatch):
    monkeypatch.delenv(kernel_common.PREFETCH_ENV, raising=False)
    assert kernel_common.prefetch_inner()  # unset: on
    monkeypatch.setenv(kernel_common.PREFETCH_ENV, "0")
    assert not kernel_common.prefetch_inner()
    monkeypatch.setenv(kernel_common.PREFETCH_ENV, "yes")
    with pytest.raises(ValueError, match="DEBERTA_FAST_TRITON_PREFETCH must be '1' or '0', got 'yes'"):
        kernel_common.prefetch_inner()


def test_position_geometry_holds_both_tables_in_one_buffer():
    """table and table_rev are views of one buffer, table_rev 2N - 1 entries after table: a kernel given one finds
    the other there (band mode "oriented")."""
    from deberta_fast.positions import relative_index_table

    for n in (1, 97):
        geometry = kernel_common.position_geometry(n, 8, 32, "cpu")
        assert torch.equal(geometry.tables, torch.cat([relative_index_table(n, 8, 32),
                                                       relative_index_table(n, 8, 32, reverse=True)]))
        assert geometry.table.data_ptr() == geometry.tables.data_ptr()
        assert geometry.table_rev.data_ptr() == geometry.tables[2 * n - 1 :].data_ptr()


# --- the index table's orientation (common.INDEX_ALONG_FAST_AXIS: per Triton version) -------------------------


@pytest.mark.parametrize("along_fast_axis", [True, False], ids=["fast-axis", "slow-axis"])
def test_both_index_orientations_match_reference(along_fast_axis, monkeypatch):
    """Each kernel reads the position index along its tile's fast axis (Triton >= 3.7) or slow axis (3.6),
    whichever this Triton is: both orientations give the reference's values (band tiles of every kernel, the
    fused backward too)."""
    from deberta_fast.kernels import attention_bwd

    monkeypatch.setattr(kernel_common, "INDEX_ALONG_FAST_AXIS", along_fast_axis)
    for env, case in ((None, Case(N=97, D=32, mask="right")), (None, Case(N=97, D=32, buckets=256, max_rel=512)),
                      ("fused", Case(N=70, D=48, buckets=4, max_rel=8, mask="left"))):
        monkeypatch.setenv(attention_bwd.BACKWARD_ENV, env or "split")
        check_against_reference(case, torch.float32)


# --- the variant a call runs: the switches, else the recorded timings (measured.TRITON_VARIANTS) -----------

VARIANT_TIMES = {  # what bench/make_selection.py writes: forward ms per band, backward ms per (band, backward)
    ("9.0", "bfloat16", 64): {
        "fwd": [(512, {"bias": 0.9, "gather": 1.0}), (8192, {"bias": 3.5, "gather": 3.0})],
        "bwd": [(512, {("bias", "fused"): 4.0, ("bias", "split"): 5.0, ("gather", "fused"): 4.5,
                       ("gather", "split"): 6.0})],
    },
}


@pytest.fixture
def recorded_variants(monkeypatch):
    """The table above, and a call on the CPU read as one on an sm_90 GPU, with block configs recorded for the
    bias band's forward (bf16, D 64; fp16 reads them too)."""
    from deberta_fast.backends import measured

    monkeypatch.setattr(measured, "TRITON_VARIANTS", VARIANT_TIMES)
    monkeypatch.setattr(kernel_common, "FASTEST", {("9.0", "bfloat16", 64, "fwd+bias"): [(512, (64, 64, 4, 3))]})
    monkeypatch.setattr(kernel_common, "_device_capability", lambda named: "9.0")
    for env in (kernel_common.BAND_ENV, kernel_common.BACKWARD_ENV):
        monkeypatch.delenv(env, raising=False)


def test_triton_variant_takes_the_switches_then_the_recorded_times(recorded_variants, monkeypatch):
    def variant(step, n=512, dtype=torch.bfloat16):
        return kernel_common.triton_variant(step, torch.empty(1, 2, n, 64, dtype=dtype))

    assert variant("fwd")[0] == "bias" and variant("fwd", n=8192)[0] == "gather"  # the nearest recorded length
    assert variant("fwd", n=600, dtype=torch.float16)[0] == "bias"  # the nearest recorded dtype
    assert variant("bwd") == ("bias", "fused")
    monkeypatch.setenv(kernel_common.BAND_ENV, "gather")  # one switch set: the fastest variant that agrees
    assert variant("bwd") == ("gather", "fused") and variant("fwd")[0] == "gather"
    monkeypatch.setenv(kernel_common.BACKWARD_ENV, "split")
    assert variant("bwd") == ("gather", "split")
    monkeypatch.delenv(kernel_common.BAND_ENV)
    assert variant("bwd") == ("bias", "split")
    monkeypatch.delenv(kernel_common.BACKWARD_ENV)
    # deterministic algorithms requested: the split backward (the fused one adds dQ atomically), bias still allowed
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert variant("bwd") == ("bias", "split")
    monkeypatch.setenv(kernel_common.BACKWARD_ENV, "fused")  # unless asked for by name
    assert variant("bwd") == ("bias", "fused")
    monkeypatch.delenv(kernel_common.BACKWARD_ENV)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    assert variant("bwd") == ("bias", "fused")
    # nothing recorded, or no GPU to look up: gather / split unless switched
    monkeypatch.setattr(kernel_common, "_device_capability", lambda named: None)
    assert variant("bwd") == variant("fwd") == kernel_common.DEFAULT_VARIANT == ("gather", "split")
    from deberta_fast.backends import measured

    monkeypatch.setattr(kernel_common, "_device_capability", lambda named: "9.0")
    monkeypatch.setattr(measured, "TRITON_VARIANTS", {})
    assert variant("bwd") == ("gather", "split")


def test_variant_times_skip_bands_without_configs_for_the_call(recorded_variants, monkeypatch):
    """A band mode other than gather is chosen from recorded times only where its block configs are recorded for
    the call's GPU, dtype and head dim (tuned.py): it was timed with them, and would run fallback configs
    elsewhere (measured on an H100: 'oriented' took 31.9 ms against gather's 19.1 at D 128, untuned there)."""
    from deberta_fast.backends import measured

    fwd, bwd = (512, (64, 64, 4, 3)), (512, (32, 64, 4, 3))
    monkeypatch.setattr(measured, "TRITON_VARIANTS", {("9.0", "bfloat16", 64): {
        "fwd": [(512, {"gather": 1.0, "oriented": 0.9})],
        "bwd": [(512, {("gather", "fused"): 4.0, ("oriented", "split"): 3.0})]}})
    monkeypatch.setattr(kernel_common, "FASTEST", {
        ("9.0", "bfloat16", 64, "fwd"): [fwd], ("9.0", "bfloat16", 64, "fwd+oriented"): [fwd],
        ("9.0", "bfloat16", 128, "fwd"): [fwd], ("9.0", "bfloat16", 64, "dkdv+dq"): [bwd]})

    def variant(step, d, dtype=torch.bfloat16):
        return kernel_common.triton_variant(step, torch.empty(1, 2, 512, d, dtype=dtype))

    assert variant("fwd", 64)[0] == "oriented" and variant("bwd", 64) == ("oriented", "split")  # tuned: as timed
    assert variant("bwd", 64, torch.float16) == ("oriented", "split")  # fp16 reads bf16's configs
    assert variant("fwd", 128)[0] == "gather" and variant("bwd", 128) == ("gather", "fused")  # untuned at D 128
    assert variant("bwd", 64, torch.float32) == ("gather", "fused")  # nor in float32
    monkeypatch.setenv(kernel_common.BAND_ENV, "oriented")  # asked for by name: run it
    assert variant("bwd", 128) == ("oriented", "split")


def test_calls_run_the_recorded_variant(recorded_variants, monkeypatch):
    """Switches unset: the forward and the backward each run the variant the table picks for them (here the
    forward gathers at N 8192 while the backward reads the band bias and runs fused), and still compute the
    reference's values."""
    from deberta_fast.kernels import attention_bwd, attention_fwd

    built, launched = [], []
    original_bias, original_launch = kernel_common.band_bias, attention_bwd.launch
    monkeypatch.setattr(attention_fwd, "band_bias", lambda *a: built.append("fwd") or original_bias(*a))
    monkeypatch.setattr(attention_bwd, "band_bias", lambda *a: built.append("bwd") or original_bias(*a))
    monkeypatch.setattr(attention_bwd, "launch", lambda kernel, *a, **k: launched.append(kernel.deberta_name)
                        or original_launch(kernel, *a, **k))
    monkeypatch.setattr(kernel_common, "_with_recorded_configs", lambda times, *a: times)  # bias: configs or not
    monkeypatch.setattr(kernel_common, "_measured_times", lambda step, *a: {
        "fwd": {("gather", "split"): 1.0, ("bias", "split"): 2.0},
        "bwd": {("bias", "fused"): 1.0, ("gather", "split"): 2.0}}[step])
    check_against_reference(Case(N=97, D=32, mask="right"), torch.float32)
    assert built == ["bwd"] and launched == ["dkdv"]  # no dQ kernel: the fused backward
    # bf16: the backward's band bias is rounded to bf16, the forward's gathered sum is not; the probabilities
    # it recomputes against the forward's LSE stay within the tolerance rule
    check_against_reference(Case(N=97, D=32, buckets=256, max_rel=512, mask="right"), torch.bfloat16)
    assert built == ["bwd", "bwd"]


def test_dropout_is_reproducible_for_a_seed():
    case = Case(N=33, D=32, mask="right")
    tensors, mask = make_inputs(case)
    q, k, v, pk, pq = (t.to(DEVICE, torch.float32) for t in tensors)
    m = mask.to(DEVICE)

    def run(seed):
        torch.manual_seed(seed)
        return disentangled_attention(q, k, v, pk, pq, m, backend="triton", dropout_p=0.3, **call_kwargs(case))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_rate(p):
    B, H, N = 2, 3, 160
    philox = torch.tensor([987654321, 17], dtype=torch.int64, device=DEVICE)
    keep = triton_backend.dropout_keep_mask(philox, B, H, N, p).double()
    n = keep.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(keep.mean().item() - (1 - p)) < 6 * sigma
    # no structure across heads, rows or key groups of four
    per_head = keep.mean(dim=(0, 2, 3))
    assert (per_head - (1 - p)).abs().max().item() < 6 * (p * (1 - p) / (B * N * N)) ** 0.5
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])
    per_lane = keep.view(B, H, N, N // 4, 4).mean(dim=(0, 1, 2, 3))
    assert (per_lane - (1 - p)).abs().max().item() < 6 * (p * (1 - p) / (n / 4)) ** 0.5


# --- ops: opcheck and torch.compile ------------------------------------------------------------


def _op_inputs(case, dtype=torch.float32):
    tensors, mask = make_inputs(case, strided=True)
    tensors = [t.to(DEVICE, dtype).requires_grad_(True) if t is not None else None for t in tensors]
    return tensors, mask.to(DEVICE) if mask is not None else None


@pytest.mark.parametrize("dropout", [False, True], ids=["no-dropout", "dropout"])
def test_opcheck_forward(dropout):
    case = Case(B=1, H=2, N=17, D=32, mask="right")
    (q, k, v, pk, pq), mask = _op_inputs(case)
    philox = torch.tensor([123, 4], dtype=torch.int64, device=DEVICE) if dropout else None
    args = (q, k, v, pk, None if dropout else pq, mask, philox, 8, 32, 0.1, 0.2 if dropout else 0.0, dropout)
    torch.library.opcheck(torch.ops.deberta_fast.disentangled_attention_fwd.default, args)


def test_opcheck_backward():
    case = Case(B=1, H=2, N=17, D=32, mask="left")
    (q, k, v, pk, pq), mask = _op_inputs(case)
    settings = (8, 32, 0.1, 0.0, False)
    out, lse = torch.ops.deberta_fast.disentangled_attention_fwd(q, k, v, pk, pq, mask, None, *settings)
    grad_out = torch.randn_like(out)
    inputs = [t.detach() for t in (q, k, v, pk, pq)]
    args = (grad_out, *inputs, mask, None, out.detach(), lse.detach(), *settings)
    torch.library.opcheck(torch.ops.deberta_fast.disentangled_attention_bwd.default, args)


def test_compile_fullgraph_forward_and_backward():
    """torch.compile(fullgraph=True) traces the op path (no graph break) and matches eager."""
    torch._dynamo.reset()
    case = Case(B=2, H=2, N=24, D=32, mask="right")
    tensors, mask = _op_inputs(case)

    def loss_fn(q, k, v, pk, pq, mask):
        out = disentangled_attention(q, k, v, pk, pq, mask, backend="triton", **call_kwargs(case))
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


# --- dispatch and reasons ----------------------------------------------------------------------


def _call(dtype=torch.float32, D=32, device=DEVICE):
    case = Case(N=9, D=D)
    tensors, _ = make_inputs(case)
    return make_call(*(t.to(device, dtype) for t in tensors), **call_kwargs(case))


def test_backend_is_registered_and_available():
    assert deberta_fast.available_backends()["triton"] == []
    backend = get_backend("triton")
    assert backend.name == "triton" and backend.not_supported_reasons(_call()) == []


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(dtype=torch.float64), "dtype torch.float64 is not supported"),
     (dict(D=160), "head dim 160 is larger than 128")],
)
def test_unsupported_calls_raise_with_reasons(kwargs, match):
    call = _call(**kwargs)
    with pytest.raises(ValueError, match=f"backend 'triton' cannot serve this call: .*{match}"):
        disentangled_attention(call.query, call.key, call.value, call.pos_key, call.pos_query,
                               position_buckets=8, max_relative_positions=32, backend="triton")


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(triton_backend, "INTERPRET", False)
    reasons = get_backend("triton").not_supported_reasons(_call(device="cpu"))
    assert any("TRITON_INTERPRET=1" in r for r in reasons)


def test_torch_backend_replays_kernel_mask_shape_check():
    """The hook's mask is what torch_attention(dropout_mask=...) expects."""
    case = Case(N=9, D=32)
    tensors, _ = make_inputs(case)
    keep = triton_backend.dropout_keep_mask(torch.tensor([1, 2], device=DEVICE), case.B, case.H, case.N, 0.5).cpu()
    call = make_call(*tensors, dropout_p=0.5, **call_kwargs(case))
    out, _ = torch_attention(call, dropout_mask=keep)
    assert out.shape == (case.B, case.H, case.N, case.D)


COMPILE_CHECK = """
import torch
from deberta_fast.kernels.compile_check import (
    KERNELS, compile_band_bias, compile_band_edges, compile_kernel, default_config, gather_lanes, index_reversed,
    inner_loop_schedule, loop_instructions, pipelined_copies, pointer_layout_conversions, ptxas_report,
)
for name in KERNELS:
    # loop bodies (SASS instructions): saturated-high / -low tiles, band edges, inner band tiles; unmasked
    config = default_config(name, torch.bfloat16, 64)
    loops = loop_instructions(compile_kernel(name, config, HAS_MASK=False))
    plain = loop_instructions(compile_kernel(name, config, HAS_MASK=False, HAS_C2P=False, HAS_P2C=False))
    assert len(loops) == 4 and len(plain) == 1, (name, loops, plain)
    first, edges, inner, last = loops
    assert inner < edges, (name, loops)  # no edge or bounds tests
    if name != "dkdv":  # the p2c term folded into the queries: a saturated tile is a plain tile plus a row term
        assert max(first, last) <= 1.2 * plain[0], (name, loops, plain)  # before the fold: 1.3 to 1.5
    print(name, "loops", loops, "plain", plain)
    # INNER tiles' position terms loaded one tile ahead (PREFETCH, the default): the gathers are issued after the
    # tile's first product, so their latency overlaps the rest of the tile; loaded where used, before it
    for prefetch in (True, False):
        first, loads = inner_loop_schedule(compile_kernel(name, config, HAS_MASK=False, PREFETCH=prefetch))
        after = sum(at > first for at in loads) / len(loads)
        assert after >= 0.9 if prefetch else after <= 0.1, (name, prefetch, first, loads)
    variants = [dict(), dict(DROPOUT=True, MASKED_ZERO=True, HAS_P2C=False), dict(BAND_BIAS=True), dict(ORIENTED=True),
                dict(ORIENTED=True, HAS_C2P=False)]
    if name == "dkdv":
        variants.append(dict(FUSED_DQ=True))
    vector_loads = {}
    for flags in variants:
        config = default_config(name, torch.bfloat16, 64)
        compiled = compile_kernel(name, config, dtype=torch.bfloat16, head_dim=64, **flags)
        report = ptxas_report(compiled)
        assert report["registers"], (name, report)
        # no tile of addresses moved between layouts; with the index table read the other way, two per band tile
        # load: edge tiles, and INNER tiles before their loop (the first) and in it (the next: PREFETCH) (the reason
        # for common.INDEX_ALONG_FAST_AXIS, which this Triton version's layouts must bear out)
        sites = 2 if flags.get("BAND_BIAS") else 3
        assert pointer_layout_conversions(compiled) == 0, (name, flags)
        if not flags:
            other = not index_reversed(name)
            turned = compile_kernel(name, config, dtype=torch.bfloat16, head_dim=64, INDEX_REVERSED=other)
            assert pointer_layout_conversions(turned) == 2 * sites, name
        # each c2p / p2c gather's (and BAND_Q store's) warps run along the index its addresses are dense in under
        # "oriented"; on the kernel's one tile ("gather") one of the two terms' do not (the reason for the mode)
        if not flags.get("BAND_BIAS"):
            lanes = gather_lanes(compiled, name, index_reversed(name))
            terms = 2 if flags.get("HAS_C2P", True) and flags.get("HAS_P2C", True) else 1
            gathers = [term for term, _ in lanes if term != "band_q"]
            assert len(gathers) == sites * terms, (name, flags, lanes)
            stores_q = flags.get("HAS_C2P", True) and (name == "dq" or flags.get("FUSED_DQ"))
            assert len(lanes) - len(gathers) == (2 if stores_q else 0), (name, flags, lanes)
            if flags.get("ORIENTED"):
                assert all(dense for _, dense in lanes), (name, flags, lanes)
            elif terms == 2:
                assert {dict(lanes)["c2p"], dict(lanes)["p2c"]} == {True, False}, (name, flags, lanes)
        # the K / V (or Q / dO) tiles of the inner loop are loaded asynchronously, ahead of their use
        assert pipelined_copies(compiled) > 0, (name, flags)
        vector_loads[tuple(flags)] = compiled.asm["ptx"].count("ld.global.v4")
        print(name, flags, report)
    # the band bias is read with 16-byte loads along the keys (a per-pair mask would make them 2-byte loads)
    assert vector_loads[("BAND_BIAS",)] > vector_loads[()], (name, vector_loads)
assert ptxas_report(compile_band_bias())["spill_stores"] == 0
# the forward's register-capped configs (a fifth shape element, maxnreg) reach ptxas
capped = [config for config in KERNELS["fwd"].configs if config.maxnreg]
assert capped
for config in capped:
    report = ptxas_report(compile_kernel("fwd", config, dtype=torch.bfloat16, head_dim=64))
    assert report["registers"] <= config.maxnreg, (config, report)
for rows_are_queries in (True, False):
    assert ptxas_report(compile_band_edges(rows_are_queries=rows_are_queries))["registers"]
"""


# Another Triton to compile with, installed apart (``pip install --no-deps --target DIR triton==3.6.0``): .ci/run
# installs the GPU machines' version there, whose layouts differ from the CI's own Triton (common.INDEX_ALONG_FAST_AXIS).
OTHER_TRITON_ENV = "DEBERTA_FAST_OTHER_TRITON"


@pytest.mark.parametrize("which", ["installed", "other"])
def test_kernels_compile_for_sm90(which):
    """The interpreter never compiles: build the kernels for sm_90 with Triton's ptxas (no GPU needed), their
    arguments specialized as a launch specializes them, and check the compiled layouts keep the gathers'
    addresses where they are computed and the tile loads stay pipelined; with the installed Triton and with
    the one DEBERTA_FAST_OTHER_TRITON names (CI: 3.6)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = COMPILE_CHECK
    if which == "other":
        path = os.environ.get(OTHER_TRITON_ENV)
        if not path:
            pytest.skip(f"{OTHER_TRITON_ENV} names no other Triton install")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
        script = f"import triton; assert triton.__file__.startswith({path!r}), triton.__file__\n" + script
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO.parent, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_import_hygiene():
    """Importing deberta_fast imports no triton. From a checkout's root, where kernels/ is importable as a
    top-level package, ``import kernels`` gives the installed package of that name (Hugging Face's, which
    transformers 5.25 requires) where there is one, else an empty, file-less package that probes see as none;
    either way transformers imports from there."""
    code = "import sys, deberta_fast; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO.parent)
    elsewhere = ("import importlib.machinery, os, sys; "
                 f"path = [p for p in sys.path if os.path.realpath(p or '.') != {str(REPO.resolve())!r}]; "
                 "spec = importlib.machinery.PathFinder.find_spec('kernels', path); print(spec.origin if spec else '')")
    installed = subprocess.run([sys.executable, "-c", elsewhere], check=True, cwd=REPO.parent, capture_output=True,
                               text=True).stdout.strip()
    probe = (f"import kernels; assert (kernels.__file__ or '') == {installed!r}, kernels.__file__; "
             "import transformers.models.deberta_v2.modeling_deberta_v2")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    # no such package installed (site-packages out of sys.path): the empty one
    bare = ("import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]; import kernels; "
            "assert kernels.__all__ == [] and kernels.__file__ is None and kernels.__path__ == []")
    result = subprocess.run([sys.executable, "-c", bare], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


# --- the model end to end ------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["v3-like", "c2p-only", "buckets-clamp"])
def test_model_matches_torch_backend(config):
    """A tiny DeBERTa-v2 (training mode, no dropout) gives the torch backend's outputs and gradients."""
    from model_cases import BASE, CONFIGS, make_batch

    cfg = dict(BASE, **CONFIGS[config])
    ids, mask, types = make_batch(cfg)
    results = []
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        model = deberta_fast.DebertaV2Model(deberta_fast.DebertaV2Config(**cfg), attn_backend=backend).to(DEVICE)
        model.train()
        out = model(ids.to(DEVICE), attention_mask=mask.to(DEVICE)).last_hidden_state
        # a random projection of the real tokens' outputs: not sum(out^2), whose gradient through the final
        # LayerNorm is ~0, and not padded rows, near-constant after LayerNorm (1/sqrt(eps) amplification)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) * mask[..., None]
        (out * weights.to(DEVICE)).sum().backward()
        grads = {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach().cpu(), grads))
    (ref, ref_grads), (got, grads) = results
    assert max_err(got, ref) < 1e-4
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert max_err(g, ref_grads[name]) < 1e-4 * max(1.0, ref_grads[name].abs().max().item()), name


def test_autotuner_zeroes_what_the_fused_backward_accumulates():
    # The fused backward adds dQ and the saturated c2p sums atomically into host-zeroed buffers; the autotuner
    # runs a launch once per config (and again for real), so it must zero them before each run. Without it an
    # autotuned launch's dQ came out hundreds of times too large on an H100 (tests/test_gpu_triton.py
    # test_autotuned_launch); the interpreter runs one config, so this checks the setting itself.
    from deberta_fast.kernels import attention_bwd

    assert set(attention_bwd._dkdv_kernel.reset_to_zero) == {"DQ", "SAT_Q"}
    assert "DQ" in attention_bwd._dkdv_kernel.fn.arg_names and "SAT_Q" in attention_bwd._dkdv_kernel.fn.arg_names

"""Backward of fused disentangled attention.

1. ``_delta_kernel``: Delta_i = rowsum(dO_i * O_i) (fp32).
2. ``_dkdv_kernel``: one program owns BLOCK_N keys of one (batch, head) and walks the query tiles
   (saturated-low, band, saturated-high runs, as the forward): recomputes P from the stored LSE and the
   regenerated dropout mask, accumulates dV = P~^T dO and dK = scale dS^T Q, and the p2c part of dS:
   per key column, the sums of dS over the saturated pairs (rows 0 and 2S - 1 of pos_query; added to dK
   in the kernel), and, on band pairs, dS stored at its distance: ``band_k[j, i - j + r_lo - 1]``.
3. ``_dq_kernel``: one program owns BLOCK_M queries and walks the key tiles: dQ = scale dS K, the c2p
   part of dS as per-row saturated sums (added to dQ in the kernel) and ``band_q[i, i - j + r_lo - 1]``.
4. Band distances -> position rows by GEMMs (torch): with E_k = pos_query[band_index] ([H, W, D]),
   dK += scale band_k E_k and dpos_query = scale M (band_k^T K) with M the [2S, W] one-hot of
   band_index; the same for dQ / dpos_key; the saturated sums add to rows 0 and 2S - 1.

Saturated tiles recompute their scores with one dot and no per-tile position loads (common.saturated_operand):
the dK/dV programs fold the c2p term into their keys (k + pos_key[row]) and add their keys' own p2c values, the
dQ programs fold the p2c term into their queries and add their rows' c2p values in the exponent, as the forward.
INNER band tiles (common.inner_band) store dS by distance without edge or bounds tests and add nothing to the
saturated sums; unless in band mode "bias", each loads the next one's position terms (PREFETCH: common.inner_ahead).

Padded batches: the dQ programs visit only their sequence's token hull of keys (dS is zero on every pair with
a padded side), and under masked_rows="zero" the dK/dV programs only its token hull of queries; the band
buffers are then zeroed whole, since skipped tiles leave their slots unwritten.

The fused backward (DEBERTA_FAST_TRITON_BACKWARD=fused, or chosen by common.triton_variant) runs steps 2 and 3
as one kernel: the dK/dV programs also add scale dS^T K into a zeroed fp32 dQ, and the c2p part of dS into
zeroed saturated sums, atomically, and store it by distance (the probabilities computed once instead of twice;
the summation order of dQ is not fixed, so dQ may differ between runs in its last bits).

In band mode "bias" (DEBERTA_FAST_TRITON_BAND=bias, or chosen by common.triton_variant) the backward builds
common.band_bias's buffer once per call (per batch slice) and both kernels' band tiles read each pair's
c2p + p2c from it instead of gathering; in band mode "oriented" they gather each term on a tile oriented for it
(common.position_bias).

Band buffers are plain stores in the inputs' dtype (each pair's distance slot is written once: no atomics,
deterministic; the slots no pair has, row padding and distances reaching past the sequence, are zeroed by
``_band_edges_kernel`` instead of a fill of the whole buffer, except where rows leave over a quarter of their
slots unwritten (N <= 3/4 of a row's length; padded batches): there one fill of the whole buffer costs less;
dS rounded to the inputs' dtype, as the dK / dQ GEMMs of the kernels round it), and the GEMMs of step 4 run on
tensor cores with float32 accumulation and results.
Their width W = r_lo + r_hi - 1 is the band of distances where the index is not clamped (1017 for
DeBERTa-v3), so memory is O(N * W): no N x N tensor exists at any point. Batches whose position buffers
exceed common.CHUNK_BYTES run in slices of whole sequences (steps 2-4 per slice).
"""

from __future__ import annotations

import collections

import torch
import triton
import triton.language as tl

from .common import (  # noqa: F401  (BACKWARD_ENV, backward_mode: this module's switch, defined with the others)
    BACKWARD_ENV, BAND, INNER, K_LOG2E, LOG2E, PLAIN, SAT_HI, SAT_LO,
    autotuned, backward_mode, band_bias, band_edge_terms, band_runs, batch_slices, bias_layout, block_d, dot,
    end_terms, index_table, inner_ahead, inner_band, key_regions, launch, load_rows, load_vector, mask_scores,
    position_bias, position_geometry, position_scores, prefetch_inner, query_regions, saturated_operand,
    seq_bucket, store_by_distance, store_rows, tile_count, tile_start, token_ranges, token_span, triton_variant,
    upcast_dots,
)
from .dropout import dropout_keep

__all__ = ["attention_backward"]

# (BLOCK_M, BLOCK_N, num_warps, num_stages). dK/dV owns BLOCK_N keys, dQ owns BLOCK_M queries; the first
# config surviving the prune filter is the default (D <= 64: 32 x 128 / 128 x 32; D 128: 16 x 64 / 64 x 32).
# ptxas, sm_90, bf16, c2p + p2c + mask (compile_check, arguments specialized as a launch does), with Triton 3.6 (the
# GPU machines') / 3.8: dK/dV 32 x 128 at D 64 spills 20 / 44 bytes (on 3.6 outside the loops: the saturated
# tiles' key operands; 32 x 64 under 8 warps: none / none); dQ 128 x 32 none / none (218 / 254 registers); at
# D 128 none / none for both.
_DKDV_SHAPES = [
    (32, 128, 8, 2), (16, 64, 8, 2), (64, 64, 8, 3), (32, 64, 4, 3), (32, 64, 8, 2), (64, 128, 8, 2), (16, 16, 4, 2),
]
_DQ_SHAPES = [
    (128, 32, 8, 2), (64, 32, 8, 2), (64, 64, 8, 3), (64, 32, 4, 3), (128, 64, 8, 2), (64, 16, 4, 2), (16, 16, 4, 2),
]


@triton.jit
def _delta_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_db, stride_dh, stride_dn, stride_dd,
    H, N,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    n_blocks = tl.cdiv(N, BLOCK_M)
    pid = tl.program_id(0)
    bh = pid // n_blocks
    offs_m = (pid % n_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    o = load_rows(O + b * stride_ob + h * stride_oh, offs_m, stride_on, stride_od, N, HEAD_DIM, BLOCK_D, True)
    do = load_rows(DO + b * stride_db + h * stride_dh, offs_m, stride_dn, stride_dd, N, HEAD_DIM, BLOCK_D, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * N + offs_m, delta, mask=offs_m < N)


@triton.jit
def _band_edges_kernel(
    BAND, rows_per_program, N, W, STRIDE, R_LO,
    ROWS_ARE_QUERIES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Zero the slots of a band buffer ``[H * B, N, STRIDE]`` that no tile writes: columns past the band width
    W (row padding) and distances whose other index falls outside [0, N). Every other slot is written
    exactly once by the dK/dV or dQ kernel, so the buffer needs no full zero fill.

    Row x is a query (band_q: slot c is the key x - c + r_lo - 1) or a key (band_k: slot c is the query
    x + c - r_lo + 1); the written slots of row x are c in [lo(x), hi(x)] with c < W."""
    pid = tl.program_id(0)
    seq = pid // rows_per_program
    rows = (pid % rows_per_program) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_in = rows < N
    if ROWS_ARE_QUERIES:
        lo = rows + R_LO - N
        hi = rows + R_LO - 1
    else:
        lo = R_LO - 1 - rows
        hi = N + R_LO - 2 - rows
    hi = tl.minimum(hi, W - 1)
    base = BAND + seq.to(tl.int64) * N * STRIDE + rows[:, None].to(tl.int64) * STRIDE
    zeros = tl.zeros([BLOCK_R, BLOCK_C], dtype=BAND.dtype.element_ty)
    # columns left of every row's written run, then right of it (only the chunks that hold such slots)
    left_end = tl.minimum(tl.max(tl.where(row_in, lo, 0), 0), STRIDE)
    right_start = tl.maximum(tl.min(tl.where(row_in, hi + 1, STRIDE), 0), left_end)
    for c0 in range(0, left_end, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        tl.store(base + cols[None, :], zeros, mask=row_in[:, None] & (cols[None, :] < lo[:, None]))
    for c0 in range(right_start // BLOCK_C * BLOCK_C, STRIDE, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        outside = (cols[None, :] > hi[:, None]) & (cols[None, :] < STRIDE)
        tl.store(base + cols[None, :], zeros, mask=row_in[:, None] & outside)


_EDGE_ROWS, _EDGE_COLS = 16, 64


def _band_buffer(rows_are_queries: bool, heads: int, batch: int, N: int, width: int, stride: int, r_lo: int,
                 dtype: torch.dtype, device, padded: bool) -> torch.Tensor:
    """A band buffer ``[heads, batch, N, stride]`` whose slots the kernels never write are zero (the rest is
    left for them to write). With a padding mask (``padded``) the kernels skip tiles of padding, whose slots
    are then never written either: the whole buffer is zeroed. So it is when a row's pairs fill at most
    three quarters of it (N <= 3/4 stride: at N 512 and v3 settings each row writes 512 of 1024 slots), where
    one fill of the whole buffer moves less than the edge kernel's masked stores of the unwritten part (0.47 ms
    a call at N 512, bf16, B*N 16384, on an H100: bench/results/h100_2026-11-22d/profile_triton_N512.txt)."""
    if padded or 4 * N <= 3 * stride:
        return torch.zeros(heads, batch, N, stride, dtype=dtype, device=device)
    band = torch.empty(heads, batch, N, stride, dtype=dtype, device=device)
    rows_per_program = triton.cdiv(N, _EDGE_ROWS)
    _band_edges_kernel[(rows_per_program * heads * batch,)](
        band, rows_per_program, N, width, stride, r_lo,
        ROWS_ARE_QUERIES=rows_are_queries, BLOCK_R=_EDGE_ROWS, BLOCK_C=_EDGE_COLS,
    )
    return band


# ----------------------------------------------------------------------------------------------------
# dK, dV (and the p2c part of dS): programs over key tiles.


@triton.jit
def _dkdv_tiles(
    dk, dv, t_hi, t_lo, k, kt, own, v, col_ok, p2c_hi, p2c_lo, j0, offs_n, start, end, gap_lo, gap_hi,
    Q, DO, LSE, DELTA, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, MASK_B, BAND_K, seed, offset, bh,
    DQ, BAND_Q, SAT_Q_LO, SAT_Q_HI, stride_dqn, stride_dqd, scale,
    stride_qn, stride_qd, stride_dn, stride_dd, stride_mn,
    N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
    MODE: tl.constexpr, CHECK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr, MASKED_ZERO: tl.constexpr,
    DROPOUT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, FUSED_DQ: tl.constexpr,
    BAND_BIAS: tl.constexpr, ORIENTED: tl.constexpr, INDEX_REVERSED: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Accumulate over the query tiles [start, end) less [gap_lo, gap_hi) (as the forward's ``_fwd_tiles``), all of
    one kind (MODE); scores are transposed [keys, queries].
    ``kt``: the scores' key operand, in saturated tiles the keys with the c2p term folded in
    (common.saturated_operand; ``k`` itself is what dQ needs); ``own``: the keys' p2c values at the position
    row of saturated tiles ([BLOCK_N, 1], or 0.0). ``p2c_hi`` / ``p2c_lo``: the keys' p2c values at rows 2S - 1
    / 0 ([BLOCK_N, 1], or 0.0), which band tiles read under BAND_BIAS for their pairs beyond the band.

    FUSED_DQ: also the dQ kernel's work for these pairs, added atomically: scale dS^T K into DQ (fp32, zeroed),
    the c2p part of dS summed over saturated pairs into SAT_Q_LO / SAT_Q_HI (fp32, zeroed) and stored by
    distance in BAND_Q (``band_q[i, i - j + r_lo - 1]``)."""
    col_in = offs_n < N
    n_tiles = tile_count(start, end, gap_lo, gap_hi, BLOCK_M)
    ahead = 0.0  # PREFETCH: the next INNER tile's position terms (common.inner_ahead)
    if PREFETCH and MODE == INNER:
        ahead = inner_ahead(-1, start, n_tiles, offs_n, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N,
                            HAS_C2P, HAS_P2C, INDEX_REVERSED, BAND_BIAS, ORIENTED, 1, BLOCK_N, BLOCK_M)
    for t in range(0, n_tiles):
        start_m = tile_start(t, start, gap_lo, gap_hi, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_in = offs_m < N
        q = load_rows(Q, offs_m, stride_qn, stride_qd, N, HEAD_DIM, BLOCK_D, CHECK_M)
        do = load_rows(DO, offs_m, stride_dn, stride_dd, N, HEAD_DIM, BLOCK_D, CHECK_M)
        lse2 = tl.load(LSE + offs_m, mask=row_in, other=float("inf")) * K_LOG2E
        delta = tl.load(DELTA + offs_m, mask=row_in, other=0.0)
        s = dot(kt, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), PREC, UPCAST)
        valid = col_in[:, None] & row_in[None, :]
        if PREFETCH and MODE == INNER:
            s += ahead
        elif MODE == BAND or MODE == INNER:
            sat_hi = 0.0
            sat_lo = 0.0
            if BAND_BIAS and MODE == BAND:
                sat_hi, sat_lo = band_edge_terms(p2c_hi, p2c_lo, C2P, offs_m, row_in, two_s, HAS_C2P)
            s += position_bias(offs_m, offs_n, valid, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N,
                               R_HI, R_LO, sat_hi, sat_lo, HAS_C2P, HAS_P2C, INDEX_REVERSED, BAND_BIAS, ORIENTED,
                               MODE == BAND, 1)
        elif MODE != PLAIN:
            s += own  # before the mask: a fully padded query row's scores stay one constant
        row_ok = row_in
        if HAS_MASK:
            row_ok = tl.load(MASK_B + offs_m * stride_mn, mask=row_in, other=1) != 0
        s = mask_scores(s, row_ok[None, :], col_ok[:, None], col_in[:, None], HAS_MASK, MASKED_ZERO, False)
        p = tl.math.exp2(s * qk_scale - lse2[None, :])  # 0 on rows past N and fully padded rows under MASKED_ZERO
        dp = dot(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), PREC, UPCAST)
        if DROPOUT:
            keep = tl.trans(dropout_keep(seed, offset, bh, start_m, j0, dropout_p, BLOCK_M, BLOCK_N))
            rescale = 1.0 / (1.0 - dropout_p)
            dv = dot(tl.where(keep, p * rescale, 0.0).to(do.dtype), do, dv, PREC, UPCAST)
            dp = tl.where(keep, dp * rescale, 0.0)
        else:
            dv = dot(p.to(do.dtype), do, dv, PREC, UPCAST)
        ds = p * (dp - delta[None, :])
        if HAS_MASK and not MASKED_ZERO:
            # a pair with a padded side has p = 0 (its score -inf; a fully padded row's LSE +inf under "zero")
            # except in a fully padded query row under "uniform" (p = 1/N), whose scores are a constant: dS 0
            ds = tl.where(row_ok[None, :], ds, 0.0)
        dk = dot(ds.to(q.dtype), q, dk, PREC, UPCAST)
        if HAS_P2C:
            if MODE == SAT_HI:
                t_hi += tl.sum(ds, 1)
            elif MODE == SAT_LO:
                t_lo += tl.sum(ds, 1)
            elif MODE == INNER:
                r = offs_m[None, :] - offs_n[:, None]
                tl.store(BAND_K + offs_n[:, None] * W + (r + (R_LO - 1)), ds.to(BAND_K.dtype.element_ty))
            else:
                r = offs_m[None, :] - offs_n[:, None]
                t_hi += tl.sum(tl.where(r >= R_HI, ds, 0.0), 1)
                t_lo += tl.sum(tl.where(r <= -R_LO, ds, 0.0), 1)
                in_band = (r > -R_LO) & (r < R_HI) & valid
                tl.store(BAND_K + offs_n[:, None] * W + (r + (R_LO - 1)), ds.to(BAND_K.dtype.element_ty), mask=in_band)
        if FUSED_DQ:
            if not HAS_MASK and MODE != INNER:  # keys past N (their dK / dV rows are never stored) must not reach dQ
                ds = tl.where(col_in[:, None], ds, 0.0)
            offs_d = tl.arange(0, BLOCK_D)
            dq = dot(tl.trans(ds.to(k.dtype)), k, tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), PREC, UPCAST)
            tl.atomic_add(DQ + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd, dq * scale,
                          mask=row_in[:, None] & (offs_d[None, :] < HEAD_DIM), sem="relaxed")
            if HAS_C2P:
                if MODE == SAT_HI:
                    tl.atomic_add(SAT_Q_HI + offs_m, tl.sum(ds, 0), mask=row_in, sem="relaxed")
                elif MODE == SAT_LO:
                    tl.atomic_add(SAT_Q_LO + offs_m, tl.sum(ds, 0), mask=row_in, sem="relaxed")
                elif MODE == INNER:
                    store_by_distance(BAND_Q, offs_m, offs_n, ds, valid, W, N, R_HI, R_LO, 1,
                                      ORIENTED, INDEX_REVERSED, False)
                else:
                    r = offs_m[None, :] - offs_n[:, None]
                    tl.atomic_add(SAT_Q_HI + offs_m, tl.sum(tl.where(r >= R_HI, ds, 0.0), 0), mask=row_in, sem="relaxed")
                    tl.atomic_add(SAT_Q_LO + offs_m, tl.sum(tl.where(r <= -R_LO, ds, 0.0), 0), mask=row_in, sem="relaxed")
                    store_by_distance(BAND_Q, offs_m, offs_n, ds, valid, W, N, R_HI, R_LO, 1,
                                      ORIENTED, INDEX_REVERSED, True)
        if PREFETCH and MODE == INNER:
            ahead = inner_ahead(t, start, n_tiles, offs_n, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N,
                                HAS_C2P, HAS_P2C, INDEX_REVERSED, BAND_BIAS, ORIENTED, 1, BLOCK_N, BLOCK_M)
    return dk, dv, t_hi, t_lo


# DQ and SAT_Q: the fused backward adds into them atomically (zeroed by the host); the autotuner runs a launch
# many times, so it zeroes them before each run (in the split backward the dQ kernel stores both afterwards).
@autotuned("dkdv", _DKDV_SHAPES, interpret_blocks=(32, 32), owned="BLOCK_N", reset_to_zero=("DQ", "SAT_Q"))
@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, C2P, P2C, TABLE, BIAS, MASK, RANGE, PHILOX, LSE, DELTA, POS_K, POS_Q, DK, DV, BAND_K, SAT_K, DQ,
    BAND_Q, SAT_Q,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    stride_pkh, stride_pkn, stride_pkd, stride_pqh, stride_pqn, stride_pqd,
    stride_mb, stride_mn,
    B, H, N, BH0, R_HI, R_LO, two_s, W, BIAS_ROW, BIAS_OFFSET, BIAS_PLANE, scale, qk_scale, dropout_p, SEQ_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr, MASKED_ZERO: tl.constexpr,
    DROPOUT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, FUSED_DQ: tl.constexpr,
    BAND_BIAS: tl.constexpr, ORIENTED: tl.constexpr, INDEX_REVERSED: tl.constexpr, PREFETCH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n_blocks = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    bh = pid // n_blocks
    j0 = (pid % n_blocks) * BLOCK_N
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    bh64 = bh.to(tl.int64)

    Q += b * stride_qb + h * stride_qh
    DO += b * stride_dob + h * stride_doh
    C2P += (h * B + b) * N * two_s  # [H, B, N, 2S] (common.position_scores)
    P2C += (h * B + b) * N * two_s
    BIAS += (h * B + b) * BIAS_PLANE  # [H * B, plane] (common.band_bias)
    LSE += bh64 * N
    DELTA += bh64 * N
    MASK += b * stride_mb
    BAND_K += (h * B + b) * N * W
    DQ += b * stride_dqb + h * stride_dqh
    BAND_Q += (h * B + b) * N * W
    SAT_Q_LO = SAT_Q + bh64 * N
    SAT_Q_HI = SAT_Q + (B * H + bh64) * N

    offs_n = j0 + tl.arange(0, BLOCK_N)
    col_in = offs_n < N
    k = load_rows(K + b * stride_kb + h * stride_kh, offs_n, stride_kn, stride_kd, N, HEAD_DIM, BLOCK_D, True)
    v = load_rows(V + b * stride_vb + h * stride_vh, offs_n, stride_vn, stride_vd, N, HEAD_DIM, BLOCK_D, True)
    col_ok = col_in
    if HAS_MASK:
        col_ok = tl.load(MASK + offs_n * stride_mn, mask=col_in, other=0) != 0
    seed = 0
    offset = 0
    if DROPOUT:
        seed = tl.load(PHILOX)
        offset = tl.load(PHILOX + 1)
    global_bh = bh + BH0  # B, H and bh count this slice of the batch; dropout counts globally

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    t_hi = tl.zeros([BLOCK_N], dtype=tl.float32)
    t_lo = tl.zeros([BLOCK_N], dtype=tl.float32)

    # Queries this tile visits: all, or under masked_rows "zero" (where a pair with a padded side has
    # probability 0) the sequence's token hull, nothing if the tile holds no token. Under "uniform" a fully
    # padded query row gives every key probability 1/N, and with it a share of dV.
    q_lo = 0
    q_hi = N
    if HAS_MASK and MASKED_ZERO:
        q_lo, q_hi = token_span(RANGE, b, col_ok, col_in, N, BLOCK_M, False)

    if HAS_C2P or HAS_P2C:
        lo_end, hi_start = query_regions(j0, N, R_HI, R_LO, BLOCK_M, BLOCK_N)
        # Saturated tiles: the c2p term folded into the keys, the p2c term one value per key.
        POS_K += h * stride_pkh
        k_lo = saturated_operand(k, POS_K, 0, stride_pkn, stride_pkd, HAS_C2P, HEAD_DIM, BLOCK_D)
        lo_stop = tl.minimum(lo_end, q_hi)
        p2c_hi, p2c_lo, _, _ = end_terms(P2C, offs_n, col_in, col_in, two_s, 1.0, HAS_P2C)  # added before the mask
        dk, dv, t_hi, t_lo = _dkdv_tiles(
            dk, dv, t_hi, t_lo, k, k_lo, p2c_lo, v, col_ok, p2c_hi, p2c_lo, j0, offs_n, q_lo, lo_stop, lo_stop, lo_stop,
            Q, DO, LSE, DELTA, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, BAND_K, seed, offset, global_bh,
            DQ, BAND_Q, SAT_Q_LO, SAT_Q_HI, stride_dqn, stride_dqd, scale,
            stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
            N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
            SAT_LO, False, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, FUSED_DQ, BAND_BIAS, ORIENTED,
            INDEX_REVERSED, PREFETCH)
        band_start = tl.maximum(lo_end, q_lo)
        band_end = tl.minimum(hi_start, q_hi)
        inner_lo, inner_hi = inner_band(j0, N, R_LO, R_HI, BLOCK_N, BLOCK_M)
        inner_start, inner_end = band_runs(band_start, band_end, inner_lo, inner_hi)
        dk, dv, t_hi, t_lo = _dkdv_tiles(
            dk, dv, t_hi, t_lo, k, k, 0.0, v, col_ok, p2c_hi, p2c_lo, j0, offs_n, band_start, band_end,
            inner_start, inner_end,
            Q, DO, LSE, DELTA, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, BAND_K, seed, offset, global_bh,
            DQ, BAND_Q, SAT_Q_LO, SAT_Q_HI, stride_dqn, stride_dqd, scale,
            stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
            N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
            BAND, True, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, FUSED_DQ, BAND_BIAS, ORIENTED,
            INDEX_REVERSED, PREFETCH)
        dk, dv, t_hi, t_lo = _dkdv_tiles(
            dk, dv, t_hi, t_lo, k, k, 0.0, v, col_ok, p2c_hi, p2c_lo, j0, offs_n, inner_start, inner_end,
            inner_end, inner_end,
            Q, DO, LSE, DELTA, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, BAND_K, seed, offset, global_bh,
            DQ, BAND_Q, SAT_Q_LO, SAT_Q_HI, stride_dqn, stride_dqd, scale,
            stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
            N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
            INNER, False, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, FUSED_DQ, BAND_BIAS, ORIENTED,
            INDEX_REVERSED, PREFETCH)
        k_hi = saturated_operand(k, POS_K, two_s - 1, stride_pkn, stride_pkd, HAS_C2P, HEAD_DIM, BLOCK_D)
        dk, dv, t_hi, t_lo = _dkdv_tiles(
            dk, dv, t_hi, t_lo, k, k_hi, p2c_hi, v, col_ok, p2c_hi, p2c_lo, j0, offs_n,
            tl.maximum(hi_start, q_lo), q_hi, q_hi, q_hi,
            Q, DO, LSE, DELTA, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, BAND_K, seed, offset, global_bh,
            DQ, BAND_Q, SAT_Q_LO, SAT_Q_HI, stride_dqn, stride_dqd, scale,
            stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
            N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
            SAT_HI, True, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, FUSED_DQ, BAND_BIAS, ORIENTED,
            INDEX_REVERSED, PREFETCH)
    else:
        dk, dv, t_hi, t_lo = _dkdv_tiles(
            dk, dv, t_hi, t_lo, k, k, 0.0, v, col_ok, 0.0, 0.0, j0, offs_n, q_lo, q_hi, q_hi, q_hi,
            Q, DO, LSE, DELTA, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, BAND_K, seed, offset, global_bh,
            DQ, BAND_Q, SAT_Q_LO, SAT_Q_HI, stride_dqn, stride_dqd, scale,
            stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
            N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
            PLAIN, True, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, FUSED_DQ, BAND_BIAS, ORIENTED,
            INDEX_REVERSED, PREFETCH)

    dk = dk * scale
    if HAS_P2C:  # saturated pairs: their p2c gradient flows through pos_query rows 0 and 2S - 1
        POS_Q += h * stride_pqh
        pq_hi = load_vector(POS_Q + (two_s - 1) * stride_pqn, stride_pqd, HEAD_DIM, BLOCK_D)
        pq_lo = load_vector(POS_Q, stride_pqd, HEAD_DIM, BLOCK_D)
        dk += scale * (t_hi[:, None] * pq_hi[None, :] + t_lo[:, None] * pq_lo[None, :])
        tl.store(SAT_K + bh64 * N + offs_n, t_lo, mask=col_in)
        tl.store(SAT_K + (B * H + bh64) * N + offs_n, t_hi, mask=col_in)
    store_rows(DK + b * stride_dkb + h * stride_dkh, dk, offs_n, stride_dkn, stride_dkd, N, HEAD_DIM, BLOCK_D)
    store_rows(DV + b * stride_dvb + h * stride_dvh, dv, offs_n, stride_dvn, stride_dvd, N, HEAD_DIM, BLOCK_D)


# ----------------------------------------------------------------------------------------------------
# dQ (and the c2p part of dS): programs over query tiles.


@triton.jit
def _dq_tiles(
    dq, s_hi, s_lo, q, do, lse2, delta, row_ok, row_off, c2p_hi, c2p_lo, i0, offs_m, start, end, gap_lo, gap_hi,
    K, V, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, MASK_B, BAND_Q, seed, offset, bh,
    stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
    N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
    MODE: tl.constexpr, CHECK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr, MASKED_ZERO: tl.constexpr,
    DROPOUT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, BAND_BIAS: tl.constexpr, ORIENTED: tl.constexpr,
    INDEX_REVERSED: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Accumulate over the key tiles [start, end) less [gap_lo, gap_hi) (as the forward's ``_fwd_tiles``), all of one
    kind (MODE). ``q``: the scores' query operand and
    ``row_off`` the rows' scaled additions, as in the forward's ``_fwd_tiles``; ``c2p_hi`` / ``c2p_lo``: the rows'
    c2p values at position rows 2S - 1 / 0 ([BLOCK_M, 1], or 0.0), for band tiles under BAND_BIAS."""
    row_in = offs_m < N
    n_tiles = tile_count(start, end, gap_lo, gap_hi, BLOCK_N)
    ahead = 0.0  # PREFETCH: the next INNER tile's position terms (common.inner_ahead)
    if PREFETCH and MODE == INNER:
        ahead = inner_ahead(-1, start, n_tiles, offs_m, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N,
                            HAS_C2P, HAS_P2C, INDEX_REVERSED, BAND_BIAS, ORIENTED, 0, BLOCK_M, BLOCK_N)
    for t in range(0, n_tiles):
        start_n = tile_start(t, start, gap_lo, gap_hi, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_in = offs_n < N
        k = load_rows(K, offs_n, stride_kn, stride_kd, N, HEAD_DIM, BLOCK_D, CHECK_N)
        v = load_rows(V, offs_n, stride_vn, stride_vd, N, HEAD_DIM, BLOCK_D, CHECK_N)
        s = dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), PREC, UPCAST)
        valid = row_in[:, None] & col_in[None, :]
        if PREFETCH and MODE == INNER:
            s += ahead
        elif MODE == BAND or MODE == INNER:
            sat_hi = 0.0
            sat_lo = 0.0
            if BAND_BIAS and MODE == BAND:
                sat_hi, sat_lo = band_edge_terms(c2p_hi, c2p_lo, P2C, offs_n, col_in, two_s, HAS_P2C)
            s += position_bias(offs_m, offs_n, valid, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N,
                               R_HI, R_LO, sat_hi, sat_lo, HAS_C2P, HAS_P2C, INDEX_REVERSED, BAND_BIAS, ORIENTED,
                               MODE == BAND, 0)
        col_ok = col_in
        if HAS_MASK:
            col_ok = tl.load(MASK_B + offs_n * stride_mn, mask=col_in, other=0) != 0
        s = mask_scores(s, row_ok[:, None], col_ok[None, :], col_in[None, :], HAS_MASK, MASKED_ZERO, CHECK_N)
        p = tl.math.exp2(s * qk_scale + (row_off - lse2)[:, None])
        dp = dot(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), PREC, UPCAST)
        if DROPOUT:
            keep = dropout_keep(seed, offset, bh, i0, start_n, dropout_p, BLOCK_M, BLOCK_N)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        if HAS_MASK and not MASKED_ZERO:  # as in _dkdv_tiles: only fully padded rows under "uniform" have p > 0
            ds = tl.where(row_ok[:, None], ds, 0.0)
        dq = dot(ds.to(k.dtype), k, dq, PREC, UPCAST)
        if HAS_C2P:
            if MODE == SAT_HI:
                s_hi += tl.sum(ds, 1)
            elif MODE == SAT_LO:
                s_lo += tl.sum(ds, 1)
            elif MODE == INNER:
                store_by_distance(BAND_Q, offs_m, offs_n, ds, valid, W, N, R_HI, R_LO, 0,
                                  ORIENTED, INDEX_REVERSED, False)
            else:
                r = offs_m[:, None] - offs_n[None, :]
                s_hi += tl.sum(tl.where(r >= R_HI, ds, 0.0), 1)
                s_lo += tl.sum(tl.where(r <= -R_LO, ds, 0.0), 1)
                store_by_distance(BAND_Q, offs_m, offs_n, ds, valid, W, N, R_HI, R_LO, 0,
                                  ORIENTED, INDEX_REVERSED, True)
        if PREFETCH and MODE == INNER:
            ahead = inner_ahead(t, start, n_tiles, offs_m, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N,
                                HAS_C2P, HAS_P2C, INDEX_REVERSED, BAND_BIAS, ORIENTED, 0, BLOCK_M, BLOCK_N)
    return dq, s_hi, s_lo


@autotuned("dq", _DQ_SHAPES, interpret_blocks=(32, 32), owned="BLOCK_M")
@triton.jit
def _dq_kernel(
    Q, K, V, DO, C2P, P2C, TABLE, BIAS, MASK, RANGE, PHILOX, LSE, DELTA, POS_K, POS_Q, DQ, BAND_Q, SAT_Q,  # index_table
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    stride_pkh, stride_pkn, stride_pkd, stride_pqh, stride_pqn, stride_pqd,
    stride_mb, stride_mn,
    B, H, N, BH0, R_HI, R_LO, two_s, W, BIAS_ROW, BIAS_OFFSET, BIAS_PLANE, scale, qk_scale, dropout_p, SEQ_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr, MASKED_ZERO: tl.constexpr,
    DROPOUT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, BAND_BIAS: tl.constexpr, ORIENTED: tl.constexpr,
    INDEX_REVERSED: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n_blocks = tl.cdiv(N, BLOCK_M)
    pid = tl.program_id(0)
    bh = pid // n_blocks
    i0 = (pid % n_blocks) * BLOCK_M
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    bh64 = bh.to(tl.int64)

    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    C2P += (h * B + b) * N * two_s  # [H, B, N, 2S] (common.position_scores)
    P2C += (h * B + b) * N * two_s
    BIAS += (h * B + b) * BIAS_PLANE  # [H * B, plane] (common.band_bias)
    MASK += b * stride_mb
    BAND_Q += (h * B + b) * N * W

    offs_m = i0 + tl.arange(0, BLOCK_M)
    row_in = offs_m < N
    q = load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qn, stride_qd, N, HEAD_DIM, BLOCK_D, True)
    do = load_rows(DO + b * stride_dob + h * stride_doh, offs_m, stride_don, stride_dod, N, HEAD_DIM, BLOCK_D, True)
    lse2 = tl.load(LSE + bh64 * N + offs_m, mask=row_in, other=float("inf")) * K_LOG2E
    delta = tl.load(DELTA + bh64 * N + offs_m, mask=row_in, other=0.0)
    row_ok = row_in
    if HAS_MASK:
        row_ok = tl.load(MASK + offs_m * stride_mn, mask=row_in, other=1) != 0
    seed = 0
    offset = 0
    if DROPOUT:
        seed = tl.load(PHILOX)
        offset = tl.load(PHILOX + 1)
    global_bh = bh + BH0  # B, H and bh count this slice of the batch; dropout counts globally

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    s_hi = tl.zeros([BLOCK_M], dtype=tl.float32)
    s_lo = tl.zeros([BLOCK_M], dtype=tl.float32)

    # Keys this tile visits: dS is zero on every pair with a padded side (masked_rows either way), so a
    # padded batch's tile needs only its sequence's token hull, nothing if it holds no token.
    key_lo = 0
    key_hi = N
    if HAS_MASK:
        key_lo, key_hi = token_span(RANGE, b, row_ok, row_in, N, BLOCK_N, False)

    if HAS_C2P or HAS_P2C:
        hi_end, lo_start = key_regions(i0, N, R_HI, R_LO, BLOCK_M, BLOCK_N)
        # Saturated tiles as in the forward: the p2c term folded into the queries, the c2p term per row.
        POS_Q += h * stride_pqh
        q_hi = saturated_operand(q, POS_Q, two_s - 1, stride_pqn, stride_pqd, HAS_P2C, HEAD_DIM, BLOCK_D)
        hi_stop = tl.minimum(hi_end, key_hi)
        c2p_hi, c2p_lo, off_hi, off_lo = end_terms(C2P, offs_m, row_in, row_ok, two_s, qk_scale, HAS_C2P)
        dq, s_hi, s_lo = _dq_tiles(
            dq, s_hi, s_lo, q_hi, do, lse2, delta, row_ok, off_hi, c2p_hi, c2p_lo, i0, offs_m, key_lo, hi_stop, hi_stop,
            hi_stop,
            K, V, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, BAND_Q, seed, offset, global_bh,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
            SAT_HI, False, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, BAND_BIAS, ORIENTED, INDEX_REVERSED,
            PREFETCH)
        band_start = tl.maximum(hi_end, key_lo)
        band_end = tl.minimum(lo_start, key_hi)
        inner_lo, inner_hi = inner_band(i0, N, R_HI, R_LO, BLOCK_M, BLOCK_N)
        inner_start, inner_end = band_runs(band_start, band_end, inner_lo, inner_hi)
        dq, s_hi, s_lo = _dq_tiles(
            dq, s_hi, s_lo, q, do, lse2, delta, row_ok, 0.0, c2p_hi, c2p_lo, i0, offs_m, band_start, band_end,
            inner_start, inner_end,
            K, V, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, BAND_Q, seed, offset, global_bh,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
            BAND, True, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, BAND_BIAS, ORIENTED, INDEX_REVERSED,
            PREFETCH)
        dq, s_hi, s_lo = _dq_tiles(
            dq, s_hi, s_lo, q, do, lse2, delta, row_ok, 0.0, c2p_hi, c2p_lo, i0, offs_m, inner_start, inner_end,
            inner_end, inner_end,
            K, V, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, BAND_Q, seed, offset, global_bh,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
            INNER, False, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, BAND_BIAS, ORIENTED, INDEX_REVERSED,
            PREFETCH)
        q_lo = saturated_operand(q, POS_Q, 0, stride_pqn, stride_pqd, HAS_P2C, HEAD_DIM, BLOCK_D)
        dq, s_hi, s_lo = _dq_tiles(
            dq, s_hi, s_lo, q_lo, do, lse2, delta, row_ok, off_lo, c2p_hi, c2p_lo, i0, offs_m,
            tl.maximum(lo_start, key_lo), key_hi, key_hi, key_hi,
            K, V, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, BAND_Q, seed, offset, global_bh,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
            SAT_LO, True, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, BAND_BIAS, ORIENTED, INDEX_REVERSED,
            PREFETCH)
    else:
        dq, s_hi, s_lo = _dq_tiles(
            dq, s_hi, s_lo, q, do, lse2, delta, row_ok, 0.0, 0.0, 0.0, i0, offs_m, key_lo, key_hi, key_hi, key_hi,
            K, V, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, BAND_Q, seed, offset, global_bh,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            N, two_s, W, R_HI, R_LO, qk_scale, dropout_p,
            PLAIN, True, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, BAND_BIAS, ORIENTED, INDEX_REVERSED,
            PREFETCH)

    dq = dq * scale
    if HAS_C2P:  # saturated pairs: their c2p gradient flows through pos_key rows 0 and 2S - 1
        POS_K += h * stride_pkh
        pk_hi = load_vector(POS_K + (two_s - 1) * stride_pkn, stride_pkd, HEAD_DIM, BLOCK_D)
        pk_lo = load_vector(POS_K, stride_pkd, HEAD_DIM, BLOCK_D)
        dq += scale * (s_hi[:, None] * pk_hi[None, :] + s_lo[:, None] * pk_lo[None, :])
        tl.store(SAT_Q + bh64 * N + offs_m, s_lo, mask=row_in)
        tl.store(SAT_Q + (B * H + bh64) * N + offs_m, s_hi, mask=row_in)
    store_rows(DQ + b * stride_dqb + h * stride_dqh, dq, offs_m, stride_dqn, stride_dqd, N, HEAD_DIM, BLOCK_D)


# ----------------------------------------------------------------------------------------------------
# Host side.


_DELTA_BLOCK = 64


def _grad_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized [B, H, N, D] gradient laid out as [B, N, H, D] (what the model's views want)."""
    B, H, N, D = x.shape
    return torch.empty(B, N, H, D, dtype=dtype, device=x.device).transpose(1, 2)


def _matmul_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(a, b)`` with a float32 result. Half-precision operands stay half on CUDA (tensor cores,
    float32 accumulation and output); elsewhere (the CPU under the interpreter) they are upcast first."""
    if a.dtype == torch.float32:
        return torch.bmm(a, b.float())
    b = b.to(a.dtype)
    if a.is_cuda:
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float())


_BAND_ROWS: "collections.OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]]" = collections.OrderedDict()


def _band_rows(geometry, two_s: int, padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, onehot): int64 ``[padded]``, the position row of each band distance (``padded`` >= W: the band
    buffers' row length; the padding slots name row 0, any row would do: the buffers' padding columns are zero,
    so their rows add nothing to the band GEMM, and no pad of the gathered rows is needed), and float32
    ``[2S, W]``, the one-hot of the first W (built by a comparison: an indexed assignment would synchronize).
    Cached (the last 32): the band is the same slice of one cached index table for every N past the saturation
    distance, so the key is that slice's address."""
    band = geometry.band_index_view
    key = (band.device, band.data_ptr(), band.numel(), two_s, padded)
    hit = _BAND_ROWS.get(key)
    if hit is None:
        index = band.long()
        onehot = (torch.arange(two_s, device=index.device)[:, None] == index[None, :]).float()
        hit = _BAND_ROWS[key] = (torch.nn.functional.pad(index, (0, padded - index.numel())), onehot)
        while len(_BAND_ROWS) > 32:
            _BAND_ROWS.popitem(last=False)
    else:
        _BAND_ROWS.move_to_end(key)
    return hit


def _position_grad(band, sat, x, pos, geometry, scale, dx, dpos, sat_to_dx: bool = False) -> None:
    """Fold one position term's gradient into ``dx`` (fp32 [B, H, N, D] when ``band`` is given or
    ``sat_to_dx``) and ``dpos`` (fp32 [H, 2S, D]), in place.

    ``band`` [H, B, N, >= W] (or None), in the inputs' dtype: dS by distance, as the kernels stored it (row
    padding zero);
    ``sat`` [2, B, H, N] fp32: dS summed over the pairs using row 0 / row 2S - 1, whose ``dx`` part the kernels
    added already unless ``sat_to_dx`` (the fused backward's dQ): then it is added here, inside the band
    GEMM's result; ``x`` the content side of the term (q for c2p, k for p2c), ``pos`` its table.
    Every operation here is asynchronous (no host-device synchronization).
    """
    H, two_s, D = pos.shape
    B, _, N, _ = x.shape
    # dpos rows 0 and 2S - 1 from the saturated sums, one matrix-vector product each (cuBLAS gemv kernels of
    # about 11 us in the profile at N 512 on an H100). Not one einsum over both ("sbhn,bhnd->hsd"): cuBLAS ran
    # that as a skinny GEMM of 565 us, 1.1 ms a forward+backward (bench/results/h100_2026-11-22d/, call 6).
    # Added in place into the rows' views: `dpos[:, 0] += scale * ...` would cost a multiply and a copy back
    # (setitem) kernel more each.
    x32 = x.float()
    dpos[:, 0].add_(torch.einsum("bhn,bhnd->hd", sat[0], x32), alpha=scale)
    dpos[:, two_s - 1].add_(torch.einsum("bhn,bhnd->hd", sat[1], x32), alpha=scale)
    ends = slice(0, two_s, max(1, two_s - 1))  # rows 0 and 2S - 1, as a view
    sat_rows = sat.permute(2, 1, 3, 0).reshape(H, B * N, 2) if sat_to_dx else None  # [H, B * N, 2] (a small copy)
    if band is None:
        if sat_to_dx:
            dx.add_(torch.bmm(sat_rows, pos[:, ends].float()).view(H, B, N, D).transpose(0, 1), alpha=scale)
        return
    padded = band.shape[-1]  # rows padded to a multiple of 8 elements: aligned for cuBLAS's fast kernels
    index, onehot = _band_rows(geometry, two_s, padded)
    width = onehot.shape[1]
    band = band.view(H, B * N, padded)
    rows = pos.index_select(1, index)  # [H, padded, D]: the position row of each distance (row 0 past W)
    extra = _matmul_f32(band, rows)  # [H, B * N, D]
    if sat_to_dx:
        extra.baddbmm_(sat_rows, pos[:, ends].float())  # + the saturated pairs' part, in the same pass over dx
    dx.add_(extra.view(H, B, N, D).transpose(0, 1), alpha=scale)
    per_distance = _matmul_f32(band.transpose(1, 2), x.transpose(0, 1).reshape(H, B * N, D))  # [H, padded, D]
    dpos.add_(torch.matmul(onehot, per_distance[:, :width]), alpha=scale)


def _band_stride(width: int) -> int:
    """Row length of a band buffer: ``width`` rounded up to 8 elements (16-byte aligned half rows)."""
    return max(8, (width + 7) // 8 * 8)


def attention_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    pos_key: torch.Tensor | None, pos_query: torch.Tensor | None,
    mask: torch.Tensor | None, philox: torch.Tensor | None, out: torch.Tensor, lse: torch.Tensor,
    *, position_buckets: int, max_relative_positions: int, scale: float, dropout_p: float,
    masked_zero: bool, precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`attention_forward` (same arguments, plus dO ``dout`` and the forward's O and LSE).

    Returns:
        (dq, dk, dv ``[B, H, N, D]`` laid out as ``[B, N, H, D]``; dpos_key, dpos_query ``[H, 2S, D]`` or None),
        in the inputs' dtype.
    """
    B, H, N, D = q.shape
    dev = q.device
    f32 = torch.float32
    has_c2p, has_p2c = pos_key is not None, pos_query is not None
    pos = pos_key if has_c2p else pos_query
    geometry = position_geometry(N, position_buckets, max_relative_positions, dev) if pos is not None else None
    width = geometry.width if geometry is not None else 0
    two_s = pos.shape[1] if pos is not None else 1
    r_hi = geometry.r_hi if geometry is not None else N
    r_lo = geometry.r_lo if geometry is not None else N
    dummy = torch.empty(1, dtype=f32, device=dev)
    dropout = dropout_p > 0.0
    BD = block_d(D)

    delta = torch.empty(B, H, N, dtype=f32, device=dev)
    _delta_kernel[(triton.cdiv(N, _DELTA_BLOCK) * B * H,)](
        out, dout, delta, *out.stride(), *dout.stride(), H, N, HEAD_DIM=D, BLOCK_D=BD, BLOCK_M=_DELTA_BLOCK,
    )

    band_c2p = has_c2p and width > 0
    band_p2c = has_p2c and width > 0
    band, backward = triton_variant("bwd", q)
    fused = backward == "fused"
    oriented = band == "oriented"
    dq = _grad_like(q, f32 if band_c2p or fused else q.dtype)
    if fused:
        dq.zero_()  # accumulated atomically
    dk = _grad_like(k, f32 if band_p2c else k.dtype)
    dv = _grad_like(v, v.dtype)
    dpos_key = torch.zeros(pos_key.shape, dtype=f32, device=dev) if has_c2p else None
    dpos_query = torch.zeros(pos_query.shape, dtype=f32, device=dev) if has_p2c else None

    key_table, key_reversed = index_table(geometry, keys_fast=False, absent=dummy)  # dK/dV: queries on the fast axis
    query_table, query_reversed = index_table(geometry, keys_fast=True, absent=dummy)  # dQ: keys on the fast axis
    flags = dict(
        HEAD_DIM=D, BLOCK_D=BD, HAS_C2P=has_c2p, HAS_P2C=has_p2c, HAS_MASK=mask is not None,
        MASKED_ZERO=bool(masked_zero), DROPOUT=dropout, PREC=precision, UPCAST=upcast_dots(q.dtype),
        PREFETCH=prefetch_inner() and band != "bias",  # (the band bias: one coalesced load a pair, no index)
    )
    mask_strides = mask.stride() if mask is not None else (0, 0)
    tables = (pos_key if has_c2p else dummy, pos_query if has_p2c else dummy)  # POS_K, POS_Q
    table_strides = (*(pos_key.stride() if has_c2p else (0, 0, 0)), *(pos_query.stride() if has_p2c else (0, 0, 0)))
    stride = _band_stride(width)
    layout = bias_layout(geometry, N, band)
    per_sequence = (has_c2p + has_p2c) * H * N * (two_s + stride) + H * layout.plane
    padded = mask is not None  # tiles of padding are skipped: their band slots stay unwritten
    ranges = token_ranges(mask) if padded else None
    for part in batch_slices(B, per_sequence * q.element_size()):
        nb = part.stop - part.start
        qs, ks, vs, dos = q[part], k[part], v[part], dout[part]
        c2p, p2c = position_scores(qs, ks, pos_key, pos_query)
        bias = band_bias(c2p, p2c, geometry, layout) if layout.plane else dummy
        band_q = _band_buffer(True, H, nb, N, width, stride, r_lo, q.dtype, dev, padded) if band_c2p else None
        band_k = _band_buffer(False, H, nb, N, width, stride, r_lo, q.dtype, dev, padded) if band_p2c else None
        sat_q = (torch.zeros if fused else torch.empty)(2, nb, H, N, dtype=f32, device=dev) if has_c2p else dummy
        sat_k = torch.empty(2, nb, H, N, dtype=f32, device=dev) if has_p2c else dummy
        dqs, dks, dvs = dq[part], dk[part], dv[part]
        scores = (c2p if c2p is not None else dummy, p2c if p2c is not None else dummy)
        rest = (mask[part].view(torch.uint8) if mask is not None else dummy,
                ranges[part] if mask is not None else dummy, philox if dropout else dummy, lse[part], delta[part])
        common = (nb, H, N, part.start * H, r_hi, r_lo, two_s, stride, layout.row, layout.offset, layout.plane,
                  scale, scale * LOG2E, float(dropout_p), seq_bucket(N))
        launch(
            _dkdv_kernel, lambda meta, nb=nb: (triton.cdiv(N, meta["BLOCK_N"]) * nb * H,),
            qs, ks, vs, dos, *scores, key_table, bias, *rest, *tables, dks, dvs,
            band_k if band_k is not None else dummy, sat_k, dqs, band_q if band_q is not None else dummy, sat_q,
            *qs.stride(), *ks.stride(), *vs.stride(), *dos.stride(), *dks.stride(), *dvs.stride(), *dqs.stride(),
            *table_strides, *mask_strides,
            *common, **flags, FUSED_DQ=fused, BAND_BIAS=layout.plane > 0, ORIENTED=oriented,
            INDEX_REVERSED=key_reversed,
        )
        if not fused:  # the dQ kernel; it adds the saturated pairs' c2p gradient (fused: _position_grad does)
            launch(
                _dq_kernel, lambda meta, nb=nb: (triton.cdiv(N, meta["BLOCK_M"]) * nb * H,),
                qs, ks, vs, dos, *scores, query_table, bias, *rest, *tables, dqs,
                band_q if band_q is not None else dummy, sat_q,
                *qs.stride(), *ks.stride(), *vs.stride(), *dos.stride(), *dqs.stride(),
                *table_strides, *mask_strides,
                *common, **flags, BAND_BIAS=layout.plane > 0, ORIENTED=oriented, INDEX_REVERSED=query_reversed,
            )
        if has_c2p:
            _position_grad(band_q, sat_q, qs, pos_key, geometry, scale, dqs, dpos_key, sat_to_dx=fused)
        if has_p2c:
            _position_grad(band_k, sat_k, ks, pos_query, geometry, scale, dks, dpos_query)
        del c2p, p2c, bias, band_q, band_k  # free this slice's buffers before the next

    if band_c2p or fused:
        dq = dq.to(q.dtype)
    if band_p2c:
        dk = dk.to(k.dtype)
    if has_c2p:
        dpos_key = dpos_key.to(pos_key.dtype)
    if has_p2c:
        dpos_query = dpos_query.to(pos_query.dtype)
    return dq, dk, dv, dpos_key, dpos_query

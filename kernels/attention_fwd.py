"""Forward of fused disentangled attention: FlashAttention-2 loop with the c2p / p2c position terms.

One program owns BLOCK_M query rows of one (batch, head) and walks the key tiles with an online softmax
in fp32 (exp2, scores in log2 units). The key range splits into three runs (common.key_regions):
saturated-high tiles (every pair has i - j >= r_hi, position row 2S - 1), band tiles (gathers through
the index table) and saturated-low tiles (row 0). Saturated tiles run the dot on the queries with the p2c term
folded in (q + pos_query[row], common.saturated_operand) and add the rows' c2p values in the exponent: no
gather and no per-tile load beyond K and V: at long sequences, where most tiles are saturated, they do a plain
attention tile's work. Band tiles whose pairs all lie inside the band and the sequence (INNER,
common.inner_band: most of the band beyond short sequences) gather without edge or bounds tests, each the next
one's terms, one tile ahead (PREFETCH: common.inner_ahead; not in band mode "bias"). Under
DEBERTA_FAST_TRITON_BAND=bias the band tiles read each pair's c2p + p2c from common.band_bias's buffer (built per
call, before the kernel) instead; under =oriented they gather each term on a tile oriented for it
(common.position_bias). In a padded batch a tile of token rows visits only the key tiles of its
sequence's token hull (common.token_span; a tile holding a fully padded row visits every key under
masked_rows="uniform", none of its own under "zero"). Stores O and the row
log-sum-exp (natural log; +inf for a fully padded row under masked_rows="zero", whose output is 0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    BAND, INNER, K_LN2, LOG2E, PLAIN, SAT_HI, SAT_LO,
    autotuned, band_bias, band_edge_terms, band_runs, batch_slices, bias_layout, block_d, dot, end_terms,
    index_table, inner_ahead, inner_band, key_regions, launch, load_rows, mask_scores, position_bias,
    position_geometry, position_scores, prefetch_inner, saturated_operand, seq_bucket, store_rows, tile_count,
    tile_start, token_ranges, token_span, triton_variant, upcast_dots,
)
from .dropout import dropout_keep

__all__ = ["attention_forward"]

# (BLOCK_M, BLOCK_N, num_warps, num_stages[, maxnreg]) for H100/H200-class GPUs, pruned per call
# (common.prune_configs); the first that survives the prune filter is the default when autotuning is off.
# ptxas (sm_90, bf16, D 64, c2p + p2c + mask, arguments specialized as a launch does; compile_check), with Triton
# 3.6 (the GPU machines') / 3.8: 128 x 64 uses 255 / 254 registers, no spills, under 8 warps (one program per
# multiprocessor); 424 / 884 bytes of spills under 4. (At D 128, 128 x 64 under 8 warps: none / 48 bytes.)
# The last three cap the registers so that more programs share a multiprocessor (65536 registers): 64 x 64 under
# 8 warps at 128 (two programs; spills none / 16 bytes), 64 x 64 and 64 x 32 under 4 warps at 168 (three
# programs; 48 / 60 and 4 / none). With dropout the cap costs more (236 / 220 bytes at 64 x 64, 4 warps);
# only a tuning run can say whether the extra programs pay for their spills.
_FWD_SHAPES = [
    (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 64, 8, 3), (128, 32, 8, 3),
    (64, 32, 4, 3), (32, 32, 4, 2), (16, 16, 4, 2), (64, 64, 8, 3, 128), (64, 64, 4, 3, 168), (64, 32, 4, 3, 168),
]


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q, row_ok, row_off, c2p_hi, c2p_lo, i0, offs_m, start, end, gap_lo, gap_hi,
    K, V, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, MASK_B, seed, offset, bh,
    stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
    N, two_s, R_HI, R_LO, qk_scale, dropout_p,
    MODE: tl.constexpr, CHECK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr, MASKED_ZERO: tl.constexpr,
    DROPOUT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, BAND_BIAS: tl.constexpr, ORIENTED: tl.constexpr,
    INDEX_REVERSED: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Online-softmax update of (acc, l_i, m_i) over the key tiles [start, end) less [gap_lo, gap_hi) (the band
    tiles around the inner ones; gap_lo = gap_hi = end for the other kinds), all of one kind (MODE).

    ``q``: the dot's query operand, in saturated tiles the queries with the p2c term folded in
    (common.saturated_operand); ``row_off``: what the rows' scores in these tiles get added after scaling
    ([BLOCK_M]: the c2p term times the scale in saturated tiles, 0 on fully padded rows; 0.0 otherwise).
    ``c2p_hi`` / ``c2p_lo``: the rows' c2p values at position rows 2S - 1 / 0 ([BLOCK_M, 1], or 0.0), which
    band tiles read under BAND_BIAS for their pairs beyond the band."""
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
        if PREFETCH and MODE == INNER:
            s += ahead
        elif MODE == BAND or MODE == INNER:
            sat_hi = 0.0
            sat_lo = 0.0
            if BAND_BIAS and MODE == BAND:
                sat_hi, sat_lo = band_edge_terms(c2p_hi, c2p_lo, P2C, offs_n, col_in, two_s, HAS_P2C)
            valid = (offs_m[:, None] < N) & col_in[None, :]
            s += position_bias(offs_m, offs_n, valid, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N,
                               R_HI, R_LO, sat_hi, sat_lo, HAS_C2P, HAS_P2C, INDEX_REVERSED, BAND_BIAS, ORIENTED,
                               MODE == BAND, 0)
        col_ok = col_in
        if HAS_MASK:
            col_ok = tl.load(MASK_B + offs_n * stride_mn, mask=col_in, other=0) != 0
        s = mask_scores(s, row_ok[:, None], col_ok[None, :], col_in[None, :], HAS_MASK, MASKED_ZERO, CHECK_N)
        # scores in log2 units: s * qk_scale + row_off, the scale applied once, in the exponent's FMA
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale + row_off)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key seen yet
        p = tl.math.exp2(s * qk_scale + (row_off - m_safe)[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = dropout_keep(seed, offset, bh, i0, start_n, dropout_p, BLOCK_M, BLOCK_N)
            p = tl.where(keep, p * (1.0 / (1.0 - dropout_p)), 0.0)
        acc = dot(p.to(v.dtype), v, acc * alpha[:, None], PREC, UPCAST)
        m_i = m_new
        if PREFETCH and MODE == INNER:
            ahead = inner_ahead(t, start, n_tiles, offs_m, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N,
                                HAS_C2P, HAS_P2C, INDEX_REVERSED, BAND_BIAS, ORIENTED, 0, BLOCK_M, BLOCK_N)
    return acc, l_i, m_i


@autotuned("fwd", _FWD_SHAPES, interpret_blocks=(32, 32), owned="BLOCK_M", wide_owned=128)
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, C2P, P2C, POS_Q, TABLE, BIAS, MASK, RANGE, PHILOX, O, LSE,  # TABLE, INDEX_REVERSED: common.index_table's
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_ph, stride_pn, stride_pd,
    stride_mb, stride_mn,
    B, H, N, BH0, R_HI, R_LO, two_s, BIAS_ROW, BIAS_OFFSET, BIAS_PLANE, qk_scale, dropout_p, SEQ_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr, MASKED_ZERO: tl.constexpr,
    DROPOUT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, BAND_BIAS: tl.constexpr, ORIENTED: tl.constexpr,
    INDEX_REVERSED: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One program: BLOCK_M queries of one (batch, head) of this slice of the batch; BH0 is the slice's
    # first global batch * H + head (the dropout counter uses global indices).
    n_blocks = tl.cdiv(N, BLOCK_M)
    pid = tl.program_id(0)
    bh = pid // n_blocks
    i0 = (pid % n_blocks) * BLOCK_M
    b = bh // H
    h = bh % H
    bh64 = bh.to(tl.int64)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)

    Q += b64 * stride_qb + h64 * stride_qh
    K += b64 * stride_kb + h64 * stride_kh
    V += b64 * stride_vb + h64 * stride_vh
    O += b64 * stride_ob + h64 * stride_oh
    C2P += (h64 * B + b64) * N * two_s  # [H, B, N, 2S] (common.position_scores)
    P2C += (h64 * B + b64) * N * two_s
    BIAS += (h64 * B + b64) * BIAS_PLANE  # [H * B, plane] (common.band_bias)
    MASK += b64 * stride_mb

    offs_m = i0 + tl.arange(0, BLOCK_M)
    row_in = offs_m < N
    q = load_rows(Q, offs_m, stride_qn, stride_qd, N, HEAD_DIM, BLOCK_D, True)
    row_ok = row_in
    if HAS_MASK:
        row_ok = tl.load(MASK + offs_m * stride_mn, mask=row_in, other=1) != 0
    seed = 0
    offset = 0
    if DROPOUT:
        seed = tl.load(PHILOX)
        offset = tl.load(PHILOX + 1)
    global_bh = bh + BH0

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)

    # Keys this tile visits: all, or (padded batches) the sequence's token hull, unless a fully padded row
    # of the tile attends to every key (masked_rows "uniform").
    key_lo = 0
    key_hi = N
    if HAS_MASK:
        key_lo, key_hi = token_span(RANGE, b64, row_ok, row_in, N, BLOCK_N, not MASKED_ZERO)

    if HAS_C2P or HAS_P2C:
        hi_end, lo_start = key_regions(i0, N, R_HI, R_LO, BLOCK_M, BLOCK_N)
        # Saturated tiles: the p2c term folded into the queries, the c2p term one value per row (zero on fully
        # padded rows, whose scores are one constant). Band tiles gather both.
        POS_Q += h64 * stride_ph
        q_hi = saturated_operand(q, POS_Q, two_s - 1, stride_pn, stride_pd, HAS_P2C, HEAD_DIM, BLOCK_D)
        q_lo = saturated_operand(q, POS_Q, 0, stride_pn, stride_pd, HAS_P2C, HEAD_DIM, BLOCK_D)
        c2p_hi, c2p_lo, off_hi, off_lo = end_terms(C2P, offs_m, row_in, row_ok, two_s, qk_scale, HAS_C2P)
        hi_stop = tl.minimum(hi_end, key_hi)
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q_hi, row_ok, off_hi, c2p_hi, c2p_lo, i0, offs_m, key_lo, hi_stop, hi_stop, hi_stop,
            K, V, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, seed, offset, global_bh,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn, N, two_s, R_HI, R_LO, qk_scale, dropout_p,
            SAT_HI, False, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, BAND_BIAS, ORIENTED, INDEX_REVERSED,
            PREFETCH)
        # Band tiles: those wholly inside the band and the sequence (INNER) skip the edge and bounds tests; the
        # others, on both sides of them, run in one loop.
        band_start = tl.maximum(hi_end, key_lo)
        band_end = tl.minimum(lo_start, key_hi)
        inner_lo, inner_hi = inner_band(i0, N, R_HI, R_LO, BLOCK_M, BLOCK_N)
        inner_start, inner_end = band_runs(band_start, band_end, inner_lo, inner_hi)
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, row_ok, 0.0, c2p_hi, c2p_lo, i0, offs_m, band_start, band_end, inner_start, inner_end,
            K, V, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, seed, offset, global_bh,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn, N, two_s, R_HI, R_LO, qk_scale, dropout_p,
            BAND, True, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, BAND_BIAS, ORIENTED, INDEX_REVERSED,
            PREFETCH)
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, row_ok, 0.0, c2p_hi, c2p_lo, i0, offs_m, inner_start, inner_end, inner_end, inner_end,
            K, V, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, seed, offset, global_bh,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn, N, two_s, R_HI, R_LO, qk_scale, dropout_p,
            INNER, False, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, BAND_BIAS, ORIENTED, INDEX_REVERSED,
            PREFETCH)
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q_lo, row_ok, off_lo, c2p_hi, c2p_lo, i0, offs_m, tl.maximum(lo_start, key_lo), key_hi,
            key_hi, key_hi,
            K, V, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, seed, offset, global_bh,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn, N, two_s, R_HI, R_LO, qk_scale, dropout_p,
            SAT_LO, True, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, BAND_BIAS, ORIENTED, INDEX_REVERSED,
            PREFETCH)
    else:
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, row_ok, 0.0, 0.0, 0.0, i0, offs_m, key_lo, key_hi, key_hi, key_hi,
            K, V, C2P, P2C, TABLE, BIAS, BIAS_ROW, BIAS_OFFSET, MASK, seed, offset, global_bh,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn, N, two_s, R_HI, R_LO, qk_scale, dropout_p,
            PLAIN, True, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
            HAS_C2P, HAS_P2C, HAS_MASK, MASKED_ZERO, DROPOUT, PREC, UPCAST, BAND_BIAS, ORIENTED, INDEX_REVERSED,
            PREFETCH)

    # l_i == 0 only on fully padded rows under MASKED_ZERO: output 0, LSE +inf (probabilities 0).
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * K_LN2, float("inf"))
    store_rows(O, out, offs_m, stride_on, stride_od, N, HEAD_DIM, BLOCK_D)
    tl.store(LSE + bh64 * N + offs_m, lse, mask=row_in)


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    pos_key: torch.Tensor | None, pos_query: torch.Tensor | None,
    mask: torch.Tensor | None, philox: torch.Tensor | None,
    *, position_buckets: int, max_relative_positions: int, scale: float, dropout_p: float,
    masked_zero: bool, precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused disentangled attention forward.

    Args:
        q, k, v: ``[B, H, N, D]``, any strides, float16 / bfloat16 / float32, D <= 128.
        pos_key, pos_query: ``[H, 2S, D]`` (c2p / p2c terms) or None.
        mask: bool ``[B, N]`` (True = token) or None. philox: int64 ``[2]`` (seed, offset) when dropout_p > 0.
        scale: score scale. masked_zero: fully padded query rows output 0 (else attend uniformly).
        precision: tl.dot input precision of fp32 operands, "ieee" (exact) or "tf32".

    Returns:
        (O ``[B, H, N, D]`` in q's dtype, laid out as ``[B, N, H, D]``; LSE ``[B, H, N]`` float32, natural log).
    """
    B, H, N, D = q.shape
    out = torch.empty(B, N, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
    pos = pos_key if pos_key is not None else pos_query
    geometry = None
    if pos is not None:
        geometry = position_geometry(N, position_buckets, max_relative_positions, q.device)
    two_s = pos.shape[1] if pos is not None else 1
    n_terms = (pos_key is not None) + (pos_query is not None)
    dropout = dropout_p > 0.0
    flags = dict(
        HEAD_DIM=D, BLOCK_D=block_d(D), HAS_C2P=pos_key is not None, HAS_P2C=pos_query is not None,
        HAS_MASK=mask is not None, MASKED_ZERO=bool(masked_zero), DROPOUT=dropout, PREC=precision,
        UPCAST=upcast_dots(q.dtype),
    )
    ranges = token_ranges(mask) if mask is not None else None
    band = triton_variant("fwd", q)[0]
    layout = bias_layout(geometry, N, band)
    table, index_reversed = index_table(geometry, keys_fast=True, absent=lse)
    for part in batch_slices(B, (n_terms * H * N * two_s + H * layout.plane) * q.element_size()):
        c2p, p2c = position_scores(q[part], k[part], pos_key, pos_query)
        bias = band_bias(c2p, p2c, geometry, layout) if layout.plane else lse
        part_mask = mask[part] if mask is not None else None
        heads = (part.stop - part.start) * H
        launch(
            _attn_fwd_kernel, lambda meta, heads=heads: (triton.cdiv(N, meta["BLOCK_M"]) * heads,),
            q[part], k[part], v[part], _or(c2p, lse), _or(p2c, lse), _or(pos_query, lse), table, bias,
            part_mask.view(torch.uint8) if mask is not None else lse, ranges[part] if mask is not None else lse,
            philox if dropout else lse,
            out[part], lse[part],
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            *(pos_query.stride() if pos_query is not None else (0, 0, 0)),
            *(mask.stride() if mask is not None else (0, 0)),
            part.stop - part.start, H, N, part.start * H, geometry.r_hi if geometry else N, geometry.r_lo if geometry else N,
            two_s, layout.row, layout.offset, layout.plane, scale * LOG2E, float(dropout_p), seq_bucket(N),
            **flags, BAND_BIAS=layout.plane > 0, ORIENTED=band == "oriented", INDEX_REVERSED=index_reversed,
            PREFETCH=prefetch_inner() and band != "bias",
        )
        del c2p, p2c, bias  # free this slice's buffers before the next
    return out, lse


def _or(t: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    return t if t is not None else dummy

"""The pure-PyTorch backend: every device and float dtype, differentiable through autograd.

It mirrors transformers' DisentangledSelfAttention math and, run in float64, is the reference every
other backend is tested against. It never builds the expanded int64 ``[B*H, N, N]`` gather indices
transformers does: the bucket index comes from an int32 table over distances, gathered through
broadcast (stride-0) views. Under ``no_grad`` it walks blocks of query rows so peak memory is
O(B * H * block * N) instead of the full score tensor, and reads the c2p term through a skewed view
of a matmul instead of a gather (see the comments in :func:`torch_attention`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..positions import relative_index_table
from .call import AttentionCall

__all__ = ["TorchBackend", "torch_attention"]

# Elements of one [B, H, block, N] score block under no_grad (fp32: 4 bytes each): 8 MiB in fp32, so a
# block's few score-sized tensors stay in a server CPU's L3 (128 rows measured faster than 256 at N = 512).
NO_GRAD_BLOCK_ELEMENTS = 1 << 21
# The same on other devices (CUDA): 128 MiB in fp32. Each block costs about ten kernel launches, and the CPU's
# budget made a GPU forward a string of small launches: v3-base inference on an H100 ran at 18,728 tokens/s
# against transformers' 83,033 at N 2048 (B*N 8192; about 100 blocks a layer there, 7 with this budget;
# bench/results/model_cuda_bfloat16.json as of 6441887, the second GPU run); with this budget, 104,109 against
# 85,338 (B*N 16384; the same file since cc60adc, the third run). Still O(B * H * block * N), far below the full
# score tensor at long N.
DEVICE_NO_GRAD_BLOCK_ELEMENTS = 1 << 25


# The p2c gather's flat indices (d(i, j) - lo) * N + j, per block of query rows: the same for every layer of a model
# (same N and position settings), so small ones are kept (least recently used dropped past the budget).
_FLAT_INDEX_CACHE: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()
_FLAT_INDEX_CACHE_BYTES = 32 << 20
_FLAT_INDEX_LOCK = threading.Lock()  # models may run in several threads


def _block_index(table: torch.Tensor, positions: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
    """``[i1 - i0, N]``: ``table[i - j + N - 1]`` for the query rows i in [i0, i1) and every key j."""
    return table[positions[i0:i1, None] - positions[None, :] + (positions.shape[0] - 1)]


def _p2c_flat_indices(call: AttentionCall, table: torch.Tensor, step: int) -> list[torch.Tensor]:
    """int64 ``[rows * N]`` per block of ``step`` query rows: ``table[i - j + N - 1] * N + j`` in row-major
    (i, j) order (``table``: the index table, counted from the first reachable row)."""
    N = call.query.shape[2]
    device = call.query.device
    key = (N, step, call.position_buckets, call.max_relative_positions, device)
    cacheable = N * N * 8 <= _FLAT_INDEX_CACHE_BYTES // 4 and not torch.compiler.is_compiling()
    if cacheable:
        with _FLAT_INDEX_LOCK:
            if key in _FLAT_INDEX_CACHE:
                _FLAT_INDEX_CACHE.move_to_end(key)
                return _FLAT_INDEX_CACHE[key]
    # Built as normal tensors even under inference_mode: a cached inference tensor could not be saved for
    # the backward of a later autograd call.
    with torch.inference_mode(False):
        positions = torch.arange(N, device=device)
        flats = []
        for i0 in range(0, N, step):
            flats.append((_block_index(table, positions, i0, i0 + step) * N + positions).view(-1))
    if cacheable:
        with _FLAT_INDEX_LOCK:
            _FLAT_INDEX_CACHE[key] = flats
            while sum(N_ * N_ * 8 for N_, *_ in _FLAT_INDEX_CACHE) > _FLAT_INDEX_CACHE_BYTES:
                _FLAT_INDEX_CACHE.popitem(last=False)
    return flats


def _reachable_rows(call: AttentionCall) -> tuple[int, int]:
    """(lo, hi): the first and last rows of the ``[H, 2S, D]`` position tables that pairs of an N-token
    sequence can reach, read from the CPU copy of the index table (no device sync). Under torch.compile,
    the whole table (no data-dependent shapes)."""
    table_rows = (call.pos_key if call.pos_key is not None else call.pos_query).shape[1]  # 2S
    if torch.compiler.is_compiling():
        return 0, table_rows - 1
    cpu = relative_index_table(call.query.shape[2], call.position_buckets, call.max_relative_positions, "cpu")
    return int(cpu[0]), int(cpu[-1])


def _block_rows(call: AttentionCall, block_rows: int | None) -> int:
    B, H, N, _ = call.query.shape
    if block_rows is not None:
        return max(1, min(N, block_rows))
    if call.requires_grad:
        return N
    budget = NO_GRAD_BLOCK_ELEMENTS if call.query.device.type == "cpu" else DEVICE_NO_GRAD_BLOCK_ELEMENTS
    max_rows = max(1, min(N, budget // (B * H * N)))
    blocks = -(-N // max_rows)
    return -(-N // blocks)  # equal blocks, no small remainder


def torch_attention(
    call: AttentionCall,
    *,
    need_probs: bool = False,
    dropout_mask: torch.Tensor | None = None,
    block_rows: int | None = None,
    c2p_form: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Disentangled attention in plain PyTorch.

    Args:
        call: validated inputs (see :func:`deberta_fast.disentangled_attention`).
        need_probs: also return the attention probabilities ``[B, H, N, N]`` (after dropout, as
            transformers returns them). Materializes them, whatever the block size.
        dropout_mask: bool ``[B, H, N, N]`` keep-mask to use instead of drawing one (True = keep);
            lets tests replay another backend's dropout. Only read when ``call.dropout_p > 0``.
        block_rows: query rows per block; default N under autograd, a memory budget under no_grad.
        c2p_form: "gather" or "skew" (no_grad only): how the c2p term is read (see the comments below);
            default: by shape. Both give the same result; for tests and benchmarks.

    Returns:
        (output ``[B, H, N, D]`` in the input dtype, probabilities or None).
    """
    q, k, v = call.query, call.key, call.value
    B, H, N, D = q.shape
    has_c2p, has_p2c = call.pos_key is not None, call.pos_query is not None
    mask = call.attention_mask
    min_value = torch.finfo(q.dtype).min
    if dropout_mask is not None and tuple(dropout_mask.shape) != (B, H, N, N):
        raise ValueError(f"dropout_mask must have shape [B, H, N, N] = {(B, H, N, N)}, got {tuple(dropout_mask.shape)}")
    if mask is not None and q.device.type == "cpu" and not torch.compiler.is_compiling() and bool(mask.all()):
        mask = None  # no padding: skip the masking passes (a free check on the CPU, a sync elsewhere)
    # Scale folded into the small operands: every score term comes out already scaled. Operands are made
    # contiguous once ([B, N, H, D] views would otherwise be copied by every matmul that reads them).
    if call.requires_grad:
        q_scaled = (q * call.scale).contiguous()
    else:  # one pass: scaled and made contiguous (out= is not differentiable)
        q_scaled = torch.mul(q, call.scale, out=torch.empty((B, H, N, D), dtype=q.dtype, device=q.device))
    k_t = k.contiguous().transpose(-1, -2)
    v = v.contiguous()
    step = _block_rows(call, block_rows)
    # c2p, two equivalent forms (the same dot products; equal up to the BLAS's rounding, bit-identical on
    # this project's CPU machine):
    # - gather: c2p_rows = q_block . pos_key^T [rows, 2S], then a gather along keys through d(i, j);
    # - skew (under no_grad): the bucket table expanded over the block's rows + N - 1 distances, ordered so
    #   that pos_key_x[m] is the key-side vector for j - i = m - (i1 - 1); then q_block . pos_key_x^T
    #   [rows, rows + N - 1] holds c2p[i, j] at column j - i + rows - 1 (i counted within the block): a
    #   strided view (row stride rows + N - 2) reads it without a gather. More multiply-adds but no gather
    #   pass: 8-13% off the CPU attention at N = 512 in our runs. Not under autograd, where the backward of that
    #   view would scatter through the wider tensor.
    # The skew's GEMM is N + rows - 1 wide against the gather form's 2S: past about three times as wide
    # (long sequences), the gather form is as fast or faster (slightly faster at N = 2048, 2S = 512).
    if c2p_form is None:
        skew_c2p = has_c2p and not call.requires_grad and N + step - 1 <= 3 * call.pos_key.shape[-2]
    elif c2p_form in ("skew", "gather"):
        if c2p_form == "skew" and call.requires_grad:
            raise ValueError("c2p_form='skew' is for no_grad calls only")
        skew_c2p = has_c2p and c2p_form == "skew"
    else:
        raise ValueError(f"c2p_form must be 'skew', 'gather' or None, got {c2p_form!r}")
    if has_c2p or has_p2c:
        table = relative_index_table(N, call.position_buckets, call.max_relative_positions, q.device).long()
        positions = torch.arange(N, device=q.device)
        # Only rows lo..hi of the position tables are reachable at this length (lo = d(-(N-1)),
        # hi = d(N-1); d is monotonic): the gathers read those rows only, so for N < S the p2c GEMM and the
        # gather form's c2p GEMM shrink (to about half the table at N = S / 2). table_local counts from lo.
        lo, hi = _reachable_rows(call)
        table_local = table - lo if lo else table
    if has_c2p:
        if skew_c2p:
            pos_key_x = call.pos_key[:, table.flip(0)]  # [H, 2N - 1, D]: pos_key_x[m] = pos_key[d at j - i = m - N + 1]
        else:
            pos_key_t = call.pos_key[:, lo : hi + 1].contiguous().transpose(-1, -2)  # [H, D, hi - lo + 1]
    if has_p2c:
        # p2c_t[b, h, s, j] = k_j . pos_query[lo + s], read as p2c_t[d(i, j) - lo, j] through a flat index
        # (s * N + j) along the last dim: a gather along keys is over twice as fast as one down dim -2.
        p2c_t = torch.matmul((call.pos_query[:, lo : hi + 1] * call.scale).contiguous(), k_t)  # [B, H, hi-lo+1, N]
        p2c_flat = p2c_t.view(B, H, -1)
        p2c_index = _p2c_flat_indices(call, table_local, step)
    if mask is not None:
        key_padding = ~mask[:, None, None, :]  # [B, 1, 1, N]
        query_padding = ~mask[:, None, :, None]  # [B, 1, N, 1]
    # Under autograd, softmax saves its output: ops after it must not write into it.
    inplace_after_softmax = not call.requires_grad

    # The output is written block by block into [B, N, H, D] storage and returned as a [B, H, N, D] view, so
    # the model's merge of the heads back to [B, N, H*D] is free.
    blocked = step < N
    out = torch.empty((B, N, H, D), dtype=q.dtype, device=q.device) if blocked else None
    probs = []
    for i0 in range(0, N, step):
        i1 = min(N, i0 + step)
        rows = i1 - i0
        q_block = q_scaled[:, :, i0:i1]
        # The position terms first, into a fresh tensor; then the content term q . k^T is accumulated into
        # it by the GEMM itself (baddbmm_, beta = 1): one pass over the [B, H, rows, N] scores fewer.
        scores = None
        if has_p2c:  # k_j . pos_query[d(i, j)]
            flat = p2c_index[i0 // step].view(1, 1, rows * N).expand(B, H, rows * N)
            scores = torch.gather(p2c_flat, -1, flat).view(B, H, rows, N)
        if has_c2p:  # q_i . pos_key[d(i, j)]
            # q_block as [H, B * rows, D] (a small copy), so the per-head tables need no copy per batch entry
            q_heads = q_block.transpose(0, 1).reshape(H, B * rows, D)
            if skew_c2p:  # through the skewed view (see above)
                width = N + rows - 1  # c2p below: [H, B * rows, width]
                c2p = torch.matmul(q_heads, pos_key_x[:, N - i1 : N - i1 + width].transpose(-1, -2))
                c2p = c2p.as_strided(
                    (B, H, rows, N), (rows * width, B * rows * width, width - 1, 1), c2p.storage_offset() + rows - 1
                )
            else:  # gathered from a [B, H, rows, 2S] block
                index = _block_index(table_local, positions, i0, i1)  # [rows, N]: d(i, j) - lo
                c2p = torch.matmul(q_heads, pos_key_t).view(H, B, rows, -1).transpose(0, 1)
                c2p = torch.gather(c2p, -1, index.expand(B, H, rows, N))
            scores = c2p.contiguous() if scores is None else scores.add_(c2p)
        if scores is None:
            scores = torch.matmul(q_block, k_t)  # [B, H, rows, N]
        else:  # scores += q_block . k^T, in place
            scores.view(B * H, rows, N).baddbmm_(q_block.reshape(B * H, rows, D), k_t.reshape(B * H, D, N))
        if mask is not None:  # a pair is masked when the key or the query is padding (transformers' fill value)
            scores.masked_fill_(key_padding, min_value)
            scores.masked_fill_(query_padding[:, :, i0:i1], min_value)
        p = torch.softmax(scores, dim=-1)
        del scores
        if mask is not None and call.masked_rows == "zero":
            fill = query_padding[:, :, i0:i1]
            p = p.masked_fill_(fill, 0.0) if inplace_after_softmax else p.masked_fill(fill, 0.0)
        if call.dropout_p > 0.0:
            if dropout_mask is not None:
                p = p * dropout_mask[:, :, i0:i1].to(p.dtype) * (1.0 / (1.0 - call.dropout_p))
            else:
                p = F.dropout(p, call.dropout_p, training=True)
        block_out = torch.matmul(p, v)  # [B, H, rows, D]
        if blocked:
            out[:, i0:i1].copy_(block_out.transpose(1, 2))
        else:
            out = block_out
        if need_probs:
            probs.append(p)
        del p
    if blocked:  # the [B, N, H, D] storage as [B, H, N, D]
        out = out.transpose(1, 2)
    if not need_probs:
        return out, None
    return out, probs[0] if len(probs) == 1 else torch.cat(probs, dim=2)


class TorchBackend:
    """Pure PyTorch: any device, float16/bfloat16/float32/float64, all features."""

    name = "torch"

    def availability_reasons(self) -> list[str]:
        return []

    def not_supported_reasons(self, call: AttentionCall) -> list[str]:
        return []

    def forward(self, call: AttentionCall) -> torch.Tensor:
        return torch_attention(call)[0]

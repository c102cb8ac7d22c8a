"""Dropout on the attention probabilities: a counter-based (Philox) keep mask, regenerated, never stored.

The pair (query i, key j) of head ``bh`` (= b * H + h) is kept when the word ``j % 4`` of
``philox(seed, counter = (j // 4, i, bh, offset))`` is, as a uniform float, >= p. The mask is a function
of (seed, offset, bh, i, j) alone, so the forward, both backward kernels and :func:`dropout_keep_mask`
(a test hook) see the same mask whatever their tile shapes. ``seed`` and ``offset`` come from torch's
generator on the device (``PHILOX = [seed, offset]``, int64), so ``torch.manual_seed`` reproduces it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["dropout_keep", "dropout_keep_mask"]


@triton.jit
def dropout_keep(seed, offset, bh, i0, j0, p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keep flags ``[BLOCK_M, BLOCK_N]`` for queries ``i0 + [0, BLOCK_M)`` and keys ``j0 + [0, BLOCK_N)``.

    ``j0`` must be a multiple of 4: one Philox call gives the four keys of a group.
    """
    zero = tl.zeros([BLOCK_M, BLOCK_N // 4], dtype=tl.uint32)
    rows = (i0 + tl.arange(0, BLOCK_M)).to(tl.uint32)
    groups = (j0 // 4 + tl.arange(0, BLOCK_N // 4)).to(tl.uint32)
    c0 = zero + groups[None, :]
    c1 = zero + rows[:, None]
    c2 = zero + bh.to(tl.uint32)
    c3 = zero + offset.to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    words = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), [BLOCK_M, BLOCK_N])
    return tl.uint_to_uniform_float(words) >= p


@triton.jit
def _keep_mask_kernel(PHILOX, OUT, N, p, BLOCK: tl.constexpr):
    tiles = tl.cdiv(N, BLOCK)
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    i0 = (pid // tiles) * BLOCK
    j0 = (pid % tiles) * BLOCK
    keep = dropout_keep(tl.load(PHILOX), tl.load(PHILOX + 1), bh, i0, j0, p, BLOCK, BLOCK)
    rows = i0 + tl.arange(0, BLOCK)
    cols = j0 + tl.arange(0, BLOCK)
    ptrs = OUT + bh.to(tl.int64) * N * N + rows[:, None] * N + cols[None, :]
    tl.store(ptrs, keep.to(tl.uint8), mask=(rows[:, None] < N) & (cols[None, :] < N))


def dropout_keep_mask(philox: torch.Tensor, batch: int, heads: int, seq_len: int, dropout_p: float) -> torch.Tensor:
    """The keep mask the kernels use for ``philox`` (= [seed, offset], int64 on the inputs' device).

    Returns bool ``[batch, heads, seq_len, seq_len]`` (True = kept); feed it to
    ``torch_attention(call, dropout_mask=...)`` to replay the kernels' dropout. A test hook: it
    materializes N x N values.
    """
    out = torch.empty(batch, heads, seq_len, seq_len, dtype=torch.uint8, device=philox.device)
    block = 32
    grid = (triton.cdiv(seq_len, block) ** 2, batch * heads)
    _keep_mask_kernel[grid](philox, out, seq_len, float(dropout_p), BLOCK=block)
    return out.bool()

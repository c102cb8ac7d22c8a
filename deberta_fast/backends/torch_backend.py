"""The pure-PyTorch backend: every device and float dtype, differentiable through autograd.

It mirrors transformers' DisentangledSelfAttention math and, run in float64, is the reference every
other backend is tested against. It never builds the expanded int64 ``[B*H, N, N]`` gather indices
transformers does: the bucket index comes from an int32 table over distances, gathered through
broadcast (stride-0) views. Under ``no_grad`` it walks blocks of query rows so peak memory is
O(B * H * block * N) instead of the full score tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..positions import relative_index_table
from .call import AttentionCall

__all__ = ["TorchBackend", "torch_attention"]

# Elements of one [B, H, block, N] score block under no_grad (fp32: 4 bytes each).
NO_GRAD_BLOCK_ELEMENTS = 1 << 22


def _block_rows(call: AttentionCall, block_rows: int | None) -> int:
    B, H, N, _ = call.query.shape
    if block_rows is not None:
        return max(1, min(N, block_rows))
    if call.requires_grad:
        return N
    max_rows = max(1, min(N, NO_GRAD_BLOCK_ELEMENTS // (B * H * N)))
    blocks = -(-N // max_rows)
    return -(-N // blocks)  # equal blocks, no small remainder


def torch_attention(
    call: AttentionCall,
    *,
    need_probs: bool = False,
    dropout_mask: torch.Tensor | None = None,
    block_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Disentangled attention in plain PyTorch.

    Args:
        call: validated inputs (see :func:`deberta_fast.disentangled_attention`).
        need_probs: also return the attention probabilities ``[B, H, N, N]`` (after dropout, as
            transformers returns them). Materializes them, whatever the block size.
        dropout_mask: bool ``[B, H, N, N]`` keep-mask to use instead of drawing one (True = keep);
            lets tests replay another backend's dropout. Only read when ``call.dropout_p > 0``.
        block_rows: query rows per block; default N under autograd, a memory budget under no_grad.

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
    q_scaled = (q * call.scale).contiguous()
    k_t = k.contiguous().transpose(-1, -2)
    v = v.contiguous()
    pos_key_t = call.pos_key.contiguous().transpose(-1, -2) if has_c2p else None  # [H, D, 2S]
    p2c_t = torch.matmul((call.pos_query * call.scale).contiguous(), k_t) if has_p2c else None  # [B, H, 2S, N]
    if has_c2p or has_p2c:
        table = relative_index_table(N, call.position_buckets, call.max_relative_positions, q.device).long()
        positions = torch.arange(N, device=q.device)
    if mask is not None:
        key_padding = ~mask[:, None, None, :]  # [B, 1, 1, N]
        query_padding = ~mask[:, None, :, None]  # [B, 1, N, 1]
    # Under autograd, softmax saves its output: ops after it must not write into it.
    inplace_after_softmax = not call.requires_grad

    step = _block_rows(call, block_rows)
    outputs, probs = [], []
    for i0 in range(0, N, step):
        i1 = min(N, i0 + step)
        rows = i1 - i0
        q_block = q_scaled[:, :, i0:i1]
        scores = torch.matmul(q_block, k_t)  # [B, H, rows, N], a fresh tensor: updated in place below
        if has_c2p or has_p2c:
            index = table[positions[i0:i1, None] - positions[None, :] + (N - 1)]  # [rows, N]: d(i, j)
            index = index.expand(B, H, rows, N)
            if has_c2p:  # q_i . pos_key[d(i, j)]; gathered from a contiguous [B, H, rows, 2S] block
                scores.add_(torch.gather(torch.matmul(q_block, pos_key_t), -1, index))
            if has_p2c:  # k_j . pos_query[d(i, j)]
                scores.add_(torch.gather(p2c_t, -2, index))
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
        outputs.append(torch.matmul(p, v))
        if need_probs:
            probs.append(p)
        del p
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
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

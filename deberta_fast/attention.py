"""The public op: ``disentangled_attention``."""

from __future__ import annotations

import torch

from .backends import select_backend
from .backends.call import make_call

__all__ = ["disentangled_attention"]


def disentangled_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pos_key: torch.Tensor | None = None,
    pos_query: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    position_buckets: int = 256,
    max_relative_positions: int = 512,
    scale: float | None = None,
    dropout_p: float = 0.0,
    masked_rows: str = "uniform",
    backend: str = "auto",
) -> torch.Tensor:
    """DeBERTa-v2 disentangled self-attention (content-to-content, content-to-position, position-to-content).

    For every batch b, head h, query i and key j::

        d(i, j) = clamp(f(i - j) + S, 0, 2S - 1)     # f: log bucket, identity if position_buckets <= 0
        s(i, j) = scale * (q_i . k_j + q_i . pos_key[d] + k_j . pos_query[d])
        out_i   = sum_j dropout(softmax_j(s(i, .)))_j v_j

    A pair (i, j) is masked when token i or token j is padding.

    Args:
        query, key, value: ``[B, H, N, D]``, any strides (e.g. ``[B, N, H, D]`` views transposed).
            float16, bfloat16, float32 or float64, one dtype and device for all inputs.
        pos_key: ``[H, 2S, D]`` relative embeddings projected by the key projection (c2p term), or None.
        pos_query: ``[H, 2S, D]`` relative embeddings projected by the query projection (p2c term), or None.
            S is ``position_buckets`` if > 0, else ``max_relative_positions``.
        attention_mask: ``[B, N]``, 1/True = token, 0/False = padding (bool, integer or float); None = no padding.
            A floating mask with negative entries (an additive mask) is an error; checking it waits for the device.
        position_buckets: number of log buckets (256 for DeBERTa-v3); <= 0 turns bucketing off.
        max_relative_positions: the largest relative distance the buckets cover (512 for DeBERTa-v3).
        scale: score scale; default ``1 / sqrt(D * (1 + [pos_key given] + [pos_query given]))``.
        dropout_p: dropout probability on the attention probabilities (applied whenever > 0).
        masked_rows: what a fully padded query row gets: ``"uniform"`` attends uniformly to all N keys
            (transformers 5.x), ``"zero"`` outputs zeros (DeBERTa's original XSoftmax).
        backend: ``"auto"``, or a registered backend name (``"torch"``, ``"triton"``, ``"cuda"``). An
            explicit backend that cannot serve the call raises ValueError with its reasons.

    Returns:
        ``[B, H, N, D]`` in the input dtype.
    """
    call = make_call(
        query, key, value, pos_key, pos_query, attention_mask,
        position_buckets=position_buckets, max_relative_positions=max_relative_positions,
        scale=scale, dropout_p=dropout_p, masked_rows=masked_rows,
    )
    if not isinstance(backend, str):
        raise ValueError(f"backend must be a string, got {type(backend).__name__}")
    return select_backend(call, backend).forward(call)

"""One validated call of ``disentangled_attention``: the tensors and settings every backend receives."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..positions import attention_span, check_position_settings, check_position_types

__all__ = ["AttentionCall", "check_not_additive", "make_call", "MASKED_ROWS"]

MASKED_ROWS = ("uniform", "zero")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_not_additive(attention_mask: torch.Tensor) -> None:
    """Reject a floating mask with negative entries: an additive mask (0 = attend, a large negative number =
    masked), which read as a padding mask (nonzero = token) would mask exactly the tokens. Floating masks only,
    outside torch.compile traces: reading the values waits for the device (bool and integer masks, what
    tokenizers return, are never read)."""
    if not attention_mask.is_floating_point() or torch.compiler.is_compiling():
        return
    if bool((attention_mask < 0).any()):
        raise ValueError(
            "attention_mask has negative entries, as an additive mask (0 = attend, a large negative number = masked) "
            "has; deberta_fast, like transformers' DeBERTa-v2, takes a padding mask: 1/True = token, 0/False = "
            "padding (from an additive mask: attention_mask = additive_mask == 0)"
        )


@dataclass(frozen=True)
class AttentionCall:
    """Inputs of one attention call after validation.

    Shapes: query/key/value ``[B, H, N, D]`` (any strides); pos_key/pos_query ``[H, 2S, D]`` or None;
    attention_mask bool ``[B, N]`` (True = token) or None. ``scale`` is resolved to a float.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    pos_key: torch.Tensor | None
    pos_query: torch.Tensor | None
    attention_mask: torch.Tensor | None
    position_buckets: int
    max_relative_positions: int
    scale: float
    dropout_p: float
    masked_rows: str

    @property
    def span(self) -> int:
        return attention_span(self.position_buckets, self.max_relative_positions)

    @property
    def dtype(self) -> torch.dtype:
        return self.query.dtype

    @property
    def device(self) -> torch.device:
        return self.query.device

    @property
    def head_dim(self) -> int:
        return self.query.shape[-1]

    @property
    def seq_len(self) -> int:
        return self.query.shape[-2]

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        return (self.query, self.key, self.value, self.pos_key, self.pos_query)

    @property
    def requires_grad(self) -> bool:
        return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in self.tensors())


def _check_tensor(name: str, t, ndim: int, shape_doc: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_doc} ({ndim} dims), got {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def default_scale(head_dim: int, has_c2p: bool, has_p2c: bool) -> float:
    """1 / sqrt(D * (1 + [c2p] + [p2c])), DeBERTa-v2's scaling."""
    return 1.0 / math.sqrt(head_dim * (1 + int(has_c2p) + int(has_p2c)))


def make_call(
    query,
    key,
    value,
    pos_key=None,
    pos_query=None,
    attention_mask=None,
    *,
    position_buckets: int = 256,
    max_relative_positions: int = 512,
    scale: float | None = None,
    dropout_p: float = 0.0,
    masked_rows: str = "uniform",
) -> AttentionCall:
    """Validate the arguments of ``disentangled_attention`` and return an :class:`AttentionCall`.

    Raises ValueError (TypeError for non-tensors) naming the argument and what is wrong with it.
    """
    _check_tensor("query", query, 4, "[B, H, N, D]")
    B, H, N, D = query.shape
    for name, t in (("key", key), ("value", value)):
        _check_tensor(name, t, 4, "[B, H, N, D]")
        if tuple(t.shape) != (B, H, N, D):
            raise ValueError(f"{name} must have the shape of query {tuple(query.shape)} [B, H, N, D], got {tuple(t.shape)}")
    if N < 1 or D < 1 or B < 1 or H < 1:
        raise ValueError(f"query must have non-empty dims [B, H, N, D], got {tuple(query.shape)}")
    if pos_key is not None or pos_query is not None:
        check_position_settings(position_buckets, max_relative_positions, N)
    else:  # the map is never read (the model passes its config's settings either way)
        check_position_types(position_buckets, max_relative_positions)
    span = attention_span(position_buckets, max_relative_positions)
    for name, t in (("pos_key", pos_key), ("pos_query", pos_query)):
        if t is None:
            continue
        _check_tensor(name, t, 3, "[H, 2S, D]")
        if tuple(t.shape) != (H, 2 * span, D):
            raise ValueError(
                f"{name} must have shape [H, 2S, D] = {(H, 2 * span, D)} (S = {span}: position_buckets if > 0, "
                f"else max_relative_positions), got {tuple(t.shape)}"
            )
    named = [("query", query), ("key", key), ("value", value), ("pos_key", pos_key), ("pos_query", pos_query)]
    for name, t in named[1:]:
        if t is None:
            continue
        if t.dtype != query.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but query has {query.dtype}; all inputs must share a dtype")
        if t.device != query.device:
            raise ValueError(f"{name} is on {t.device} but query is on {query.device}; all inputs must share a device")

    mask = None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor or None, got {type(attention_mask).__name__}")
        if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (B, N):
            raise ValueError(f"attention_mask must have shape [B, N] = {(B, N)}, got {tuple(attention_mask.shape)}")
        if attention_mask.dtype.is_complex:
            raise ValueError(f"attention_mask must be bool, integer or float, got {attention_mask.dtype}")
        if attention_mask.device != query.device:
            raise ValueError(f"attention_mask is on {attention_mask.device} but query is on {query.device}")
        check_not_additive(attention_mask)
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0

    if scale is None:
        scale = default_scale(D, pos_key is not None, pos_query is not None)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if masked_rows not in MASKED_ROWS:
        raise ValueError(f"masked_rows must be one of {MASKED_ROWS}, got {masked_rows!r}")
    return AttentionCall(
        query, key, value, pos_key, pos_query, mask,
        position_buckets, max_relative_positions, float(scale), float(dropout_p), masked_rows,
    )

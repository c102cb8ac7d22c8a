"""What the two fused backends (triton, cuda) share about their torch ops.

Both define a forward op ``(query, key, value, pos_key?, pos_query?, attention_mask?, philox?, position_buckets,
max_relative_positions, scale, dropout_p, masked_zero) -> (out, lse)`` and a backward op taking
``(grad_out, query, key, value, pos_key?, pos_query?, attention_mask?, philox?, out, lse, <same settings>)`` and
returning ``(dq, dk, dv, dpos_key, dpos_query)`` (an absent position term's gradient is an empty tensor).
This module holds their fake (meta) implementations, the autograd registration, the dropout seed draw and the
forward call a backend makes.
"""

from __future__ import annotations

import torch

__all__ = ["draw_philox", "fake_backward", "fake_forward", "register_fused_autograd", "run_forward"]


def draw_philox(device: torch.device | str) -> torch.Tensor:
    """A fresh dropout ``[seed, offset]`` (int64, on ``device``) from torch's generator for that device."""
    return torch.randint(0, 2**31 - 1, (2,), dtype=torch.int64, device=device)


def run_forward(forward_name: str, call) -> torch.Tensor:
    """Run ``deberta_fast::<forward_name>`` on a validated call (a fresh dropout seed when dropout is on)."""
    philox = draw_philox(call.device) if call.dropout_p > 0.0 else None
    out, _ = getattr(torch.ops.deberta_fast, forward_name)(
        call.query, call.key, call.value, call.pos_key, call.pos_query, call.attention_mask, philox,
        call.position_buckets, call.max_relative_positions, call.scale, call.dropout_p, call.masked_rows == "zero",
    )
    return out


def fake_forward(query, key, value, pos_key, pos_query, attention_mask, philox, position_buckets,
                 max_relative_positions, scale, dropout_p, masked_zero):
    """out ``[B, H, N, D]`` laid out as ``[B, N, H, D]``, lse ``[B, H, N]`` float32."""
    B, H, N, D = query.shape
    return query.new_empty(B, N, H, D).transpose(1, 2), query.new_empty(B, H, N, dtype=torch.float32)


def fake_backward(grad_out, query, key, value, pos_key, pos_query, attention_mask, philox, out, lse,
                  position_buckets, max_relative_positions, scale, dropout_p, masked_zero):
    """dq, dk, dv laid out as ``[B, N, H, D]``; dpos_key / dpos_query like the tables, or empty when absent."""
    B, H, N, D = query.shape

    def grad(x):
        return x.new_empty(B, N, H, D).transpose(1, 2)

    def pos_grad(pos):
        return pos.new_empty(pos.shape) if pos is not None else query.new_empty(0)

    return grad(query), grad(key), grad(value), pos_grad(pos_key), pos_grad(pos_query)


def register_fused_autograd(forward_name: str, backward_name: str) -> None:
    """Make ``deberta_fast::<forward_name>`` differentiable through the op ``deberta_fast::<backward_name>``."""

    def setup_context(ctx, inputs, output):
        query, key, value, pos_key, pos_query, attention_mask, philox, *settings = inputs
        out, lse = output
        ctx.save_for_backward(query, key, value, pos_key, pos_query, attention_mask, philox, out, lse)
        ctx.settings = settings

    def backward(ctx, grad_out, grad_lse):
        query, key, value, pos_key, pos_query, attention_mask, philox, out, lse = ctx.saved_tensors
        dq, dk, dv, dpk, dpq = getattr(torch.ops.deberta_fast, backward_name)(
            grad_out, query, key, value, pos_key, pos_query, attention_mask, philox, out, lse, *ctx.settings,
        )
        return (
            dq, dk, dv,
            dpk if pos_key is not None else None,
            dpq if pos_query is not None else None,
            None, None, None, None, None, None, None,
        )

    torch.library.register_autograd(f"deberta_fast::{forward_name}", backward, setup_context=setup_context)

"""The Triton backend: fused disentangled attention kernels (``deberta_fast.kernels``) as torch ops.

Ops (namespace ``deberta_fast``, ``torch.library.custom_op``, each with a fake implementation):

- ``disentangled_attention_fwd(q, k, v, pos_key?, pos_query?, mask?, philox?, buckets, max_rel, scale,
  dropout_p, masked_zero) -> (out, lse)``, differentiable through ``register_autograd``;
- ``disentangled_attention_bwd(grad_out, q, k, v, pos_key?, pos_query?, mask?, philox?, out, lse, ...)
  -> (dq, dk, dv, dpos_key, dpos_query)``, the backward as an op (an absent position term gets an empty
  gradient tensor).

custom_op rather than triton_op: under TRITON_INTERPRET=1 the latter fails opcheck's fake-tensor test and
torch.compile (DESIGN.md), and custom_op keeps both testable in CPU CI. torch.compile(fullgraph=True)
traces the ops as opaque calls. Dropout: ``philox = [seed, offset]`` (int64) is drawn from torch's
generator on the inputs' device at forward time (so ``torch.manual_seed`` reproduces) and passed to both
ops, which regenerate the same mask; :func:`dropout_keep_mask` materializes it for tests.

fp32 dots are exact (IEEE) by default and use TF32 where torch lets its own fp32 CUDA matmuls do so
(:func:`fp32_dot_precision`), read at each call.

The registry imports this module when the triton backend is first used; importing it loads Triton and
the kernels. If Triton is missing or too old, or the kernels fail to load, the module still imports and
that failure is the backend's reason.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import register_backend
from .call import AttentionCall
from .fused_ops import draw_philox, fake_backward, fake_forward, register_fused_autograd, run_forward

__all__ = ["TritonBackend", "draw_philox", "dropout_keep_mask", "fp32_dot_precision", "MAX_HEAD_DIM", "MIN_TRITON"]

MAX_HEAD_DIM = 128
MIN_TRITON = (3, 6)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _load_kernels():
    """(kernels module, None) or (None, why it cannot be used)."""
    try:
        import triton
    except Exception as exc:  # not installed or broken
        return None, f"triton is not importable ({type(exc).__name__}: {exc})"
    try:
        version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    except ValueError:
        version = MIN_TRITON  # a development build: assume recent
    if version < MIN_TRITON:
        need = ".".join(map(str, MIN_TRITON))
        return None, f"triton {triton.__version__} is too old (the kernels need triton >= {need})"
    try:
        from .. import kernels
    except Exception as exc:
        return None, f"deberta_fast.kernels failed to import ({type(exc).__name__}: {exc})"
    return kernels, None


_KERNELS, _LOAD_ERROR = _load_kernels()
# Whether the kernels were defined for Triton's interpreter (TRITON_INTERPRET=1 when triton loaded them).
INTERPRET = bool(_KERNELS is not None and _KERNELS.INTERPRET)


def _kernels():
    if _KERNELS is None:
        raise RuntimeError(f"the triton backend is unavailable: {_LOAD_ERROR}")
    return _KERNELS


def fp32_dot_precision() -> str:
    """tl.dot input precision for fp32 inputs: "tf32" where torch lets its own fp32 CUDA matmuls use TF32
    (``torch.backends.cuda.matmul.fp32_precision = "tf32"``, ``torch.set_float32_matmul_precision("high")``
    or ``allow_tf32 = True``), else "ieee" (exact)."""
    setting = getattr(torch.backends.cuda.matmul, "fp32_precision", None)  # torch >= 2.9, reflects every API
    if setting is not None:
        return "tf32" if setting == "tf32" else "ieee"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"  # pragma: no cover


def dropout_keep_mask(philox: torch.Tensor, batch: int, heads: int, seq_len: int, dropout_p: float) -> torch.Tensor:
    """Test hook: the bool keep mask ``[batch, heads, seq_len, seq_len]`` the kernels derive from ``philox``.

    Pass it to ``torch_attention(call, dropout_mask=...)`` to replay the kernels' dropout.
    """
    return _kernels().dropout_keep_mask(philox, batch, heads, seq_len, dropout_p)


# ----------------------------------------------------------------------------------------------------
# Ops.


def _settings(position_buckets, max_relative_positions, scale, dropout_p, masked_zero) -> dict:
    return dict(
        position_buckets=position_buckets, max_relative_positions=max_relative_positions, scale=scale,
        dropout_p=dropout_p, masked_zero=masked_zero, precision=fp32_dot_precision(),
    )


@torch.library.custom_op("deberta_fast::disentangled_attention_fwd", mutates_args=())
def disentangled_attention_fwd(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    pos_key: Optional[torch.Tensor], pos_query: Optional[torch.Tensor],
    attention_mask: Optional[torch.Tensor], philox: Optional[torch.Tensor],
    position_buckets: int, max_relative_positions: int, scale: float, dropout_p: float, masked_zero: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out ``[B, H, N, D]`` laid out as ``[B, N, H, D]``, lse ``[B, H, N]`` float32). See the module doc."""
    return _kernels().attention_forward(
        query, key, value, pos_key, pos_query, attention_mask, philox,
        **_settings(position_buckets, max_relative_positions, scale, dropout_p, masked_zero),
    )


disentangled_attention_fwd.register_fake(fake_forward)


@torch.library.custom_op("deberta_fast::disentangled_attention_bwd", mutates_args=())
def disentangled_attention_bwd(
    grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    pos_key: Optional[torch.Tensor], pos_query: Optional[torch.Tensor],
    attention_mask: Optional[torch.Tensor], philox: Optional[torch.Tensor],
    out: torch.Tensor, lse: torch.Tensor,
    position_buckets: int, max_relative_positions: int, scale: float, dropout_p: float, masked_zero: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv laid out as ``[B, N, H, D]``, dpos_key, dpos_query); an absent position term's is empty."""
    dq, dk, dv, dpk, dpq = _kernels().attention_backward(
        grad_out, query, key, value, pos_key, pos_query, attention_mask, philox, out, lse,
        **_settings(position_buckets, max_relative_positions, scale, dropout_p, masked_zero),
    )
    empty = query.new_empty(0)
    return dq, dk, dv, dpk if dpk is not None else empty, dpq if dpq is not None else empty.clone()


disentangled_attention_bwd.register_fake(fake_backward)
register_fused_autograd("disentangled_attention_fwd", "disentangled_attention_bwd")


# ----------------------------------------------------------------------------------------------------
# The backend.


class TritonBackend:
    """Triton kernels: CUDA tensors (CPU tensors under TRITON_INTERPRET=1); float16, bfloat16, float32;
    head dim <= 128; every feature (position terms, masks, both masked_rows modes, dropout)."""

    name = "triton"

    def availability_reasons(self) -> list[str]:
        """Why the backend cannot run at all on this machine (empty if it can)."""
        if _LOAD_ERROR is not None:
            return [_LOAD_ERROR]
        if not INTERPRET and not torch.cuda.is_available():
            return ["no CUDA device (TRITON_INTERPRET=1, set before triton is imported, runs the kernels on the CPU)"]
        return []

    def not_supported_reasons(self, call: AttentionCall) -> list[str]:
        if _LOAD_ERROR is not None:
            return [_LOAD_ERROR]
        reasons = []
        device = call.device.type
        if device == "cpu":
            if not INTERPRET:
                reasons.append(
                    "CPU tensors run only under Triton's interpreter (set TRITON_INTERPRET=1 before triton is imported)"
                )
        elif device != "cuda":
            reasons.append(f"tensors on {device} are not supported (CUDA, or CPU under TRITON_INTERPRET=1)")
        if call.dtype not in SUPPORTED_DTYPES:
            reasons.append(f"dtype {call.dtype} is not supported (float16, bfloat16 or float32)")
        if call.head_dim > MAX_HEAD_DIM:
            reasons.append(f"head dim {call.head_dim} is larger than {MAX_HEAD_DIM}")
        return reasons

    def forward(self, call: AttentionCall) -> torch.Tensor:
        return run_forward("disentangled_attention_fwd", call)


register_backend(TritonBackend())

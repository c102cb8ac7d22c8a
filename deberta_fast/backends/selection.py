"""The order in which backend="auto" tries backends on CUDA tensors: measured where possible.

The recorded GPU benchmarks (bench/results/attention_cuda_*.json, condensed into :mod:`.measured` by
bench/make_selection.py) say which fused backend was faster for a (GPU capability, dtype, head dim, mode,
sequence length). A call takes the order of the nearest recorded shape (closest GPU capability first, then
dtype, then head dim, then the closest sequence length in log2 distance): on a GPU or dtype never measured
that is an extrapolation from the nearest one measured, the best evidence there is. With nothing recorded,
the default order cuda -> triton -> torch (DESIGN.md). Mode "fwd_bwd" when autograd will need the backward,
else "fwd".

The GPU capability is read once per device, at the first eager call there (CUDA is initialized by then:
building a model never initializes it), and cached; a torch.compile trace that meets an uncached device does
not query it inside the trace but takes the nearest recorded shape of any GPU.
"""

from __future__ import annotations

import math

import torch

from . import measured

DEFAULT_CUDA_ORDER = ("cuda", "triton", "torch")

_CAPABILITY: dict[int, str] = {}
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
                torch.float64: "float64"}


def device_capability(index: int) -> str | None:
    """"9.0" for CUDA device ``index``, read once and cached; None inside a torch.compile trace that meets a
    device not yet read."""
    if index not in _CAPABILITY:
        if torch.compiler.is_compiling():
            return None
        major, minor = torch.cuda.get_device_capability(index)
        _CAPABILITY[index] = f"{major}.{minor}"
    return _CAPABILITY[index]


def measured_order(capability: str | None, dtype: str, head_dim: int, seq_len: int, mode: str,
                   table: dict | None = None) -> tuple[str, ...] | None:
    """The fused backends fastest first for this shape from ``table`` (default: the recorded one), or None
    when nothing was recorded for ``mode``. ``dtype`` as its name ("bfloat16"), ``mode`` "fwd" or "fwd_bwd".

    The recorded shape nearest the call wins: the same GPU capability (else the numerically closest), then
    the same dtype, then the same (else the closest) head dim, then the closest sequence length in log2
    distance.
    """
    entries = nearest_entries(measured.FASTEST if table is None else table, capability, dtype, head_dim, mode)
    return None if entries is None else tuple(nearest_length(entries, seq_len))


def nearest_entries(table: dict, capability: str | None, dtype: str, head_dim: int, mode: str):
    """The ``[(N, value), ...]`` that ``table`` (``{(capability, dtype, head dim): {mode: entries}}``) records for
    ``mode`` at the shape nearest the call (the rule of :func:`measured_order`), or None."""
    # Plain loops rather than min(key=...): torch.compile traces this at model-trace time (fullgraph).
    best_key, best = None, None
    for key, modes in table.items():
        if mode not in modes:
            continue
        gpu = abs(float(key[0]) - float(capability)) if capability is not None else 0.0
        score = (gpu, key[1] != dtype, abs(key[2] - head_dim), key)
        if best is None or score < best:
            best_key, best = key, score
    return None if best_key is None else table[best_key][mode]


def nearest_length(entries, seq_len: int):
    """The value of the ``(N, value)`` entry whose N is nearest ``seq_len`` in log2 distance (the shorter N on
    a tie). ``entries`` must not be empty."""
    # Plain loop rather than min(key=...): torch.compile traces this at model-trace time (fullgraph).
    target = math.log2(max(seq_len, 1))
    value, best = None, None
    for n, candidate in entries:
        score = (abs(math.log2(n) - target), n)
        if best is None or score < best:
            value, best = candidate, score
    return value


def cuda_order(call) -> tuple[str, ...]:
    """The order backend="auto" tries for ``call`` (CUDA tensors): measured fastest first, then the default
    order for the rest."""
    device = call.query.device
    index = device.index if device.index is not None else 0  # a CUDA tensor's device always has its index
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (call.query, call.key, call.value, call.pos_key, call.pos_query))
    order = measured_order(device_capability(index), _DTYPE_NAMES.get(call.query.dtype, ""),
                           call.query.shape[-1], call.query.shape[-2], "fwd_bwd" if needs_grad else "fwd")
    if order is None:
        return DEFAULT_CUDA_ORDER
    return tuple(order) + tuple(name for name in DEFAULT_CUDA_ORDER if name not in order)

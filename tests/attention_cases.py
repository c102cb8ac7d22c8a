"""Shared inputs and the tolerance rule for attention tests of every backend.

The oracle is the torch backend in float64 (STYLE.md 1). A backend in a low precision passes when
err(backend, ref64) <= 2 * err(torch backend in the same precision, ref64) + floor (STYLE.md 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deberta_fast.backends.call import make_call
from deberta_fast.backends.torch_backend import torch_attention
from deberta_fast.positions import attention_span


@dataclass(frozen=True)
class Case:
    B: int = 2
    H: int = 2
    N: int = 17
    D: int = 32
    c2p: bool = True
    p2c: bool = True
    buckets: int = 8
    max_rel: int = 32
    mask: str = "none"  # none | right | left | all_pad (one sequence entirely padding) | mixed
    masked_rows: str = "uniform"

    @property
    def span(self) -> int:
        return attention_span(self.buckets, self.max_rel)

    def __str__(self) -> str:
        terms = "+".join(t for t, on in (("c2p", self.c2p), ("p2c", self.p2c)) if on) or "c2c"
        return (f"B{self.B}H{self.H}N{self.N}D{self.D}-{terms}-b{self.buckets}m{self.max_rel}"
                f"-{self.mask}-{self.masked_rows}")


def make_mask(case: Case, device="cpu") -> torch.Tensor | None:
    B, N = case.B, case.N
    if case.mask == "none":
        return None
    m = torch.ones(B, N, dtype=torch.bool, device=device)
    cut = max(1, (2 * N) // 3)
    if case.mask == "right":
        m[-1, cut:] = False
    elif case.mask == "left":
        m[-1, : N - cut] = False
    elif case.mask == "all_pad":
        m[-1, :] = False
        if B > 1 and N > 2:
            m[0, N // 2 :] = False
    elif case.mask == "mixed":
        m[0, : N // 4] = False
        m[-1, cut:] = False
    else:
        raise ValueError(case.mask)
    return m


def make_inputs(case: Case, dtype=torch.float64, device="cpu", strided=False, generator_seed=0):
    """float64 leaf tensors (q, k, v, pos_key, pos_query) and the mask; ``strided`` gives [B, N, H, D] views."""
    g = torch.Generator().manual_seed(generator_seed)
    B, H, N, D, S = case.B, case.H, case.N, case.D, case.span

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    if strided:
        q, k, v = (rnd(B, N, H, D).transpose(1, 2) for _ in range(3))
    else:
        q, k, v = (rnd(B, H, N, D) for _ in range(3))
    pk = rnd(H, 2 * S, D) if case.c2p else None
    pq = rnd(H, 2 * S, D) if case.p2c else None
    tensors = [t.to(device=device, dtype=dtype) if t is not None else None for t in (q, k, v, pk, pq)]
    return tensors, make_mask(case, device)


def call_kwargs(case: Case) -> dict:
    return dict(position_buckets=case.buckets, max_relative_positions=case.max_rel, masked_rows=case.masked_rows)


def reference(case: Case, tensors, mask, dropout_p=0.0, dropout_mask=None, grad_out=None):
    """Torch backend on the given tensors (any dtype): output and the gradients of the given inputs."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    call = make_call(*leaves, mask, dropout_p=dropout_p, **call_kwargs(case))
    out, _ = torch_attention(call, dropout_mask=dropout_mask)
    if grad_out is None:
        return out.detach(), None
    out.backward(grad_out.to(out.dtype))
    grads = [t.grad if t is not None else None for t in leaves]
    return out.detach(), grads


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_within_rule(name: str, got: torch.Tensor, low: torch.Tensor, ref64: torch.Tensor, floor: float):
    """err(got, ref64) <= 2 * err(low, ref64) + floor, where ``low`` is the torch backend in got's dtype."""
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err, base = max_err(got, ref64), max_err(low, ref64)
    assert err <= 2 * base + floor, f"{name}: error {err:.3e} > 2 * torch-backend error {base:.3e} + floor {floor:.1e}"


def record_launches(monkeypatch) -> list[tuple[str, dict]]:
    """(kernel name, keyword arguments) of every attention kernel launch (forward, dK/dV, dQ) from now on: what
    the kernels were compiled with (PREC, ORIENTED, PREFETCH, ...), so a test can tell that a switch reached them."""
    from deberta_fast.kernels import attention_bwd, attention_fwd

    launches = []
    for module in (attention_fwd, attention_bwd):
        original = module.launch
        monkeypatch.setattr(module, "launch", lambda kernel, grid, *a, original=original, **k: (
            launches.append((kernel.deberta_name, k)), original(kernel, grid, *a, **k))[1])
    return launches

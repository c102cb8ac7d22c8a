"""Helpers shared by the GPU test modules of the fused backends (tests/test_gpu_triton.py, tests/test_gpu_cuda.py):
the peak memory of one attention forward + backward, and a small bf16-friendly model run end to end."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

import deberta_fast
from deberta_fast import disentangled_attention

from attention_cases import Case, call_kwargs, make_inputs

V3 = dict(buckets=256, max_rel=512)


def _forward_backward(backend: str, case: Case, device: str):
    """A function running one bf16 forward + backward of ``case`` (strided inputs, its mask) on fixed leaves."""
    tensors, mask = make_inputs(case, dtype=torch.bfloat16, device=device, strided=True)
    leaves = [t.requires_grad_(True) for t in tensors]

    def step():
        out = disentangled_attention(*leaves, mask, backend=backend, **call_kwargs(case))
        out.backward(torch.ones_like(out))

    return step


def peak_bytes(backend: str, n: int, device: str = "cuda") -> int:
    """Peak CUDA memory above the inputs of one bf16 forward + backward, B=1, H=12, D=64, v3 settings."""
    step = _forward_backward(backend, Case(B=1, H=12, N=n, D=64, **V3), device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def step_without_sync(backend: str, n: int = 1024, device: str = "cuda") -> None:
    """One bf16 forward + backward (v3 settings, a padding mask, every position term) with torch's sync debug
    mode at "error": any operation that waits for the GPU (a blocking copy, .item(), an indexed assignment of a
    CPU scalar) raises. Run once before, so that one-time work (tables, compiling) is done."""
    step = _forward_backward(backend, Case(B=2, H=4, N=n, D=64, mask="right", **V3), device)
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def model_config(**over) -> deberta_fast.DebertaV2Config:
    cfg = dict(
        vocab_size=1000, hidden_size=384, num_hidden_layers=2, num_attention_heads=6, intermediate_size=768,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=512,
        relative_attention=True, pos_att_type="p2c|c2p", position_buckets=256, max_relative_positions=-1,
        share_att_key=True, position_biased_input=False, norm_rel_ebd="layer_norm", type_vocab_size=0,
        layer_norm_eps=1e-7, hidden_act="gelu",
    )
    cfg.update(over)
    return deberta_fast.DebertaV2Config(**cfg)


def model_batch(B: int = 2, N: int = 1100, device: str = "cuda"):
    """Token ids and a [B, N] mask with the first sequence's last 300 tokens padding."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 1000, (B, N), generator=g)
    mask = torch.ones(B, N, dtype=torch.long)
    mask[0, N - 300 :] = 0
    return ids.to(device), mask.to(device)


def run_model(backend: str, dtype: torch.dtype, ids, mask):
    """Last hidden state and every parameter gradient of a freshly seeded model in train mode."""
    torch.manual_seed(0)
    model = deberta_fast.DebertaV2Model(model_config(), attn_backend=backend).to(ids.device, dtype).train()
    out = model(ids, attention_mask=mask).last_hidden_state
    # a random projection of the real tokens' outputs (padded rows are near-constant after LayerNorm and
    # would amplify rounding by 1/sqrt(eps) into their gradients)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(ids.device, dtype) * mask[..., None]
    (out * weights).sum().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


# --- which cuda kernels ran ---------------------------------------------------------------------

# A demangled kernel name of csrc/ (as the profiler reports it), e.g.
#   void deberta_fast::attention_fwd_kernel<deberta_fast::FwdTraits<__nv_bfloat16, 64, 128, 64, 8, true, false>,
#   false, true>(deberta_fast::FwdParams)
# FwdTraits<T, D, BM, BN, warps, Q in registers, wgmma>, then kDropout, kStaged; BwdTraits<T, D, BR, BC, warps,
# wgmma>, then kStaged (csrc/kernel_traits.h, attention_fwd.cuh, attention_bwd.cuh).
_KERNEL = re.compile(r"attention_(fwd|dkdv|dq)_kernel<deberta_fast::(?:Fwd|Bwd)Traits<([^<>]*)>((?:, [^,<>]+)+)>")


def _truth(text: str) -> bool:
    value = text.strip()
    if value in ("true", "(bool)1", "1"):
        return True
    if value in ("false", "(bool)0", "0"):
        return False
    raise ValueError(f"not a template bool: {text!r}")


@dataclass(frozen=True)
class CudaKernel:
    """One launched kernel of the cuda backend, read off its name: which kernel, its tile (rows, columns, warps:
    BM x BN queries x keys for the forward, BR x BC for the backward), and its compile-time switches."""

    kind: str  # "fwd", "dkdv", "dq"
    tile: tuple[int, int, int]
    wgmma: bool
    staged: bool


def parse_cuda_kernel(name: str) -> CudaKernel | None:
    """The :class:`CudaKernel` of a demangled kernel name, or None for another kernel."""
    match = _KERNEL.search(name)
    if match is None:
        return None
    kind, traits, flags = match.group(1), [t.strip() for t in match.group(2).split(",")], match.group(3)
    flags = [f for f in flags.split(",") if f.strip()]
    return CudaKernel(kind, (int(traits[2]), int(traits[3]), int(traits[4])), _truth(traits[-1]), _truth(flags[-1]))


def launched_cuda_kernels(fn) -> list[CudaKernel]:
    """The cuda backend's attention kernels ``fn`` launches (torch.profiler's kernel names), at least one."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        # spare kernels first: after earlier profiler sessions in a process the first kernel records of a session
        # can be lost (reported against torch 2.10, pytorch/pytorch#192021)
        for _ in range(64):
            torch.cuda._sleep(1)
        fn()
        torch.cuda.synchronize()
    names = {event.name for event in prof.events()}
    kernels = [k for k in map(parse_cuda_kernel, sorted(names)) if k is not None]
    assert kernels, f"no attention kernel among the profiled events: {sorted(names)[:40]}"
    return kernels

"""The triton backend on a GPU: realistic sizes, every autotune config, dropout, memory, the model.

Skips without CUDA. Tolerance rule (DESIGN.md): err(triton) <= 2 err(torch backend, same dtype) + floor,
both against the torch backend in float64 on the same GPU. Correctness runs use each kernel's default
config (DEBERTA_FAST_TRITON_AUTOTUNE=0, so no minutes of benchmarking); one test runs the autotuner and
one runs every config of every kernel. Run alone: ``pytest -q tests/test_gpu_triton.py``.
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

import deberta_fast  # noqa: E402
from deberta_fast import disentangled_attention  # noqa: E402
from deberta_fast.backends import triton_backend  # noqa: E402
from deberta_fast.kernels import attention_bwd, attention_fwd  # noqa: E402
from deberta_fast.kernels import common as kernel_common  # noqa: E402

from attention_cases import (  # noqa: E402
    Case, assert_within_rule, call_kwargs, make_inputs, max_err, record_launches, reference,
)
from gpu_cases import V3, model_batch, model_config, peak_bytes, run_model, step_without_sync  # noqa: E402

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
GRADS = ["dq", "dk", "dv", "dpos_key", "dpos_query"]
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def default_configs(monkeypatch):
    monkeypatch.setenv(kernel_common.AUTOTUNE_ENV, "0")


def check(case, dtype, *, dropout_p=0.0, keep=None, seed=1234):
    """Forward and the five gradients of the triton backend against the float64 reference on the GPU."""
    tensors, mask = make_inputs(case, device=DEVICE, strided=True)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1)).to(DEVICE)
    leaves = [t.detach().to(dtype).requires_grad_(True) if t is not None else None for t in tensors]
    torch.manual_seed(seed)
    out = disentangled_attention(*leaves, mask, dropout_p=dropout_p, backend="triton", **call_kwargs(case))
    out.backward(grad_out.to(dtype))
    grads = [t.grad if t is not None else None for t in leaves]
    ref, ref_grads = reference(case, tensors, mask, dropout_p=dropout_p, dropout_mask=keep, grad_out=grad_out)
    low, low_grads = reference(case, [t.to(dtype) if t is not None else None for t in tensors], mask,
                               dropout_p=dropout_p, dropout_mask=keep, grad_out=grad_out)
    floor = FLOOR[dtype]
    assert_within_rule("out", out, low, ref, floor * max(1.0, ref.abs().max().item()))
    for name, g, g_low, g_ref in zip(GRADS, grads, low_grads, ref_grads):
        if g_ref is None:
            assert g is None, name
            continue
        assert_within_rule(name, g, g_low, g_ref, floor * max(1.0, g_ref.abs().max().item()))


# --- realistic sizes, v3 settings --------------------------------------------------------------

REALISTIC = [
    (Case(B=2, H=4, N=512, D=64, mask="right", **V3), torch.bfloat16),
    (Case(B=2, H=2, N=512, D=128, mask="all_pad", masked_rows="zero", **V3), torch.float16),
    (Case(B=2, H=2, N=2048, D=64, mask="left", **V3), torch.bfloat16),
    (Case(B=1, H=2, N=2048, D=128, mask="right", **V3), torch.bfloat16),
    (Case(B=1, H=4, N=2048, D=64, **V3), torch.float16),
    (Case(B=2, H=2, N=1531, D=80, mask="all_pad", **V3), torch.bfloat16),
    (Case(B=1, H=2, N=8192, D=64, mask="right", **V3), torch.bfloat16),
    (Case(B=1, H=1, N=8192, D=128, mask="right", **V3), torch.float16),
]


@pytest.mark.parametrize("case,dtype", REALISTIC, ids=str)
def test_realistic_sizes(case, dtype):
    check(case, dtype)


FUSED = [
    (Case(B=2, H=4, N=512, D=64, mask="right", **V3), torch.bfloat16),
    (Case(B=2, H=2, N=2048, D=64, mask="left", **V3), torch.bfloat16),
    (Case(B=1, H=2, N=2048, D=128, mask="right", **V3), torch.float16),
    (Case(B=2, H=2, N=1025, D=48, buckets=-1, max_rel=24, mask="all_pad", masked_rows="zero"), torch.bfloat16),
]


@pytest.mark.parametrize("case,dtype", FUSED, ids=str)
def test_fused_backward(case, dtype, monkeypatch):
    """DEBERTA_FAST_TRITON_BACKWARD=fused: dQ added atomically by the dK/dV kernel (band tiles gathering)."""
    monkeypatch.setenv(kernel_common.BAND_ENV, "gather")
    monkeypatch.setenv(attention_bwd.BACKWARD_ENV, "fused")
    check(case, dtype)


BAND_BIAS = [
    (Case(B=2, H=4, N=512, D=64, mask="right", **V3), torch.bfloat16),
    (Case(B=2, H=2, N=2048, D=64, mask="left", **V3), torch.bfloat16),
    (Case(B=1, H=2, N=2048, D=128, p2c=False, mask="right", **V3), torch.float16),
    (Case(B=1, H=2, N=8192, D=64, c2p=False, **V3), torch.bfloat16),
    (Case(B=2, H=2, N=1025, D=48, buckets=-1, max_rel=24, mask="all_pad", masked_rows="zero"), torch.bfloat16),
]


@pytest.mark.parametrize("case,dtype", BAND_BIAS, ids=str)
@pytest.mark.parametrize("band", ["gather", "oriented", "bias"])
@pytest.mark.parametrize("backward", ["split", "fused"])
def test_each_variant(case, dtype, band, backward, monkeypatch):
    """Each of the six variants pinned by its switches (the other tests run whichever the recorded timings
    choose): DEBERTA_FAST_TRITON_BAND=bias has band tiles read the band pairs' position terms stored once,
    =oriented gathers each term on a tile oriented for it."""
    monkeypatch.setenv(kernel_common.BAND_ENV, band)
    monkeypatch.setenv(attention_bwd.BACKWARD_ENV, backward)
    launches = record_launches(monkeypatch)
    check(case, dtype)
    names = {name for name, _ in launches}  # the switches reached the kernels
    assert names == ({"fwd", "dkdv", "dq"} if backward == "split" else {"fwd", "dkdv"}), names
    assert all(k["ORIENTED"] == (band == "oriented") for _, k in launches)


@pytest.mark.parametrize("band", ["gather", "oriented"])
def test_prefetch_changes_no_result(band, monkeypatch):
    """DEBERTA_FAST_TRITON_PREFETCH: INNER band tiles' position terms loaded one tile ahead (the default) or where
    used ("0") are the same values added in the same order: identical outputs and gradients (the split backward,
    which is deterministic)."""
    case = Case(B=2, H=2, N=2048, D=64, mask="left", **V3)
    monkeypatch.setenv(kernel_common.BAND_ENV, band)
    monkeypatch.setenv(attention_bwd.BACKWARD_ENV, "split")
    tensors, mask = make_inputs(case, device=DEVICE, strided=True)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, device=DEVICE, dtype=torch.bfloat16)
    results = {}
    launches = record_launches(monkeypatch)
    for value in ("1", "0"):
        monkeypatch.setenv(kernel_common.PREFETCH_ENV, value)
        first = len(launches)
        leaves = [t.detach().to(torch.bfloat16).requires_grad_(True) for t in tensors]
        out = disentangled_attention(*leaves, mask, backend="triton", **call_kwargs(case))
        out.backward(grad_out)
        results[value] = [out.detach()] + [t.grad for t in leaves]
        assert launches[first:] and all(k["PREFETCH"] == (value == "1") for _, k in launches[first:])
    for name, a, b in zip(["out"] + GRADS, results["1"], results["0"]):
        assert torch.equal(a, b), name


FEATURES = [
    Case(B=2, H=2, N=2048, D=64, p2c=False, mask="right", **V3),
    Case(B=2, H=2, N=2048, D=64, c2p=False, mask="left", **V3),
    Case(B=2, H=2, N=2048, D=64, c2p=False, p2c=False, mask="right", **V3),
    Case(B=2, H=2, N=2048, D=64, buckets=-1, max_rel=512, mask="mixed"),
    Case(B=2, H=2, N=1025, D=48, buckets=-1, max_rel=24, mask="all_pad", masked_rows="zero"),
    Case(B=2, H=2, N=300, D=32, buckets=8, max_rel=32, mask="right"),
]


@pytest.mark.parametrize("case", FEATURES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_features(case, dtype):
    check(case, dtype)


@pytest.mark.parametrize(
    "case", [Case(B=2, H=2, N=1024, D=64, mask="right", **V3), Case(N=97, D=48, mask="left")], ids=str,
)
def test_fp32_exact(case):
    check(case, torch.float32)


def test_fp32_tf32_switch(monkeypatch):
    launches = record_launches(monkeypatch)
    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        case = Case(B=1, H=2, N=1024, D=64, mask="right", **V3)
        tensors, mask = make_inputs(case, device=DEVICE)
        out = disentangled_attention(*(t.float() for t in tensors), mask, backend="triton", **call_kwargs(case))
        ref = reference(case, tensors, mask)[0]
        assert max_err(out, ref) < 1e-2
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous
    assert launches and all(k["PREC"] == "tf32" for _, k in launches)  # the kernels ran TF32 dots


# --- configs ----------------------------------------------------------------------------------

KERNELS = {"fwd": attention_fwd._attn_fwd_kernel, "dkdv": attention_bwd._dkdv_kernel, "dq": attention_bwd._dq_kernel}


@pytest.mark.parametrize("head_dim,band", [(64, "gather"), (128, "gather"), (64, "oriented")])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_every_config_is_correct(kernel, head_dim, band, monkeypatch):
    """Each config the autotuner may pick (after the prune filter for this head dim) gives correct results, in
    the band modes whose band tiles differ in their code (gather, oriented). The dQ kernel runs in the split
    backward only (the recorded timings choose the fused one, where the dK/dV kernel also adds dQ)."""
    monkeypatch.setenv(kernel_common.BAND_ENV, band)
    if kernel == "dq":
        monkeypatch.setenv(attention_bwd.BACKWARD_ENV, "split")
    tuned = KERNELS[kernel]
    case = Case(B=1, H=2, N=1000, D=head_dim, mask="right", **V3)
    args = {"N": case.N, "Q": torch.empty(1, dtype=torch.bfloat16)}
    configs = tuned.early_config_prune(tuned.configs, args, HEAD_DIM=head_dim)
    for config in configs:
        with kernel_common.forced_config(tuned, config):
            try:
                check(case, torch.bfloat16)
            except Exception as exc:
                raise AssertionError(f"{kernel} config {config}: {exc}") from exc


def test_autotuned_launch(monkeypatch):
    monkeypatch.setenv(kernel_common.AUTOTUNE_ENV, "1")
    check(Case(B=2, H=4, N=2048, D=64, mask="right", **V3), torch.bfloat16)


# --- dropout ----------------------------------------------------------------------------------


def test_dropout_matches_torch_given_the_kernel_mask():
    case = Case(B=2, H=2, N=1024, D=64, mask="right", **V3)
    torch.manual_seed(99)
    philox = triton_backend.draw_philox(DEVICE)
    keep = triton_backend.dropout_keep_mask(philox, case.B, case.H, case.N, 0.1)
    check(case, torch.bfloat16, dropout_p=0.1, keep=keep, seed=99)


def test_dropout_keep_rate_and_reproducibility():
    philox = torch.tensor([31337, 7], dtype=torch.int64, device=DEVICE)
    keep = triton_backend.dropout_keep_mask(philox, 2, 4, 2048, 0.1).double()
    sigma = (0.1 * 0.9 / keep.numel()) ** 0.5
    assert abs(keep.mean().item() - 0.9) < 6 * sigma
    assert torch.equal(keep, triton_backend.dropout_keep_mask(philox, 2, 4, 2048, 0.1).double())


# --- memory -----------------------------------------------------------------------------------


def test_forward_backward_never_waits_for_the_gpu():
    # A host-device synchronization in the backward (there was one: an indexed assignment) stalls every
    # training step's launch queue; torch's sync debug mode turns any into an error.
    step_without_sync("triton", device=DEVICE)


def _peak_bytes(n):
    return peak_bytes("triton", n, DEVICE)


def test_memory_is_linear_in_sequence_length():
    _peak_bytes(1024)  # warm up (tables, compiled kernels)
    small, large = _peak_bytes(4096), _peak_bytes(8192)
    assert large < 2.5 * small, (small, large)  # O(N^2) would be ~4x
    # below the float32 scores alone: B H N^2 * 4 bytes = 3.2 GB at N = 8192
    assert large < 12 * 8192 * 8192 * 4


# --- the model --------------------------------------------------------------------------------


def _batch(B=2, N=1100):
    return model_batch(B, N, DEVICE)


def test_model_end_to_end_against_torch_backend():
    """bf16 model on the triton backend vs the torch backend in bf16, both against the fp64 model."""
    ids, mask = _batch()
    ref, ref_grads = run_model("torch", torch.float64, ids, mask)
    low, low_grads = run_model("torch", torch.bfloat16, ids, mask)
    got, grads = run_model("triton", torch.bfloat16, ids, mask)
    assert_within_rule("last_hidden_state", got, low, ref, 1e-2 * max(1.0, ref.abs().max().item()))
    assert grads.keys() == low_grads.keys() == ref_grads.keys()  # no parameter left without a gradient
    for name, g in grads.items():
        floor = 1e-2 * max(1.0, ref_grads[name].abs().max().item())
        assert_within_rule(name, g, low_grads[name], ref_grads[name], floor)
    # fp32: the two backends agree closely, output and every gradient
    a, a_grads = run_model("torch", torch.float32, ids, mask)
    b, b_grads = run_model("triton", torch.float32, ids, mask)
    assert max_err(a, b) < 1e-3 and a_grads.keys() == b_grads.keys()
    for name, g in a_grads.items():
        assert max_err(b_grads[name], g) <= 1e-3 * max(1.0, g.abs().max().item()), name


def test_model_compiles_fullgraph_with_triton():
    torch._dynamo.reset()
    ids, mask = _batch(B=2, N=600)
    torch.manual_seed(0)
    model = deberta_fast.DebertaV2Model(model_config(), attn_backend="triton").to(DEVICE, torch.bfloat16).train()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(ids, attention_mask=mask).last_hidden_state
    out.float().sum().backward()
    ref = model(ids, attention_mask=mask).last_hidden_state
    assert max_err(out, ref) < 5e-2

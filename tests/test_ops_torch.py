"""The torch backend: the reference itself, checked against independent oracles.

- float64 output against transformers' own DisentangledSelfAttention (a second implementation);
- float64 gradients by finite differences (torch.autograd.gradcheck);
- float32 / bfloat16 against float64 on odd shapes;
- no_grad blocking gives the same result without ever building an N x N-per-head tensor.
"""

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import deberta_fast
from deberta_fast import disentangled_attention
from deberta_fast.backends.call import make_call
from deberta_fast.backends.torch_backend import torch_attention

from attention_cases import Case, call_kwargs, make_inputs, max_err, reference

# --- odd shapes x features ---------------------------------------------------------------

GRID = [
    Case(N=n, D=d, c2p=c2p, p2c=p2c, buckets=b, max_rel=m, mask=mask)
    for (n, d), (c2p, p2c), (b, m), mask in itertools.product(
        [(1, 32), (17, 48), (97, 64), (300, 32)],
        [(True, True), (True, False), (False, True), (False, False)],
        [(8, 32), (-1, 24)],
        ["none", "right", "left", "all_pad"],
    )
    if not (n == 300 and mask in ("left", "right"))  # trim the largest shape
    and not (n == 1 and mask in ("left", "right"))  # one token: these masks pad nothing (all_pad pads it)
]


@pytest.mark.parametrize("case", GRID, ids=str)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 4e-2)], ids=["fp32", "bf16"])
def test_low_precision_forward_and_grads_close_to_float64(case, dtype, tol):
    tensors, mask = make_inputs(case)
    grad_out = torch.randn(case.B, case.H, case.N, case.D, dtype=torch.float64)
    ref, ref_grads = reference(case, tensors, mask, grad_out=grad_out)
    low, low_grads = reference(case, [t.to(dtype) if t is not None else None for t in tensors], mask, grad_out=grad_out)
    scale = ref.abs().max().item() + 1e-3
    assert low.dtype == dtype
    assert max_err(low, ref) <= tol * max(1.0, scale)
    for name, g_low, g_ref in zip(["dq", "dk", "dv", "dpos_key", "dpos_query"], low_grads, ref_grads):
        if g_ref is None:
            assert g_low is None
            continue
        gscale = g_ref.abs().max().item() + 1e-3
        assert max_err(g_low, g_ref) <= 4 * tol * max(1.0, gscale), name


@pytest.mark.parametrize("masked_rows", ["uniform", "zero"])
@pytest.mark.parametrize(
    "case",
    [Case(N=7, D=8, mask="all_pad"), Case(N=9, D=8, c2p=False, buckets=-1, max_rel=4, mask="mixed"),
     Case(N=12, D=4, p2c=False, buckets=4, max_rel=6, mask="left")],
    ids=str,
)
def test_gradcheck_float64(case, masked_rows):
    case = Case(**{**case.__dict__, "masked_rows": masked_rows})
    tensors, mask = make_inputs(case)
    leaves = [t.requires_grad_(True) for t in tensors if t is not None]
    present = [t is not None for t in tensors]

    def fn(*xs):
        it = iter(xs)
        args = [next(it) if p else None for p in present]
        return disentangled_attention(*args, mask, backend="torch", **call_kwargs(case))

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


# --- an independent oracle: transformers' DisentangledSelfAttention in float64 ------------


@pytest.mark.parametrize(
    "pos_att_type,buckets,max_rel,share,mask",
    [(["c2p", "p2c"], 8, 32, True, "mixed"), (["c2p"], -1, 24, False, "right"), (["p2c"], 16, 64, False, "left"),
     (["c2p", "p2c"], 256, 512, False, "all_pad"), ([], -1, 16, False, "right")],
)
def test_matches_transformers_disentangled_self_attention(pos_att_type, buckets, max_rel, share, mask):
    hf = pytest.importorskip("transformers.models.deberta_v2.modeling_deberta_v2")
    from transformers import DebertaV2Config

    H, hidden, B, N = 4, 32, 2, 70
    cfg = DebertaV2Config(
        hidden_size=hidden, num_attention_heads=H, relative_attention=True, pos_att_type=pos_att_type,
        position_buckets=buckets, max_relative_positions=max_rel, share_att_key=share,
        attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0,
    )
    attn = hf.DisentangledSelfAttention(cfg).double().eval()
    case = Case(B=B, N=N, mask=mask)
    m = torch.ones(B, N, dtype=torch.bool) if mask == "none" else deberta_fast_mask(case)
    span = buckets if buckets > 0 else max_rel
    hidden_states = torch.randn(B, N, hidden, dtype=torch.float64)
    rel = torch.randn(2 * span, hidden, dtype=torch.float64)
    rel_pos = hf.build_relative_position(hidden_states, hidden_states, bucket_size=buckets, max_position=max_rel)
    m4 = (m[:, None, None, :] & m[:, None, :, None]).long()
    with torch.no_grad():
        expected, expected_probs = attn(hidden_states, m4, output_attentions=True, relative_pos=rel_pos,
                                        rel_embeddings=rel)

        def heads(x):  # [B, N, H*D] -> [B, H, N, D] view, no copy
            return x.view(B, N, H, -1).transpose(1, 2)

        def pos_heads(x):  # [2S, H*D] -> [H, 2S, D]
            return x.view(2 * span, H, -1).transpose(0, 1)

        q, k, v = heads(attn.query_proj(hidden_states)), heads(attn.key_proj(hidden_states)), heads(attn.value_proj(hidden_states))
        pk = pq = None
        if "c2p" in pos_att_type:
            pk = pos_heads((attn.key_proj if share else attn.pos_key_proj)(rel))
        if "p2c" in pos_att_type:
            pq = pos_heads((attn.query_proj if share else attn.pos_query_proj)(rel))
        scale = 1.0 / (hidden // H * (1 + len(pos_att_type))) ** 0.5
        call = make_call(q, k, v, pk, pq, m, position_buckets=buckets, max_relative_positions=max_rel, scale=scale)
        out, probs = torch_attention(call, need_probs=True)
    got = out.transpose(1, 2).reshape(B, N, hidden)
    # transformers rounds the scale through float32 (sqrt of a float32 tensor): ~1e-8 relative
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(probs, expected_probs, rtol=1e-6, atol=1e-7)


def deberta_fast_mask(case):
    from attention_cases import make_mask

    return make_mask(case)


# --- masked rows, strides, blocking, dropout ---------------------------------------------


def test_masked_rows_modes():
    case = Case(N=11, D=8, mask="all_pad")
    tensors, mask = make_inputs(case)
    uniform = disentangled_attention(*tensors, mask, **call_kwargs(case))
    zero = disentangled_attention(*tensors, mask, **{**call_kwargs(case), "masked_rows": "zero"})
    real = mask[:, None, :, None].expand_as(uniform)
    assert torch.equal(uniform[real], zero[real])
    assert torch.count_nonzero(zero[~real]) == 0
    # a fully padded row attends uniformly to all N keys in "uniform" mode
    v = tensors[2]
    torch.testing.assert_close(uniform[-1], v[-1].mean(dim=-2, keepdim=True).expand_as(v[-1]))


def test_strided_inputs_match_contiguous():
    case = Case(N=33, D=16, mask="right")
    tensors, mask = make_inputs(case, strided=True)
    assert not tensors[0].is_contiguous()
    a = disentangled_attention(*tensors, mask, **call_kwargs(case))
    b = disentangled_attention(*[t.contiguous() for t in tensors], mask, **call_kwargs(case))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("block_rows", [1, 5, 16])
def test_blocked_rows_match_full(block_rows):
    case = Case(N=37, D=16, mask="mixed", masked_rows="zero")
    tensors, mask = make_inputs(case)
    call = make_call(*tensors, mask, **call_kwargs(case))
    full, _ = torch_attention(call, block_rows=case.N)
    blocked, _ = torch_attention(call, block_rows=block_rows)
    torch.testing.assert_close(blocked, full, rtol=0, atol=1e-12)


SKEW_CASES = [
    Case(N=n, D=8, c2p=c2p, p2c=p2c, buckets=b, max_rel=m, mask=mask)
    for n, (c2p, p2c), (b, m), mask in itertools.product(
        [1, 2, 23, 70], [(True, True), (True, False), (False, True)], [(8, 32), (-1, 24), (4, 6)], ["none", "mixed"]
    )
    if not (n == 1 and mask == "mixed")  # one token: the mask pads nothing
]


def test_masked_cases_pad_something():
    """Every grid case named for a mask pads at least one token (at N = 1 "right" / "left" / "mixed" would not)."""
    for case in GRID + SKEW_CASES:
        mask = make_inputs(case)[1]
        assert (mask is None) == (case.mask == "none") and (mask is None or not bool(mask.all())), case


@pytest.mark.parametrize("block_rows", [1, 7, None])
@pytest.mark.parametrize("case", SKEW_CASES, ids=str)
def test_no_grad_forms_match_autograd_form(case, block_rows):
    """Under no_grad, c2p is read through a skewed view of q . pos_key expanded over distances or through a
    gather (chosen by shape), and p2c through a flat gather; under autograd, c2p is a gather. All forms must
    give the same attention."""
    tensors, mask = make_inputs(case)
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    call = make_call(*leaves, mask, **call_kwargs(case))
    assert call.requires_grad
    slow, _ = torch_attention(call, block_rows=block_rows)
    with pytest.raises(ValueError, match="no_grad calls only"):
        torch_attention(call, c2p_form="skew")
    with torch.no_grad():
        call = make_call(*tensors, mask, **call_kwargs(case))
        for form in ("skew", "gather", None):
            fast, _ = torch_attention(call, block_rows=block_rows, c2p_form=form)
            torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=1e-12, msg=f"c2p_form={form}")
    if case.N > 1:  # the position terms matter: dropping them changes the answer
        plain = make_call(tensors[0], tensors[1], tensors[2], None, None, mask, **call_kwargs(case))
        assert max_err(torch_attention(plain)[0], fast) > 1e-6


def test_p2c_index_cache_is_bounded_and_reused(monkeypatch):
    import deberta_fast.backends.torch_backend as tb

    monkeypatch.setattr(tb, "_FLAT_INDEX_CACHE", tb.OrderedDict())
    monkeypatch.setattr(tb, "_FLAT_INDEX_CACHE_BYTES", 64 * 64 * 8 * 4)  # room for about four N = 64 entries
    outs = {}
    # 64, 63, 62, 61 fit (125,040 bytes); 60 evicts 64, the least recently used; 64 again evicts 63; 62 is reused
    for n in (64, 63, 62, 61, 60, 64, 62):
        case = Case(N=n, D=8, c2p=False)
        tensors, mask = make_inputs(case)
        with torch.no_grad():
            out = disentangled_attention(*tensors, mask, **call_kwargs(case))
        if n in outs:  # served from the cache (or rebuilt): the same answer
            assert torch.equal(out, outs[n])
        outs[n] = out
        used = sum(key[0] ** 2 * 8 for key in tb._FLAT_INDEX_CACHE)
        assert 0 < used <= tb._FLAT_INDEX_CACHE_BYTES
    assert [key[0] for key in tb._FLAT_INDEX_CACHE] == [61, 60, 64, 62]  # least recently used first


def test_cached_indices_from_inference_mode_serve_a_later_autograd_call():
    """The first call of a shape under inference_mode fills the index caches; a later call under autograd
    must still be able to save them for its backward."""
    case = Case(N=29, D=8, buckets=8, max_rel=32, mask="right")
    tensors, mask = make_inputs(case)
    with torch.inference_mode():
        first = disentangled_attention(*tensors, mask, backend="torch", **call_kwargs(case))
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = disentangled_attention(*leaves, mask, backend="torch", **call_kwargs(case))
    out.sum().backward()
    assert all(t.grad is not None for t in leaves)
    torch.testing.assert_close(out.detach(), first, rtol=0, atol=1e-12)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_grad_memory_is_blocked(monkeypatch):
    import deberta_fast.backends.torch_backend as tb

    monkeypatch.setattr(tb, "NO_GRAD_BLOCK_ELEMENTS", 4096)
    case = Case(B=2, H=2, N=256, D=8, mask="right")
    tensors, mask = make_inputs(case, dtype=torch.float32)
    with torch.no_grad(), _LargestTensor() as probe:
        out = disentangled_attention(*tensors, mask, **call_kwargs(case))
    B, H, N = case.B, case.H, case.N
    assert probe.largest < B * H * N * N // 8, probe.largest  # never a full score tensor
    ref = disentangled_attention(*[t.double() for t in tensors], mask, **call_kwargs(case))
    assert max_err(out, ref) < 1e-5


def test_no_grad_block_budget_per_device():
    """Under no_grad the CPU walks 8 MiB score blocks (cache-sized), other devices 128 MiB ones (few launches);
    with autograd, or a block size given, no budget applies. v3-base at N 2048 (B 4, H 12)."""
    from types import SimpleNamespace

    import deberta_fast.backends.torch_backend as tb

    def rows(device, requires_grad=False, block_rows=None):
        query = SimpleNamespace(shape=(4, 12, 2048, 64), device=torch.device(device))
        return tb._block_rows(SimpleNamespace(query=query, requires_grad=requires_grad), block_rows)

    # at most 2^21 // 98304 = 21 rows: 98 blocks of 21 (CPU); 2^25 // 98304 = 341: 7 equal blocks of 293 (CUDA)
    assert rows("cpu") == 21
    assert rows("cuda") == 293 and 4 * 12 * 293 * 2048 <= tb.DEVICE_NO_GRAD_BLOCK_ELEMENTS
    assert rows("cuda", requires_grad=True) == rows("cpu", requires_grad=True) == 2048
    assert rows("cuda", block_rows=64) == 64


def test_dropout_zero_is_deterministic_and_mask_hook_replays():
    case = Case(N=19, D=8, mask="right")
    tensors, mask = make_inputs(case)
    a = disentangled_attention(*tensors, mask, dropout_p=0.0, **call_kwargs(case))
    b = disentangled_attention(*tensors, mask, **call_kwargs(case))
    assert torch.equal(a, b)
    torch.manual_seed(3)
    d1 = disentangled_attention(*tensors, mask, dropout_p=0.3, **call_kwargs(case))
    torch.manual_seed(3)
    d2 = disentangled_attention(*tensors, mask, dropout_p=0.3, **call_kwargs(case))
    assert torch.equal(d1, d2) and not torch.equal(d1, a)
    # the hook: a keep-mask of all True is p=0 scaled by 1/(1-p)
    keep = torch.ones(case.B, case.H, case.N, case.N, dtype=torch.bool)
    call = make_call(*tensors, mask, dropout_p=0.3, **call_kwargs(case))
    out, _ = torch_attention(call, dropout_mask=keep)
    torch.testing.assert_close(out, a / 0.7)


def test_dropout_keep_rate():
    case = Case(B=4, H=4, N=64, D=8, c2p=False, p2c=False)
    tensors, _ = make_inputs(case)
    call = make_call(*tensors, dropout_p=0.25, **call_kwargs(case))
    _, probs = torch_attention(call, need_probs=True)
    kept = (probs != 0).double().mean().item()
    n = probs.numel()
    sigma = (0.75 * 0.25 / n) ** 0.5
    assert abs(kept - 0.75) < 6 * sigma


# --- validation -------------------------------------------------------------------------


def _good(**over):
    q = torch.randn(2, 3, 5, 4)
    args = dict(query=q, key=torch.randn(2, 3, 5, 4), value=torch.randn(2, 3, 5, 4),
                pos_key=torch.randn(3, 16, 4), pos_query=torch.randn(3, 16, 4),
                attention_mask=torch.ones(2, 5, dtype=torch.long),
                position_buckets=8, max_relative_positions=32)
    args.update(over)
    return args


BAD = [
    (dict(query=torch.randn(2, 5, 4)), ValueError, r"query must have shape \[B, H, N, D\]"),
    (dict(key=torch.randn(2, 3, 6, 4)), ValueError, "key must have the shape of query"),
    (dict(value=torch.randn(2, 3, 5, 8)), ValueError, "value must have the shape of query"),
    (dict(pos_key=torch.randn(3, 15, 4)), ValueError, r"pos_key must have shape \[H, 2S, D\] = \(3, 16, 4\)"),
    (dict(pos_query=torch.randn(3, 16, 5)), ValueError, "pos_query must have shape"),
    (dict(pos_query=torch.randn(16, 4)), ValueError, "pos_query must have shape"),
    (dict(key=torch.randn(2, 3, 5, 4, dtype=torch.float64)), ValueError, "key has dtype torch.float64"),
    (dict(query=torch.ones(2, 3, 5, 4, dtype=torch.int32)), ValueError, "query must be float16"),
    (dict(key=torch.randn(2, 3, 5, 4, device="meta")), ValueError, "key is on meta"),
    (dict(attention_mask=torch.ones(2, 6)), ValueError, r"attention_mask must have shape \[B, N\]"),
    (dict(attention_mask=torch.ones(2, 1, 1, 5)), ValueError, "attention_mask must have shape"),
    (dict(attention_mask=[[1] * 5] * 2), TypeError, "attention_mask must be a torch.Tensor"),
    (dict(attention_mask=torch.tensor([[0.0] * 5, [0.0] * 4 + [-1e4]])), ValueError,
     "attention_mask has negative entries, as an additive mask"),
    (dict(query="q"), TypeError, "query must be a torch.Tensor"),
    (dict(position_buckets=4, max_relative_positions=2, pos_key=torch.randn(3, 8, 4), pos_query=torch.randn(3, 8, 4)),
     ValueError, "log bucketing needs"),
    (dict(scale=-1.0), ValueError, "scale must be a positive"),
    (dict(dropout_p=1.0), ValueError, r"dropout_p must be a number in \[0, 1\)"),
    (dict(masked_rows="ones"), ValueError, "masked_rows must be one of"),
    (dict(backend="nope"), ValueError, "unknown backend 'nope'"),
]


@pytest.mark.parametrize("over,exc,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_inputs_raise_clear_errors(over, exc, match):
    with pytest.raises(exc, match=match):
        disentangled_attention(**_good(**over))


def test_float_padding_masks_are_accepted():
    """A float 0/1 mask is a padding mask like its integer twin (only negative entries are refused)."""
    args = _good(attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    by_long = disentangled_attention(**args)
    by_float = disentangled_attention(**{**args, "attention_mask": args["attention_mask"].float()})
    torch.testing.assert_close(by_float, by_long, rtol=0, atol=0)


def test_backend_env_override(monkeypatch):
    """DEBERTA_FAST_BACKEND overrides "auto" only; an unknown name is an error that names the variable."""
    monkeypatch.setenv("DEBERTA_FAST_BACKEND", "nope")
    with pytest.raises(ValueError, match="DEBERTA_FAST_BACKEND='nope' names no backend"):
        disentangled_attention(**_good())
    assert disentangled_attention(**_good(backend="torch")).shape == (2, 3, 5, 4)  # explicit: not overridden
    monkeypatch.setenv("DEBERTA_FAST_BACKEND", "torch")
    assert disentangled_attention(**_good()).shape == (2, 3, 5, 4)
    with pytest.raises(ValueError, match="backend must be a string"):
        disentangled_attention(**_good(backend=None))


def test_explicit_backend_that_cannot_serve_raises_with_reasons():
    reasons = deberta_fast.available_backends(make_call(**{k: v for k, v in _good().items()}))
    assert reasons["torch"] == []
    blocked = [name for name, r in reasons.items() if r]
    for name in blocked:
        with pytest.raises(ValueError, match=f"backend '{name}' cannot serve this call"):
            disentangled_attention(**_good(backend=name))

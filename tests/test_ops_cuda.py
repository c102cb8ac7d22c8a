"""The cuda backend (csrc/, deberta_fast._C) on a machine without a GPU.

What can be checked without running a kernel: the build configuration and the generated instantiations,
that setup.py installs the pure-Python package without torch, the op schemas, the fake (meta)
implementations and the autograd registration (under FakeTensorMode and torch.compile on meta / fake CUDA
tensors), the dropout mask and the position geometry (both have CPU implementations sharing the kernels'
code), the backend's reasons and the just-in-time build logic. Tests that need the compiled extension skip
when it is neither built nor loadable here (CI builds it first: see .ci/run). Kernels: tests/test_gpu_cuda.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deberta_fast
from deberta_fast import disentangled_attention
from deberta_fast.backends import get_backend
from deberta_fast.backends import cuda_backend
from deberta_fast.backends.call import make_call
from deberta_fast.positions import log_bucket_position, relative_index_table

from attention_cases import Case, call_kwargs, make_inputs

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"


def _extension_or_skip():
    try:
        return cuda_backend.load_extension(jit=False)
    except RuntimeError as exc:
        pytest.skip(f"the CUDA extension is not available here: {exc}")


def _csrc(name):
    return cuda_backend._csrc_module(name)


# --- build configuration ----------------------------------------------------------------------


def test_generated_instantiations_are_current():
    """csrc/generated/ is exactly what the generator writes (edit the generator, never the files)."""
    result = subprocess.run([sys.executable, str(CSRC / "generate_instantiations.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    generate = _csrc("generate_instantiations")
    names = {p.name for p in (CSRC / "generated").glob("*.cu")}
    assert names == set(generate.files())
    # fwd / dkdv / dq x fp16 / bf16 / fp32 x head dims 32 / 64 / 128, the two opt-in forward tiles in fp16 / bf16,
    # and the three wgmma kernels in fp16 / bf16 at head dim 64
    assert len(names) == 3 * 3 * 3 + 2 * 2 * 3 + 3 * 2
    assert {f"{k}_wgmma_{t}_hdim64.cu" for k in ("fwd", "dkdv", "dq") for t in ("fp16", "bf16")} <= names
    sources = generate.sources(CSRC)
    assert CSRC / "attention.cpp" in sources and all(p.exists() for p in sources)


def test_arch_list_parsing_and_flags():
    build_config = _csrc("build_config")
    assert build_config.parse_arch_list("8.0;9.0") == ["8.0", "9.0"]
    assert build_config.parse_arch_list(" 8.0 9.0+PTX ") == ["8.0", "9.0+PTX"]
    assert build_config.arch_flags(["8.0", "9.0+PTX"]) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    assert build_config.archs_tag(["8.0", "9.0+PTX"]) == "sm80_sm90ptx"
    with pytest.raises(ValueError, match="need sm_80 or newer"):
        build_config.parse_arch_list("7.5;8.0")
    with pytest.raises(ValueError, match="cannot parse"):
        build_config.parse_arch_list("sm_90")
    cxx, nvcc, _ = build_config.build_flags(["9.0"])
    assert "-DDEBERTA_FAST_CUDA_ARCHS=sm90" in cxx and "-DDEBERTA_FAST_CUDA_ARCHS=sm90" in nvcc
    assert not any(flag.startswith("-std=") for flag in cxx + nvcc)  # torch picks the standard it needs


def test_module_archs_and_compatibility():
    class Fake:
        cuda_archs = "sm80_sm90ptx"

    archs = cuda_backend._module_archs(Fake())
    assert archs == ["sm_80", "sm_90", "compute_90"]
    assert cuda_backend._runs_on(archs, (8, 6))  # sm_80 SASS runs on sm_86
    assert cuda_backend._runs_on(archs, (9, 0))
    assert cuda_backend._runs_on(["sm_90", "compute_90"], (10, 0))  # PTX JIT on newer GPUs
    assert not cuda_backend._runs_on(["sm_90"], (8, 0))
    assert not cuda_backend._runs_on(["sm_80"], (9, 0))

    class Hopper:  # TORCH_CUDA_ARCH_LIST=9.0a (what the GPU suite built on the H100: info said "archs unknown")
        cuda_archs = "sm90a"

    assert cuda_backend._module_archs(Hopper()) == ["sm_90a"]
    assert cuda_backend._runs_on(["sm_90a"], (9, 0))
    assert not cuda_backend._runs_on(["sm_90a"], (10, 0))  # arch-specific code runs on that capability only
    assert not cuda_backend._runs_on(["compute_90a"], (10, 0))


SETUP_PROBE = """
import sys
sys.argv = ["setup.py", "--name"]
__file__ = "setup.py"
exec(compile(open("setup.py").read(), "setup.py", "exec"))
assert ext_modules == [], ext_modules
print("torch imported:", "torch" in sys.modules)
"""


def test_setup_builds_no_extension_without_torch(tmp_path):
    """pip's isolated build environment has no torch: setup.py must not need it (pure-Python package)."""
    (tmp_path / "torch.py").write_text("raise ImportError('no torch in this build environment')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("FORCE_CUDA", None)
    result = subprocess.run([sys.executable, "-c", SETUP_PROBE], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deberta_fast" in result.stdout and "torch imported: False" in result.stdout
    env["FORCE_CUDA"] = "1"
    result = subprocess.run([sys.executable, "-c", SETUP_PROBE], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "torch is not importable" in result.stderr


def test_setup_skip_knob_wins():
    env = {**os.environ, "FORCE_CUDA": "1", "DEBERTA_FAST_SKIP_CUDA_BUILD": "1"}
    result = subprocess.run([sys.executable, "-c", SETUP_PROBE], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch imported: False" in result.stdout


def test_import_hygiene():
    """Importing deberta_fast loads neither the backend module nor the extension (nor initialises CUDA)."""
    code = ("import sys, torch, deberta_fast; "
            "assert 'deberta_fast._C' not in sys.modules and 'deberta_fast.backends.cuda_backend' not in sys.modules; "
            "assert not torch.cuda.is_initialized()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO.parent)


# --- the extension: schemas and fake implementations ------------------------------------------

SCHEMAS = {
    "cuda_attention_fwd": (
        "deberta_fast::cuda_attention_fwd(Tensor query, Tensor key, Tensor value, Tensor? pos_key, Tensor? pos_query, "
        "Tensor? attention_mask, Tensor? philox, int position_buckets, int max_relative_positions, float scale, "
        "float dropout_p, bool masked_zero) -> (Tensor, Tensor)"
    ),
    "cuda_attention_bwd": (
        "deberta_fast::cuda_attention_bwd(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor? pos_key, "
        "Tensor? pos_query, Tensor? attention_mask, Tensor? philox, Tensor out, Tensor lse, int position_buckets, "
        "int max_relative_positions, float scale, float dropout_p, bool masked_zero) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    "cuda_dropout_mask": (
        "deberta_fast::cuda_dropout_mask(Tensor philox, int batch, int heads, int seq_len, float dropout_p) -> Tensor"
    ),
    "cuda_position_geometry": (
        "deberta_fast::cuda_position_geometry(Tensor like, int seq_len, int position_buckets, "
        "int max_relative_positions) -> (Tensor, int, int, bool)"
    ),
    "cuda_wgmma_probe": "deberta_fast::cuda_wgmma_probe(Tensor a, Tensor b, bool rn) -> Tensor",
    "cuda_score_terms": (
        "deberta_fast::cuda_score_terms(Tensor scores, Tensor? c2p, Tensor? p2c, Tensor table, Tensor col_term, "
        "Tensor row_hi, Tensor row_lo, int r_hi, int r_lo, int row0, int col0, bool trans, int mode) -> Tensor"
    ),
    "cuda_slot_sums": (
        "deberta_fast::cuda_slot_sums(Tensor ds, int seq_len, int r_hi, int r_lo, int band_w, int row0, int col0, "
        "bool trans, int mode) -> (Tensor, Tensor, Tensor)"
    ),
    "cuda_staged_terms": (
        "deberta_fast::cuda_staged_terms(Tensor scores, Tensor? c2p, Tensor? p2c, Tensor table, Tensor col_term, "
        "int q0, int k0, int warp_row0, int chunk, bool trans) -> Tensor"
    ),
}


def test_extension_reports_its_build():
    module = _extension_or_skip()
    assert cuda_backend._module_archs(module), module.cuda_archs
    assert module.cuda_version >= 12000
    status = cuda_backend.extension_status()
    assert status["loaded"] and status["archs"] and status["error"] is None


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_op_schemas(name):
    _extension_or_skip()
    assert str(getattr(torch.ops.deberta_fast, name).default._schema) == SCHEMAS[name]


def test_ops_have_cuda_kernels_and_fakes():
    _extension_or_skip()
    for name in ("cuda_attention_fwd", "cuda_attention_bwd", "cuda_dropout_mask"):
        qualname = f"deberta_fast::{name}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Meta"), name  # register_fake
    assert torch._C._dispatch_has_kernel_for_dispatch_key("deberta_fast::cuda_dropout_mask", "CPU")


def _fake_inputs(case, dtype=torch.bfloat16, device="cuda"):
    """[B, N, H, D] views transposed (the model's layout), on fake CUDA tensors."""
    B, H, N, D, S = case.B, case.H, case.N, case.D, case.span
    q, k, v = (torch.empty(B, N, H, D, dtype=dtype, device=device).transpose(1, 2) for _ in range(3))
    pk = torch.empty(H, 2 * S, D, dtype=dtype, device=device) if case.c2p else None
    pq = torch.empty(H, 2 * S, D, dtype=dtype, device=device) if case.p2c else None
    mask = torch.ones(B, N, dtype=torch.bool, device=device) if case.mask != "none" else None
    return q, k, v, pk, pq, mask


@pytest.mark.parametrize("case", [Case(N=17, D=64), Case(B=3, H=4, N=300, D=128, p2c=False, mask="right"),
                                  Case(N=9, D=32, c2p=False, p2c=False)], ids=str)
def test_fake_forward_and_backward_under_fake_mode(case):
    """Shapes, dtypes and strides (outputs and gradients laid out as [B, N, H, D]) of fake CUDA tensors."""
    _extension_or_skip()
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v, pk, pq, mask = _fake_inputs(case)
        philox = torch.empty(2, dtype=torch.int64, device="cuda")
        settings = (case.buckets, case.max_rel, 0.1, 0.2, True)
        out, lse = torch.ops.deberta_fast.cuda_attention_fwd(q, k, v, pk, pq, mask, philox, *settings)
        B, H, N, D = q.shape
        assert out.shape == (B, H, N, D) and out.dtype == q.dtype and out.device.type == "cuda"
        assert out.transpose(1, 2).is_contiguous()
        assert lse.shape == (B, H, N) and lse.dtype == torch.float32
        grads = torch.ops.deberta_fast.cuda_attention_bwd(out, q, k, v, pk, pq, mask, philox, out, lse, *settings)
        for g in grads[:3]:
            assert g.shape == (B, H, N, D) and g.dtype == q.dtype and g.transpose(1, 2).is_contiguous()
        for g, pos in zip(grads[3:], (pk, pq)):
            assert g.shape == (pos.shape if pos is not None else (0,)) and g.dtype == q.dtype
        keep = torch.ops.deberta_fast.cuda_dropout_mask(philox, B, H, N, 0.1)
        assert keep.shape == (B, H, N, N) and keep.dtype == torch.bool


def _meta_leaves(case, dtype=torch.bfloat16):
    q, k, v, pk, pq, _ = _fake_inputs(case, dtype, device="meta")
    return [t.requires_grad_(True) if t is not None else None for t in (q, k, v, pk, pq)]


def test_autograd_registration_on_meta_tensors():
    """The registered autograd formula calls the backward op; gradients come back for every given input."""
    _extension_or_skip()
    case = Case(B=2, H=3, N=17, D=64)
    q, k, v, pk, pq = _meta_leaves(case)
    out, _ = torch.ops.deberta_fast.cuda_attention_fwd(q, k, v, pk, pq, None, None, 8, 32, 0.1, 0.0, False)
    out.sum().backward()
    for t in (q, k, v, pk, pq):
        assert t.grad is not None and t.grad.shape == t.shape
    q2, k2, v2, _, _ = _meta_leaves(case)
    out, _ = torch.ops.deberta_fast.cuda_attention_fwd(q2, k2, v2, None, None, None, None, 8, 32, 0.1, 0.0, False)
    out.sum().backward()
    assert q2.grad.shape == q2.shape


def test_compile_fullgraph_traces_forward_and_backward_ops(monkeypatch):
    """torch.compile(fullgraph=True) of the public op on the cuda backend: the forward graph holds
    cuda_attention_fwd and the backward graph cuda_attention_bwd, no graph break (meta tensors stand in for
    CUDA ones; the backend's device check is bypassed)."""
    _extension_or_skip()
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    monkeypatch.setattr(cuda_backend.CudaBackend, "not_supported_reasons", lambda self, call: [])
    graphs = {}

    def capture(kind):
        def compiler(gm, example_inputs):
            graphs[kind] = gm.code
            return make_boxed_func(gm)
        return compiler

    torch._dynamo.reset()
    case = Case(B=2, H=3, N=17, D=64, mask="right")
    q, k, v, pk, pq = _meta_leaves(case)
    mask = torch.ones(case.B, case.N, dtype=torch.bool, device="meta")

    def loss_fn(q, k, v, pk, pq, mask):
        out = disentangled_attention(q, k, v, pk, pq, mask, dropout_p=0.1, backend="cuda", **call_kwargs(case))
        return out.float().sum()

    compiled = torch.compile(loss_fn, backend=aot_autograd(fw_compiler=capture("fw"), bw_compiler=capture("bw")),
                             fullgraph=True)
    compiled(q, k, v, pk, pq, mask).backward()
    torch._dynamo.reset()
    assert "cuda_attention_fwd" in graphs["fw"]
    assert "cuda_attention_bwd" in graphs["bw"]
    assert q.grad.shape == q.shape and pk.grad.shape == pk.shape


# --- dropout mask (the kernels' Philox code, run on the CPU) ----------------------------------


def _philox_ref(c, k):
    """Philox4x32-10 in Python (Salmon et al. 2011)."""
    c, k = list(c), list(k)
    m = 0xFFFFFFFF
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k[0]) & m, p1 & m, ((p0 >> 32) ^ c[3] ^ k[1]) & m, p0 & m]
        k = [(k[0] + 0x9E3779B9) & m, (k[1] + 0xBB67AE85) & m]
    return c


def test_philox_reference_known_answers():
    """Random123's known-answer vectors for philox4x32-10."""
    assert _philox_ref([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert _philox_ref([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert _philox_ref([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def _keep_ref(seed, offset, bh, i, j, p):
    """csrc/philox.h's definition of the keep bit of pair (i, j), in Python."""
    def base(x):
        return ((x >> 4) << 3) | (x & 7)

    words = _philox_ref([base(j), base(i), bh, offset & 0xFFFFFFFF], [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])
    word = words[2 * ((i >> 3) & 1) + ((j >> 3) & 1)]
    x = word - (1 << 32) if word >= 1 << 31 else word
    x = ~x if x < 0 else x
    u = torch.tensor(float(torch.tensor(x, dtype=torch.float32)), dtype=torch.float32) * torch.tensor(
        4.6566127342e-10, dtype=torch.float32)
    return bool(u >= torch.tensor(p, dtype=torch.float32))


def test_dropout_mask_matches_its_definition():
    _extension_or_skip()
    seed, offset, p = (1 << 40) + 12345, 7, 0.3
    philox = torch.tensor([seed, offset], dtype=torch.int64)
    keep = cuda_backend.dropout_keep_mask(philox, 2, 2, 21, p)
    assert keep.shape == (2, 2, 21, 21) and keep.dtype == torch.bool
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        b, h, i, j = (int(torch.randint(0, n, (1,), generator=g)) for n in (2, 2, 21, 21))
        assert bool(keep[b, h, i, j]) == _keep_ref(seed, offset, b * 2 + h, i, j, p), (b, h, i, j)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_rate_and_structure(p):
    _extension_or_skip()
    B, H, N = 2, 3, 160
    philox = torch.tensor([987654321, 17], dtype=torch.int64)
    keep = cuda_backend.dropout_keep_mask(philox, B, H, N, p).double()
    n = keep.numel()
    assert abs(keep.mean().item() - (1 - p)) < 6 * (p * (1 - p) / n) ** 0.5
    per_head = keep.mean(dim=(0, 2, 3))
    assert (per_head - (1 - p)).abs().max().item() < 6 * (p * (1 - p) / (B * N * N)) ** 0.5
    # the four pairs of one Philox call ({i, i + 8} x {j, j + 8}) are not correlated with each other
    blocks = keep.view(B, H, N // 16, 2, 8, N // 16, 2, 8)
    per_word = blocks.mean(dim=(0, 1, 2, 4, 5, 7))  # [2, 2]: (i bit 3, j bit 3)
    assert (per_word - (1 - p)).abs().max().item() < 6 * (p * (1 - p) / (n / 4)) ** 0.5
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])
    assert torch.equal(keep, cuda_backend.dropout_keep_mask(philox, B, H, N, p).double())
    other = cuda_backend.dropout_keep_mask(torch.tensor([987654321, 18]), B, H, N, p).double()
    assert not torch.equal(keep, other)  # the offset is part of the counter


# --- position geometry (the kernels' index table) ---------------------------------------------


@pytest.mark.parametrize("buckets,max_rel", [(256, 512), (8, 32), (16, 64), (-1, 24), (0, 3), (-1, 1), (4, 8)])
@pytest.mark.parametrize("n", [1, 17, 1100])
def test_position_geometry_matches_relative_index_table(buckets, max_rel, n):
    """The C++ table (same ATen operations as positions.py) is bit-identical to relative_index_table, and
    r_hi / r_lo are the tight saturation distances."""
    _extension_or_skip()
    table, r_hi, r_lo, _ = cuda_backend.position_geometry(torch.empty(0), n, buckets, max_rel)
    expected = relative_index_table(n, buckets, max_rel)
    assert table.dtype == torch.int32 and torch.equal(table, expected)
    top = 2 * (buckets if buckets > 0 else max_rel) - 1
    pos = table[n - 1:]  # d(x), x = 0 .. n - 1
    neg = table[: n].flip(0)  # d(-x)
    assert bool((pos[r_hi:] == top).all()) and (r_hi == 0 or pos[r_hi - 1] != top) and r_hi <= n
    assert bool((neg[r_lo:] == 0).all()) and (r_lo == 0 or neg[r_lo - 1] != 0) and r_lo <= n
    if (buckets, max_rel) == (256, 512) and n == 1100:
        assert (r_hi, r_lo) == (506, 512)


@pytest.mark.parametrize("buckets,max_rel", [(256, 512), (8, 32), (-1, 24), (256, 257), (256, 128), (64, 16)])
def test_position_geometry_says_where_the_staged_slabs_apply(buckets, max_rel):
    """unit_steps (the gate of DEBERTA_FAST_CUDA_BAND=staged) is true exactly where the whole table's rows step by
    0 or 1 per distance: not where they step by 2 (256 / 257) nor where they decrease (max_rel - 1 below
    buckets / 2: settings the front end rejects but the op itself takes), where the slabs would read other rows."""
    _extension_or_skip()
    n = 1 << 16
    table, _, _, unit_steps = cuda_backend.position_geometry(torch.empty(0), n, buckets, max_rel)
    steps = table[1:] - table[:-1]
    assert unit_steps == bool((steps >= 0).all() and (steps <= 1).all())
    assert unit_steps == ((buckets, max_rel) in [(256, 512), (8, 32), (-1, 24)])


@pytest.mark.parametrize("buckets,max_rel", [(64, 16), (64, 33)])
def test_position_geometry_of_short_sequences_under_settings_undefined_far(buckets, max_rel):
    """Log settings undefined beyond buckets // 2 (max_rel - 1 <= buckets // 2; the front end takes them for a
    sequence that never reaches past it): the plain distances, no clamping, and no staged slabs (the whole
    cached table holds the undefined region)."""
    _extension_or_skip()
    n = buckets // 2 + 1
    table, r_hi, r_lo, unit_steps = cuda_backend.position_geometry(torch.empty(0), n, buckets, max_rel)
    assert torch.equal(table, torch.arange(-(n - 1), n, dtype=torch.int32) + buckets)
    assert (r_hi, r_lo, unit_steps) == (n, n, False)


def test_position_table_is_exact_over_the_long_range():
    """Every distance |i - j| < 65536 (the full cached table) for DeBERTa-v3 settings."""
    _extension_or_skip()
    n = 1 << 16
    table, _, _, _ = cuda_backend.position_geometry(torch.empty(0), n, 256, 512)
    assert torch.equal(table, relative_index_table(n, 256, 512))


# --- the kernels' score code (csrc/score_terms.h: position terms and slot sums per tile kind) on the CPU ------

PLAIN, BAND, SAT_HI, SAT_LO = 0, 1, 2, 3  # csrc/score_terms.h TileMode
TILE_ROWS, TILE_COLS = 32, 64  # the hooks' warp tile: 2 x 8 mma.sync accumulator fragments, run lane by lane
BUCKETS, MAX_REL = 8, 32  # 2S = 16 position rows; saturation within 40 tokens


def _pairs(row0, col0, trans):
    """Absolute (query, key) index of every tile element, each [TILE_ROWS, TILE_COLS]."""
    rows = torch.arange(TILE_ROWS)[:, None] + row0
    cols = torch.arange(TILE_COLS)[None, :] + col0
    rows, cols = torch.broadcast_tensors(rows, cols)
    return (cols, rows) if trans else (rows, cols)


def _bucket(qi, kj):
    """d(i, j) from the definition (positions.log_bucket_position), not from the index table."""
    span = BUCKETS
    return (log_bucket_position(qi - kj, BUCKETS, MAX_REL) + span).clamp(0, 2 * span - 1)


def _band_terms_expected(scores, col_term, c2p, p2c, qi, kj, n):
    """(score + column term) + c2p[i, d] + p2c[j, d] per tile element, d from the bucket formula, 0 for pairs beyond
    N (the additions in the kernels' order), and which pairs lie inside N."""
    valid = (qi < n) & (kj < n)
    qs, ks = qi.clamp(max=n - 1), kj.clamp(max=n - 1)  # (safe addresses for the reference's own gathers)
    d = _bucket(qi, kj)
    term = torch.zeros(TILE_ROWS, TILE_COLS)
    if c2p is not None:
        term = term + c2p[qs, d]
    if p2c is not None:
        term = term + p2c[ks, d]
    return (scores + col_term) + torch.where(valid, term, torch.zeros(())), valid


def _score_inputs(n, seed):
    gen = torch.Generator().manual_seed(seed)
    c2p, p2c = (torch.randn(n, 2 * BUCKETS, generator=gen) for _ in range(2))
    scores = torch.randn(TILE_ROWS, TILE_COLS, generator=gen)
    col_term = torch.randn(TILE_COLS, generator=gen)
    row_hi, row_lo = (torch.randn(TILE_ROWS, generator=gen) for _ in range(2))
    return c2p, p2c, scores, col_term, row_hi, row_lo


@pytest.mark.parametrize("trans", [False, True], ids=["rows_are_queries", "rows_are_keys"])
@pytest.mark.parametrize("terms", ["both", "c2p", "p2c"])
@pytest.mark.parametrize("n,row0,col0", [(200, 40, 30), (70, 48, 20), (17, 0, 0), (200, 128, 0), (200, 0, 100)])
def test_per_tile_band_terms_match_their_definition(n, row0, col0, terms, trans):
    """A band tile (any tile: the band code is exact everywhere): (score + column term) + c2p[i, d] + p2c[j, d] with
    d(i, j) from the bucket formula, 0 for pairs beyond N; bit for bit, as the same fp32 additions in the same
    order. Tiles across the band, across N on both axes, shorter than the tile, and wholly saturated."""
    _extension_or_skip()
    table, r_hi, r_lo, _ = cuda_backend.position_geometry(torch.empty(0), n, BUCKETS, MAX_REL)
    c2p, p2c, scores, col_term, row_hi, row_lo = _score_inputs(n, seed=row0 * 1000 + col0 + n)
    c2p = c2p if terms in ("both", "c2p") else None
    p2c = p2c if terms in ("both", "p2c") else None
    out = torch.ops.deberta_fast.cuda_score_terms(scores, c2p, p2c, table, col_term, row_hi, row_lo, r_hi, r_lo,
                                                  row0, col0, trans, BAND)
    qi, kj = _pairs(row0, col0, trans)
    expected, valid = _band_terms_expected(scores, col_term, c2p, p2c, qi, kj, n)
    assert bool(valid.any()) and torch.equal(out, expected)


@pytest.mark.parametrize("trans", [False, True], ids=["rows_are_queries", "rows_are_keys"])
@pytest.mark.parametrize("chunk", [4, 8])
@pytest.mark.parametrize("terms", ["both", "c2p", "p2c"])
@pytest.mark.parametrize("warp_row0", [0, TILE_ROWS])
@pytest.mark.parametrize("n,q0,k0", [(200, 40, 30), (70, 0, 20), (17, 0, 0), (200, 128, 0), (200, 0, 100),
                                     (200, 64, 64), (130, 100, 90)])
def test_staged_band_terms_match_their_definition(n, q0, k0, warp_row0, terms, chunk, trans):
    """The kernels' staged band tiles (DEBERTA_FAST_CUDA_BAND=staged): a CTA tile's window and C2P / P2C slabs
    staged chunk by chunk as the kernels stage them (slab slots no chunk fills are NaN here), then one warp's terms
    read from the slabs: (score + column term) + c2p[i, d] + p2c[j, d] with d from the bucket formula, 0 beyond N;
    bit for bit. Tiles inside the band, across it, across N on both axes, shorter than the tile and saturated;
    both warps of the CTA tile; rows of queries (forward, dQ) and of keys (dK/dV); chunks of 16 bytes of float32 (4)
    and of half precision (8)."""
    _extension_or_skip()
    table, _, _, _ = cuda_backend.position_geometry(torch.empty(0), n, BUCKETS, MAX_REL)
    c2p, p2c, scores, col_term, _, _ = _score_inputs(n, seed=q0 * 1000 + k0 + n + warp_row0)
    c2p = c2p if terms in ("both", "c2p") else None
    p2c = p2c if terms in ("both", "p2c") else None
    out = torch.ops.deberta_fast.cuda_staged_terms(scores, c2p, p2c, table, col_term, q0, k0, warp_row0, chunk,
                                                   trans)
    qi, kj = _pairs(k0 + warp_row0, q0, True) if trans else _pairs(q0 + warp_row0, k0, False)
    expected, _ = _band_terms_expected(scores, col_term, c2p, p2c, qi, kj, n)
    assert torch.equal(out, expected)


def test_staged_hook_rejects_bad_arguments():
    _extension_or_skip()
    table, _, _, _ = cuda_backend.position_geometry(torch.empty(0), 40, BUCKETS, MAX_REL)
    c2p, _, scores, col_term, _, _ = _score_inputs(40, seed=1)
    hook = torch.ops.deberta_fast.cuda_staged_terms
    with pytest.raises(RuntimeError, match="chunk must be 4 or 8"):
        hook(scores, c2p, None, table, col_term, 0, 0, 0, 3, False)
    with pytest.raises(RuntimeError, match="c2p or p2c is needed"):
        hook(scores, None, None, table, col_term, 0, 0, 0, 4, False)
    with pytest.raises(RuntimeError, match="warp_row0 must be 0 or"):
        hook(scores, c2p, None, table, col_term, 0, 0, 5, 4, True)
    jumpy = table.clone()
    jumpy[40:] = (jumpy[40:] + 1).clamp(max=2 * BUCKETS - 1)  # a step of 2 (when jumpy[39] < jumpy[40] already)
    assert int((jumpy[1:] - jumpy[:-1]).max()) == 2
    with pytest.raises(RuntimeError, match="step by 0 or 1"):
        hook(scores, c2p, None, jumpy, col_term, 0, 0, 0, 4, False)


@pytest.mark.parametrize("trans", [False, True], ids=["rows_are_queries", "rows_are_keys"])
def test_per_tile_saturated_and_plain_terms(trans):
    """Saturated tiles add the row's own term at row 2S - 1 (SAT_HI) or 0 (SAT_LO) after the column's; on a
    saturated tile, with the rows' and columns' saturated values as those terms, that is the band definition's
    value; plain tiles add the column term alone."""
    _extension_or_skip()
    n = 200
    table, r_hi, r_lo, _ = cuda_backend.position_geometry(torch.empty(0), n, BUCKETS, MAX_REL)
    c2p, p2c, scores, col_term, row_hi, row_lo = _score_inputs(n, seed=7)
    hook = torch.ops.deberta_fast.cuda_score_terms
    plain = hook(scores, None, None, table, col_term, row_hi, row_lo, r_hi, r_lo, 0, 0, trans, PLAIN)
    assert torch.equal(plain, scores + col_term)
    # rows = queries: SAT_HI queries far after the keys; rows = keys: queries (columns) far after the keys
    for mode, (row0, col0), top in ((SAT_HI, (128, 0) if not trans else (0, 128), True),
                                    (SAT_LO, (0, 100) if not trans else (100, 0), False)):
        qi, kj = _pairs(row0, col0, trans)
        dist = qi - kj
        assert bool((dist >= r_hi).all()) if top else bool((dist <= -r_lo).all())
        out = hook(scores, None, None, table, col_term, row_hi, row_lo, r_hi, r_lo, row0, col0, trans, mode)
        assert torch.equal(out, (scores + col_term) + (row_hi if top else row_lo)[:, None])
        # the saturated row: the row's own table row times its content, the column's likewise
        slot = 2 * BUCKETS - 1 if top else 0
        row_rows = kj[:, 0] if trans else qi[:, 0]
        col_rows = qi[0] if trans else kj[0]
        row_table, col_table = (p2c, c2p) if trans else (c2p, p2c)
        sat = hook(scores, None, None, table, col_table[col_rows, slot], row_table[row_rows, slot],
                   row_table[row_rows, slot], r_hi, r_lo, row0, col0, trans, mode)
        band = hook(scores, c2p, p2c, table, torch.zeros(TILE_COLS), row_hi, row_lo, r_hi, r_lo, row0, col0, trans,
                    BAND)
        torch.testing.assert_close(sat, band, rtol=1e-6, atol=1e-6)  # (the sums' order differs)


@pytest.mark.parametrize("trans", [False, True], ids=["rows_are_queries", "rows_are_keys"])
@pytest.mark.parametrize("n,row0,col0", [(200, 40, 30), (70, 48, 20), (17, 0, 0), (200, 128, 0), (200, 0, 100),
                                         (200, 0, 128), (200, 100, 0)])
def test_per_tile_slot_sums_match_their_definition(n, row0, col0, trans):
    """The backward's slot bookkeeping of a dS tile: per row, the dS of its pairs at i - j >= r_hi summed (hi),
    at i - j <= -r_lo summed (lo), and each band pair's dS stored at band[row, i - j + r_lo - 1] (pairs beyond N
    not stored); run as a band tile (exact on any tile) and, where the tile is saturated, as SAT_HI / SAT_LO."""
    _extension_or_skip()
    _, r_hi, r_lo, _ = cuda_backend.position_geometry(torch.empty(0), n, BUCKETS, MAX_REL)
    width = r_hi + r_lo - 1
    band_w = (width + 7) // 8 * 8
    ds = torch.randn(TILE_ROWS, TILE_COLS, generator=torch.Generator().manual_seed(n + row0 + col0))
    qi, kj = _pairs(row0, col0, trans)
    dist = qi - kj
    at_hi, at_lo = dist >= r_hi, dist <= -r_lo
    zero = torch.zeros(())
    want_hi = torch.where(at_hi, ds, zero).sum(1)
    want_lo = torch.where(at_lo, ds, zero).sum(1)
    want_band = torch.full((n, band_w), float("nan"))
    stored = ~at_hi & ~at_lo & (qi < n) & (kj < n)
    rows = (kj if trans else qi)[stored]
    want_band[rows, (dist + r_lo - 1)[stored]] = ds[stored]
    hi, lo, band = torch.ops.deberta_fast.cuda_slot_sums(ds, n, r_hi, r_lo, band_w, row0, col0, trans, BAND)
    torch.testing.assert_close(hi, want_hi, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lo, want_lo, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(band, want_band, equal_nan=True, rtol=0, atol=0)
    for mode, everywhere in ((SAT_HI, at_hi), (SAT_LO, at_lo)):
        if bool(everywhere.all()):
            hi2, lo2, band2 = torch.ops.deberta_fast.cuda_slot_sums(ds, n, r_hi, r_lo, band_w, row0, col0, trans,
                                                                    mode)
            assert torch.equal(hi2, hi) and torch.equal(lo2, lo)  # the same sums in the same order
            assert bool(band2.isnan().all())
    plain = torch.ops.deberta_fast.cuda_slot_sums(ds, n, r_hi, r_lo, band_w, row0, col0, trans, PLAIN)
    assert not plain[0].any() and not plain[1].any() and bool(plain[2].isnan().all())


def test_score_hooks_reject_bad_arguments():
    _extension_or_skip()
    table, r_hi, r_lo, _ = cuda_backend.position_geometry(torch.empty(0), 20, BUCKETS, MAX_REL)
    c2p, p2c, scores, col_term, row_hi, row_lo = _score_inputs(20, seed=1)
    hook = torch.ops.deberta_fast.cuda_score_terms
    with pytest.raises(RuntimeError, match="scores must be a CPU Float tensor of shape \\[32, 64\\]"):
        hook(scores[:16], c2p, p2c, table, col_term, row_hi, row_lo, r_hi, r_lo, 0, 0, False, BAND)
    with pytest.raises(RuntimeError, match="c2p / p2c must be"):
        hook(scores, c2p[:10], p2c, table, col_term, row_hi, row_lo, r_hi, r_lo, 0, 0, False, BAND)
    with pytest.raises(RuntimeError, match="mode must be"):
        hook(scores, c2p, p2c, table, col_term, row_hi, row_lo, r_hi, r_lo, 0, 0, False, 4)
    with pytest.raises(RuntimeError, match="band_w must hold"):
        torch.ops.deberta_fast.cuda_slot_sums(scores, 20, r_hi, r_lo, 2, 0, 0, False, BAND)
    with pytest.raises(RuntimeError, match="row0 and col0 must be tile origins >= 0, got -8, 0"):
        torch.ops.deberta_fast.cuda_slot_sums(scores, 20, r_hi, r_lo, 64, -8, 0, False, BAND)
    with pytest.raises(RuntimeError, match="table's rows must lie in"):
        hook(scores, c2p, p2c, table + 2 * BUCKETS, col_term, row_hi, row_lo, r_hi, r_lo, 0, 0, False, BAND)


# --- the backend: reasons and dispatch ---------------------------------------------------------


def _call(dtype=torch.float32, D=32, device="cpu"):
    case = Case(N=9, D=D)
    tensors, _ = make_inputs(case)
    return make_call(*(t.to(device, dtype) for t in tensors), **call_kwargs(case))


def test_backend_is_registered_and_auto_selectable():
    backend = get_backend("cuda")
    assert backend.name == "cuda" and backend is not None
    assert backend.auto_select is True  # tests/test_gpu_cuda.py passed on an H100; selection.py orders it
    reasons = deberta_fast.available_backends()["cuda"]
    if not torch.cuda.is_available():
        assert "no CUDA device" in reasons


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(), "tensors on cpu are not supported"),
     (dict(dtype=torch.float64), "dtype torch.float64 is not supported"),
     (dict(D=48), "head dim 48 is not supported \\(32, 64 or 128\\)")],
)
def test_unsupported_calls_raise_with_reasons(kwargs, match):
    call = _call(**kwargs)
    assert any(__import__("re").search(match, r) for r in get_backend("cuda").not_supported_reasons(call))
    with pytest.raises(ValueError, match=f"backend 'cuda' cannot serve this call: .*{match}"):
        disentangled_attention(call.query, call.key, call.value, call.pos_key, call.pos_query,
                               position_buckets=8, max_relative_positions=32, backend="cuda")


def test_auto_never_picks_cuda_on_cpu():
    call = _call()
    from deberta_fast.backends import select_backend

    assert select_backend(call, "auto").name == "torch"


def test_info_reports_the_extension(capsys):
    from deberta_fast.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "  cuda     " in out and "cuda extension " in out
    line = next(line for line in out.splitlines() if line.startswith("cuda extension"))
    assert ("loaded" in line or "not built" in line or "not loadable" in line) and "just-in-time build" in line


# --- the just-in-time build --------------------------------------------------------------------


def test_jit_plan(monkeypatch, tmp_path):
    if shutil_which("nvcc") is None or shutil_which("ninja") is None:
        pytest.skip("nvcc / ninja not installed")
    monkeypatch.setenv(cuda_backend.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    plan = cuda_backend.jit_plan()
    generate = _csrc("generate_instantiations")
    assert plan["sources"] == [str(p) for p in generate.sources(CSRC)]
    assert plan["archs"] == ["9.0"] and "-gencode=arch=compute_90,code=sm_90" in plan["extra_cuda_cflags"]
    assert plan["name"].startswith("deberta_fast_C_") and plan["name"].isidentifier()
    assert Path(plan["build_directory"]) == tmp_path / plan["name"]
    assert plan["extra_include_paths"] == [str(CSRC)]
    assert cuda_backend.jit_plan()["name"] == plan["name"]  # stable
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    assert cuda_backend.jit_plan()["name"] != plan["name"]  # keyed on the architectures (and sources, flags)


def test_kernel_names_tell_the_gpu_tests_which_kernels_ran():
    """The GPU module reads which kernels a call launched off their names (tests/gpu_cases.py, through
    torch.profiler): parsed here from the built extension's own symbols, every tile, the staged and gathering
    instances and the wgmma ones are told apart as csrc/kernel_traits.h configures them."""
    module = _extension_or_skip()
    nm = shutil_which("nm")
    if nm is None:
        pytest.skip("nm is not installed")
    from gpu_cases import CudaKernel, parse_cuda_kernel

    symbols = subprocess.run([nm, "-C", module.__file__], capture_output=True, text=True, check=True).stdout
    names = [line.split(" ", 2)[2] for line in symbols.splitlines() if "_kernel<deberta_fast::" in line]
    kernels = {parse_cuda_kernel(name) for name in names} - {None}
    assert all(parse_cuda_kernel(name) is not None for name in names if "attention_" in name)
    for staged in (False, True):
        for tile in [(128, 64, 8), (128, 32, 4), (64, 64, 4), (64, 32, 4)]:  # fp16 / bf16 tiles, fp32's 64 x 32
            assert CudaKernel("fwd", tile, False, staged) in kernels, tile
        assert CudaKernel("fwd", (128, 64, 8), True, staged) in kernels  # wgmma (an sm_90a build)
        for kind in ("dkdv", "dq"):
            for tile in [(64, 64, 4), (64, 32, 4), (64, 16, 4)]:
                assert CudaKernel(kind, tile, False, staged) in kernels, (kind, tile)
            assert CudaKernel(kind, (64, 64, 4), True, staged) in kernels
    assert parse_cuda_kernel("void deberta_fast::delta_kernel<float>(deberta_fast::DeltaParams)") is None
    assert parse_cuda_kernel("void deberta_fast::attention_dq_kernel<deberta_fast::BwdTraits<float, 32, 64, 32, 4, "
                             "(bool)0>, (bool)1>(deberta_fast::BwdParams)") == CudaKernel("dq", (64, 32, 4), False, True)


def test_jit_build_hands_the_plan_to_cpp_extension(monkeypatch, tmp_path):
    """_jit_build (run in CI only by the opt-in test below) passes every part of the plan to
    torch.utils.cpp_extension.load, with CUDA_HOME and the architectures set for it; load itself is a stand-in."""
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setenv("CUDA_HOME", "/elsewhere")  # restored afterwards, as the attribute below
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/elsewhere")
    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: calls.append(kwargs) or "module")
    plan = dict(name="deberta_fast_C_test", sources=["a.cu", "b.cpp"], archs=["8.0", "9.0a"], cuda_home="/opt/cuda",
                nvcc="/opt/cuda/bin/nvcc", extra_cflags=["-O3"], extra_cuda_cflags=["--use_fast_math"],
                extra_include_paths=[str(CSRC)], build_directory=str(tmp_path / "build" / "deberta_fast_C_test"))
    assert cuda_backend._jit_build(plan) == "module"
    assert calls == [dict(name=plan["name"], sources=plan["sources"], extra_cflags=["-O3"],
                          extra_cuda_cflags=["--use_fast_math"], extra_include_paths=[str(CSRC)],
                          build_directory=plan["build_directory"], is_python_module=True, verbose=False)]
    assert Path(plan["build_directory"]).is_dir()
    assert os.environ["CUDA_HOME"] == cpp_extension.CUDA_HOME == "/opt/cuda"
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0a"


def test_jit_archs_follow_the_visible_devices(monkeypatch):
    """Without TORCH_CUDA_ARCH_LIST the build targets the devices it sees: sm_90 as 9.0a (wgmma), others as they
    are, below sm_80 dropped; with no device, 8.0 and 9.0."""
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    caps = [(9, 0), (8, 6), (7, 5), (9, 0)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(caps))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: caps[i])
    archs = cuda_backend._jit_archs()
    assert archs == ["8.6", "9.0a"]
    build_config = _csrc("build_config")
    assert build_config.arch_flags(archs) == ["-gencode=arch=compute_86,code=sm_86",
                                              "-gencode=arch=compute_90a,code=sm_90a"]
    assert build_config.archs_tag(archs) == "sm86_sm90a"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")  # an explicit list wins
    assert cuda_backend._jit_archs() == ["9.0"]
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_backend._jit_archs() == ["8.0", "9.0"]


def shutil_which(name):
    import shutil

    return shutil.which(name)


def test_jit_plan_says_why_not(monkeypatch, tmp_path):
    monkeypatch.setenv(cuda_backend.JIT_ENV, "0")
    with pytest.raises(RuntimeError, match="just-in-time builds are turned off"):
        cuda_backend.jit_plan()
    monkeypatch.delenv(cuda_backend.JIT_ENV)
    build_config = _csrc("build_config")
    monkeypatch.setattr(build_config, "find_cuda_home", lambda: None)
    monkeypatch.setattr(build_config, "find_nvcc", lambda home=None: None)
    with pytest.raises(RuntimeError, match="nvcc was not found"):
        cuda_backend.jit_plan()
    monkeypatch.setenv("DEBERTA_FAST_CSRC", str(tmp_path))  # no sources there
    with pytest.raises(RuntimeError, match="csrc/\\) are not available"):
        cuda_backend.jit_plan()


def test_load_extension_falls_back_to_the_jit_build(monkeypatch):
    """No setup.py build: the first load compiles (here: a stand-in) with the plan; a failure is remembered
    and becomes the reason, without retrying on every call."""
    monkeypatch.setattr(cuda_backend, "_STATE", cuda_backend._State())
    monkeypatch.setattr(cuda_backend, "_load_prebuilt", lambda: None)
    monkeypatch.setattr(cuda_backend, "_register_python_side", lambda: None)
    monkeypatch.setattr(cuda_backend, "jit_plan", lambda: {"name": "stand_in"})
    built = []

    class Module:
        cuda_archs = "sm90"

    def fake_build(plan):
        built.append(plan["name"])
        return Module()

    monkeypatch.setattr(cuda_backend, "_jit_build", fake_build)
    with pytest.raises(RuntimeError, match="compiled just in time on first use"):
        cuda_backend.load_extension(jit=False)
    assert built == []
    assert isinstance(cuda_backend.load_extension(jit=True), Module) and built == ["stand_in"]
    assert cuda_backend._STATE.origin == "just-in-time build"

    monkeypatch.setattr(cuda_backend, "_STATE", cuda_backend._State())

    def failing_build(plan):
        built.append("failed")
        raise RuntimeError("nvcc exploded")

    monkeypatch.setattr(cuda_backend, "_jit_build", failing_build)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="the just-in-time build failed: RuntimeError: nvcc exploded"):
            cuda_backend.load_extension(jit=True)
    assert built.count("failed") == 1


JIT_BUILD = """
import os, torch
from deberta_fast.backends import cuda_backend
module = cuda_backend.load_extension(jit=True)
assert cuda_backend._STATE.origin == "just-in-time build", cuda_backend._STATE.origin
print(module.__name__, module.cuda_archs)
print(torch.ops.deberta_fast.cuda_dropout_mask(torch.tensor([1, 2]), 1, 1, 9, 0.5).sum().item())
"""


@pytest.mark.skipif(os.environ.get("DEBERTA_FAST_TEST_JIT") != "1",
                    reason="compiles the extension (minutes): set DEBERTA_FAST_TEST_JIT=1")
def test_jit_build_compiles_and_loads(tmp_path):
    env = {**os.environ, cuda_backend.CACHE_ENV: str(tmp_path), cuda_backend.PREBUILT_ENV: "0",
           "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"), "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    result = subprocess.run([sys.executable, "-c", JIT_BUILD], cwd=REPO.parent, env=env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "deberta_fast_C_" in result.stdout
    assert any(tmp_path.rglob("*.so"))

"""backend="auto" on CUDA tensors: the order the recorded benchmarks measured (backends/selection.py)."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from deberta_fast import backends
from deberta_fast.backends import measured, selection

ROOT = Path(__file__).resolve().parent.parent

TABLE = {
    ("9.0", "bfloat16", 64): {
        "fwd": [(512, ("triton", "cuda")), (2048, ("cuda", "triton")), (8192, ("triton", "cuda"))],
        "fwd_bwd": [(512, ("cuda", "triton")), (8192, ("triton", "cuda"))],
    },
    ("9.0", "float16", 128): {"fwd": [(1024, ("cuda", "triton"))]},
    ("8.0", "bfloat16", 64): {"fwd": [(1024, ("cuda",))]},
}


@pytest.mark.parametrize(
    "capability,dtype,head_dim,seq_len,mode,expected",
    [
        ("9.0", "bfloat16", 64, 512, "fwd", ("triton", "cuda")),  # exact
        ("9.0", "bfloat16", 64, 2048, "fwd", ("cuda", "triton")),
        ("9.0", "bfloat16", 64, 700, "fwd", ("triton", "cuda")),  # log2: 700 is nearer 512 than 2048
        ("9.0", "bfloat16", 64, 1100, "fwd", ("cuda", "triton")),  # and 1100 nearer 2048
        ("9.0", "bfloat16", 64, 100000, "fwd", ("triton", "cuda")),  # beyond the largest measured
        ("9.0", "bfloat16", 64, 1, "fwd_bwd", ("cuda", "triton")),
        ("9.0", "bfloat16", 64, 4096, "fwd_bwd", ("triton", "cuda")),  # tie 2048..8192 -> 8192 is nearer
        ("9.0", "float16", 128, 300, "fwd", ("cuda", "triton")),  # same dtype and head dim
        ("9.0", "float16", 64, 300, "fwd", ("cuda", "triton")),  # same dtype beats same head dim
        ("9.0", "float32", 32, 512, "fwd", ("triton", "cuda")),  # nothing matches: nearest head dim 64
        ("8.0", "bfloat16", 64, 512, "fwd", ("cuda",)),  # the GPU's own table first
        ("8.0", "bfloat16", 64, 512, "fwd_bwd", ("cuda", "triton")),  # not recorded there: the 9.0 table
        ("10.0", "bfloat16", 64, 512, "fwd", ("triton", "cuda")),  # never measured: the closest GPU, 9.0
        ("7.5", "bfloat16", 64, 512, "fwd", ("cuda",)),  # closest: 8.0
    ],
)
def test_measured_order_takes_the_nearest_recorded_shape(capability, dtype, head_dim, seq_len, mode, expected):
    assert selection.measured_order(capability, dtype, head_dim, seq_len, mode, table=TABLE) == expected


def test_nothing_recorded_gives_none():
    assert selection.measured_order("9.0", "bfloat16", 64, 512, "fwd", table={}) is None
    assert selection.measured_order("9.0", "bfloat16", 64, 512, "bwd", table=TABLE) is None


def fake_call(n=512, d=64, dtype=torch.bfloat16, requires_grad=False):
    """What cuda_order reads of a call, on a device it never touches (the capability is stubbed)."""
    query = SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype, shape=(1, 1, n, d),
                            requires_grad=requires_grad)
    return SimpleNamespace(query=query, key=query, value=query, pos_key=None, pos_query=None)


@pytest.fixture
def stub_gpu(monkeypatch):
    monkeypatch.setattr(selection, "_CAPABILITY", {0: "9.0"})
    monkeypatch.setattr(measured, "FASTEST", TABLE)


def test_cuda_order_picks_mode_from_autograd(stub_gpu):
    assert selection.cuda_order(fake_call(2048)) == ("cuda", "triton", "torch")  # fwd
    assert selection.cuda_order(fake_call(512)) == ("triton", "cuda", "torch")
    assert selection.cuda_order(fake_call(512, requires_grad=True)) == ("cuda", "triton", "torch")  # fwd_bwd
    with torch.no_grad():  # requires_grad inputs under no_grad: no backward will run
        assert selection.cuda_order(fake_call(512, requires_grad=True)) == ("triton", "cuda", "torch")


def test_cuda_order_appends_the_default_order(stub_gpu):
    assert selection.cuda_order(fake_call(512, dtype=torch.float16, d=128)) == ("cuda", "triton", "torch")
    # an 8.0 GPU whose table names only cuda: the rest follow in the default order
    selection._CAPABILITY[0] = "8.0"
    assert selection.cuda_order(fake_call(1024)) == ("cuda", "triton", "torch")


def test_cuda_order_without_records_is_the_default(monkeypatch):
    monkeypatch.setattr(selection, "_CAPABILITY", {0: "9.0"})
    monkeypatch.setattr(measured, "FASTEST", {})
    assert selection.cuda_order(fake_call()) == selection.DEFAULT_CUDA_ORDER == ("cuda", "triton", "torch")


def test_auto_dispatch_follows_the_measured_order(monkeypatch, stub_gpu):
    """select_backend("auto") on a CUDA call tries backends in selection.cuda_order's order."""
    class Fake:
        def __init__(self, name):
            self.name = name

        def not_supported_reasons(self, call):
            return []

    fakes = {name: Fake(name) for name in ("cuda", "triton", "torch")}
    monkeypatch.setattr(backends, "get_backend", lambda name: fakes[name])
    assert backends.select_backend(fake_call(2048), "auto").name == "cuda"
    assert backends.select_backend(fake_call(512), "auto").name == "triton"
    monkeypatch.setattr(fakes["triton"], "not_supported_reasons", lambda call: ["no triton"], raising=False)
    assert backends.select_backend(fake_call(512), "auto").name == "cuda"


def test_auto_never_builds_the_cuda_extension(monkeypatch):
    """backend="auto" asks the cuda backend for its auto_reasons, which never start a just-in-time build."""
    cuda = backends.get_backend("cuda")
    if not hasattr(cuda, "auto_reasons"):
        pytest.skip(f"cuda backend not loadable here: {cuda.not_supported_reasons(None)}")
    from deberta_fast.backends import cuda_backend

    calls = []

    def load_extension(jit=True):
        calls.append(jit)
        raise RuntimeError("not built")

    monkeypatch.setattr(cuda_backend._STATE, "module", None)
    monkeypatch.setattr(cuda_backend, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(cuda_backend, "load_extension", load_extension)
    call = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16, head_dim=64)
    assert cuda.auto_reasons(call) == ["not built"]
    assert calls == [False]
    assert cuda.not_supported_reasons(call) == ["not built"]
    assert calls == [False, True]


def test_committed_table_is_generated_from_the_committed_benchmark():
    """deberta_fast/backends/measured.py is what bench/make_selection.py makes of the recorded GPU JSON."""
    module = _make_selection()
    assert module.generate(module.SOURCES) == (ROOT / "deberta_fast" / "backends" / "measured.py").read_text()
    checked = 0
    for source in module.SOURCES:  # and the table says what each JSON's medians say, row by row
        record = json.loads(source.read_text())
        for row in record["rows"]:
            if row["level"] == "op" and row["mode"] in ("fwd", "fwd_bwd") and row["provider"] == "df-triton":
                other = next(r for r in record["rows"] if r["level"] == "op" and r["mode"] == row["mode"]
                             and r["N"] == row["N"] and r["provider"] == "df-cuda")
                faster = "triton" if row["median_ms"] < other["median_ms"] else "cuda"
                key = (record["env"]["gpu_capability"], row["dtype"], row["D"])
                order = dict(measured.FASTEST[key][row["mode"]])[row["N"]]
                assert order[0] == faster
                checked += 1
    assert checked >= 10


def _make_selection():
    spec = importlib.util.spec_from_file_location("make_selection", ROOT / "bench" / "make_selection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variant_table_from_the_variant_providers():
    """The Triton variants' timings as make_selection records them: per band the faster forward row, per variant
    its forward+backward less its band's forward (whole steps where a band's forward is missing); rows of other
    providers, padded batches, failed runs and CPU runs are left out, and a later run of a shape wins."""
    def row(provider, mode, n, ms, **extra):
        return dict(dict(level="op", provider=provider, mode=mode, N=n, D=64, dtype="bfloat16", status="ok",
                         median_ms=ms, padded=False), **extra)

    first = {"env": {"gpu_capability": "9.0"}, "rows": [
        row("df-triton-gather", "fwd", 512, 1.0), row("df-triton-fused", "fwd", 512, 0.8),
        row("df-triton-bias", "fwd", 512, 0.7), row("df-triton-bias-fused", "fwd", 512, 0.75),
        row("df-triton-gather", "fwd_bwd", 512, 6.0), row("df-triton-fused", "fwd_bwd", 512, 5.0),
        row("df-triton-bias", "fwd_bwd", 512, 4.0), row("df-triton-bias-fused", "fwd_bwd", 512, 4.5),
        row("df-triton-gather", "fwd_bwd", 8192, 20.0), row("df-triton-bias", "fwd_bwd", 8192, 19.0),  # no fwd
        row("df-triton", "fwd", 512, 0.1), row("sdpa-floor", "fwd", 512, 0.05),  # not variants
        row("df-triton-gather", "fwd", 2048, 0.1, padded=True),  # a padded batch
        row("df-triton-bias", "fwd", 2048, 0.1, status="error"),
        row("df-triton-gather", "fwd", 2048, 2.0), row("df-triton-bias", "fwd", 2048, 2.5),
    ]}
    later = {"env": {"gpu_capability": "9.0"}, "rows": [row("df-triton-bias", "fwd", 2048, 1.5)]}
    cpu = {"env": {}, "rows": [row("df-triton-gather", "fwd", 512, 0.01)]}
    table = _make_selection().variant_table([first, later, cpu])
    assert table == {("9.0", "bfloat16", 64): {
        "fwd": [(512, {"bias": 0.7, "gather": 0.8}), (2048, {"bias": 1.5})],
        "bwd": [(512, {("bias", "fused"): 3.8, ("bias", "split"): 3.3, ("gather", "fused"): 4.2,
                       ("gather", "split"): 5.2}),
                (8192, {("bias", "split"): 19.0, ("gather", "split"): 20.0})],
    }}


def test_generator_adds_a_run_to_the_committed_ones(tmp_path):
    """``make_selection.py --add RUN``: the committed SOURCES, then RUN (what the GPU suite's apply-variants step
    does on the device before the steps that follow it)."""
    import subprocess
    import sys

    run = tmp_path / "variants.json"
    row = dict(level="op", provider="df-triton-bias", mode="fwd", N=2048, D=64, dtype="bfloat16", status="ok",
               median_ms=1.25, padded=False)
    run.write_text(json.dumps({"env": {"gpu_capability": "9.0", "gpu": "test GPU", "timestamp": "2026-11-22"},
                               "rows": [row]}))
    out = tmp_path / "measured.py"
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_selection.py"), "--add", str(run), "--out", str(out)],
                   check=True, capture_output=True)
    namespace = {}
    exec(out.read_text(), namespace)
    assert namespace["FASTEST"] == measured.FASTEST  # the committed runs' order, unchanged
    # RUN's shape replaces the committed measurement of that shape (N 2048's forward), or is added to the table
    key = ("9.0", "bfloat16", 64)
    expected = {k: {step: list(entries) for step, entries in v.items()} for k, v in measured.TRITON_VARIANTS.items()}
    forward = [entry for entry in expected.setdefault(key, {}).get("fwd", []) if entry[0] != 2048]
    expected[key]["fwd"] = sorted(forward + [(2048, {"bias": 1.25})], key=lambda entry: entry[0])
    assert namespace["TRITON_VARIANTS"] == expected
    assert str(run) in out.read_text()  # named among the sources


def test_cuda_order_traces_under_torch_compile_fullgraph(stub_gpu):
    """The model calls select_backend inside torch.compile(fullgraph=True): the lookup must trace (it did
    not with min(key=...)) and give the same order as eagerly."""
    from deberta_fast.backends.call import make_call

    def which(q):
        order = selection.cuda_order(make_call(q, q, q, position_buckets=4, max_relative_positions=8))
        return q * (2 if order[0] == "triton" else 3)

    compiled = torch.compile(which, fullgraph=True, dynamic=False)
    torch._dynamo.reset()
    for n, factor in ((512, 2), (2048, 3)):  # TABLE, fwd (no grad): triton at 512, cuda at 2048
        q = torch.randn(1, 1, n, 64, dtype=torch.bfloat16)
        assert torch.equal(compiled(q), q * factor)
    # a device not seen eagerly yet: the trace must not query it (here that would fail: no CUDA), and takes
    # the nearest recorded shape of any GPU
    selection._CAPABILITY.clear()
    torch._dynamo.reset()
    q = torch.randn(1, 1, 2048, 64, dtype=torch.bfloat16)
    assert torch.equal(compiled(q), q * 3)
    assert selection._CAPABILITY == {}
    torch._dynamo.reset()

"""The Triton kernels' measured defaults (kernels/tuned.py, used when autotuning is off): the generator
bench/make_tuned.py, the nearest-shape lookup and the choice among the configs the prune filter keeps;
and bench/tune_triton.py end to end under the interpreter (so the GPU run cannot fail on the script)."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
import triton  # noqa: E402

from deberta_fast.kernels import common as kernel_common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _load(script):
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / "bench" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(capability, rows):
    return {"env": {"gpu_capability": capability, "gpu": "test GPU", "triton": "3.6.0", "timestamp": "2026-11-22"},
            "rows": rows}


def _row(kernel, N, config, ms, D=64, dtype="bfloat16", status="ok"):
    return dict(kernel=kernel, N=N, D=D, dtype=dtype, config=list(config), median_ms=ms, status=status)


def test_generator_keeps_the_fastest_config_per_shape():
    make_tuned = _load("make_tuned.py")
    records = [
        _record("9.0", [
            _row("fwd", 512, (128, 64, 8, 3), 1.0), _row("fwd", 512, (64, 64, 4, 3), 0.7),
            _row("fwd", 512, (128, 32, 8, 3), 0.5, status="error: out of resources"),  # failed: never chosen
            _row("dq", 2048, (128, 32, 8, 2), 2.0), _row("dq", 2048, (64, 32, 8, 2), 2.5),
            _row("fwd", 512, (64, 64, 8, 3), 0.9, D=48),
        ]),
        _record(None, [_row("fwd", 512, (16, 16, 4, 2), 0.1)]),  # a CPU smoke run: left out
        _record("9.0", [_row("dq", 2048, (64, 16, 4, 2), 1.5)]),  # a later run of the same shape wins
    ]
    table = make_tuned.fastest_table(records)
    # D 48 runs padded to 64, so its row is one more measurement of the same shape; the fastest of all wins
    assert table == {
        ("9.0", "bfloat16", 64, "dq"): [(2048, (64, 16, 4, 2))],
        ("9.0", "bfloat16", 64, "fwd"): [(512, (64, 64, 4, 3))],
    }
    source = make_tuned.render(table, ["x.json"])
    namespace = {}
    exec(source, namespace)
    assert namespace["FASTEST"] == table


def test_committed_table_is_generated_from_the_committed_runs():
    make_tuned = _load("make_tuned.py")
    assert make_tuned.generate(make_tuned.SOURCES) == (ROOT / "kernels" / "tuned.py").read_text()


TABLE = {
    ("9.0", "bfloat16", 64, "fwd"): [(512, (64, 64, 8, 3)), (8192, (128, 32, 8, 3))],
    ("9.0", "bfloat16", 128, "fwd"): [(2048, (128, 128, 8, 3))],
}


@pytest.mark.parametrize("capability,dtype,head_dim,seq_len,expected", [
    ("9.0", torch.bfloat16, 64, 512, (64, 64, 8, 3)),  # recorded
    ("9.0", torch.bfloat16, 64, 1000, (64, 64, 8, 3)),  # nearer 512 than 8192 (log scale)
    ("9.0", torch.bfloat16, 64, 2048, (64, 64, 8, 3)),  # equally far: the shorter
    ("9.0", torch.bfloat16, 64, 4096, (128, 32, 8, 3)),
    ("9.0", torch.bfloat16, 48, 100000, (128, 32, 8, 3)),  # padded head dim 64
    ("9.0", torch.float16, 64, 512, (64, 64, 8, 3)),  # bfloat16's measurement (the same code)
    ("9.0", torch.float32, 64, 512, None),  # no measurement for the dtype
    ("8.0", torch.bfloat16, 64, 512, None),  # nor for the GPU
])
def test_measured_shape_takes_the_nearest_recorded_length(table, capability, dtype, head_dim, seq_len, expected):
    assert kernel_common.measured_shape("fwd", capability, dtype, head_dim, seq_len) == expected
    assert kernel_common.measured_shape("dq", capability, dtype, head_dim, seq_len) is None


class _Kernel:
    """The parts of an ``autotuned`` kernel default_config reads."""

    deberta_name = "fwd"
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
               for m, n, w, s in [(128, 64, 8, 3), (64, 64, 8, 3), (128, 32, 8, 3), (128, 128, 8, 3)]]
    early_config_prune = functools.partial(kernel_common.prune_configs, owned="BLOCK_M", wide_owned=64)


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setattr(kernel_common, "FASTEST", TABLE)
    kernel_common._measured_config.cache_clear()
    yield
    kernel_common._measured_config.cache_clear()


def test_default_config_prefers_the_measured_shape(table):
    shape = kernel_common.config_shape
    args = {"N": 4096, "Q": torch.empty(1, dtype=torch.bfloat16)}
    assert shape(kernel_common.default_config(_Kernel, args, "9.0", HEAD_DIM=64)) == (128, 32, 8, 3)
    args["N"] = 512
    assert shape(kernel_common.default_config(_Kernel, args, "9.0", HEAD_DIM=64)) == (64, 64, 8, 3)
    # without a measurement: the prune filter's first
    assert shape(kernel_common.default_config(_Kernel, args, "8.0", HEAD_DIM=64)) == (128, 64, 8, 3)
    assert shape(kernel_common.default_config(_Kernel, args, None, HEAD_DIM=64)) == (128, 64, 8, 3)
    # the measured 128 x 128 at head dim 128 is one the prune filter drops (128 rows of D 128): not taken
    args["N"] = 2048
    assert shape(kernel_common.default_config(_Kernel, args, "9.0", HEAD_DIM=128)) == (64, 64, 8, 3)


def test_autotune_keys_are_kernel_arguments():
    """Triton 3.9 refuses an autotune key that is not an argument of the kernel (the forward and dQ kernels,
    which have no FUSED_DQ, failed to import there): each kernel keys on the AUTOTUNE_KEY names it has."""
    from deberta_fast.kernels import attention_bwd, attention_fwd

    for kernel in (attention_fwd._attn_fwd_kernel, attention_bwd._dkdv_kernel, attention_bwd._dq_kernel):
        assert kernel.keys == [k for k in kernel_common.AUTOTUNE_KEY if k in kernel.arg_names]
        assert {"SEQ_BUCKET", "HEAD_DIM", "BAND_BIAS"} <= set(kernel.keys)
    assert "FUSED_DQ" in attention_bwd._dkdv_kernel.keys and "FUSED_DQ" not in attention_fwd._attn_fwd_kernel.keys


def test_register_capped_shapes_keep_their_cap(table, monkeypatch):
    """A config shape's fifth element caps the registers (maxnreg): make_configs passes it to the config,
    config_shape gives it back, and a measured capped shape picks the capped config, not its uncapped twin."""
    monkeypatch.setattr(kernel_common, "INTERPRET", False)  # the interpreter's single config otherwise
    configs = kernel_common.make_configs([(64, 64, 4, 3), (64, 64, 4, 3, 168)], (32, 32))
    assert [c.maxnreg for c in configs] == [None, 168]
    assert [kernel_common.config_shape(c) for c in configs] == [(64, 64, 4, 3), (64, 64, 4, 3, 168)]
    assert configs[1].all_kwargs()["maxnreg"] == 168  # what launch() hands to the kernel

    class Capped(_Kernel):
        deberta_name = "capped"

    Capped.configs = configs
    args = {"N": 512, "Q": torch.empty(1, dtype=torch.bfloat16)}
    monkeypatch.setitem(kernel_common.FASTEST, ("9.0", "bfloat16", 64, "capped"), [(512, (64, 64, 4, 3, 168))])
    assert kernel_common.default_config(Capped, args, "9.0", HEAD_DIM=64) is configs[1]
    monkeypatch.setitem(kernel_common.FASTEST, ("9.0", "bfloat16", 64, "capped"), [(512, (64, 64, 4, 3))])
    kernel_common._measured_config.cache_clear()
    assert kernel_common.default_config(Capped, args, "9.0", HEAD_DIM=64) is configs[0]


def test_launch_config_per_autotune_mode(table, monkeypatch):
    """"1": the autotuner (None); "0": the measured config, else the prune filter's first; "auto" (the default):
    the measured config, else the autotuner."""
    shape = kernel_common.config_shape
    args = {"N": 512, "Q": torch.empty(1, dtype=torch.bfloat16)}

    def pick(mode, capability):
        config = kernel_common.launch_config(_Kernel, args, mode, capability, HEAD_DIM=64)
        return None if config is None else shape(config)

    assert pick("1", "9.0") is None
    assert pick("0", "9.0") == (64, 64, 8, 3)
    assert pick("0", "8.0") == (128, 64, 8, 3)
    assert pick("auto", "9.0") == (64, 64, 8, 3)
    assert pick("auto", "8.0") is None
    # the fused backward's dK/dV kernel is looked up under its own name ("fwd+dq" for this stand-in), and so is a
    # kernel reading the band bias ("fwd+bias")
    assert kernel_common.launch_config(_Kernel, args, "auto", "9.0", HEAD_DIM=64, FUSED_DQ=True) is None
    assert kernel_common.launch_config(_Kernel, args, "auto", "9.0", HEAD_DIM=64, BAND_BIAS=True) is None
    monkeypatch.setitem(kernel_common.FASTEST, ("9.0", "bfloat16", 64, "fwd+bias"), [(512, (128, 32, 8, 3))])
    kernel_common._measured_config.cache_clear()
    assert shape(kernel_common.launch_config(_Kernel, args, "auto", "9.0", HEAD_DIM=64, BAND_BIAS=True)) == (128, 32, 8, 3)
    assert pick("auto", "9.0") == (64, 64, 8, 3)  # the gather kernel keeps its own
    # so does a kernel gathering each term on its own tile ("fwd+oriented": more registers, other configs)
    assert kernel_common.launch_config(_Kernel, args, "auto", "9.0", HEAD_DIM=64, ORIENTED=True) is None
    monkeypatch.setitem(kernel_common.FASTEST, ("9.0", "bfloat16", 64, "fwd+oriented"), [(512, (128, 128, 8, 3))])
    kernel_common._measured_config.cache_clear()
    oriented = kernel_common.launch_config(_Kernel, args, "auto", "9.0", HEAD_DIM=64, ORIENTED=True)
    assert shape(oriented) == (128, 128, 8, 3)
    assert pick("auto", "9.0") == (64, 64, 8, 3)
    monkeypatch.delenv(kernel_common.AUTOTUNE_ENV, raising=False)
    assert kernel_common.autotune_mode() == "auto"
    for value, mode in (("0", "0"), ("1", "1"), ("True", "1"), ("off", "0"), ("auto", "auto")):
        monkeypatch.setenv(kernel_common.AUTOTUNE_ENV, value)
        assert kernel_common.autotune_mode() == mode
    monkeypatch.setenv(kernel_common.AUTOTUNE_ENV, "fast")
    with pytest.raises(ValueError, match="DEBERTA_FAST_TRITON_AUTOTUNE must be 1, 0 or auto, got 'fast'"):
        kernel_common.autotune_mode()


def test_every_kernel_names_itself_for_the_table():
    from deberta_fast.kernels import attention_bwd, attention_fwd

    names = {attention_fwd._attn_fwd_kernel.deberta_name, attention_bwd._dkdv_kernel.deberta_name,
             attention_bwd._dq_kernel.deberta_name}
    assert names == {"fwd", "dkdv", "dq"}


@pytest.mark.parametrize("band", ["gather", "oriented", "bias"])
def test_tuning_script_smoke(tmp_path, band):
    """bench/tune_triton.py end to end on the CPU under the interpreter (one config per kernel), then the
    generator, which leaves a run without a GPU capability out. The gather run first compiles in two worker
    processes (--jobs 2), which must finish cleanly."""
    out = tmp_path / "tune.json"
    jobs = ["--jobs", "2"] if band == "gather" else []
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tune_triton.py"), "--device", "cpu", "--dtype", "float32",
         "--head-dims", "32", "--seqlens", "24", "--tokens", "24", "--heads", "2", "--buckets", "4",
         "--max-rel", "8", "--rep", "1", "--warmup", "0", "--band", band, "--out", str(out), *jobs],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compile worker" not in proc.stderr, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    suffix = "" if band == "gather" else f"+{band}"
    assert sorted(r["kernel"] for r in rows) == sorted(k + suffix for k in ("dkdv", "dkdv+dq", "dq", "fwd"))
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and r["prune_first"] for r in rows)
    assert _load("make_tuned.py").fastest_table([json.loads(out.read_text())]) == {}

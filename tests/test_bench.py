"""The benchmark scripts run end to end on tiny CPU shapes (so they cannot rot between GPU runs), check their
providers before timing, and write JSON that the report turns into tables."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deberta_fast.cli import main

BENCH = Path(__file__).resolve().parents[1] / "bench"
pytest.importorskip("transformers")


def run(script, *args):
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_attention_benchmark_smoke(tmp_path):
    out = tmp_path / "attention.json"
    run("attention.py", "--seqlens", "48", "--tokens", "96", "--heads", "2", "--head-dim", "16", "--buckets", "8",
        "--max-rel", "32", "--modes", "fwd,fwd_bwd", "--rep", "1", "--warmup", "0", "--padded",
        "--op-providers", "df-torch,sdpa-bias,sdpa-floor,df-torch-plain", "--layer-providers", "hf-eager,df-torch",
        "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    by = {(r["level"], r["provider"], r["mode"]): r for r in rows}
    for key in [("op", "df-torch", "fwd"), ("op", "sdpa-bias", "fwd_bwd"), ("op", "sdpa-floor", "fwd"),
                ("layer", "hf-eager", "fwd_bwd"), ("layer", "df-torch", "fwd")]:
        assert by[key]["status"] == "ok", by[key]
        assert by[key]["median_ms"] > 0 and by[key]["tflops"] > 0
    assert by[("layer", "hf-eager", "fwd")]["max_err"] < 1e-4  # transformers checked against the reference
    # the plain-attention provider is checked against plain attention (not the disentangled reference)
    for mode in ("fwd", "fwd_bwd"):
        row = by[("op", "df-torch-plain", mode)]
        assert row["status"] == "ok" and row["max_err"] < 1e-4, row
    report = run("report.py", str(out))
    assert "op level, fwd" in report and "df-torch" in report


def test_report_tables_the_cpu_model_and_tokenizer_runs():
    """`deberta-fast bench` runs cpu-model first: its JSON, and the tokenizer's, get tables too, not a header alone."""
    results = BENCH / "results"
    cpu, tok = (json.loads((results / name).read_text()) for name in ("cpu_model.json", "tokenizer_cpu.json"))
    report = run("report.py", str(results / "cpu_model.json"), str(results / "tokenizer_cpu.json"))
    for row in cpu["rows"]:
        assert f"| {row['provider']} | {row['median_s']:.3g} |" in report
    assert f"speedup vs transformers: {cpu['speedup_vs_transformers']:.2f}x" in report
    for row in tok["results"]:
        assert f"| {row['scenario']} | {row['deberta_fast']['texts_per_s']:.0f} |" in report
    header = next(line for line in report.splitlines() if line.startswith("# tokenizer_cpu.json"))
    assert tok["environment"]["git_sha"] in header and tok["environment"]["torch"] in header  # its "environment"


def test_report_plot_without_matplotlib_says_so():
    """--plot needs matplotlib, which the package does not depend on: a clear usage error, not a traceback
    after the tables."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed here")
    command = [sys.executable, str(BENCH / "report.py"), str(BENCH / "results" / "cpu_model.json"), "--plot"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--plot needs matplotlib" in proc.stderr and "Traceback" not in proc.stderr


def test_attention_benchmark_rejects_unknown_providers(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "attention.py"), "--seqlens", "16", "--op-providers",
                           "df-torch,df-cuda-stagged", "--out", str(tmp_path / "a.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "unknown providers ['df-cuda-stagged']" in proc.stderr, proc.stderr[-3000:]
    assert "df-cuda-staged" in proc.stderr  # the names it knows
    assert not (tmp_path / "a.json").exists()


def test_gpu_suite_names_only_known_providers():
    """Every provider bench/gpu_suite.sh passes to attention.py exists, so a GPU call cannot lose rows to a typo."""
    sys.path.insert(0, str(BENCH))
    try:
        import attention
    finally:
        sys.path.remove(str(BENCH))
    suite = (BENCH / "gpu_suite.sh").read_text()
    lists = re.findall(r"(--op-providers|--layer-providers|providers\+?=)\s*\"?([\w.,-]+)", suite)
    runs = re.findall(r"^\s*op_run \S+ \d+ \w+ [\d,]+ ([\w.,-]+)", suite, re.M)  # op_run LOG LIMIT NAME SEQLENS PROVIDERS
    assert len(runs) == 3, runs
    lists += [("--op-providers", names) for names in runs]
    assert len(lists) >= 15, lists
    for flag, names in lists:
        known = attention.LAYER_PROVIDERS if flag == "--layer-providers" else attention.op_table()
        unknown = [name for name in names.split(",") if name and name not in known]
        assert not unknown, (flag, names)


def test_gpu_suite_pending_step_runs_its_commands(tmp_path):
    """bench/gpu_suite.sh's `pending` step (the first call of a GPU session) with a stand-in python that logs its
    arguments: the build, both GPU test modules in one pytest run, then three benchmark runs (the never-run cuda
    kernels apart from the baseline, each beside the default cuda kernels), in that order and each writing into
    OUTDIR, within the 8 files a device call returns. A shell error here would cost a GPU session; this runs it
    without one."""
    root = tmp_path / "checkout"
    (root / "bench").mkdir(parents=True)
    (root / "deberta_fast").mkdir()
    shutil.copy(BENCH / "gpu_suite.sh", root / "bench")
    calls = tmp_path / "calls.txt"
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=str(python), CALLS=str(calls))
    proc = subprocess.run(["bash", str(root / "bench" / "gpu_suite.sh"), "pending", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "setup.py build_ext --inplace", lines
    tests = [line for line in lines if line.startswith("-m pytest")]
    assert len(tests) == 1 and "tests/test_gpu_triton.py tests/test_gpu_cuda.py" in tests[0], lines
    benches = [line for line in lines if line.startswith("bench/attention.py")]
    assert len(benches) == 3 and lines.index(tests[0]) < lines.index(benches[0]), lines
    assert [re.search(r"--out (\S+)", line).group(1) for line in benches] == [
        str(out / f"attention_cuda_bfloat16_{name}.json") for name in ("pending", "wgmma", "staged")]
    providers = [re.search(r"--op-providers (\S+)", line).group(1).split(",") for line in benches]
    assert {"sdpa-floor", "df-triton", "df-triton-noprefetch", "df-cuda"} <= set(providers[0])
    assert not any("wgmma" in name or "staged" in name for name in providers[0])
    assert all("df-cuda" in run for run in providers[1:])
    assert {name for name in providers[1] if name != "df-cuda"} == {"df-cuda-wgmma", "df-cuda-wgmma-plain"}
    assert all("staged" in name for name in providers[2] if name != "df-cuda")
    log = (out / "bench.log").read_text()
    assert [line.split()[1] for line in log.splitlines() if line.startswith("== ")] == ["pending", "wgmma", "staged"]
    assert len(list(out.iterdir())) <= 8, sorted(p.name for p in out.iterdir())


def test_model_benchmark_smoke(tmp_path):
    out = tmp_path / "model.json"
    run("model.py", "--configs", "tiny", "--seqlens", "32", "--tokens", "64", "--vocab", "300", "--rep", "1",
        "--warmup", "0", "--providers", "transformers,df-torch", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert {(r["provider"], r["task"]) for r in rows if r["status"] == "ok"} == {
        ("transformers", "train"), ("transformers", "infer"), ("df-torch", "train"), ("df-torch", "infer")}
    assert all(r["max_err_vs_transformers"] < 1e-4 for r in rows if r["provider"] == "df-torch")


def test_cli_bench_runs_a_suite(capsys, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"benchmark": "attention", "env": {}, "rows": []}))
    assert main(["bench", "report", str(tmp_path / "r.json")]) == 0


def test_cli_bench_writes_outside_the_recorded_results(tmp_path, monkeypatch, capfd):
    """`deberta-fast bench` points the scripts' default outputs at bench/results/local/ (or
    $DEBERTA_FAST_BENCH_RESULTS), never at the recorded runs; `bench report` alone tables what is there."""
    monkeypatch.setenv("DEBERTA_FAST_BENCH_RESULTS", str(tmp_path))
    recorded = BENCH / "results" / "attention_cpu_float32.json"
    before = recorded.read_bytes()
    assert main(["bench", "attention", "--seqlens", "32", "--tokens", "32", "--heads", "2", "--head-dim", "16",
                 "--buckets", "8", "--max-rel", "32", "--modes", "fwd", "--rep", "1", "--warmup", "0",
                 "--levels", "op", "--op-providers", "df-torch"]) == 0
    assert recorded.read_bytes() == before
    written = json.loads((tmp_path / "attention_cpu_float32.json").read_text())
    assert "DEBERTA_FAST_BENCH_RESULTS" not in written["env"]["settings"]  # where it went is not a setting
    capfd.readouterr()
    assert main(["bench", "report"]) == 0
    assert "op level, fwd" in capfd.readouterr().out
    monkeypatch.setenv("DEBERTA_FAST_BENCH_RESULTS", str(tmp_path / "empty"))
    assert main(["bench", "report"]) == 2
    assert "no benchmark results in" in capfd.readouterr().err


def test_cli_bench_help_goes_to_the_script(capfd):
    assert main(["bench", "attention", "--help"]) == 0
    assert "--op-providers" in capfd.readouterr().out  # the script's own options
    assert main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert "suites:" in out and "cpu-model" in out and "bench/results/local/" in out


def test_skew_probe_compiles_for_sm90():
    """bench/skew_probe.py (a static probe, no GPU) still compiles its in-tile loop for sm_90 with the installed
    Triton; each position term adds code to the plain loop (the probe's subject)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(BENCH / "skew_probe.py"), "--configs", "64x64x8x2"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sass = dict(re.findall(r"\(64, 64, 8, 2\)\s+(\S+)\s.*?sass (\d+)", proc.stdout))
    assert set(sass) == {"none", "c2p", "p2c", "c2p+p2c"}, proc.stdout
    assert int(sass["none"]) < min(int(sass["c2p"]), int(sass["p2c"])) < int(sass["c2p+p2c"]), proc.stdout

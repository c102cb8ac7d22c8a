import subprocess
import sys

import pytest

from deberta_fast.cli import main


def test_info_lists_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch          " in out and "backends:" in out
    assert "  torch    available" in out
    for name in ("triton",):
        assert f"  {name}" in out  # available, or unavailable with its reasons


def test_info_reports_the_cuda_switches(capsys, monkeypatch):
    lines = {}
    for band, tiles, mma in (("", "", ""), ("staged", "64x64", "wgmma")):
        monkeypatch.setenv("DEBERTA_FAST_CUDA_BAND", band)
        monkeypatch.setenv("DEBERTA_FAST_CUDA_FWD_TILES", tiles)
        monkeypatch.setenv("DEBERTA_FAST_CUDA_MMA", mma)
        assert main(["info"]) == 0
        lines[band] = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("cuda switches"))
    assert "band tiles gather" in lines[""] and "forward tiles 128x64" in lines[""]
    assert "products by mma.sync" in lines[""]
    assert "band tiles staged" in lines["staged"] and "forward tiles 64x64" in lines["staged"]
    assert "products by wgmma" in lines["staged"]
    monkeypatch.setenv("DEBERTA_FAST_CUDA_BAND", "xx")  # what the extension refuses at each call
    assert main(["info"]) == 0
    assert "band tiles invalid ('xx': calls will raise)" in capsys.readouterr().out


def test_info_reports_what_auto_means(capsys, monkeypatch):
    for value, want in (("", "auto: chosen per call (DEBERTA_FAST_BACKEND unset)"),
                        ("torch", "torch (DEBERTA_FAST_BACKEND)"),
                        ("nope", "invalid (DEBERTA_FAST_BACKEND='nope' names no backend")):
        monkeypatch.setenv("DEBERTA_FAST_BACKEND", value)
        assert main(["info"]) == 0
        assert f"'auto' means    {want}" in capsys.readouterr().out


def test_unknown_option_shows_the_subcommand_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["parity", "--devcie", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage: deberta-fast parity" in err and "unrecognized arguments: --devcie" in err


def test_version(capsys):
    import deberta_fast

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"deberta-fast {deberta_fast.__version__}"


def test_info_reports_the_triton_settings(capsys, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("DEBERTA_FAST_TRITON_AUTOTUNE", raising=False)
    monkeypatch.setenv("DEBERTA_FAST_TRITON_BACKWARD", "fused")
    monkeypatch.delenv("DEBERTA_FAST_TRITON_BAND", raising=False)
    from deberta_fast.backends import measured

    def settings_line():
        assert main(["info"]) == 0
        return next(row for row in capsys.readouterr().out.splitlines() if row.startswith("triton configs"))

    monkeypatch.setattr(measured, "TRITON_VARIANTS", {})  # nothing timed: auto falls back to the defaults
    line = settings_line()
    assert "autotune auto" in line and "backward fused" in line and "recorded tunings:" in line
    assert "band auto" in line and "timed variants: none (auto: gather / split)" in line
    timed = {("9.0", "bfloat16", 64): {"fwd": [(512, {"gather": 1.0})]}, ("8.0", "float16", 128): {}}
    monkeypatch.setattr(measured, "TRITON_VARIANTS", timed)
    assert "timed variants: sm_80 float16 D128, sm_90 bfloat16 D64" in settings_line()
    monkeypatch.setenv("DEBERTA_FAST_TRITON_BACKWARD", "sideways")
    monkeypatch.setenv("DEBERTA_FAST_TRITON_BAND", "bias")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backward invalid" in out and "band bias" in out


def test_parity_passes_on_cpu(capsys):
    assert main(["parity"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "model vs float64" in out


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "deberta_fast.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "parity" in proc.stdout

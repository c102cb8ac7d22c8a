import subprocess
import sys

from deberta_fast.cli import main


def test_info_lists_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch          " in out and "backends:" in out
    assert "  torch    available" in out
    for name in ("triton",):
        assert f"  {name}" in out  # available, or unavailable with its reasons


def test_parity_passes_on_cpu(capsys):
    assert main(["parity"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "model vs float64" in out


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "deberta_fast.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "parity" in proc.stdout

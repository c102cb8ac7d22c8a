"""Build and install deberta_fast.

The pure-Python package always installs. The optional CUDA extension ``deberta_fast._C`` is added by the
CUDA kernel work; without it the package imports and the torch backend serves every call.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_version() -> str:
    for line in (ROOT / "deberta_fast" / "version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("deberta_fast/version.py has no __version__")


setup(
    name="deberta_fast",
    version=read_version(),
    description="A drop-in, faster DeBERTa-v2/v3 for PyTorch: fused disentangled attention",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    # kernels/ (the Triton kernels) ships as the subpackage deberta_fast.kernels.
    packages=find_packages(include=["deberta_fast", "deberta_fast.*"]) + ["deberta_fast.kernels"],
    package_dir={"deberta_fast.kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy", "sentencepiece", "safetensors"],
    extras_require={"test": ["pytest", "transformers>=4.40"]},
    entry_points={"console_scripts": ["deberta-fast=deberta_fast.cli:main"]},
)

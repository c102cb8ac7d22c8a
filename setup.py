"""Build and install deberta_fast.

The pure-Python package always installs. The optional CUDA extension ``deberta_fast._C`` (csrc/) is built
when torch is importable in the build environment and either a CUDA device is visible or FORCE_CUDA=1:

    pip install -e .                                                   # pure Python (build isolation: no torch)
    FORCE_CUDA=1 pip install --no-build-isolation -e .                 # with the extension, no GPU needed
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=2 python setup.py build_ext --inplace

Knobs: FORCE_CUDA=1 builds without a visible GPU; DEBERTA_FAST_SKIP_CUDA_BUILD=1 never builds; the
architectures come from TORCH_CUDA_ARCH_LIST (default "8.0;9.0"; "+PTX" adds PTX); MAX_JOBS caps parallel
compiles (ninja). CUDA_HOME is the toolkit root holding nvcc (found from PATH when unset). Without the
extension the package imports and works; the cuda backend can also compile it just in time.
torch is imported only when the extension is going to be built.
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
DEFAULT_ARCHS = "8.0;9.0"


def read_version() -> str:
    for line in (ROOT / "deberta_fast" / "version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("deberta_fast/version.py has no __version__")


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def want_cuda_extension() -> bool:
    """Whether to build deberta_fast._C (imports torch only when that is possible at all)."""
    if _flag("DEBERTA_FAST_SKIP_CUDA_BUILD"):
        print("deberta_fast: DEBERTA_FAST_SKIP_CUDA_BUILD=1, not building the CUDA extension")
        return False
    force = _flag("FORCE_CUDA")
    try:
        import torch
    except ImportError:
        if force:
            raise RuntimeError("FORCE_CUDA=1, but torch is not importable here (use pip --no-build-isolation)")
        return False  # e.g. pip's isolated build environment: the pure-Python package
    if torch.version.cuda is None:
        if force:
            raise RuntimeError(f"FORCE_CUDA=1, but torch {torch.__version__} is not a CUDA build")
        return False
    return force or torch.cuda.is_available()


def find_cuda_home() -> str | None:
    """CUDA_HOME, or the toolkit root of the nvcc on PATH (following wrapper scripts' `exec` lines)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        from build_config import find_cuda_home as find  # no torch import
    finally:
        sys.path.pop(0)
    return find()


def cuda_extension():
    """(ext_modules, cmdclass) for deberta_fast._C."""
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        import generate_instantiations
        from build_config import arch_flags, build_flags, parse_arch_list
    finally:
        sys.path.pop(0)
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    generate_instantiations.write()
    archs = parse_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS)
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)  # torch adds no architectures of its own
    cxx, nvcc, include_dirs = build_flags(archs)
    sources = [str(p.relative_to(ROOT)) for p in generate_instantiations.sources(ROOT / "csrc")]
    print(f"deberta_fast: building the CUDA extension for {', '.join(archs)} ({len(sources)} sources)")
    ext = CUDAExtension(
        "deberta_fast._C",
        sources=sources,
        include_dirs=[str(ROOT / "csrc")],
        extra_compile_args={"cxx": cxx + include_dirs, "nvcc": nvcc + arch_flags(archs)},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extension() if want_cuda_extension() else ([], {})

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
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)

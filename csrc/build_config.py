"""How deberta_fast._C is compiled: the CUDA toolkit, architectures and flags (no torch import).

Shared by setup.py and the just-in-time build of the cuda backend (deberta_fast/backends/cuda_backend.py),
so both compile the same sources with the same flags.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

MIN_ARCH = (8, 0)  # cp.async, ldmatrix, mma.sync bf16

CXX_FLAGS = ["-O3", "-DNDEBUG"]  # torch adds the C++ standard it needs
NVCC_FLAGS = ["-O3", "-DNDEBUG", "--use_fast_math", "-lineinfo", "-Xptxas=-O3"]


def _nvcc_target(path: Path) -> Path:
    """Follow a wrapper script (``exec /real/nvcc "$@"``) to the real nvcc."""
    try:
        if path.stat().st_size < 4096:
            text = path.read_text(errors="ignore")
            match = re.search(r"exec\s+(\S*nvcc)\b", text)
            if match and Path(match.group(1)).exists():
                return Path(match.group(1)).resolve()
    except OSError:
        pass
    return path.resolve()


def _is_toolkit(root: Path) -> bool:
    return (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime_api.h").exists()


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, else the root of the nvcc on PATH, else /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(_nvcc_target(Path(nvcc)).parent.parent)
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if _is_toolkit(root):
            return str(root)
    return None


def find_nvcc(cuda_home: str | None = None) -> str | None:
    """nvcc of ``cuda_home`` (or find_cuda_home()), else the one on PATH."""
    home = cuda_home or find_cuda_home()
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def wheel_include_dirs() -> list[str]:
    """Header directories of the NVIDIA CUDA wheels torch depends on (nvidia/cu13/include, ...): they hold
    headers a bare toolkit may lack (cuBLAS, cuSPARSE) and are searched last."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for base in spec.submodule_search_locations:
        for sub in ("cu13", "cu12", "cuda_runtime"):
            include = Path(base) / sub / "include"
            if (include / "cuda_runtime_api.h").exists():
                found.append(str(include))
    return found


def parse_arch_list(spec: str) -> list[str]:
    """``"8.0;9.0"`` / ``"8.0 9.0+PTX"`` -> ["8.0", "9.0+PTX"]. Architectures below sm_80 are rejected."""
    archs = []
    for item in re.split(r"[;,\s]+", spec.strip()):
        if not item:
            continue
        match = re.fullmatch(r"(\d+)\.(\d+)([a-z]?)(\+PTX)?", item)
        if match is None:
            raise ValueError(f"cannot parse CUDA architecture {item!r} in {spec!r} (expected e.g. 8.0 or 9.0+PTX)")
        if (int(match.group(1)), int(match.group(2))) < MIN_ARCH:
            raise ValueError(f"CUDA architecture {item} is not supported: the kernels need sm_80 or newer")
        archs.append(item)
    if not archs:
        raise ValueError(f"no CUDA architecture in {spec!r}")
    return archs


def arch_flags(archs: list[str]) -> list[str]:
    """nvcc -gencode flags: SASS for each architecture, plus PTX where "+PTX" asks for it."""
    flags = []
    for arch in archs:
        base = arch.removesuffix("+PTX")
        num = base.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def archs_tag(archs: list[str]) -> str:
    """A C identifier naming the architectures (compiled into the module as ``cuda_archs``): sm80_sm90ptx."""
    return "_".join("sm" + a.removesuffix("+PTX").replace(".", "") + ("ptx" if a.endswith("+PTX") else "") for a in archs)


def build_flags(archs: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(C++ flags, nvcc flags, C++ include flags) of a build for ``archs``."""
    define = f"-DDEBERTA_FAST_CUDA_ARCHS={archs_tag(archs)}"
    includes = []
    for path in wheel_include_dirs():
        includes += ["-idirafter", path]
    return CXX_FLAGS + [define], NVCC_FLAGS + [define], includes


if __name__ == "__main__":  # `python csrc/build_config.py cuda-home`: the toolkit root (for shell scripts)
    import sys

    if sys.argv[1:] != ["cuda-home"]:
        sys.exit("usage: python csrc/build_config.py cuda-home")
    home = find_cuda_home()
    if home is None:
        sys.exit("no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)")
    print(home)

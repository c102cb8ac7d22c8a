"""The cuda backend: fused disentangled attention in C++/CUDA (``csrc/``, the extension ``deberta_fast._C``).

Ops (namespace ``deberta_fast``, schemas defined in C++ with TORCH_LIBRARY, CUDA kernels with
TORCH_LIBRARY_IMPL; this module registers their fake implementations and the autograd formula):

- ``cuda_attention_fwd(q, k, v, pos_key?, pos_query?, mask?, philox?, buckets, max_rel, scale, dropout_p,
  masked_zero) -> (out, lse)``: out ``[B, H, N, D]`` laid out as ``[B, N, H, D]``, lse ``[B, H, N]`` float32;
- ``cuda_attention_bwd(grad_out, q, k, v, pos_key?, pos_query?, mask?, philox?, out, lse, ...)
  -> (dq, dk, dv, dpos_key, dpos_query)``, the backward as an op (an absent position term's gradient is empty);
- ``cuda_dropout_mask(philox, B, H, N, p)``: the kernels' dropout keep mask (a test hook; CPU and CUDA);
- ``cuda_position_geometry(like, N, buckets, max_rel) -> (table, r_hi, r_lo, unit_steps)``: the index table and
  saturation distances the kernels use, and whether the staged band slabs may serve the setting (a test hook;
  any device);
- ``cuda_wgmma_probe(a, b, rn) -> a b^T or a b`` ([64, 64] float32 from float16 / bfloat16 [64, 64]): the kernels'
  warpgroup-MMA products alone (a test hook; an sm_90a build on an sm_90 GPU).

The same signatures as the triton backend's ops; dropout takes ``philox = [seed, offset]`` drawn from torch's
generator on the device, so ``torch.manual_seed`` reproduces a mask.

Loading. Importing deberta_fast never imports this module; the registry imports it on first use. It then
loads the extension built by setup.py (``deberta_fast._C``) if there is one: loading compiles nothing and
touches no CUDA device. If there is none, the first call on CUDA tensors compiles the extension just in time
(``torch.utils.cpp_extension.load`` with ninja, minutes) into ``~/.cache/deberta_fast/torch_extensions``
(``DEBERTA_FAST_CACHE_DIR`` overrides; ``DEBERTA_FAST_CUDA_JIT=0`` turns this off; ``DEBERTA_FAST_CUDA_PREBUILT=0``
ignores a setup.py build), provided the C++ sources
(a source checkout) and nvcc are present. Whatever prevents it is the backend's reason for not serving a call.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import threading
from pathlib import Path

import torch

from . import register_backend
from .call import AttentionCall
from .fused_ops import draw_philox, fake_backward, fake_forward, register_fused_autograd, run_forward

__all__ = [
    "CudaBackend", "HEAD_DIMS", "SUPPORTED_DTYPES", "draw_philox", "dropout_keep_mask", "extension_status",
    "jit_plan", "load_extension", "position_geometry",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (32, 64, 128)
MIN_CAPABILITY = (8, 0)
JIT_ENV = "DEBERTA_FAST_CUDA_JIT"
CACHE_ENV = "DEBERTA_FAST_CACHE_DIR"
PREBUILT_ENV = "DEBERTA_FAST_CUDA_PREBUILT"  # "0": ignore deberta_fast._C (tests of the just-in-time build)
DEFAULT_JIT_ARCHS = "8.0;9.0"
OPS = ("cuda_attention_fwd", "cuda_attention_bwd", "cuda_dropout_mask", "cuda_position_geometry")

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------------
# The extension: prebuilt, or compiled just in time.


class _State:
    def __init__(self):
        self.lock = threading.RLock()
        self.module = None  # the loaded extension module
        self.origin: str | None = None  # "setup.py build" | "just-in-time build"
        self.prebuilt_error: str | None = None  # deberta_fast._C exists but does not load
        self.jit_error: str | None = None  # the just-in-time build was tried and failed
        self.registered = False


_STATE = _State()


def csrc_dir() -> Path | None:
    """The C++ sources (present in a source checkout / editable install), or None."""
    path = Path(os.environ.get("DEBERTA_FAST_CSRC", REPO / "csrc"))
    return path if (path / "attention.cpp").exists() and (path / "build_config.py").exists() else None


def _csrc_module(name: str):
    """A helper module of csrc/ (build_config, generate_instantiations), imported by path (no torch import)."""
    root = csrc_dir()
    if root is None:
        raise RuntimeError("the C++ sources (csrc/) are not available: install deberta_fast from a source checkout")
    key = f"_deberta_fast_csrc_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def cache_dir() -> Path:
    """Where just-in-time builds go: $DEBERTA_FAST_CACHE_DIR, else $XDG_CACHE_HOME/deberta_fast (~/.cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "deberta_fast" / "torch_extensions"


def _jit_arch(capability: tuple[int, int]) -> str:
    """The architecture a just-in-time build targets for a visible device: its own, with sm_90's arch-specific
    features ("9.0a": warpgroup MMA, DEBERTA_FAST_CUDA_MMA=wgmma) on sm_90, whose code runs there only, as the
    build is for the devices it sees."""
    major, minor = capability
    return f"{major}.{minor}" + ("a" if capability == (9, 0) else "")


def _jit_archs() -> list[str]:
    """TORCH_CUDA_ARCH_LIST, else the visible devices' architectures (:func:`_jit_arch`), else sm_80 and sm_90."""
    build_config = _csrc_module("build_config")
    spec = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not spec and torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        spec = ";".join(_jit_arch(cap) for cap in caps if cap >= MIN_CAPABILITY)
    return build_config.parse_arch_list(spec or DEFAULT_JIT_ARCHS)


def jit_plan() -> dict:
    """What a just-in-time build would do: name, sources, flags, build directory, nvcc (no side effects).

    Raises RuntimeError saying why it cannot be done (no sources, no nvcc, no ninja, a CPU-only torch).
    """
    if os.environ.get(JIT_ENV, "1") == "0":
        raise RuntimeError(f"just-in-time builds are turned off ({JIT_ENV}=0)")
    if torch.version.cuda is None:
        raise RuntimeError(f"torch {torch.__version__} is not a CUDA build")
    build_config = _csrc_module("build_config")
    generate = _csrc_module("generate_instantiations")
    cuda_home = build_config.find_cuda_home()
    nvcc = build_config.find_nvcc(cuda_home)
    if nvcc is None:
        raise RuntimeError("nvcc was not found (set CUDA_HOME or put nvcc on PATH) to compile the extension")
    if shutil.which("ninja") is None:
        raise RuntimeError("ninja is not installed (pip install ninja) to compile the extension")
    archs = _jit_archs()
    cxx, nvcc_flags, includes = build_config.build_flags(archs)
    nvcc_flags = nvcc_flags + build_config.arch_flags(archs)
    root = csrc_dir()
    sources = [str(p) for p in generate.sources(root)]
    digest = hashlib.sha256()
    for item in [torch.__version__, sys.version, nvcc, *archs, *cxx, *nvcc_flags, *includes]:
        digest.update(item.encode())
    for path in sorted(root.rglob("*")):
        if path.suffix in (".cpp", ".cu", ".cuh", ".h"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    name = "deberta_fast_C_" + digest.hexdigest()[:16]
    return dict(
        name=name, sources=sources, archs=archs, cuda_home=cuda_home, nvcc=nvcc,
        extra_cflags=cxx + includes, extra_cuda_cflags=nvcc_flags, extra_include_paths=[str(root)],
        build_directory=str(cache_dir() / name),
    )


def _jit_build(plan: dict):
    import torch.utils.cpp_extension as cpp_extension

    if plan["cuda_home"]:
        os.environ["CUDA_HOME"] = plan["cuda_home"]
        cpp_extension.CUDA_HOME = plan["cuda_home"]  # read when the module was imported
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(plan["archs"])  # torch then adds no architectures of its own
    _csrc_module("generate_instantiations").write()  # a no-op when csrc/generated/ is current
    Path(plan["build_directory"]).mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=plan["name"], sources=plan["sources"], extra_cflags=plan["extra_cflags"],
        extra_cuda_cflags=plan["extra_cuda_cflags"], extra_include_paths=plan["extra_include_paths"],
        build_directory=plan["build_directory"], is_python_module=True,
        verbose=os.environ.get("DEBERTA_FAST_VERBOSE_BUILD", "0") == "1",
    )


def _load_prebuilt():
    if os.environ.get(PREBUILT_ENV, "1") == "0" or importlib.util.find_spec("deberta_fast._C") is None:
        return None
    try:
        return importlib.import_module("deberta_fast._C")
    except Exception as exc:  # built for another torch / CUDA, or broken
        _STATE.prebuilt_error = f"deberta_fast._C does not load ({type(exc).__name__}: {exc})"
        return None


def load_extension(jit: bool = True):
    """The extension module, loading it on first use (the setup.py build, else a just-in-time build when
    ``jit``). Raises RuntimeError with the reason when neither is possible."""
    with _STATE.lock:
        if _STATE.module is None:
            module = _load_prebuilt()
            if module is not None:
                _STATE.module, _STATE.origin = module, "setup.py build"
            elif jit and _STATE.jit_error is None:
                try:
                    _STATE.module = _jit_build(jit_plan())
                    _STATE.origin = "just-in-time build"
                except Exception as exc:
                    _STATE.jit_error = f"{type(exc).__name__}: {exc}"
        if _STATE.module is not None and not _STATE.registered:
            _register_python_side()
            _STATE.registered = True
        if _STATE.module is None:
            raise RuntimeError(_unavailable_reason(jit))
        return _STATE.module


def _unavailable_reason(jit: bool) -> str:
    parts = [_STATE.prebuilt_error or "the extension deberta_fast._C is not built"]
    if _STATE.jit_error is not None:
        parts.append(f"the just-in-time build failed: {_STATE.jit_error}")
    elif not jit:
        try:
            jit_plan()
            parts.append("it is compiled just in time on first use on a CUDA device")
        except Exception as exc:
            parts.append(f"and cannot be compiled just in time: {exc}")
    return "; ".join(parts)


def extension_status() -> dict:
    """For ``deberta-fast info``: whether the extension is built / loaded, for which GPU architectures, and
    whether a just-in-time build is possible (never compiles)."""
    built = importlib.util.find_spec("deberta_fast._C") is not None
    try:
        load_extension(jit=False)
    except RuntimeError:
        pass
    module = _STATE.module
    try:
        plan = jit_plan()
        jit = f"possible (nvcc {plan['nvcc']}; archs {', '.join(plan['archs'])}; cache {cache_dir()})"
    except Exception as exc:
        jit = f"not possible: {exc}"
    return dict(
        built=built,
        loaded=module is not None,
        origin=_STATE.origin,
        archs=_module_archs(module) if module is not None else [],
        error=_STATE.prebuilt_error or _STATE.jit_error,
        jit=jit,
    )


def _module_archs(module) -> list[str]:
    """["sm_80", "sm_90a", "compute_90"] from the module's ``cuda_archs`` tag (sm80_sm90a_sm90ptx)."""
    out = []
    for tag in getattr(module, "cuda_archs", "").split("_"):
        num = tag[2:].removesuffix("ptx")
        if tag.startswith("sm") and num.removesuffix("a").isdigit():
            out.append(f"sm_{num}")
            if tag.endswith("ptx"):
                out.append(f"compute_{num}")
    return out


def _runs_on(archs: list[str], capability: tuple[int, int]) -> bool:
    """Whether code for ``archs`` runs on a device of ``capability`` (SASS: same major, minor <= device's;
    PTX: any newer device; arch-specific "a" targets such as sm_90a: that exact capability only)."""
    for arch in archs:
        kind, num = arch.split("_")
        specific = num.endswith("a")
        num = num.removesuffix("a")
        major, minor = int(num[:-1]), int(num[-1])
        if specific:
            if (major, minor) == capability:
                return True
            continue
        if kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
        if kind == "compute" and (major, minor) <= capability:
            return True
    return False


# ----------------------------------------------------------------------------------------------------
# Fake implementations and autograd (registered once the ops exist).


def _fake_dropout_mask(philox, batch, heads, seq_len, dropout_p):
    return philox.new_empty(batch, heads, seq_len, seq_len, dtype=torch.bool)


def _register_python_side() -> None:
    torch.library.register_fake("deberta_fast::cuda_attention_fwd")(fake_forward)
    torch.library.register_fake("deberta_fast::cuda_attention_bwd")(fake_backward)
    torch.library.register_fake("deberta_fast::cuda_dropout_mask")(_fake_dropout_mask)
    register_fused_autograd("cuda_attention_fwd", "cuda_attention_bwd")


# ----------------------------------------------------------------------------------------------------
# Dropout and position helpers (tests).


def dropout_keep_mask(philox: torch.Tensor, batch: int, heads: int, seq_len: int, dropout_p: float) -> torch.Tensor:
    """Test hook: the bool keep mask ``[batch, heads, seq_len, seq_len]`` the kernels derive from ``philox``
    (on philox's device: CUDA, or the CPU). Replay it with ``torch_attention(call, dropout_mask=...)``."""
    load_extension()
    return torch.ops.deberta_fast.cuda_dropout_mask(philox, batch, heads, seq_len, float(dropout_p))


def position_geometry(like: torch.Tensor, seq_len: int, position_buckets: int, max_relative_positions: int):
    """Test hook: (int32 table ``[2N - 1]``, r_hi, r_lo, unit_steps) as the kernels see them, computed on like's
    device. unit_steps: the rows of the whole cached table (every |i - j| < 65536) step by 0 or 1 per distance,
    which ``DEBERTA_FAST_CUDA_BAND=staged`` needs (elsewhere the kernels gather)."""
    load_extension()
    return torch.ops.deberta_fast.cuda_position_geometry(like, seq_len, position_buckets, max_relative_positions)


# ----------------------------------------------------------------------------------------------------
# The backend.

_CAPABILITY: dict[int, tuple[int, int]] = {}


def _capability(device: torch.device) -> tuple[int, int] | None:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        if torch.compiler.is_compiling():
            return None
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return _CAPABILITY[index]


class CudaBackend:
    """C++/CUDA kernels: CUDA tensors on sm_80+ (A100, H100, ...); float16, bfloat16 (tensor cores) and
    float32 (exact fp32); head dims 32, 64, 128; every feature (position terms, masks, both masked_rows
    modes, dropout)."""

    name = "cuda"
    # tests/test_gpu_cuda.py passed on an H100 (bench/results/h100_2026-11-22/): backend="auto" may pick it,
    # where the recorded benchmarks found it faster (backends/selection.py).
    auto_select = True

    def availability_reasons(self) -> list[str]:
        """Why the backend cannot run at all on this machine (empty if it can). Never compiles."""
        reasons = []
        try:
            load_extension(jit=False)
        except RuntimeError as exc:
            message = str(exc)
            if "compiled just in time on first use" not in message:
                reasons.append(message)
        if not torch.cuda.is_available():
            reasons.append("no CUDA device")
        return reasons

    def auto_reasons(self, call: AttentionCall) -> list[str]:
        """As :meth:`not_supported_reasons`, for backend="auto": never compiles the extension (a build takes
        minutes; naming backend="cuda" once does it)."""
        return self.not_supported_reasons(call, build=False)

    def not_supported_reasons(self, call: AttentionCall, *, build: bool = True) -> list[str]:
        reasons = []
        device = call.device
        if device.type != "cuda":
            reasons.append(f"tensors on {device.type} are not supported (CUDA only)")
        if call.dtype not in SUPPORTED_DTYPES:
            reasons.append(f"dtype {call.dtype} is not supported (float16, bfloat16 or float32)")
        if call.head_dim not in HEAD_DIMS:
            reasons.append(f"head dim {call.head_dim} is not supported (32, 64 or 128)")
        if reasons:
            return reasons
        capability = _capability(device)
        if capability is not None and capability < MIN_CAPABILITY:
            return [f"GPU sm_{capability[0]}{capability[1]} is too old (the kernels need sm_80 or newer)"]
        if _STATE.module is None:
            if torch.compiler.is_compiling():
                return ["the extension is not loaded (use the backend once, or build the model, before torch.compile)"]
            try:
                load_extension(jit=build)
            except RuntimeError as exc:
                return [str(exc)]
        archs = _module_archs(_STATE.module)
        if capability is not None and archs and not _runs_on(archs, capability):
            return [f"the extension was built for {', '.join(archs)}, not for this GPU (sm_{capability[0]}{capability[1]}); "
                    "rebuild with TORCH_CUDA_ARCH_LIST"]
        return []

    def forward(self, call: AttentionCall) -> torch.Tensor:
        return run_forward("cuda_attention_fwd", call)


# Load a setup.py build now (no compiling, no CUDA initialisation), so the ops exist before any
# torch.compile trace; a just-in-time build waits for the first call on a CUDA device.
try:
    load_extension(jit=False)
except RuntimeError:
    pass

register_backend(CudaBackend())

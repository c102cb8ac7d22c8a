"""The backend registry of ``disentangled_attention``.

A backend is an object with

- ``name``: the string users pass as ``backend=``;
- ``not_supported_reasons(call) -> list[str]``: empty when it can serve the call, else why not;
- ``forward(call) -> Tensor``: the attention output ``[B, H, N, D]`` (differentiable);
- optionally ``auto_select = False``: never chosen by ``backend="auto"``, only when named (a backend not
  yet verified on the hardware it targets);
- optionally ``auto_reasons(call)``: the reasons ``backend="auto"`` uses instead of ``not_supported_reasons``
  (the cuda backend's never start a just-in-time build).

Backends are registered explicitly. Those whose modules need optional dependencies (Triton, the compiled
CUDA extension) are registered by module path and imported on first use, so importing deberta_fast never
imports Triton or touches CUDA.
"""

from __future__ import annotations

import importlib
import os
from typing import Protocol

import torch

from . import selection
from .call import AttentionCall

__all__ = [
    "AttentionCall",
    "Backend",
    "BACKEND_ENV",
    "available_backends",
    "backend_names",
    "env_backend",
    "get_backend",
    "prepare_backends",
    "register_backend",
    "select_backend",
]

BACKEND_ENV = "DEBERTA_FAST_BACKEND"


class Backend(Protocol):
    name: str

    def not_supported_reasons(self, call: AttentionCall) -> list[str]: ...

    def forward(self, call: AttentionCall) -> torch.Tensor: ...


class _Unloadable:
    """Stands in for a backend whose module failed to import; it serves nothing and says why."""

    def __init__(self, name: str, error: BaseException):
        self.name = name
        self.error = error

    def not_supported_reasons(self, call: AttentionCall | None = None) -> list[str]:
        return [f"the {self.name} backend could not be loaded: {type(self.error).__name__}: {self.error}"]

    def forward(self, call: AttentionCall) -> torch.Tensor:  # pragma: no cover - guarded by reasons
        raise RuntimeError(self.not_supported_reasons(call)[0])


# name -> backend object, or module path whose import registers it (lazy).
_REGISTRY: dict[str, object] = {}
# Preference on CUDA tensors where no benchmark was recorded (selection.py); other devices use "torch" only.
_CUDA_ORDER = selection.DEFAULT_CUDA_ORDER


def register_backend(backend: Backend | str, name: str | None = None) -> None:
    """Register a backend object, or (with ``name``) a module path imported on first use."""
    if isinstance(backend, str):
        if name is None:
            raise ValueError("register_backend(module_path, name=...) needs the backend's name")
        _REGISTRY.setdefault(name, backend)
    else:
        _REGISTRY[backend.name] = backend


def backend_names() -> list[str]:
    """All registered backend names, loaded or not."""
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name`` (importing its module if needed). ValueError if unknown."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; registered backends: {', '.join(_REGISTRY)} (or 'auto')")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        try:
            with torch.device("cpu"):  # a model built under torch.device("meta") may trigger this import
                importlib.import_module(entry)
        except Exception as exc:  # an optional dependency is missing or broken
            _REGISTRY[name] = _Unloadable(name, exc)
        else:
            if isinstance(_REGISTRY[name], str):
                _REGISTRY[name] = _Unloadable(name, RuntimeError(f"{entry} did not register a backend"))
        entry = _REGISTRY[name]
    return entry  # type: ignore[return-value]


def env_backend() -> str:
    """What ``"auto"`` stands for: the environment variable DEBERTA_FAST_BACKEND, ``"auto"`` where unset or
    empty; ValueError naming the variable if it names no backend."""
    value = os.environ.get(BACKEND_ENV, "auto") or "auto"
    if value != "auto" and value not in _REGISTRY:
        raise ValueError(
            f"{BACKEND_ENV}={value!r} names no backend; registered backends: {', '.join(_REGISTRY)} (or 'auto'); "
            "unset it to let 'auto' choose"
        )
    return value


def _check_name(requested) -> None:
    if not isinstance(requested, str):
        raise ValueError(
            f"backend must be a string, one of {', '.join(_REGISTRY)} or 'auto', got {type(requested).__name__}"
        )


def prepare_backends(requested: str = "auto") -> None:
    """Import the backend modules that calls with ``backend=requested`` may dispatch to.

    Models call this when they are built or switched, so the first forward inside ``torch.compile`` finds
    every backend loaded (dynamo cannot trace an import). Unknown names, and an unknown DEBERTA_FAST_BACKEND
    where ``requested`` is ``"auto"`` (the only name it overrides), raise ValueError here already.
    """
    _check_name(requested)
    names = {requested if requested != "auto" else env_backend()}
    if "auto" in names:
        names.discard("auto")
        if torch.cuda.is_available():  # "auto" uses the fused backends on CUDA tensors only
            names.update(n for n in _CUDA_ORDER if n in _REGISTRY)
    for name in sorted(names):
        get_backend(name)


def available_backends(call: AttentionCall | None = None) -> dict[str, list[str]]:
    """Each backend name mapped to the reasons it cannot serve ``call`` (empty list = available).

    Without a call, reports whether each backend can be used at all on this machine.
    """
    out = {}
    for name in _REGISTRY:
        backend = get_backend(name)
        if call is None:
            probe = getattr(backend, "availability_reasons", None)
            out[name] = list(probe()) if probe is not None else []
            if isinstance(backend, _Unloadable):
                out[name] = backend.not_supported_reasons()
        else:
            out[name] = list(backend.not_supported_reasons(call))
    return out


def _auto_order(call: AttentionCall) -> tuple[str, ...]:
    return selection.cuda_order(call) if call.query.device.type == "cuda" else ("torch",)


def select_backend(call: AttentionCall, requested: str = "auto") -> Backend:
    """The backend that serves ``call``.

    An explicit name must be able to serve the call, else ValueError with its reasons (no silent
    fallback). ``"auto"`` (overridden by the environment variable DEBERTA_FAST_BACKEND) takes the first
    backend able to serve it: on CUDA tensors the fused backend the recorded benchmarks found faster for the
    nearest measured shape first (:mod:`.selection`), else cuda -> triton -> torch; torch elsewhere;
    skipping backends with ``auto_select = False``.
    """
    _check_name(requested)
    if requested == "auto":
        requested = env_backend()
    if requested != "auto":
        backend = get_backend(requested)
        reasons = backend.not_supported_reasons(call)
        if reasons:
            raise ValueError(f"backend {requested!r} cannot serve this call: " + "; ".join(reasons))
        return backend
    tried = []
    for name in _auto_order(call):
        if name not in _REGISTRY:
            continue
        backend = get_backend(name)
        if not getattr(backend, "auto_select", True):
            tried.append(f"{name}: not chosen by 'auto' (select it explicitly)")
            continue
        reasons = getattr(backend, "auto_reasons", backend.not_supported_reasons)(call)
        if not reasons:
            return backend
        tried.append(f"{name}: " + "; ".join(reasons))
    raise ValueError("no backend can serve this call: " + " | ".join(tried))


from . import torch_backend as _torch_backend  # noqa: E402  (registers "torch")

register_backend(_torch_backend.TorchBackend())
register_backend("deberta_fast.backends.triton_backend", name="triton")
register_backend("deberta_fast.backends.cuda_backend", name="cuda")

"""Triton kernels of deberta_fast's fused disentangled attention, shipped as ``deberta_fast.kernels``.

Importing this package imports Triton (never CUDA): the ``triton`` backend imports it on first use. Set
``TRITON_INTERPRET=1`` before it is imported to run the kernels on CPU tensors under Triton's interpreter.

- :mod:`.attention_fwd`: the forward kernel (online softmax, position terms, masks, dropout; O and LSE).
- :mod:`.attention_bwd`: the backward kernels (Delta, dK/dV over key tiles, dQ over query tiles) and the
  GEMMs that turn the position-term gradients into dpos_key / dpos_query.
- :mod:`.dropout`: the counter-based dropout mask shared by both, and a kernel that materializes it (tests).
- :mod:`.common`: tile helpers, the position geometry (saturation distances) and the autotune configs.
- :mod:`.compile_check`: builds the kernels for sm_90 without a GPU and reports ptxas registers / spills.

Environment: ``DEBERTA_FAST_TRITON_AUTOTUNE=0`` launches each kernel's default config (first after the
prune filter) instead of autotuning, e.g. for tests.
"""

if __name__ != "deberta_fast.kernels":  # pragma: no cover - only when a checkout's root is on sys.path
    # Python was started in a checkout, so this directory is importable as a top-level ``kernels`` and
    # shadows any real package of that name (transformers probes for Hugging Face's ``kernels``). Present
    # an empty, file-less package: such probes see no package, and no kernel is defined under this name.
    __file__ = None
    __path__ = []
    __all__ = []
else:
    from .attention_bwd import attention_backward
    from .attention_fwd import attention_forward
    from .common import INTERPRET, position_geometry
    from .dropout import dropout_keep_mask

    __all__ = ["INTERPRET", "attention_backward", "attention_forward", "dropout_keep_mask", "position_geometry"]

"""deberta_fast: a drop-in, faster DeBERTa-v2/v3 for PyTorch.

Importing this package never touches CUDA, imports Triton or compiles anything.
"""

from .attention import disentangled_attention
from .backends import available_backends, get_backend, register_backend
from .positions import log_bucket_position, relative_position_index
from .version import __version__

__all__ = [
    "__version__",
    "available_backends",
    "disentangled_attention",
    "get_backend",
    "log_bucket_position",
    "register_backend",
    "relative_position_index",
]

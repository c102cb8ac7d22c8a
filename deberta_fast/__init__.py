"""deberta_fast: a drop-in, faster DeBERTa-v2/v3 for PyTorch.

Importing this package never touches CUDA, imports Triton or compiles anything.
"""

from .attention import disentangled_attention
from .backends import available_backends, get_backend, register_backend
from .config import DebertaV2Config
from .modeling import (
    DebertaV2ForMaskedLM,
    DebertaV2ForMultipleChoice,
    DebertaV2ForQuestionAnswering,
    DebertaV2ForSequenceClassification,
    DebertaV2ForTokenClassification,
    DebertaV2Model,
    DebertaV2PreTrainedModel,
)
from .positions import log_bucket_position, relative_position_index
from .tokenizer import DebertaV2Tokenizer
from .version import __version__

__all__ = [
    "__version__",
    "available_backends",
    "disentangled_attention",
    "get_backend",
    "log_bucket_position",
    "register_backend",
    "relative_position_index",
    "DebertaV2Config",
    "DebertaV2Model",
    "DebertaV2PreTrainedModel",
    "DebertaV2ForMaskedLM",
    "DebertaV2ForMultipleChoice",
    "DebertaV2ForQuestionAnswering",
    "DebertaV2ForSequenceClassification",
    "DebertaV2ForTokenClassification",
    "DebertaV2Tokenizer",
]

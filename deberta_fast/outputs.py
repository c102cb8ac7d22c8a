"""Model outputs: dataclasses that also index like transformers' ModelOutput (by name, or by position over
the fields that are not None)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = [
    "ModelOutput",
    "BaseModelOutput",
    "MaskedLMOutput",
    "SequenceClassifierOutput",
    "TokenClassifierOutput",
    "QuestionAnsweringModelOutput",
    "MultipleChoiceModelOutput",
]


@dataclass
class ModelOutput:
    def to_tuple(self) -> tuple[Any, ...]:
        """The fields that are not None, in declaration order (what return_dict=False returns)."""
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, item):
        if isinstance(item, str):
            if item not in self.keys():
                raise KeyError(item)
            return getattr(self, item)
        return self.to_tuple()[item]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class BaseModelOutput(ModelOutput):
    """last_hidden_state ``[B, N, hidden]``; hidden_states: embeddings + each layer; attentions ``[B, H, N, N]`` each."""

    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class _LogitsOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MaskedLMOutput(_LogitsOutput):
    """logits ``[B, N, vocab]``; loss: masked-LM cross-entropy (labels -100 ignored)."""


@dataclass
class SequenceClassifierOutput(_LogitsOutput):
    """logits ``[B, num_labels]``."""


@dataclass
class TokenClassifierOutput(_LogitsOutput):
    """logits ``[B, N, num_labels]``."""


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MultipleChoiceModelOutput(_LogitsOutput):
    """logits ``[B, num_choices]``."""

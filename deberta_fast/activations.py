"""Activation functions by the names transformers' configs use (hidden_act, pooler_hidden_act, conv_act)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["get_activation"]


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    # tanh approximation written out as in the original BERT/GPT code (transformers' "gelu_new")
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_python(x: torch.Tensor) -> torch.Tensor:
    # the erf form written out (transformers' "gelu_python"); F.gelu may round differently
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _laplace(x: torch.Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> torch.Tensor:
    # MEGA's Laplace activation: the normal CDF at (x - mu) / sigma
    return 0.5 * (1.0 + torch.erf((x - mu).div(sigma * math.sqrt(2.0))))


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10),
    "gelu_python": _gelu_python,
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    # transformers' "gelu_python_tanh" and "gelu_accurate" write gelu_new's operations (x * 0.5 for 0.5 * x, an exact
    # scaling; an integer cube): the same values, bit for bit
    "gelu_python_tanh": _gelu_new,
    "gelu_accurate": _gelu_new,
    "gelu_fast": _gelu_fast,
    "quick_gelu": _quick_gelu,
    "hardswish": F.hardswish,
    "laplace": _laplace,
    "relu": F.relu,
    "relu2": _relu2,
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
    "linear": lambda x: x,
}
# transformers' activations with learned parameters (they would be weights of the checkpoint): not supported
_WITH_PARAMETERS = ("prelu", "xielu")


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called ``name`` in a transformers config; ValueError if unknown."""
    try:
        return _ACTIVATIONS[name]
    except (KeyError, TypeError):
        if name in _WITH_PARAMETERS:
            raise ValueError(
                f"activation {name!r} has learned parameters, which deberta_fast's models do not hold; supported: "
                f"{', '.join(sorted(_ACTIVATIONS))}"
            ) from None
        raise ValueError(f"unknown activation {name!r}; supported: {', '.join(sorted(_ACTIVATIONS))}") from None

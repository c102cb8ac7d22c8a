"""Activations by the names transformers' configs use, against transformers' own (tests/test_model_parity.py
runs some of them inside models)."""

import pytest
import torch

from deberta_fast.activations import get_activation

activations = pytest.importorskip("transformers.activations")

# transformers 5.25's ACT2FN names, less the two with learned parameters (prelu, xielu)
NAMES = [
    "gelu", "gelu_10", "gelu_fast", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_python_tanh",
    "gelu_accurate", "hardswish", "laplace", "leaky_relu", "linear", "mish", "quick_gelu", "relu", "relu2",
    "relu6", "sigmoid", "silu", "sqrtsoftplus", "swish", "tanh",
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_activation_matches_transformers(name, dtype):
    if name not in activations.ACT2FN:
        pytest.skip(f"this transformers has no {name!r}")
    x = torch.cat([torch.linspace(-30, 30, 1001), torch.randn(1000, generator=torch.Generator().manual_seed(0))])
    x = x.to(dtype)
    want = activations.ACT2FN[name](x)
    got = get_activation(name)(x)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name,match", [("prelu", "has learned parameters"), ("gelu2", "unknown activation 'gelu2'"),
                                        (None, "unknown activation None")])
def test_unsupported_activations_are_named(name, match):
    with pytest.raises(ValueError, match=match):
        get_activation(name)

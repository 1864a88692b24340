"""The public names of the DESIGN.md contract that this foundation provides."""

import importlib

import pytest

import jaxsoftmax

CONTRACT = [
    # Models.
    "linear_init",
    "linear_logits",
    "mlp_init",
    "mlp_logits",
    # Losses.
    "cross_entropy",
    "soft_cross_entropy",
    "binary_cross_entropy",
    "zero_one_loss",
    "penalty",
    # Manual gradients.
    "softmax_regression_loss",
    "softmax_regression_grad",
    "mlp_loss",
    "mlp_grad",
    "naive_jacobian_grad",
    # Very large K.
    "fused_linear_cross_entropy",
]


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_name_importable_from_top_level(name):
  """Pins that each contract name is a documented callable on `jaxsoftmax`."""
  fn = getattr(jaxsoftmax, name)
  assert callable(fn)
  assert fn.__doc__ and fn.__doc__.strip()
  namespace = {}
  exec(f"from jaxsoftmax import {name}", namespace)
  assert namespace[name] is fn


def test_data_load_digits_importable():
  """Pins `jaxsoftmax.data.load_digits` (and the `data` attribute) as public."""
  from jaxsoftmax.data import load_digits

  assert callable(load_digits)
  assert jaxsoftmax.data is importlib.import_module("jaxsoftmax.data")
  assert jaxsoftmax.data.load_digits is load_digits

"""Pure models: softmax regression (linear) and a ReLU MLP. Params are pytrees."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from jaxsoftmax import _numerics
from jaxsoftmax import _validation as v

LinearParams = dict[str, jax.Array]
MLPParams = list[dict[str, jax.Array]]


def linear_init(
    key: jax.Array,
    num_features: int,
    num_classes: int,
    *,
    dtype: DTypeLike = jnp.float32,
) -> LinearParams:
  r"""Parameters of softmax regression, :math:`h = X\Theta + b`.

  :math:`\Theta \sim \mathcal{N}(0, 1/d)` (LeCun normal, so the initial
  logits have unit variance for standardized inputs) and :math:`b = 0`.

  Args:
    key: a ``jax.random`` key.
    num_features: :math:`d`.
    num_classes: :math:`K`.
    dtype: parameter dtype.

  Returns:
    ``{"w": [d, K], "b": [K]}``; ``w`` is the lecture's :math:`\Theta`.

  Examples:
    >>> import jax
    >>> from jaxsoftmax import linear_init
    >>> params = linear_init(jax.random.key(0), 64, 10)
    >>> params["w"].shape, params["b"].shape
    ((64, 10), (10,))
  """
  _check_sizes(num_features=num_features, num_classes=num_classes)
  w = jax.random.normal(key, (num_features, num_classes), dtype)
  return {
      "w": w * jnp.asarray(num_features**-0.5, dtype),
      "b": jnp.zeros((num_classes,), dtype),
  }


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """``x @ w`` accumulated in float32 for half precision, rounded back."""
  dtype = jnp.result_type(x, w)
  acc = _numerics.accumulation_dtype(dtype)
  return jnp.matmul(x, w, preferred_element_type=acc).astype(dtype)


def affine(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """``x @ w + b`` with the bias broadcast explicitly over leading dims.

  Explicit, so the models also run under ``jax_numpy_rank_promotion="raise"``.
  """
  h = _matmul(x, w)
  return h + b.reshape((1,) * (h.ndim - 1) + b.shape)


def linear_logits(params: LinearParams, x: ArrayLike) -> jax.Array:
  r"""Logits of softmax regression, :math:`h = X\Theta + b`.

  Args:
    params: ``{"w": [d, K], "b": [K]}``.
    x: ``[..., d]`` features.

  Returns:
    ``[..., K]`` logits in the common dtype of ``x`` and the params (matmuls
    in half precision accumulate in float32).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import linear_init, linear_logits
    >>> params = linear_init(jax.random.key(0), 4, 3)
    >>> linear_logits(params, jnp.ones((2, 4))).shape
    (2, 3)

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026).
  """
  x = jnp.asarray(x)
  w, b = params["w"], params["b"]
  check_layer("params", w, b)
  v.check_floating("x", x)
  v.check_min_rank("x", x, 1, "[..., num_features]")
  if x.shape[-1] != w.shape[0]:
    raise ValueError(
        f"x must have {w.shape[0]} features (params['w'] is {w.shape});"
        f" got x of shape {x.shape}."
    )
  return affine(x, w, b)


def mlp_init(
    key: jax.Array,
    layer_sizes: Sequence[int],
    *,
    dtype: DTypeLike = jnp.float32,
) -> MLPParams:
  r"""Parameters of a ReLU MLP with layer sizes ``[d, h_1, ..., h_L, K]``.

  Hidden layers (each followed by ReLU) use He initialization,
  :math:`W \sim \mathcal{N}(0, 2/\text{fan\_in})`, which keeps activations'
  second moment constant through ReLUs; the output layer (no ReLU) uses
  Glorot, :math:`\mathcal{N}(0, 2/(\text{fan\_in} + \text{fan\_out}))`.
  Biases start at 0.

  Args:
    key: a ``jax.random`` key.
    layer_sizes: ``[d, h_1, ..., h_L, K]``, at least two entries.
    dtype: parameter dtype.

  Returns:
    A list of ``{"w": [fan_in, fan_out], "b": [fan_out]}``, one per layer.

  Examples:
    >>> import jax
    >>> from jaxsoftmax import mlp_init
    >>> [p["w"].shape for p in mlp_init(jax.random.key(0), [64, 32, 10])]
    [(64, 32), (32, 10)]

  References:
    K. He et al., "Delving deep into rectifiers" (2015); X. Glorot,
    Y. Bengio, "Understanding the difficulty of training deep feedforward
    neural networks" (2010).
  """
  sizes = list(layer_sizes)
  if len(sizes) < 2:
    raise ValueError(
        "layer_sizes must list at least [num_features, num_classes]; got"
        f" {sizes}."
    )
  _check_sizes(**{f"layer_sizes[{i}]": s for i, s in enumerate(sizes)})
  keys = jax.random.split(key, len(sizes) - 1)
  params = []
  for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
    is_output = i == len(sizes) - 2
    var = 2.0 / (fan_in + fan_out) if is_output else 2.0 / fan_in
    w = jax.random.normal(k, (fan_in, fan_out), dtype) * jnp.asarray(
        var**0.5, dtype
    )
    params.append({"w": w, "b": jnp.zeros((fan_out,), dtype)})
  return params


def mlp_logits(params: MLPParams, x: ArrayLike) -> jax.Array:
  r"""Logits of a ReLU MLP.

  .. math::
    M_0 = X, \quad M_l = \operatorname{relu}(M_{l-1} W_l + b_l), \quad
    O = M_L W_{L+1} + b_{L+1}

  Args:
    params: from :func:`mlp_init`.
    x: ``[..., d]`` features.

  Returns:
    ``[..., K]`` logits.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import mlp_init, mlp_logits
    >>> params = mlp_init(jax.random.key(0), [4, 8, 3])
    >>> mlp_logits(params, jnp.ones((2, 4))).shape
    (2, 3)

  References:
    "Multilayer perceptron (MLP)", forward pass (seed 003).
  """
  x = jnp.asarray(x)
  v.check_floating("x", x)
  v.check_min_rank("x", x, 1, "[..., num_features]")
  check_mlp(params, x.shape)
  h = x
  for i, layer in enumerate(params):
    h = affine(h, layer["w"], layer["b"])
    if i < len(params) - 1:
      h = jax.nn.relu(h)
  return h


def check_mlp(params: MLPParams, x_shape: tuple[int, ...]) -> None:
  """Raises unless ``params`` is a non-empty chain of layers that takes ``x``."""
  if not params:
    raise ValueError("params must hold at least one layer; got [].")
  width = x_shape[-1]
  for i, layer in enumerate(params):
    check_layer(f"params[{i}]", layer["w"], layer["b"])
    if i == 0 and layer["w"].shape[0] != width:
      raise ValueError(
          f"x must have {layer['w'].shape[0]} features (params[0]['w'] is"
          f" {layer['w'].shape}); got x of shape {x_shape}."
      )
    if layer["w"].shape[0] != width:
      raise ValueError(
          f"params[{i}]['w'] has shape {layer['w'].shape}, which does not"
          f" take inputs of width {width}."
      )
    width = layer["w"].shape[1]


def check_layer(name: str, w: jax.Array, b: jax.Array) -> None:
  v.check_floating(f"{name}['w']", w)
  v.check_rank(f"{name}['w']", w, 2, "[fan_in, fan_out]")
  v.check_same_shape(f"{name}['b']", b, (w.shape[1],), "[fan_out]")


def _check_sizes(**sizes: int) -> None:
  for name, size in sizes.items():
    if not isinstance(size, int) or size < 1:
      raise ValueError(f"{name} must be a positive int; got {size!r}.")

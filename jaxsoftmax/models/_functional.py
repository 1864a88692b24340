"""Pure models: softmax regression (linear) and a ReLU MLP. Params are pytrees.

Softmax regression also takes bag-of-words features as a
``jax.experimental.sparse.BCOO`` matrix; the MLP takes optional inverted
dropout on its hidden activations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.experimental import sparse
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike
import numpy as np

from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax._core import validation as v

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


def _matmul(x: jax.Array | sparse.BCOO, w: jax.Array) -> jax.Array:
  """``x @ w`` accumulated in float32 for half precision, rounded back.

  A BCOO ``x`` is contracted through its stored entries only, never
  densified: a bag-of-words batch costs its non-zeros, not ``B * d``.
  """
  if isinstance(x, sparse.BCOO):
    dtype = jnp.result_type(x.dtype, w)
    acc = _numerics.accumulation_dtype(dtype)
    h = sparse.bcoo_dot_general(
        x.astype(dtype),
        w.astype(dtype),
        dimension_numbers=(([x.ndim - 1], [0]), ([], [])),
        preferred_element_type=acc,
    )
    return h.astype(dtype)
  dtype = jnp.result_type(x, w)
  acc = _numerics.accumulation_dtype(dtype)
  return jnp.matmul(x, w, preferred_element_type=acc).astype(dtype)


def affine(x: jax.Array | sparse.BCOO, w: jax.Array, b: jax.Array) -> jax.Array:
  """``x @ w + b`` with the bias broadcast explicitly over leading dims.

  Explicit, so the models also run under ``jax_numpy_rank_promotion="raise"``.
  """
  h = _matmul(x, w)
  return h + b.reshape((1,) * (h.ndim - 1) + b.shape)


def linear_logits(
    params: LinearParams, x: ArrayLike | sparse.BCOO
) -> jax.Array:
  r"""Logits of softmax regression, :math:`h = X\Theta + b`.

  ``x`` may be a ``jax.experimental.sparse.BCOO`` matrix (bag-of-words or
  one-hot features): the product then runs over the stored entries, so
  memory and time scale with the number of non-zeros, not with ``B * d``.

  Args:
    params: ``{"w": [d, K], "b": [K]}``.
    x: ``[..., d]`` features, dense or BCOO.

  Returns:
    ``[..., K]`` dense logits in the common dtype of ``x`` and the params
    (matmuls in half precision accumulate in float32).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.experimental import sparse
    >>> from jaxsoftmax import linear_init, linear_logits
    >>> params = linear_init(jax.random.key(0), 4, 3)
    >>> linear_logits(params, jnp.ones((2, 4))).shape
    (2, 3)
    >>> bag = sparse.BCOO.fromdense(jnp.array([[0.0, 2.0, 0.0, 1.0]]))
    >>> linear_logits(params, bag).shape
    (1, 3)

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026);
    "Training multinomial logistic regression at scale", sparse features
    (textbook chapter).
  """
  if not isinstance(x, sparse.BCOO):
    x = jnp.asarray(x)
  w, b = layer_arrays("params", params)
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


def mlp_logits(
    params: MLPParams,
    x: ArrayLike,
    *,
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
) -> jax.Array:
  r"""Logits of a ReLU MLP, with optional inverted dropout on hidden units.

  .. math::
    M_0 = X, \quad M_l = \operatorname{relu}(M_{l-1} W_l + b_l) \odot
      \frac{D_l}{1 - p}, \quad O = M_L W_{L+1} + b_{L+1}

  where :math:`D_l` holds independent :math:`\operatorname{Bernoulli}(1 - p)`
  draws, one per hidden unit and example, and :math:`p` is
  ``dropout_rate``. Scaling the kept units by :math:`1/(1 - p)` keeps each
  activation's expectation unchanged, so evaluation needs no rescaling. With
  ``key=None`` or ``dropout_rate=0`` (the evaluation path) :math:`D_l / (1 - p)`
  is 1 and nothing random happens. Neither the input nor the logits are
  dropped. The masks of all hidden layers are sliced from one
  ``jax.random.bernoulli`` draw with ``key``, so :func:`mlp_value_and_grad`
  given the same key drops the same units.

  Args:
    params: from :func:`mlp_init`.
    x: ``[..., d]`` features.
    dropout_rate: :math:`p \in [0, 1)`, the probability of dropping a hidden
      unit; a static Python float.
    key: a ``jax.random`` key for the dropout masks; ``None`` disables
      dropout.

  Returns:
    ``[..., K]`` logits.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import mlp_init, mlp_logits
    >>> params = mlp_init(jax.random.key(0), [4, 8, 3])
    >>> mlp_logits(params, jnp.ones((2, 4))).shape
    (2, 3)
    >>> mlp_logits(params, jnp.ones((2, 4)), dropout_rate=0.5,
    ...            key=jax.random.key(1)).shape
    (2, 3)

  References:
    "Multilayer perceptron (MLP)", forward pass and dropout (blog post, 2024);
    N. Srivastava et al., "Dropout: a simple way to prevent neural networks
    from overfitting", JMLR 15 (2014).
  """
  check_dense("x", x)
  x = jnp.asarray(x)
  v.check_floating("x", x)
  v.check_min_rank("x", x, 1, "[..., num_features]")
  check_mlp(params, x.shape)
  keeps = dropout_masks(params, x.shape, dropout_rate, key)
  h = x
  for i, layer in enumerate(params):
    h = affine(h, layer["w"], layer["b"])
    if i < len(params) - 1:
      h = jax.nn.relu(h)
      if keeps is not None:
        h = dropout(h, keeps[i], dropout_rate)
  return h


def dropout_masks(
    params: MLPParams,
    x_shape: tuple[int, ...],
    dropout_rate: float,
    key: jax.Array | None,
) -> list[jax.Array] | None:
  """Checks the dropout options; the hidden layers' keep masks, or None.

  Returns one boolean ``[..., h_l]`` mask per hidden layer, or None on the
  evaluation path (``key=None`` or ``dropout_rate=0``).
  """
  v.check_rate("dropout_rate", dropout_rate)
  if key is None:
    return None
  v.check_prng_key("key", key)
  if dropout_rate == 0:
    return None
  widths = [layer["w"].shape[1] for layer in params[:-1]]
  # One draw sliced per layer rather than one per layer: each draw inlines
  # its own copy of the PRNG into the compiled program, and on CPU that
  # copy dominates the compile time of a small MLP.
  keep = jax.random.bernoulli(
      key, 1.0 - dropout_rate, (*x_shape[:-1], sum(widths))
  )
  return jnp.split(keep, np.cumsum(widths)[:-1].tolist(), axis=-1)


def dropout(h: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
  """Inverted dropout: the kept units of ``h`` scaled by ``1 / (1 - rate)``."""
  return jnp.where(keep, h / (1.0 - rate), jnp.zeros_like(h))


def check_mlp(params: MLPParams, x_shape: tuple[int, ...]) -> None:
  """Raises unless ``params`` is a non-empty chain of layers that takes ``x``."""
  if not params:
    raise ValueError("params must hold at least one layer; got [].")
  width = x_shape[-1]
  for i, layer in enumerate(params):
    check_layer(f"params[{i}]", *layer_arrays(f"params[{i}]", layer))
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


def check_dense(name: str, x: object) -> None:
  """Raises for a BCOO matrix where only dense arrays are supported."""
  if isinstance(x, sparse.BCOO):
    raise TypeError(
        f"{name} must be a dense array here; got a BCOO sparse matrix of"
        f" shape {x.shape}. Sparse features are supported by linear_logits"
        " and softmax_regression_loss / _grad / _value_and_grad."
    )


def layer_arrays(name: str, layer: Any) -> tuple[Any, Any]:
  """``(layer["w"], layer["b"])``; a clear error for any other layout."""
  if not isinstance(layer, Mapping):
    raise TypeError(
        f"{name} must be a dict {{'w': [fan_in, fan_out], 'b': [fan_out]}}"
        f" (as linear_init makes); got {type(layer).__name__}."
    )
  missing = [k for k in ("w", "b") if k not in layer]
  if missing:
    raise ValueError(
        f"{name} must hold 'w' [fan_in, fan_out] and 'b' [fan_out] (as"
        f" linear_init makes); it has {sorted(layer)}, missing {missing}."
    )
  return layer["w"], layer["b"]


def check_layer(name: str, w: jax.Array, b: jax.Array) -> None:
  v.check_floating(f"{name}['w']", w)
  v.check_rank(f"{name}['w']", w, 2, "[fan_in, fan_out]")
  v.check_same_shape(f"{name}['b']", b, (w.shape[1],), "[fan_out]")


def _check_sizes(**sizes: int) -> None:
  for name, size in sizes.items():
    if not isinstance(size, int) or size < 1:
      raise ValueError(f"{name} must be a positive int; got {size!r}.")

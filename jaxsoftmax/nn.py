"""Flax NNX modules around the pure models, to train with ``nnx.Optimizer``.

Each module holds exactly the arrays of :func:`~jaxsoftmax.linear_init` /
:func:`~jaxsoftmax.mlp_init` as ``nnx.Param`` variables, and its ``params``
property hands them back as that plain pytree, so the forward pass is the
library's pure function and the ``loss`` method is the library's loss (with
its hand-derived backward rules). ``nnx.grad`` of ``loss`` therefore equals
the manual gradients of :func:`~jaxsoftmax.softmax_regression_grad` and
:func:`~jaxsoftmax.mlp_grad`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from jaxsoftmax.models import _gradients
from jaxsoftmax.models import _functional as _models
from jaxsoftmax._core import validation as v


class SoftmaxRegression(nnx.Module):
  r"""Softmax regression, :math:`h = X\Theta + b`, as an NNX module.

  The parameters are ``self.w`` (:math:`\Theta`, ``[d, K]``) and ``self.b``
  (``[K]``), initialized by :func:`~jaxsoftmax.linear_init` from
  ``rngs.params()``. The forward pass is :func:`~jaxsoftmax.linear_logits`,
  so ``x`` may also be a ``jax.experimental.sparse.BCOO`` matrix.

  Args:
    num_features: :math:`d`.
    num_classes: :math:`K`.
    dtype: parameter dtype.
    rngs: an ``nnx.Rngs`` with a ``params`` (or ``default``) stream.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxsoftmax.nn import SoftmaxRegression
    >>> model = SoftmaxRegression(4, 3, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 4))).shape
    (2, 3)
    >>> model.loss(jnp.ones((2, 4)), jnp.array([0, 2]), l2=1e-3).shape
    ()

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026).
  """

  def __init__(
      self,
      num_features: int,
      num_classes: int,
      *,
      dtype: DTypeLike = jnp.float32,
      rngs: nnx.Rngs,
  ):
    params = _models.linear_init(
        rngs.params(), num_features, num_classes, dtype=dtype
    )
    self.w = nnx.Param(params["w"])
    self.b = nnx.Param(params["b"])

  @property
  def params(self) -> _models.LinearParams:
    """The parameters as the pytree of ``linear_init``: ``{"w", "b"}``."""
    return {"w": self.w[...], "b": self.b[...]}

  def __call__(self, x: ArrayLike) -> jax.Array:
    """``[..., K]`` logits of ``[..., d]`` features."""
    return _models.linear_logits(self.params, x)

  def loss(self, x: ArrayLike, labels: ArrayLike, **kwargs: Any) -> jax.Array:
    """:func:`~jaxsoftmax.softmax_regression_loss` at these parameters.

    Args:
      x: ``[B, d]`` features, dense or BCOO.
      labels: ``[B]`` integer labels.
      **kwargs: ``l1``, ``l2``, ``class_weights``.

    Returns:
      A scalar.
    """
    return _gradients.softmax_regression_loss(self.params, x, labels, **kwargs)


class MLP(nnx.Module):
  r"""A ReLU MLP with optional dropout on hidden units, as an NNX module.

  ``self.layers[i]["w"]`` and ``self.layers[i]["b"]`` are the ``nnx.Param``
  arrays of :func:`~jaxsoftmax.mlp_init` (He init for hidden layers, Glorot
  for the output), drawn from ``rngs.params()``. The forward pass is
  :func:`~jaxsoftmax.mlp_logits` with inverted dropout of rate
  ``dropout_rate`` on the hidden activations while the module is in training
  mode (the default, as for ``nnx.Dropout``); ``model.eval()`` (or
  ``nnx.view(model, deterministic=True)``) turns dropout off and
  ``model.train()`` back on. Each call in training mode draws a fresh key from
  the module's own fork of the ``dropout`` stream of ``rngs``, whose state
  ``nnx.jit`` carries across steps.

  Args:
    layer_sizes: ``[d, h_1, ..., h_L, K]``.
    dropout_rate: probability of dropping a hidden unit, in ``[0, 1)``.
    dtype: parameter dtype.
    rngs: an ``nnx.Rngs`` with a ``params`` stream and, when
      ``dropout_rate > 0``, a ``dropout`` stream (or a ``default`` one).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxsoftmax.nn import MLP
    >>> model = MLP([4, 8, 3], dropout_rate=0.5, rngs=nnx.Rngs(0))
    >>> model.eval()  # no dropout; model.train() turns it back on
    >>> model(jnp.ones((2, 4))).shape
    (2, 3)

  References:
    "Multilayer perceptron (MLP)" (blog post, 2024); N. Srivastava et al., "Dropout:
    a simple way to prevent neural networks from overfitting", JMLR 15
    (2014).
  """

  def __init__(
      self,
      layer_sizes: Sequence[int],
      *,
      dropout_rate: float = 0.0,
      dtype: DTypeLike = jnp.float32,
      rngs: nnx.Rngs,
  ):
    v.check_rate("dropout_rate", dropout_rate)
    params = _models.mlp_init(rngs.params(), layer_sizes, dtype=dtype)
    self.layers = nnx.List(
        nnx.Dict(w=nnx.Param(layer["w"]), b=nnx.Param(layer["b"]))
        for layer in params
    )
    self.dropout_rate = dropout_rate
    self.deterministic = False
    # Without dropout no stream is needed, so rngs may hold only "params".
    self.rngs = rngs.dropout.fork() if dropout_rate else nnx.data(None)

  @property
  def params(self) -> _models.MLPParams:
    """The parameters as the pytree of ``mlp_init``: a list of {"w", "b"}."""
    return [
        {"w": layer["w"][...], "b": layer["b"][...]} for layer in self.layers
    ]

  def set_view(self, deterministic: bool | None = None) -> None:
    """Used by ``nnx.view``: ``deterministic=True`` turns dropout off."""
    if deterministic is not None:
      self.deterministic = deterministic

  def _dropout_key(self) -> jax.Array | None:
    if self.deterministic or not self.dropout_rate:
      return None
    return self.rngs()

  def __call__(self, x: ArrayLike) -> jax.Array:
    """``[..., K]`` logits of ``[..., d]`` features (dropout when training)."""
    return _models.mlp_logits(
        self.params, x, dropout_rate=self.dropout_rate, key=self._dropout_key()
    )

  def loss(self, x: ArrayLike, labels: ArrayLike, **kwargs: Any) -> jax.Array:
    """:func:`~jaxsoftmax.mlp_loss` at these parameters, with this dropout.

    Args:
      x: ``[B, d]`` features.
      labels: ``[B]`` integer labels.
      **kwargs: ``l1``, ``l2``, ``class_weights``.

    Returns:
      A scalar.
    """
    return _gradients.mlp_loss(
        self.params,
        x,
        labels,
        dropout_rate=self.dropout_rate,
        key=self._dropout_key(),
        **kwargs,
    )

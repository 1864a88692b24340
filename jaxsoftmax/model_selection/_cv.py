"""Cross-validation, elastic-net grids, regularization paths and weight
sparsity (see :mod:`jaxsoftmax.model_selection`)."""

from __future__ import annotations

import functools

from collections.abc import Mapping, Sequence

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from jaxsoftmax.losses import _dense as _losses
from jaxsoftmax.models import _functional as _models
from jaxsoftmax._core import numerics as _numerics

from jaxsoftmax._core import validation as v
from jaxsoftmax.model_selection._trainer import (
    TrainConfig,
    _check_config,
    _check_problem,
    _check_train_idx,
    _evaluate,
    _strengths,
    _train,
)


def kfold_indices(
    key: jax.Array, num_examples: int, num_folds: int
) -> tuple[jax.Array, jax.Array]:
  r"""Row indices of a shuffled k-fold split, every fold the same size.

  A random permutation of the :math:`n` rows is cut into :math:`k` folds of
  :math:`f = \lfloor n / k \rfloor` rows; fold :math:`j` is held out and the
  other :math:`k - 1` train. The :math:`n \bmod k` rows left over take part
  in no fold: equal sizes give every fold the same shapes, so the folds can
  be trained side by side under ``jax.vmap``. Not stratified.

  Args:
    key: a ``jax.random`` key.
    num_examples: :math:`n`.
    num_folds: :math:`k \ge 2`, at most :math:`n`.

  Returns:
    ``(train, held_out)``: ``[k, (k - 1) f]`` and ``[k, f]`` int32 row
    indices. Each row appears in one ``held_out`` fold at most, and row
    :math:`j` of ``train`` is the union of the other folds.

  Examples:
    >>> import jax
    >>> from jaxsoftmax.model_selection import kfold_indices
    >>> train, held_out = kfold_indices(jax.random.key(0), 10, 3)
    >>> train.shape, held_out.shape
    ((3, 6), (3, 3))
  """
  v.check_prng_key("key", key)
  v.check_positive_int("num_examples", num_examples)
  v.check_positive_int("num_folds", num_folds)
  if not 2 <= num_folds <= num_examples:
    raise ValueError(
        f"num_folds must lie in [2, num_examples={num_examples}]; got"
        f" {num_folds}."
    )
  fold = num_examples // num_folds
  perm = jax.random.permutation(key, num_examples)[: num_folds * fold]
  folds = perm.reshape(num_folds, fold).astype(jnp.int32)
  train = jnp.stack([
      jnp.roll(folds, -j - 1, axis=0)[:-1].reshape(-1)
      for j in range(num_folds)
  ])
  return train, folds


def elastic_net_grid(
    strengths: Sequence[float] | np.ndarray, l1_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
  r"""Per-strength ``(l1, l2)`` of an elastic net with a fixed mixing ratio.

  scikit-learn's and glmnet's parametrization,
  :math:`\alpha \bigl(r \|\Theta\|_1 + \tfrac{1 - r}{2} \|\Theta\|_2^2
  \bigr)`, in the ``l1``/``l2`` of :func:`jaxsoftmax.penalty`:

  .. math::
    \lambda_1 = r \alpha, \qquad \lambda_2 = (1 - r) \alpha .

  :math:`r = 1` is the lasso (L1), :math:`r = 0` ridge (L2).

  Args:
    strengths: :math:`\alpha \ge 0`, ``[num_strengths]`` (e.g.
      ``np.logspace(-6, -1, 11)``).
    l1_ratio: :math:`r \in [0, 1]`.

  Returns:
    ``(l1, l2)``, ``[num_strengths]`` float64 NumPy arrays each (a grid is
    configuration, built on the host).

  Examples:
    >>> from jaxsoftmax.model_selection import elastic_net_grid
    >>> l1, l2 = elastic_net_grid([0.1, 1.0], 0.5)
    >>> l1.tolist(), l2.tolist()
    ([0.05, 0.5], [0.05, 0.5])

  References:
    H. Zou, T. Hastie, "Regularization and variable selection via the
    elastic net", JRSS B 67 (2005).
  """
  strengths = np.asarray(strengths, np.float64)
  v.check_rank("strengths", strengths, 1, "[num_strengths]")
  v.check_nonnegative("strengths", strengths)
  if not isinstance(l1_ratio, (int, float)) or not 0.0 <= l1_ratio <= 1.0:
    raise ValueError(f"l1_ratio must be a number in [0, 1]; got {l1_ratio!r}.")
  return l1_ratio * strengths, (1.0 - l1_ratio) * strengths


def regularization_path(
    params: _models.LinearParams,
    x: ArrayLike,
    labels: ArrayLike,
    key: jax.Array,
    config: TrainConfig,
    *,
    l1: ArrayLike = 0.0,
    l2: ArrayLike = 0.0,
    train_idx: ArrayLike | None = None,
) -> _models.LinearParams:
  r"""One model per penalty strength, all trained at once under ``jax.vmap``.

  Model :math:`s` minimizes the objective with :math:`(\lambda_1^{(s)},
  \lambda_2^{(s)})` from the same start, with the same ``key`` and hence
  the same minibatches (common random numbers: differences between
  strengths are the penalty's, not the shuffle's). See
  :func:`train_softmax_regression` for the training itself.

  Args:
    params: the common start, ``{"w": [d, K], "b": [K]}``.
    x: ``[n, d]`` features.
    labels: ``[n]`` integer labels in ``[0, K)``.
    key: a ``jax.random`` key.
    config: a :class:`TrainConfig`.
    l1: :math:`\lambda_1`, a scalar or ``[S]``.
    l2: :math:`\lambda_2`, a scalar or ``[S]`` (a scalar is shared by all
      strengths).
    train_idx: ``[m]`` rows to train on; ``None`` for all.

  Returns:
    Stacked params, ``{"w": [S, d, K], "b": [S, K]}``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax.model_selection import TrainConfig, regularization_path
    >>> x = jax.random.normal(jax.random.key(1), (32, 3))
    >>> y = (x[:, 0] > 0).astype(jnp.int32)
    >>> start = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    >>> path = regularization_path(start, x, y, jax.random.key(2),
    ...                            TrainConfig(epochs=2, batch_size=8),
    ...                            l2=jnp.array([0.0, 0.1, 1.0]))
    >>> path["w"].shape
    (3, 3, 2)
  """
  _check_config(config)
  x, labels = _check_problem(params, x, labels)
  v.check_prng_key("key", key)
  train_idx = _check_train_idx(train_idx, x.shape[0], config.batch_size)
  l1, l2 = _strengths(l1, l2)
  return _path(params, x, labels, train_idx, key, l1, l2, config)


def _path(params, x, labels, train_idx, key, l1, l2, config):
  train = functools.partial(_train, config=config)
  return jax.vmap(
      train, in_axes=(None, None, None, None, None, 0, 0, None)
  )(params, x, labels, train_idx, key, l1, l2, config.learning_rate)


class CrossValidation(NamedTuple):
  """Held-out scores of every penalty strength on every fold.

  Attributes:
    l1: ``[S]`` L1 strengths.
    l2: ``[S]`` L2 strengths.
    loss: ``[S, k]`` held-out mean cross-entropy (no penalty), NaN where
      training diverged.
    accuracy: ``[S, k]`` held-out accuracy.
  """

  l1: jax.Array
  l2: jax.Array
  loss: jax.Array
  accuracy: jax.Array

  @property
  def mean_loss(self) -> jax.Array:
    """``[S]``: the CV estimate of the held-out cross-entropy."""
    return jnp.mean(self.loss, axis=1)

  @property
  def std_loss(self) -> jax.Array:
    """``[S]``: the spread of the held-out loss over folds."""
    return jnp.std(self.loss, axis=1)

  @property
  def mean_accuracy(self) -> jax.Array:
    """``[S]``: the CV estimate of the accuracy."""
    return jnp.mean(self.accuracy, axis=1)

  @property
  def best(self) -> int:
    """Index of the strength with the lowest mean held-out loss (host only).

    The log-loss rather than the accuracy: a proper scoring rule, smooth in
    the strength, so neighbouring grid points are not tied.
    """
    mean = np.asarray(self.mean_loss)
    if not np.isfinite(mean).any():
      raise ValueError("every strength diverged on some fold; no best one.")
    return int(np.nanargmin(np.where(np.isfinite(mean), mean, np.nan)))


def cross_validate(
    params: _models.LinearParams,
    x: ArrayLike,
    labels: ArrayLike,
    key: jax.Array,
    config: TrainConfig,
    *,
    l1: ArrayLike = 0.0,
    l2: ArrayLike = 0.0,
    num_folds: int = 5,
) -> CrossValidation:
  r"""k-fold cross-validation of a grid of penalty strengths.

  The rows are split by :func:`kfold_indices`; on each fold :math:`j` a
  :func:`regularization_path` is trained on the other folds and scored on
  fold :math:`j` by :func:`evaluate_linear`. All :math:`S \times k` models
  train in one program (``vmap`` over folds and strengths), every strength
  on the same minibatches within a fold. The CV estimate of strength
  :math:`s` is

  .. math::
    \widehat{\mathrm{CV}}(s) = \frac{1}{k} \sum_{j=1}^{k}
      \frac{1}{|F_j|} \sum_{i \in F_j} \ell_{ce}\bigl(h^{(s, -j)}(x_i),
      y_i\bigr),

  with :math:`h^{(s, -j)}` trained without fold :math:`F_j`;
  :attr:`CrossValidation.best` is its argmin.

  Args:
    params: the common start, ``{"w": [d, K], "b": [K]}``.
    x: ``[n, d]`` features.
    labels: ``[n]`` integer labels in ``[0, K)``.
    key: a ``jax.random`` key; split into the fold split and the shuffles.
    config: a :class:`TrainConfig`; ``batch_size`` at most the
      :math:`(k - 1) \lfloor n/k \rfloor` training rows of a fold.
    l1: :math:`\lambda_1`, a scalar or ``[S]``.
    l2: :math:`\lambda_2`, a scalar or ``[S]``.
    num_folds: :math:`k \ge 2`.

  Returns:
    A :class:`CrossValidation`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax.model_selection import TrainConfig, cross_validate
    >>> x = jax.random.normal(jax.random.key(1), (60, 3))
    >>> y = (x[:, 0] > 0).astype(jnp.int32)
    >>> start = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    >>> cv = cross_validate(start, x, y, jax.random.key(2),
    ...                     TrainConfig(epochs=3, batch_size=8),
    ...                     l2=jnp.array([1e-3, 10.0]), num_folds=3)
    >>> cv.loss.shape, cv.best
    ((2, 3), 0)

  References:
    T. Hastie, R. Tibshirani, J. Friedman, "The Elements of Statistical
    Learning", 2nd ed. (2009), section 7.10; "Training multinomial logistic
    regression at scale", regularization (textbook chapter).
  """
  _check_config(config)
  x, labels = _check_problem(params, x, labels)
  v.check_prng_key("key", key)
  l1, l2 = _strengths(l1, l2)
  split_key, train_key = jax.random.split(key)
  train_idx, held_out = kfold_indices(split_key, x.shape[0], num_folds)
  _check_train_idx(train_idx[0], x.shape[0], config.batch_size)
  loss, accuracy = _cross_validate(
      params, x, labels, train_idx, held_out, train_key, l1, l2, config=config
  )
  return CrossValidation(l1, l2, loss.T, accuracy.T)


@functools.partial(jax.jit, static_argnames="config")
def _cross_validate(
    params, x, labels, train_idx, held_out, key, l1, l2, *, config
):
  def one_fold(train_rows, test_rows):
    path = _path(params, x, labels, train_rows, key, l1, l2, config)
    return jax.vmap(_evaluate, in_axes=(0, None, None))(
        path, x[test_rows], labels[test_rows]
    )

  return jax.vmap(one_fold)(train_idx, held_out)


def weight_sparsity(params: Any, *, tol: ArrayLike = 0.0) -> jax.Array:
  r"""Share of penalized weights with :math:`|w| \le` ``tol``; biases excluded.

  .. math::
    \text{sparsity} = \frac{1}{N} \sum_{w} \mathbf 1\{|w| \le \tau\}

  over the :math:`N` entries of every weight leaf (the leaves
  :func:`jaxsoftmax.penalty` penalizes). ``tol=0`` counts exact zeros,
  which only a proximal or thresholding step produces; subgradient training
  (:func:`train_softmax_regression`) leaves L1-suppressed weights at a few
  :math:`\eta \lambda_1` from 0, so there a small ``tol`` such as 1e-3 is
  the honest measure. Non-finite weights never count. Works under
  ``jax.vmap``.

  Args:
    params: a parameter pytree, e.g. ``{"w": [d, K], "b": [K]}``.
    tol: :math:`\tau \ge 0`.

  Returns:
    A scalar in :math:`[0, 1]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.model_selection import weight_sparsity
    >>> params = {"w": jnp.array([[0.0, 1e-4], [0.5, -2.0]]), "b": jnp.zeros(2)}
    >>> float(weight_sparsity(params)), float(weight_sparsity(params, tol=1e-3))
    (0.25, 0.5)

  References:
    R. Tibshirani, "Regression shrinkage and selection via the lasso", JRSS
    B 58 (1996); "Training multinomial logistic regression at scale", L1
    sparsity (textbook chapter).
  """
  v.check_nonnegative("tol", tol)
  leaves = [
      jnp.asarray(leaf)
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if _losses.is_penalized(path)
  ]
  if not leaves:
    raise ValueError(
        "params holds no penalized (weight) leaf; got only biases:"
        f" {jax.tree.map(jnp.shape, params)}."
    )
  for leaf in leaves:
    v.check_floating("params leaf", leaf)
  small = sum(jnp.sum(jnp.abs(leaf) <= tol) for leaf in leaves)
  total = sum(leaf.size for leaf in leaves)
  dtype = _numerics.accumulation_dtype(jnp.result_type(*leaves))
  return (small / total).astype(dtype)

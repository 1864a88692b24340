r"""Model selection for softmax regression: k-fold CV, sparsity, batch scaling.

The pieces the regularization, batch-size and optimizer experiments share:

* :func:`train_softmax_regression`, minibatch training with an Optax
  optimizer as one jitted ``lax.scan``, written so that ``jax.vmap`` can
  train many models at once (over penalty strengths, folds or learning
  rates);
* :func:`regularization_path` and :func:`cross_validate`, which train every
  strength of a grid (and every fold) in one vmapped program, on the same
  minibatches, and score the held-out rows;
* :func:`weight_sparsity`, the share of weights at (or near) zero;
* :func:`scaled_learning_rates` and :func:`linear_scaling_sweep`, the linear
  scaling rule :math:`\eta_B = \eta_0 B / B_0` and a batch size x learning
  rate grid around it; :func:`hessian_top_eigenvalue`, the curvature that
  bounds it;
* :func:`plot_panels`, the experiments' figures (matplotlib, Agg canvas).

The objective everywhere is :func:`jaxsoftmax.softmax_regression_loss`,

.. math::
  L(\Theta, b) = \frac{1}{B} \sum_{i=1}^{B} \ell_{ce}(\Theta^\top x_i + b,
  y_i) + \lambda_1 \|\Theta\|_1 + \frac{\lambda_2}{2} \|\Theta\|_2^2 ,

trained with its hand-derived gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import optax

from jaxsoftmax import _gradients
from jaxsoftmax import _io
from jaxsoftmax import _losses
from jaxsoftmax import _models
from jaxsoftmax import _numerics
from jaxsoftmax import _optim
from jaxsoftmax import _solvers
from jaxsoftmax import _step
from jaxsoftmax import _validation as v
from jaxsoftmax import metrics

# Schedules that need nothing beyond the run length.
TRAIN_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How :func:`train_softmax_regression` trains; hashable, so jit-static.

  Attributes:
    optimizer: a :func:`jaxsoftmax.make_optimizer` name other than
      ``"lbfgs"`` (a full-batch line-search method; use
      :func:`jaxsoftmax.lbfgs_solve`).
    learning_rate: :math:`\\eta > 0` (the peak value under ``"cosine"``).
    schedule: ``"constant"``, or ``"cosine"`` decay to 0 over the run.
    epochs: passes over the training rows, ``>= 1``.
    batch_size: rows per step, ``>= 1``.
  """

  optimizer: str = "sgd"
  learning_rate: float = 0.1
  schedule: str = "constant"
  epochs: int = 10
  batch_size: int = 128

  def __post_init__(self):
    if self.optimizer not in _optim.OPTIMIZERS or self.optimizer == "lbfgs":
      allowed = tuple(o for o in _optim.OPTIMIZERS if o != "lbfgs")
      raise ValueError(
          f"optimizer must be one of {allowed} (L-BFGS is full-batch: use"
          f" lbfgs_solve); got {self.optimizer!r}."
      )
    if self.schedule not in TRAIN_SCHEDULES:
      raise ValueError(
          f"schedule must be one of {TRAIN_SCHEDULES}; got {self.schedule!r}."
      )
    v.check_positive("learning_rate", self.learning_rate)
    v.check_positive_int("epochs", self.epochs)
    v.check_positive_int("batch_size", self.batch_size)


# ----------------------------------------------------------------------------
# Folds and training.
# ----------------------------------------------------------------------------


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


def _check_config(config):
  if not isinstance(config, TrainConfig):
    raise TypeError(
        f"config must be a TrainConfig; got {type(config).__name__}."
    )


def _check_problem(params, x, labels):
  w, b = params["w"], params["b"]
  _models.check_layer("params", w, b)
  return _gradients._check_batch(x, labels, w.shape[0], w.shape[1])


def _check_train_idx(train_idx, num_examples, batch_size):
  """``[m]`` int training rows (all of them for None), at least a batch."""
  if train_idx is None:
    train_idx = jnp.arange(num_examples, dtype=jnp.int32)
  train_idx = jnp.asarray(train_idx)
  v.check_integer("train_idx", train_idx)
  v.check_rank("train_idx", train_idx, 1, "[num_train] row indices")
  v.check_labels_in_range("train_idx", train_idx, num_examples)
  if batch_size > train_idx.shape[0]:
    raise ValueError(
        f"batch_size must be at most the number of training rows,"
        f" {train_idx.shape[0]} (train_idx of shape {train_idx.shape}); got"
        f" {batch_size}."
    )
  return train_idx


def _strengths(l1, l2):
  """``l1``, ``l2`` as float ``[S]`` arrays, a scalar broadcast to the other."""
  out = []
  for name, value in (("l1", l1), ("l2", l2)):
    a = jnp.asarray(value)
    if not jnp.issubdtype(a.dtype, jnp.floating):
      a = a.astype(float)
    if a.ndim > 1:
      raise ValueError(
          f"{name} must be a scalar or [num_strengths]; got shape {a.shape}."
      )
    v.check_nonnegative(name, a)
    out.append(jnp.atleast_1d(a))
  l1, l2 = out
  if l1.shape[0] != l2.shape[0] and 1 not in (l1.shape[0], l2.shape[0]):
    raise ValueError(
        f"l1 and l2 must have the same number of strengths (or one be a"
        f" scalar); got shapes {l1.shape} and {l2.shape}."
    )
  size = max(l1.shape[0], l2.shape[0])
  return jnp.broadcast_to(l1, (size,)), jnp.broadcast_to(l2, (size,))


@functools.partial(jax.jit, static_argnames="config")
def _train(params, x, labels, train_idx, key, l1, l2, learning_rate, *, config):
  acc = _numerics.accumulation_dtype(jnp.result_type(params["w"], params["b"]))
  l1, l2, learning_rate = (jnp.asarray(a, acc) for a in (l1, l2, learning_rate))
  batch_size = config.batch_size
  steps = train_idx.shape[0] // batch_size
  options = {"total_steps": config.epochs * steps}
  tx = _optim.make_optimizer(
      config.optimizer,
      learning_rate,
      schedule=config.schedule,
      **(options if config.schedule == "cosine" else {}),
  )

  def value_and_grad(params, batch, key):
    del key
    return _gradients.softmax_regression_value_and_grad(
        params, *batch, l1=l1, l2=l2)

  def loss(params, batch, key):
    del key
    return _gradients.softmax_regression_loss(params, *batch, l1=l1, l2=l2)

  # Non-finite values are documented to come back as they are: no guard.
  train_step = _step.make_train_step(
      loss, tx, value_and_grad_fn=value_and_grad, guard=False)

  def step(carry, rows):
    # Gathered per step, so no shuffled copy of x exists; under vmap over
    # strengths the rows are shared, so the gather is not repeated per model.
    params, state, _ = train_step(*carry, (x[rows], labels[rows]), None)
    return (params, state), None

  def epoch(carry, e):
    perm = jax.random.permutation(
        jax.random.fold_in(key, e), train_idx.shape[0]
    )
    rows = train_idx[perm[: steps * batch_size]].reshape(steps, batch_size)
    return jax.lax.scan(step, carry, rows)[0], None

  (params, _), _ = jax.lax.scan(
      epoch, (params, tx.init(params)), jnp.arange(1, config.epochs + 1)
  )
  return params


def train_softmax_regression(
    params: _models.LinearParams,
    x: ArrayLike,
    labels: ArrayLike,
    key: jax.Array,
    config: TrainConfig,
    *,
    train_idx: ArrayLike | None = None,
    l1: ArrayLike = 0.0,
    l2: ArrayLike = 0.0,
) -> _models.LinearParams:
  r"""Trains softmax regression by minibatch steps of an Optax optimizer.

  Epoch :math:`e = 1, \dots, E` shuffles the training rows with
  ``jax.random.fold_in(key, e)``, cuts them into :math:`\lfloor m / B
  \rfloor` minibatches (the rest sit out that epoch) and takes one step on
  each with the closed-form gradient of the elastic-net objective,

  .. math::
    g_t = \frac{1}{B} X_t^\top (Z_t - I_{y_t}) + \lambda_1
      \operatorname{sign}(\Theta_t) + \lambda_2 \Theta_t, \qquad
    \theta_{t+1} = \theta_t + \operatorname{update}_\eta(g_t, s_t),

  with ``update`` the optimizer named in ``config``. The L1 term is a
  subgradient with :math:`\operatorname{sign}(0) = 0`: the weights of an
  L1-penalized model hover around 0 at a distance of the order of
  :math:`\eta \lambda_1` rather than landing on it, so count near-zeros
  (:func:`weight_sparsity` with ``tol > 0``); exact zeros need a proximal
  step, which Optax does not provide.

  The whole run is one jitted ``lax.scan`` (compiled once per ``config`` and
  shapes; ``x`` is an argument, never a baked-in constant), and the
  function may be called under ``jax.vmap`` over ``params``, ``key``,
  ``train_idx``, ``l1`` and ``l2``: models that share ``key`` and
  ``train_idx`` see the same minibatches. Non-finite values are not
  guarded against: a diverging run returns NaN/inf params (see
  :func:`evaluate_linear`).

  Args:
    params: the start, ``{"w": [d, K], "b": [K]}``.
    x: ``[n, d]`` features (finite; checked on eager calls).
    labels: ``[n]`` integer labels in ``[0, K)``.
    key: a ``jax.random`` key; fixes the shuffles.
    config: a :class:`TrainConfig`.
    train_idx: ``[m]`` rows of ``x`` to train on; ``None`` for all.
    l1: :math:`\lambda_1 \ge 0`.
    l2: :math:`\lambda_2 \ge 0`.

  Returns:
    The trained ``{"w": [d, K], "b": [K]}``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import linear_init
    >>> from jaxsoftmax.model_selection import TrainConfig, evaluate_linear
    >>> from jaxsoftmax.model_selection import train_softmax_regression
    >>> x = jax.random.normal(jax.random.key(1), (64, 3))
    >>> y = (x[:, 0] > 0).astype(jnp.int32)
    >>> params = train_softmax_regression(
    ...     linear_init(jax.random.key(0), 3, 2), x, y, jax.random.key(2),
    ...     TrainConfig(learning_rate=0.5, epochs=5, batch_size=16))
    >>> float(evaluate_linear(params, x, y)[1]) > 0.9
    True

  References:
    "Training multinomial logistic regression at scale", mini-batch SGD and
    regularization (textbook chapter).
  """
  _check_config(config)
  x, labels = _check_problem(params, x, labels)
  v.check_prng_key("key", key)
  train_idx = _check_train_idx(train_idx, x.shape[0], config.batch_size)
  v.check_nonnegative("l1", l1)
  v.check_nonnegative("l2", l2)
  return _train(
      params, x, labels, train_idx, key, l1, l2, config.learning_rate,
      config=config,
  )


def evaluate_linear(
    params: _models.LinearParams, x: ArrayLike, labels: ArrayLike
) -> tuple[jax.Array, jax.Array]:
  r"""Mean cross-entropy and accuracy of softmax regression on ``(x, labels)``.

  .. math::
    \text{loss} = \frac{1}{n} \sum_i \ell_{ce}(\Theta^\top x_i + b, y_i),
    \qquad \text{accuracy} = \frac{1}{n} \sum_i \mathbf 1\{\arg\max_k
    (\Theta^\top x_i + b)_k = y_i\}

  without any penalty (held-out scores). Both are NaN when a parameter is
  not finite, so a diverged run never shows the accuracy of an arbitrary
  argmax. Works under ``jax.vmap`` over ``params``.

  Args:
    params: ``{"w": [d, K], "b": [K]}``.
    x: ``[n, d]`` features.
    labels: ``[n]`` integer labels in ``[0, K)``.

  Returns:
    ``(loss, accuracy)``, two scalars.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.model_selection import evaluate_linear
    >>> params = {"w": jnp.zeros((2, 4)), "b": jnp.zeros(4)}
    >>> x, labels = jnp.ones((3, 2)), jnp.array([0, 1, 2])
    >>> loss, acc = evaluate_linear(params, x, labels)
    >>> round(float(loss), 4)  # log 4
    1.3863
  """
  x, labels = _check_problem(params, x, labels)
  return _evaluate(params, x, labels)


@jax.jit
def _evaluate(params, x, labels):
  logits = _models.linear_logits(params, x)
  loss = _losses.cross_entropy(logits, labels)
  accuracy = metrics.accuracy(logits, labels)
  finite = jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(params)]
  ))
  nan = jnp.asarray(jnp.nan, loss.dtype)
  return jnp.where(finite, loss, nan), jnp.where(finite, accuracy, nan)


# ----------------------------------------------------------------------------
# Regularization paths and cross-validation.
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# Batch size and the linear scaling rule.
# ----------------------------------------------------------------------------


def scaled_learning_rates(
    batch_sizes: Sequence[int],
    *,
    base_batch_size: int,
    base_learning_rate: float,
) -> np.ndarray:
  r"""The linear scaling rule: the learning rate grows with the batch size.

  .. math::
    \eta_B = \eta_0 \, \frac{B}{B_0}

  An SGD step on a batch of :math:`B` averages :math:`B` per-example
  gradients; :math:`k` steps of size :math:`B` at rate :math:`\eta` move
  the parameters about as far as one step of size :math:`kB` at rate
  :math:`k\eta`, as long as the gradient changes little over those
  :math:`k` steps. That proviso is where the rule breaks: once
  :math:`\eta_B` exceeds the stability limit of the curvature
  (:math:`2/\lambda_{\max}`, see :func:`hessian_top_eigenvalue`), or once
  the few steps left per epoch cannot cover the distance.

  Args:
    batch_sizes: :math:`B`, positive ints.
    base_batch_size: :math:`B_0 \ge 1`.
    base_learning_rate: :math:`\eta_0 > 0`, the rate tuned at :math:`B_0`.

  Returns:
    ``[len(batch_sizes)]`` float64 learning rates.

  Examples:
    >>> from jaxsoftmax.model_selection import scaled_learning_rates
    >>> scaled_learning_rates([32, 64, 256], base_batch_size=64,
    ...                       base_learning_rate=0.1).tolist()
    [0.05, 0.1, 0.4]

  References:
    P. Goyal et al., "Accurate, large minibatch SGD: training ImageNet in 1
    hour", arXiv:1706.02677 (2017); "Training multinomial logistic
    regression at scale", mini-batch training dynamics (textbook chapter).
  """
  for b in batch_sizes:
    v.check_positive_int("batch_sizes entry", b)
  v.check_positive_int("base_batch_size", base_batch_size)
  v.check_positive("base_learning_rate", base_learning_rate)
  sizes = np.asarray(batch_sizes, np.float64)
  return base_learning_rate * sizes / base_batch_size


class ScalingSweep(NamedTuple):
  """Results of :func:`linear_scaling_sweep`, on the host.

  Attributes:
    batch_sizes: ``[NB]``.
    multipliers: ``[M]``, factors on the rule's learning rate (1 = the rule).
    learning_rates: ``[NB, M]``, :math:`m \\eta_0 B / B_0`.
    train_loss: ``[NB, M]``, the training objective (cross-entropy plus the
      L2 term) at the end, NaN where training diverged.
    test_loss: ``[NB, M]``, cross-entropy on ``eval_data``.
    test_accuracy: ``[NB, M]``, accuracy on ``eval_data``.
    seconds: ``[NB]``, wall-clock seconds of each batch size's row (all
      ``M`` learning rates together, compilation included).
  """

  batch_sizes: np.ndarray
  multipliers: np.ndarray
  learning_rates: np.ndarray
  train_loss: np.ndarray
  test_loss: np.ndarray
  test_accuracy: np.ndarray
  seconds: np.ndarray


def linear_scaling_sweep(
    params: _models.LinearParams,
    x: ArrayLike,
    labels: ArrayLike,
    key: jax.Array,
    config: TrainConfig,
    *,
    batch_sizes: Sequence[int],
    multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    eval_data: tuple[ArrayLike, ArrayLike],
    l2: float = 0.0,
) -> ScalingSweep:
  r"""A batch size x learning rate grid around the linear scaling rule.

  ``config`` holds the base point: :math:`B_0` = ``config.batch_size`` and
  :math:`\eta_0` = ``config.learning_rate``. For each batch size :math:`B`
  and multiplier :math:`m` one model trains for ``config.epochs`` epochs
  (so fewer steps at larger :math:`B`) at

  .. math::
    \eta_{B, m} = m \, \eta_0 \frac{B}{B_0}
    \quad (m = 1: \text{the rule}),

  from the same start. The multipliers of one batch size train together
  under ``jax.vmap``, on the same minibatches. Where the rule holds, the
  :math:`m = 1` column gives the same final loss at every :math:`B` and
  the best :math:`m` stays near 1; where it breaks, the :math:`m = 1`
  column degrades or diverges and the best multiplier falls below 1.

  Args:
    params: the common start, ``{"w": [d, K], "b": [K]}``.
    x: ``[n, d]`` training features.
    labels: ``[n]`` training labels.
    key: a ``jax.random`` key; fixes the shuffles.
    config: the base :class:`TrainConfig`.
    batch_sizes: the :math:`B` to try, each at most :math:`n`.
    multipliers: the :math:`m > 0` to try.
    eval_data: ``(x_test, y_test)``.
    l2: :math:`\lambda_2 \ge 0`, in the objective of every run.

  Returns:
    A :class:`ScalingSweep` (NumPy arrays).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax.model_selection import TrainConfig, linear_scaling_sweep
    >>> x = jax.random.normal(jax.random.key(1), (64, 3))
    >>> y = (x[:, 0] > 0).astype(jnp.int32)
    >>> start = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    >>> sweep = linear_scaling_sweep(
    ...     start, x, y, jax.random.key(2),
    ...     TrainConfig(learning_rate=0.1, epochs=2, batch_size=8),
    ...     batch_sizes=[8, 32], multipliers=[0.5, 1.0], eval_data=(x, y))
    >>> sweep.learning_rates.tolist()
    [[0.05, 0.1], [0.2, 0.4]]

  References:
    P. Goyal et al., "Accurate, large minibatch SGD: training ImageNet in 1
    hour", arXiv:1706.02677 (2017); S. L. Smith, P.-J. Kindermans, Q. V.
    Le, "Don't decay the learning rate, increase the batch size", ICLR
    (2018).
  """
  _check_config(config)
  x, labels = _check_problem(params, x, labels)
  x_test, y_test = _check_problem(params, *_pair("eval_data", eval_data))
  v.check_prng_key("key", key)
  v.check_nonnegative("l2", l2)
  multipliers = np.asarray(multipliers, np.float64)
  if multipliers.ndim != 1 or not multipliers.size or (multipliers <= 0).any():
    raise ValueError(
        f"multipliers must be a non-empty list of numbers > 0; got"
        f" {multipliers.tolist()}."
    )
  rule = scaled_learning_rates(
      batch_sizes,
      base_batch_size=config.batch_size,
      base_learning_rate=config.learning_rate,
  )
  for b in batch_sizes:
    if b > x.shape[0]:
      raise ValueError(
          f"every batch size must be at most the {x.shape[0]} training rows;"
          f" got {b} in batch_sizes={list(batch_sizes)}."
      )
  rates = rule[:, None] * multipliers[None, :]
  rows = jnp.arange(x.shape[0], dtype=jnp.int32)
  results, seconds = [], []
  for b, lrs in zip(batch_sizes, rates):
    t0 = time.perf_counter()
    row = _sweep_row(
        params, x, labels, x_test, y_test, rows, key, jnp.asarray(lrs), l2,
        config=dataclasses.replace(config, batch_size=int(b)),
    )
    results.append(jax.device_get(row))
    seconds.append(time.perf_counter() - t0)
  train_loss, test_loss, test_acc = (np.stack(r) for r in zip(*results))
  return ScalingSweep(
      np.asarray(batch_sizes), multipliers, rates, train_loss, test_loss,
      test_acc, np.asarray(seconds),
  )


def _pair(name, data):
  if not isinstance(data, (tuple, list)) or len(data) != 2:
    raise TypeError(f"{name} must be a pair (x, y); got {type(data).__name__}.")
  return data


@functools.partial(jax.jit, static_argnames="config")
def _sweep_row(
    params, x, labels, x_test, y_test, rows, key, lrs, l2, *, config
):
  def one(lr):
    trained = _train(params, x, labels, rows, key, 0.0, l2, lr, config=config)
    train_loss, _ = _evaluate(trained, x, labels)
    test_loss, test_acc = _evaluate(trained, x_test, y_test)
    return train_loss + _losses.penalty(trained, l2=l2), test_loss, test_acc

  return jax.vmap(one)(lrs)


def hessian_top_eigenvalue(
    params: _models.LinearParams,
    x: ArrayLike,
    labels: ArrayLike,
    key: jax.Array,
    *,
    l2: ArrayLike = 0.0,
    iterations: int = 100,
) -> jax.Array:
  r"""Largest Hessian eigenvalue of the softmax-regression objective.

  Power iteration with the closed-form Hessian-vector product
  (:func:`jaxsoftmax.softmax_regression_hvp`, never the
  :math:`(d+1)K`-square matrix):

  .. math::
    v_{t+1} = \frac{H v_t}{\|H v_t\|}, \qquad
    \lambda_{\max} \approx v_T^\top H v_T .

  :math:`H` is positive semi-definite, so this converges to
  :math:`\lambda_{\max}` at the rate :math:`(\lambda_2/\lambda_{\max})^t`
  from a random start. Gradient descent on a quadratic of this curvature
  diverges for :math:`\eta > 2/\lambda_{\max}`: the ceiling that the linear
  scaling rule runs into at large batch sizes. The curvature is largest
  where the predictions are uncertain, so evaluate it at the start of
  training.

  Args:
    params: where to evaluate, ``{"w": [d, K], "b": [K]}``.
    x: ``[n, d]`` features.
    labels: ``[n]`` integer labels in ``[0, K)``.
    key: a ``jax.random`` key for the start vector.
    l2: :math:`\lambda_2 \ge 0`.
    iterations: power steps :math:`T \ge 1`.

  Returns:
    A scalar, :math:`\lambda_{\max}` (from below: a Rayleigh quotient).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax.model_selection import hessian_top_eigenvalue
    >>> params = {"w": jnp.zeros((1, 2)), "b": jnp.zeros(2)}
    >>> x, y = jnp.ones((4, 1)), jnp.array([0, 1, 0, 1])
    >>> # Two classes at p = 1/2, feature and bias both 1: eigenvalue 2 * 1/2.
    >>> round(float(hessian_top_eigenvalue(params, x, y, jax.random.key(0))), 4)
    1.0

  References:
    R. von Mises, H. Pollaczek-Geiringer, "Praktische Verfahren der
    Gleichungsauflösung", ZAMM 9 (1929); Y. LeCun, P. Y. Simard, B.
    Pearlmutter, "Automatic learning rate maximization by on-line estimation
    of the Hessian's eigenvectors", NeurIPS (1993).
  """
  x, labels = _check_problem(params, x, labels)
  v.check_prng_key("key", key)
  v.check_nonnegative("l2", l2)
  v.check_positive_int("iterations", iterations)
  return _power_iteration(params, x, labels, key, l2, iterations)


@jax.jit
def _power_iteration(params, x, labels, key, l2, iterations):
  def normalized(tree):
    norm = optax.tree.norm(tree)
    return jax.tree.map(lambda a: a / norm, tree)

  def hvp(vec):
    return _solvers.softmax_regression_hvp(params, x, labels, vec, l2=l2)

  keys = jax.random.split(key, 2)
  start = {
      name: jax.random.normal(k, params[name].shape, params[name].dtype)
      for name, k in zip(("w", "b"), keys)
  }
  vec = jax.lax.fori_loop(
      0, iterations, lambda _, u: normalized(hvp(u)), normalized(start)
  )
  return optax.tree.vdot(vec, hvp(vec))


# ----------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------


class Panel(NamedTuple):
  """One subplot of :func:`plot_panels`.

  Attributes:
    title: the panel's title.
    xlabel: x-axis label.
    ylabel: y-axis label.
    series: legend label -> ``(x values, y values)``; one line each.
    xscale: ``"linear"`` or ``"log"``.
    yscale: ``"linear"`` or ``"log"``.
  """

  title: str
  xlabel: str
  ylabel: str
  series: Mapping[str, tuple[Sequence[float], Sequence[float]]]
  xscale: str = "linear"
  yscale: str = "linear"


def plot_panels(
    path: str | os.PathLike,
    panels: Sequence[Panel],
    *,
    title: str | None = None,
) -> Path:
  """Draws ``panels`` side by side into one PNG file.

  Uses matplotlib's object API on an Agg canvas, never ``pyplot``, so it
  changes no global backend and works without a display. The file is
  written through a temporary name and a rename, so a reader never sees a
  half-written image.

  Args:
    path: the ``.png`` file; its directory is created.
    panels: one or more :class:`Panel`.
    title: an optional title over all panels.

  Returns:
    The path written.

  Examples:
    >>> import tempfile, os
    >>> from jaxsoftmax.model_selection import Panel, plot_panels
    >>> curve = {"sgd": ([1, 2, 3], [1.0, 0.5, 0.3])}
    >>> panel = Panel("loss", "epoch", "loss", curve)
    >>> path = plot_panels(os.path.join(tempfile.mkdtemp(), "a.png"), [panel])
    >>> path.stat().st_size > 0
    True
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if not panels:
    raise ValueError("panels must hold at least one Panel; got none.")
  for panel in panels:
    if not isinstance(panel, Panel):
      raise TypeError(
          f"panels must hold Panel entries; got {type(panel).__name__}."
      )
    for scale in (panel.xscale, panel.yscale):
      if scale not in ("linear", "log"):
        raise ValueError(
            f"panel {panel.title!r}: scales must be 'linear' or 'log'; got"
            f" {scale!r}."
        )
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, panel in zip(axes, panels):
    for label, (xs, ys) in panel.series.items():
      ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_title(panel.title)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_xscale(panel.xscale)
    ax.set_yscale(panel.yscale)
    ax.grid(True, alpha=0.3)
    if len(panel.series) > 1:
      ax.legend(fontsize="small")
  if title:
    fig.suptitle(title)
  with _io.atomic_open(path) as f:
    fig.savefig(f, format="png", dpi=110)
  return path

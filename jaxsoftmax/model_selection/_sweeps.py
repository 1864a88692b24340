"""Learning-rate scaling sweeps and the Hessian's top eigenvalue by power
iteration (see :mod:`jaxsoftmax.model_selection`)."""

from __future__ import annotations

import dataclasses
import functools

import time
from collections.abc import Mapping, Sequence

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import optax

from jaxsoftmax.losses import _dense as _losses
from jaxsoftmax.models import _functional as _models

from jaxsoftmax.training import _solvers

from jaxsoftmax._core import validation as v
from jaxsoftmax.model_selection._trainer import (
    TrainConfig,
    _check_config,
    _check_problem,
    _evaluate,
    _train,
)


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

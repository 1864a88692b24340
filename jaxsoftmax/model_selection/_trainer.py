"""The vmappable softmax-regression trainer that model selection repeats
over strengths, folds and learning rates (see :mod:`jaxsoftmax.model_selection`)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsoftmax.models import _gradients

from jaxsoftmax.losses import _dense as _losses
from jaxsoftmax.models import _functional as _models
from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax.training import _optim

from jaxsoftmax.training import _step
from jaxsoftmax._core import validation as v
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


def _check_config(config):
  if not isinstance(config, TrainConfig):
    raise TypeError(
        f"config must be a TrainConfig; got {type(config).__name__}."
    )


def _check_problem(params, x, labels):
  w, b = params["w"], params["b"]
  _models.check_layer("params", w, b)
  return _gradients.check_batch(x, labels, w.shape[0], w.shape[1])


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

r"""Optax optimizers and learning-rate schedules by name.

Every update rule here is Optax's own; this module only picks and chains
them, so one config string (``"adamw"``, ``"cosine"``) gives a
``GradientTransformation`` that a training step uses like any other. A
gradient goes through

.. math::
  \text{clip}_{\|g\| \le c} \;\to\; \text{weight decay} \;\to\;
  \text{update rule (learning rate / schedule)}

and gradient accumulation over :math:`k` mini-batches wraps that whole chain,
so clipping and the schedule see the averaged gradient of the large batch,
exactly as if it had been one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxsoftmax.losses import _dense as _losses
from jaxsoftmax._core import validation as v

OPTIMIZERS = (
    "sgd",
    "momentum",
    "nesterov",
    "adam",
    "adamw",
    "adagrad",
    "rmsprop",
    "lbfgs",
)
SCHEDULES = ("constant", "step", "exponential", "cosine", "warmup_cosine")


def make_schedule(
    name: str,
    learning_rate: float,
    *,
    total_steps: int | None = None,
    warmup_steps: int = 0,
    decay_rate: float = 0.1,
    decay_steps: int | None = None,
    end_value: float = 0.0,
) -> optax.Schedule:
  r"""A learning-rate schedule :math:`\eta_t` by name, built from Optax's.

  With :math:`\eta_0` = ``learning_rate``, :math:`\eta_{end}` = ``end_value``,
  :math:`\gamma` = ``decay_rate``, :math:`N` = ``decay_steps``,
  :math:`T` = ``total_steps`` and :math:`W` = ``warmup_steps``:

  .. math::
    \begin{aligned}
    \text{constant:} \quad & \eta_t = \eta_0 \\
    \text{step:} \quad & \eta_t = \max(\eta_0 \gamma^{\lfloor t/N \rfloor},
      \eta_{end}) \\
    \text{exponential:} \quad & \eta_t = \max(\eta_0 \gamma^{t/N},
      \eta_{end}) \\
    \text{cosine:} \quad & \eta_t = \eta_{end} + \tfrac12 (\eta_0 - \eta_{end})
      \bigl(1 + \cos(\pi \min(t, T)/T)\bigr) \\
    \text{warmup\_cosine:} \quad & \eta_t = \eta_0 t/W \ (t < W), \text{ then
      cosine from } \eta_0 \text{ to } \eta_{end} \text{ over the remaining }
      T - W \text{ steps}
    \end{aligned}

  "exponential" is the textbook :math:`\eta_0 e^{-\lambda t}` with
  :math:`\lambda = -\ln(\gamma)/N`, a rate that reads as "a factor
  :math:`\gamma` every :math:`N` steps". :math:`T` counts the warmup, so
  ``warmup_cosine`` ends at step :math:`T` like ``cosine``; after :math:`T`
  both stay at :math:`\eta_{end}`.

  Args:
    name: one of ``"constant"``, ``"step"``, ``"exponential"``, ``"cosine"``,
      ``"warmup_cosine"``.
    learning_rate: :math:`\eta_0 > 0`, the initial (peak, with warmup) value.
    total_steps: :math:`T`, required by ``"cosine"`` and ``"warmup_cosine"``.
    warmup_steps: :math:`W`, ``"warmup_cosine"`` only, ``0 <= W < T``.
    decay_rate: :math:`\gamma \in (0, 1]`, for ``"step"`` and
      ``"exponential"``.
    decay_steps: :math:`N`, required by ``"step"`` and ``"exponential"``.
    end_value: :math:`\eta_{end} \ge 0`: the floor of the decays and the
      final value of the cosines.

  Returns:
    An ``optax.Schedule``: step count (int, possibly traced) to a scalar.

  Raises:
    ValueError: an unknown name, a required argument missing for this
      schedule, ``warmup_steps`` given to a schedule without warmup, or a
      value out of range.

  Examples:
    >>> from jaxsoftmax import make_schedule
    >>> schedule = make_schedule("step", 0.1, decay_rate=0.5, decay_steps=10)
    >>> [round(float(schedule(t)), 6) for t in (0, 9, 10, 25)]
    [0.1, 0.1, 0.05, 0.025]

  References:
    "Training multinomial logistic regression at scale", learning-rate
    scheduling (textbook chapter); I. Loshchilov, F. Hutter, "SGDR: stochastic
    gradient descent with warm restarts" (2017).
  """
  if name not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}; got {name!r}.")
  if callable(learning_rate):
    raise TypeError(
        "learning_rate of make_schedule must be a number (the schedule's"
        " initial value); got a callable."
    )
  v.check_positive("learning_rate", learning_rate)
  v.check_nonnegative("end_value", end_value)
  if warmup_steps:
    if name != "warmup_cosine":
      raise ValueError(
          f"warmup_steps is used only by the 'warmup_cosine' schedule; got"
          f" warmup_steps={warmup_steps!r} with schedule {name!r}."
      )
    v.check_positive_int("warmup_steps", warmup_steps)

  if name == "constant":
    return optax.constant_schedule(learning_rate)

  if name in ("step", "exponential"):
    _require(name, decay_steps=decay_steps)
    v.check_positive_int("decay_steps", decay_steps)
    # Optax quietly turns a zero rate into a constant schedule and a rate
    # above 1 into growth; neither is a decay.
    if not 0.0 < decay_rate <= 1.0:
      raise ValueError(
          f"decay_rate must lie in (0, 1] (the factor applied every"
          f" decay_steps); got {decay_rate}."
      )
    return optax.exponential_decay(
        learning_rate,
        transition_steps=decay_steps,
        decay_rate=decay_rate,
        staircase=name == "step",
        end_value=end_value,
    )

  _require(name, total_steps=total_steps)
  v.check_positive_int("total_steps", total_steps)
  if name == "cosine":
    return optax.cosine_decay_schedule(
        learning_rate, decay_steps=total_steps, alpha=end_value / learning_rate
    )
  if warmup_steps >= total_steps:
    raise ValueError(
        f"warmup_steps must be smaller than total_steps (which counts the"
        f" warmup); got warmup_steps={warmup_steps}, total_steps={total_steps}."
    )
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=learning_rate,
      warmup_steps=warmup_steps,
      decay_steps=total_steps,
      end_value=end_value,
  )


def make_optimizer(
    name: str,
    learning_rate: float | optax.Schedule,
    *,
    schedule: str | None = None,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    accumulate_steps: int = 1,
    momentum: float = 0.9,
    memory_size: int = 10,
    **schedule_kwargs: Any,
) -> optax.GradientTransformation:
  r"""An Optax optimizer by name, with clipping, weight decay and accumulation.

  ``"sgd"`` is plain :math:`\theta \leftarrow \theta - \eta_t g`;
  ``"momentum"`` and ``"nesterov"`` are ``optax.sgd`` with heavy-ball or
  Nesterov momentum :math:`\beta` = ``momentum``; ``"adam"``, ``"adamw"``,
  ``"adagrad"`` and ``"rmsprop"`` are Optax's with their defaults.

  **Weight decay** never touches biases (leaves named ``b`` / ``bias``), as
  in :func:`jaxsoftmax.penalty`. For ``"adamw"`` it is *decoupled*:
  :math:`\theta \leftarrow \theta - \eta_t (\hat m / (\sqrt{\hat v} +
  \epsilon) + \lambda \theta)`, so the decay bypasses Adam's per-coordinate
  scaling. For every other name ``optax.add_decayed_weights`` adds
  :math:`\lambda \theta` to the gradient before the update rule, which is
  exactly an L2 penalty :math:`\frac{\lambda}{2}\|\theta\|^2` in the loss
  (``l2=`` of the losses); under Adam that coupled term is then rescaled
  with the gradient, the difference AdamW was introduced to remove.

  **Clipping** by global norm, :math:`g \leftarrow g \min(1, c/\|g\|_2)`,
  comes first, on the raw (accumulated) gradient.

  **Accumulation** (``accumulate_steps`` = :math:`k > 1`) wraps the chain in
  ``optax.MultiSteps``: :math:`k - 1` calls return zero updates while the
  gradients are averaged, the :math:`k`-th applies the chain to the mean, so
  :math:`k` mini-batches of size :math:`B` make the step of one batch of
  :math:`kB`. Schedules count these optimizer steps, not mini-batches. The
  accumulator is float64 when ``jax_enable_x64`` is on and float32
  otherwise (never half precision), and the mean is cast back to the
  gradients' dtype. The ``GradientTransformation`` form of ``MultiSteps`` is
  returned, so callers use every result the same way.

  **L-BFGS** (``"lbfgs"``) is ``optax.lbfgs`` with its zoom line search
  (strong Wolfe conditions). It is a full-batch method: the line search
  evaluates the objective, so ``update`` needs ``value``, ``grad`` and
  ``value_fn`` as extra arguments, and the value and gradient it computes at
  the accepted point are reused through ``optax.value_and_grad_from_state``
  (see :func:`jaxsoftmax.lbfgs_solve`). ``learning_rate`` scales
  the L-BFGS direction before the line search (1.0 is the usual value).
  Clipping, weight decay and accumulation would change the direction without
  telling the line search, so they are refused: put an L2 term in the
  objective instead.

  Args:
    name: one of ``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"adam"``,
      ``"adamw"``, ``"adagrad"``, ``"rmsprop"``, ``"lbfgs"``.
    learning_rate: a positive float, or an ``optax.Schedule``.
    schedule: a schedule name for :func:`make_schedule`, which receives
      ``learning_rate`` (a float then) and ``schedule_kwargs``.
    weight_decay: :math:`\lambda \ge 0` (see above).
    clip_norm: :math:`c > 0`, or ``None`` for no clipping.
    accumulate_steps: :math:`k \ge 1` mini-batches per update.
    momentum: :math:`\beta \in [0, 1)` for ``"momentum"`` and
      ``"nesterov"``.
    memory_size: number of curvature pairs L-BFGS keeps.
    **schedule_kwargs: ``total_steps``, ``warmup_steps``, ``decay_rate``,
      ``decay_steps``, ``end_value`` for :func:`make_schedule`.

  Returns:
    An ``optax.GradientTransformation`` (``init``, ``update``).

  Raises:
    ValueError: an unknown name (the message lists the valid ones), an
      option out of range, schedule options without ``schedule``, a
      ``schedule`` name with a callable ``learning_rate``, or an option L-BFGS
      cannot take.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxsoftmax import make_optimizer
    >>> opt = make_optimizer("adamw", 1e-2, weight_decay=1e-4, clip_norm=1.0,
    ...                      schedule="cosine", total_steps=100)
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> state = opt.init(params)
    >>> updates, state = opt.update(params, state, params)
    >>> jax.tree.map(jnp.shape, optax.apply_updates(params, updates))
    {'b': (2,), 'w': (3, 2)}

  References:
    I. Loshchilov, F. Hutter, "Decoupled weight decay regularization" (2019);
    D. Liu, J. Nocedal, "On the limited memory BFGS method for large scale
    optimization" (1989); "Multilayer perceptron (MLP)", optimizers and
    training tricks (blog post, 2024).
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {name!r}.")
  if schedule is not None:
    if callable(learning_rate):
      raise ValueError(
          f"schedule={schedule!r} builds the schedule from a float"
          " learning_rate; got a callable learning_rate (pass one or the"
          " other)."
      )
    learning_rate = make_schedule(schedule, learning_rate, **schedule_kwargs)
  elif schedule_kwargs:
    raise ValueError(
        f"{sorted(schedule_kwargs)} configure a schedule, but schedule is None;"
        " pass schedule=<name> or drop them."
    )
  elif not callable(learning_rate):
    v.check_positive("learning_rate", learning_rate)
  v.check_nonnegative("weight_decay", weight_decay)
  if clip_norm is not None:
    v.check_positive("clip_norm", clip_norm)
  v.check_positive_int("accumulate_steps", accumulate_steps)

  if name == "lbfgs":
    refused = {
        "weight_decay": weight_decay != 0,
        "clip_norm": clip_norm is not None,
        "accumulate_steps": accumulate_steps != 1,
    }
    if any(refused.values()):
      raise ValueError(
          f"lbfgs is a full-batch line-search method; it cannot take"
          f" {[k for k, bad in refused.items() if bad]} (put an L2 term in"
          " the objective instead of weight_decay)."
      )
    v.check_positive_int("memory_size", memory_size)
    return optax.lbfgs(learning_rate=learning_rate, memory_size=memory_size)

  chain = []
  if clip_norm is not None:
    chain.append(optax.clip_by_global_norm(clip_norm))
  if weight_decay and name != "adamw":
    chain.append(optax.add_decayed_weights(weight_decay, mask=_weight_mask))
  chain.append(_update_rule(name, learning_rate, weight_decay, momentum))
  tx = optax.chain(*chain) if len(chain) > 1 else chain[0]
  if accumulate_steps == 1:
    return tx
  # float64 is canonicalized to float32 when x64 is off, so half-precision
  # gradients still accumulate in float32 and float64 ones stay exact.
  multi = optax.MultiSteps(
      tx, every_k_schedule=accumulate_steps, accumulator_dtype=jnp.float64
  )
  return multi.gradient_transformation()


def _update_rule(
    name: str,
    learning_rate: float | optax.Schedule,
    weight_decay: float,
    momentum: float,
) -> optax.GradientTransformation:
  if name in ("momentum", "nesterov"):
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f"momentum must lie in [0, 1); got {momentum}.")
    return optax.sgd(
        learning_rate, momentum=momentum, nesterov=name == "nesterov"
    )
  if name == "adamw":
    return optax.adamw(
        learning_rate, weight_decay=weight_decay, mask=_weight_mask
    )
  rules: dict[str, Callable[..., optax.GradientTransformation]] = {
      "sgd": optax.sgd,
      "adam": optax.adam,
      "adagrad": optax.adagrad,
      "rmsprop": optax.rmsprop,
  }
  return rules[name](learning_rate)


def _weight_mask(params: Any) -> Any:
  """True on weights, False on biases: the leaves ``penalty`` penalizes."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _losses.is_penalized(path), params
  )


def _require(schedule: str, **options: Any) -> None:
  for option, value in options.items():
    if value is None:
      raise ValueError(f"schedule {schedule!r} needs {option}; got None.")

"""Data augmentation producing soft targets, for :func:`soft_cross_entropy`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax._core import validation as v


def mixup(
    key: jax.Array,
    x: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    alpha: ArrayLike,
) -> tuple[jax.Array, jax.Array]:
  r"""Mixup: convex combinations of pairs of examples and of their labels.

  .. math::
    \lambda \sim \operatorname{Beta}(\alpha, \alpha), \qquad
    \tilde x_i = \lambda x_i + (1 - \lambda)\, x_{\pi(i)}, \qquad
    t_i = \lambda e_{y_i} + (1 - \lambda)\, e_{y_{\pi(i)}}

  with :math:`\pi` a random permutation of the batch and one :math:`\lambda`
  for the whole batch, as in the paper. Train on
  ``soft_cross_entropy(logits_fn(params, x_mixed), target_probs)``; for
  softmax regression its gradient is the closed form
  :math:`\tilde X^\top (\operatorname{softmax}(\tilde X \Theta + b) - T) / B`
  since each target row sums to 1. Small :math:`\alpha` keeps
  :math:`\lambda` near 0 or 1 (mild mixing); :math:`\alpha = 1` draws it
  uniformly.

  The targets are written by a scatter of :math:`\lambda` and
  :math:`1 - \lambda` into the label entries; no one-hot matrix is built on
  the way. Under ``jit`` labels cannot be range-checked, so a row whose own
  or partner's label lies outside ``[0, num_classes)`` gets a NaN target
  entry (and a NaN loss), never mass on some other class.

  Args:
    key: a ``jax.random`` key (for :math:`\lambda` and :math:`\pi`).
    x: ``[batch, ...]`` floating features (images may keep their shape).
    labels: ``[batch]`` integer labels in ``[0, num_classes)``.
    num_classes: :math:`K`.
    alpha: :math:`\alpha > 0`, the Beta distribution's parameter; may be
      traced.

  Returns:
    ``(x_mixed, target_probs)``: ``x_mixed`` shaped and typed like ``x``;
    ``target_probs`` of shape ``[batch, num_classes]`` in ``x``'s dtype,
    each row summing to 1.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import mixup
    >>> x_mixed, t = mixup(jax.random.key(0), jnp.ones((4, 3)),
    ...                    jnp.array([0, 1, 2, 1]), 3, alpha=0.4)
    >>> x_mixed.shape, t.shape
    ((4, 3), (4, 3))

  References:
    H. Zhang, M. Cisse, Y. N. Dauphin, D. Lopez-Paz, "mixup: Beyond empirical
    risk minimization", ICLR (2018); "Multilayer perceptron (MLP)", soft
    labels / mixup (blog post, 2024).
  """
  v.check_prng_key("key", key)
  x = jnp.asarray(x)
  labels = jnp.asarray(labels)
  v.check_floating("x", x)
  v.check_min_rank("x", x, 1, "[batch, ...]")
  v.check_integer("labels", labels)
  v.check_same_shape("labels", labels, x.shape[:1], "[batch]")
  v.check_positive_int("num_classes", num_classes)
  v.check_labels_in_range("labels", labels, num_classes)
  v.check_positive("alpha", alpha)
  batch = x.shape[0]
  key_lam, key_perm = jax.random.split(key)
  lam = jax.random.beta(
      key_lam, alpha, alpha, dtype=_numerics.accumulation_dtype(x.dtype)
  )
  perm = jax.random.permutation(key_perm, batch)
  lam_x = lam.astype(x.dtype)
  x_mixed = lam_x * x + (1 - lam_x) * x[perm]
  in_range = (labels >= 0) & (labels < num_classes)
  safe = jnp.where(in_range, labels, 0)
  rows = jnp.arange(batch)
  mass = jnp.where(in_range, lam, jnp.nan)
  partner_mass = jnp.where(in_range[perm], 1 - lam, jnp.nan)
  targets = (
      jnp.zeros((batch, num_classes), lam.dtype)
      .at[rows, safe].add(mass)
      .at[rows, safe[perm]].add(partner_mass)
  )
  return x_mixed, targets.astype(x.dtype)

"""How a loss reduces its per-row values, and the matching backward scale.

Shared by every loss family (dense, fused, sampled, hierarchical) and the
sharded losses, so that ``reduction="mean"`` means the same everywhere:
the weighted sum over the denominator (the weights' sum), and 0 for a
batch whose rows are all ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reduce(rows: jax.Array, denom: jax.Array, reduction: str) -> jax.Array:
  """Applies ``reduction`` to weighted per-row losses ``rows`` of shape [N]."""
  if reduction == "none":
    return rows
  total = jnp.sum(rows)
  if reduction == "sum":
    return total
  # An all-ignored batch (denominator 0) has mean 0, not NaN, so padded
  # batches are harmless.
  return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1), 0)


def row_scale(ct: jax.Array, denom: jax.Array, reduction: str) -> jax.Array:
  """d(reduced loss)/d(row i) times the incoming cotangent: [N] or scalar."""
  if reduction == "mean":
    return jnp.where(denom > 0, ct / jnp.where(denom > 0, denom, 1), 0)
  return ct

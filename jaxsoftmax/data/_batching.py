"""Shuffled mini-batches of host arrays, one epoch per key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jaxsoftmax._core import validation as v


def batches(
    key: jax.Array,
    x: Any,
    y: Any,
    batch_size: int,
    *,
    drop_remainder: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """One epoch of shuffled mini-batches, as NumPy arrays.

  The order is ``jax.random.permutation(key, n)``, drawn once and moved to
  the host once, so the same key gives the same batches and every row
  appears exactly once per epoch (the last ``n mod batch_size`` rows are
  skipped when ``drop_remainder``, which keeps every batch the same shape,
  so a jitted step compiles once). Split the key per epoch for a new order.

  Arguments are checked when ``batches`` is called, not at the first
  ``next``.

  Args:
    key: a ``jax.random`` key.
    x: ``[n, ...]`` features (any array-like).
    y: ``[n, ...]`` labels or targets.
    batch_size: rows per batch, a positive int (at most ``n`` when
      ``drop_remainder``).
    drop_remainder: skip the final short batch.

  Returns:
    An iterator of ``(x_batch, y_batch)``, ``[batch_size, ...]`` each (the
    last one shorter when ``drop_remainder=False``).

  Examples:
    >>> import jax, numpy as np
    >>> from jaxsoftmax.data import batches
    >>> x, y = np.arange(10.0)[:, None], np.arange(10)
    >>> [len(yb) for _, yb in batches(jax.random.key(0), x, y, 4)]
    [4, 4]
    >>> [len(yb) for _, yb in batches(jax.random.key(0), x, y, 4, drop_remainder=False)]
    [4, 4, 2]
  """
  v.check_prng_key("key", key)
  x = np.asarray(x)
  y = np.asarray(y)
  v.check_min_rank("x", x, 1, "[n, ...]")
  v.check_min_rank("y", y, 1, "[n, ...]")
  if len(x) != len(y):
    raise ValueError(
        f"x and y must have the same number of rows; got x of shape {x.shape}"
        f" and y of shape {y.shape}."
    )
  v.check_positive_int("batch_size", batch_size)
  n = len(x)
  if drop_remainder and batch_size > n:
    raise ValueError(
        f"batch_size must be <= the number of rows ({n}) when drop_remainder"
        f" is set, or no batch would be produced; got {batch_size}."
    )
  order = np.asarray(jax.random.permutation(key, n))
  stop = n - n % batch_size if drop_remainder else n

  def generate():
    for start in range(0, stop, batch_size):
      idx = order[start : start + batch_size]
      yield x[idx], y[idx]

  return generate()

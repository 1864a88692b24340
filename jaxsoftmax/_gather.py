r"""Scores of per-row gathered columns, with a backward pass that scatters rows.

Sampled softmax with per-row candidates, the class-based softmax (the members
of each row's cluster) and the hierarchical softmax (the nodes on each row's
path) all score row :math:`i` against its own columns of ``w``:
:math:`s_{ij} = x_i^\top w_{c_{ij}} + b_{c_{ij}}`. The rule autodiff derives
for the gather scatters :math:`\partial s_{ij} x_i` into ``w``'s columns,
which are strided in the row-major ``[d, K]`` array, one element at a time.
:func:`gathered_scores` scatters the same sums as contiguous rows of a
``[K, d]`` buffer and transposes it once: the value and gradient of a
per-row sampled softmax step go from 97 to 57 ms on CPU at K = 5e4,
d = 128, B = 256 and 128 columns per row.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def gathered_scores(x, w, b, columns, acc):
  """``[B, J]`` scores ``x_i . w[:, columns[i, j]] + b[columns[i, j]]``.

  Args:
    x: ``[B, d]``.
    w: ``[d, K]``.
    b: ``[K]`` or None.
    columns: ``[B, J]`` integer ids in ``[0, K)``.
    acc: the accumulation dtype of the result.

  Gathers only the ``B * J`` columns a batch needs, O(d J) per row instead
  of the O(d K) of a full ``x @ w``.
  """
  if columns.size == 0:
    # K = 1 (no nodes): jnp.take drops the batch axis of empty indices.
    return jnp.zeros(columns.shape, acc)
  s = _scores(x, w, columns, acc)
  if b is not None:
    s = s + jnp.take(b, columns).astype(acc)
  return s


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _scores(x, w, columns, acc):
  return _scores_fwd(x, w, columns, acc)[0]


def _scores_fwd(x, w, columns, acc):
  w_s = jnp.take(w, columns, axis=1)
  s = jnp.einsum("bd,dbj->bj", x, w_s, preferred_element_type=acc)
  return s, (x, w, w_s, columns)


def _scores_bwd(acc, res, g):
  x, w, w_s, columns = res
  g = g.astype(acc)
  dx = jnp.einsum("bj,dbj->bd", g, w_s, preferred_element_type=acc)
  rows = g[:, :, None] * x[:, None, :].astype(acc)
  dw_t = jnp.zeros(w.shape[::-1], acc).at[columns].add(rows)
  return dx.astype(x.dtype), dw_t.T.astype(w.dtype), None


_scores.defvjp(_scores_fwd, _scores_bwd)

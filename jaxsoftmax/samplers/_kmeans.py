"""k-means++ seeding and Lloyd iterations, on the device: the codebooks of
the MIDX sampler's product quantizer.

References:
  D. Arthur, S. Vassilvitskii, "k-means++: the advantages of careful
  seeding", SODA (2007); S. Lloyd, "Least squares quantization in PCM",
  IEEE Trans. Inf. Theory 28(2) (1982).
"""

from __future__ import annotations

import functools

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsoftmax.samplers._base import _INDEX


class KMeans(NamedTuple):
  """A k-means fit.

  Attributes:
    centroids: ``[k, h]``.
    assignment: ``[n]`` int32, the nearest centroid of each point.
    objective: ``[iterations + 1]``, the mean squared distance to the
      nearest centroid at the start and after each Lloyd iteration; never
      increases.
  """

  centroids: jax.Array
  assignment: jax.Array
  objective: jax.Array


def _sq_distances(points, centroids):
  """``[n, k]`` squared distances, clamped at 0 against cancellation."""
  d2 = (jnp.sum(points * points, axis=1)[:, None]
        - 2.0 * points @ centroids.T
        + jnp.sum(centroids * centroids, axis=1)[None, :])
  return jnp.maximum(d2, 0.0)


def _kmeans_pp(key, points, k):
  """k-means++ seeding: each new centroid drawn with probability ~ D(x)^2."""
  n = points.shape[0]
  first = jax.random.randint(jax.random.fold_in(key, 0), (), 0, n)
  centroids = jnp.zeros((k, points.shape[1]), points.dtype).at[0].set(
      points[first])
  min_d2 = jnp.sum((points - points[first][None, :]) ** 2, axis=1)

  def body(j, state):
    centroids, min_d2 = state
    # All points coincide with a centroid: any pick is as good (log 0 would
    # make every logit -inf).
    logits = jnp.where(jnp.sum(min_d2) > 0, jnp.log(min_d2), 0.0)
    pick = jax.random.categorical(jax.random.fold_in(key, j), logits)
    centroids = centroids.at[j].set(points[pick])
    d2 = jnp.sum((points - points[pick][None, :]) ** 2, axis=1)
    return centroids, jnp.minimum(min_d2, d2)

  return jax.lax.fori_loop(1, k, body, (centroids, min_d2))[0]


def _lloyd(points, centroids, iterations):
  """Lloyd iterations; an emptied centroid moves to the farthest point."""
  k = centroids.shape[0]

  def assign(centroids):
    d2 = _sq_distances(points, centroids)
    assignment = jnp.argmin(d2, axis=1).astype(_INDEX)
    return assignment, jnp.take_along_axis(d2, assignment[:, None], 1)[:, 0]

  def body(centroids, _):
    assignment, min_d2 = assign(centroids)
    sums = jax.ops.segment_sum(points, assignment, k)
    counts = jax.ops.segment_sum(jnp.ones_like(min_d2), assignment, k)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    # Re-seed each empty cluster at one of the points farthest from their
    # centroids (a distinct one each): the point's distance drops to 0 and
    # no other term grows, so the objective still cannot increase.
    empty = counts == 0
    far = jax.lax.top_k(min_d2, min(k, points.shape[0]))[1]
    rank = jnp.clip(jnp.cumsum(empty) - 1, 0, far.shape[0] - 1)
    centroids = jnp.where(empty[:, None], points[far[rank]], means)
    return centroids, jnp.mean(min_d2)

  centroids, history = jax.lax.scan(body, centroids, None, length=iterations)
  assignment, min_d2 = assign(centroids)
  return centroids, assignment, jnp.append(history, jnp.mean(min_d2))


@functools.partial(jax.jit, static_argnames=("num_clusters", "iterations"))
def kmeans(
    key: jax.Array,
    points: ArrayLike,
    num_clusters: int,
    *,
    iterations: int = 10,
    init: ArrayLike | None = None,
) -> KMeans:
  r"""k-means (Lloyd's algorithm) with k-means++ seeding, jitted.

  Minimizes :math:`J = \frac{1}{n} \sum_j \min_c \|x_j - \mu_c\|^2`. Each
  iteration assigns every point to its nearest centroid and moves every
  centroid to the mean of its points; a centroid left without points is
  re-seeded at a point far from its centroid, so no codeword is wasted and
  :math:`J` never increases. O(n k h) per iteration.

  Args:
    key: a ``jax.random`` key for the seeding.
    points: ``[n, h]``, ``n >= num_clusters``.
    num_clusters: :math:`k`.
    iterations: Lloyd iterations.
    init: ``[k, h]`` starting centroids (a warm start, e.g. the previous
      codebook), or None for k-means++.

  Returns:
    A :class:`KMeans`.
  """
  points = jnp.asarray(points)
  centroids = (_kmeans_pp(key, points, num_clusters) if init is None
               else jnp.asarray(init, points.dtype))
  return KMeans(*_lloyd(points, centroids, iterations))

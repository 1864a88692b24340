r"""Class-based softmax: one softmax over clusters of classes, one over the
members of the target's cluster,

.. math::
  P(y \mid x) = P(c(y) \mid x)\, P(y \mid c(y), x),

:math:`O(d\,(C + S))` per example for :math:`C` clusters of at most
:math:`S` members. The shared input checks live in the hierarchical module.

References:
  J. Goodman, "Classes for fast maximum entropy training", ICASSP (2001);
  T. Mikolov, S. Kombrink, L. Burget, J. Cernocky, S. Khudanpur,
  "Extensions of recurrent neural network language model", ICASSP (2011).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike
import numpy as np

from jaxsoftmax._core import gather as _gather
from jaxsoftmax.losses import _dense as _losses
from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax._core import validation as v
from jaxsoftmax.losses._hierarchical import (
    _check_counts,
    _check_labels,
    _check_matrix,
    _check_vector,
    _check_x,
    _lecun_normal,
)


class Clusters(NamedTuple):
  """A partition of ``K`` classes into ``C`` non-empty clusters.

  Attributes:
    cluster: ``[num_classes]`` int32, the cluster id of each class.
    position: ``[num_classes]`` int32, each class's column in its cluster's
      row of ``members``.
    members: ``[num_clusters, max_size]`` int32 class ids, padded with 0.
    mask: ``[num_clusters, max_size]`` bool, True on real members.
  """

  cluster: jax.Array
  position: jax.Array
  members: jax.Array
  mask: jax.Array

  @property
  def num_classes(self) -> int:
    return self.cluster.shape[0]

  @property
  def num_clusters(self) -> int:
    return self.members.shape[0]

  @property
  def max_size(self) -> int:
    return self.members.shape[1]


def frequency_clusters(
    counts: ArrayLike, num_clusters: int | None = None
) -> Clusters:
  r"""Frequency binning: clusters of roughly equal total frequency.

  Sorts the classes by decreasing count and walks down the list, starting
  the next cluster whenever the mass of the classes already placed reaches
  the next multiple of :math:`1/C`: frequent classes end up in small
  clusters (often alone), rare ones share large clusters, and each cluster
  holds about :math:`1/C` of the mass. The cut is adjusted so that all
  :math:`C` clusters are non-empty. Within a cluster, classes keep the
  frequency order. The largest cluster, which sets the :math:`O(dS)` part of
  the cost, is the tail of rare classes holding the last :math:`1/C` of the
  mass: for Zipfian counts :math:`p_r \propto 1/r` about a fraction
  :math:`1 - K^{-1/C}` of the classes (3% at :math:`K = 2 \cdot 10^5` with
  the default :math:`C`), but if a handful of classes hold nearly all the
  mass, the tail cluster holds nearly all the classes.

  Args:
    counts: ``[num_classes]`` non-negative finite counts, not all zero.
    num_clusters: :math:`C \in [1, K]`; default :math:`\lceil \sqrt{K}
      \rceil`, which balances the :math:`O(dC)` cluster softmax against the
      within-cluster one.

  Returns:
    :class:`Clusters` with ``members`` of shape ``[C, S]``, :math:`S` the
    largest cluster.

  Examples:
    >>> from jaxsoftmax import frequency_clusters
    >>> clusters = frequency_clusters([1, 50, 2, 30, 3, 14], num_clusters=3)
    >>> clusters.cluster.tolist()
    [2, 0, 2, 1, 2, 2]

  References:
    J. Goodman, "Classes for fast maximum entropy training", ICASSP (2001);
    T. Mikolov et al., "Extensions of recurrent neural network language
    model", ICASSP (2011), frequency binning.
  """
  counts = _check_counts(counts)
  num_classes = counts.size
  if num_clusters is None:
    num_clusters = math.isqrt(num_classes - 1) + 1  # ceil(sqrt(K)), exactly
  v.check_positive_int("num_clusters", num_clusters)
  if num_clusters > num_classes:
    raise ValueError(
        f"num_clusters must be at most the number of classes ({num_classes});"
        f" got {num_clusters}."
    )
  order = np.argsort(-counts, kind="stable")
  # Unnormalized cumulative counts keep integer counts exact, so a cut that
  # falls exactly on a multiple of 1/C is not lost to rounding.
  before = np.concatenate([[0.0], np.cumsum(counts[order])[:-1]])
  wanted = np.minimum(
      np.floor(before * num_clusters / counts.sum()).astype(np.int64),
      num_clusters - 1)
  # The cluster ids along the sorted classes must not skip a cluster (step
  # <= 1) and must leave one class for each cluster still to come (id >=
  # C - K + rank), so none is empty: an empty cluster would take probability
  # mass that no class receives. ``wanted`` is non-decreasing, so the
  # recurrence id_r = min(wanted_r, id_{r-1} + 1) is a running minimum, and
  # the lower bound, once it binds, binds for every later rank.
  ranks = np.arange(num_classes)
  sorted_ids = np.maximum(
      ranks + np.minimum.accumulate(wanted - ranks),
      num_clusters - num_classes + ranks)
  first = np.searchsorted(sorted_ids, sorted_ids, side="left")
  sorted_pos = ranks - first
  cluster = np.zeros(num_classes, np.int32)
  position = np.zeros(num_classes, np.int32)
  cluster[order] = sorted_ids
  position[order] = sorted_pos
  max_size = int(np.bincount(sorted_ids).max())
  members = np.zeros((num_clusters, max_size), np.int32)
  mask = np.zeros((num_clusters, max_size), bool)
  members[sorted_ids, sorted_pos] = order
  mask[sorted_ids, sorted_pos] = True
  return Clusters(jnp.asarray(cluster), jnp.asarray(position),
                  jnp.asarray(members), jnp.asarray(mask))


def class_based_init(
    key: jax.Array,
    num_features: int,
    clusters: Clusters,
    *,
    dtype: DTypeLike = jnp.float32,
) -> dict[str, jax.Array]:
  r"""Parameters for :func:`class_based_softmax_loss`.

  LeCun normal weights :math:`\mathcal{N}(0, 1/d)` and zero biases for both
  the cluster classifier and the class classifier.

  Args:
    key: a ``jax.random`` key.
    num_features: :math:`d`.
    clusters: the :class:`Clusters` of the ``K`` classes into ``C``
      clusters.
    dtype: parameter dtype.

  Returns:
    ``{"cluster_w": [d, C], "cluster_b": [C], "w": [d, K], "b": [K]}``.

  Examples:
    >>> import jax
    >>> from jaxsoftmax import (class_based_init,
    ...     frequency_clusters)
    >>> clusters = frequency_clusters([3, 2, 1, 1])
    >>> params = class_based_init(jax.random.key(0), 8, clusters)
    >>> params["cluster_w"].shape, params["w"].shape
    ((8, 2), (8, 4))
  """
  v.check_positive_int("num_features", num_features)
  _check_clusters(clusters)
  k_cluster, k_class = jax.random.split(key)
  num_clusters, num_classes = clusters.num_clusters, clusters.num_classes
  return {
      "cluster_w": _lecun_normal(k_cluster, (num_features, num_clusters),
                                 dtype),
      "cluster_b": jnp.zeros((num_clusters,), dtype),
      "w": _lecun_normal(k_class, (num_features, num_classes), dtype),
      "b": jnp.zeros((num_classes,), dtype),
  }


def _check_clusters(clusters: Clusters) -> None:
  if not isinstance(clusters, Clusters):
    raise TypeError(
        "clusters must be a Clusters (from frequency_clusters); got"
        f" {type(clusters).__name__}."
    )
  v.check_integer("clusters.cluster", clusters.cluster)
  v.check_rank("clusters.cluster", clusters.cluster, 1, "[num_classes]")
  v.check_integer("clusters.position", clusters.position)
  v.check_same_shape("clusters.position", clusters.position,
                     clusters.cluster.shape, "like clusters.cluster")
  v.check_integer("clusters.members", clusters.members)
  v.check_rank("clusters.members", clusters.members, 2,
               "[num_clusters, max_size]")
  v.check_same_shape("clusters.mask", clusters.mask, clusters.members.shape,
                     "like clusters.members")


def _check_class_params(x, params, clusters):
  _check_clusters(clusters)
  names = ("cluster_w", "cluster_b", "w", "b")
  if not all(name in params for name in names):
    raise ValueError(
        f"params must hold {list(names)}; got keys {sorted(params)}."
    )
  d, c, k = x.shape[1], clusters.num_clusters, clusters.num_classes
  return (
      _check_matrix("params['cluster_w']", params["cluster_w"], d, c,
                    f"[num_features, num_clusters] = [{d}, {c}]"),
      _check_vector("params['cluster_b']", params["cluster_b"], c,
                    "[num_clusters]"),
      _check_matrix("params['w']", params["w"], d, k,
                    f"[num_features, num_classes] = [{d}, {k}]"),
      _check_vector("params['b']", params["b"], k, "[num_classes]"),
  )


def class_based_softmax_loss(
    x: ArrayLike,
    params: dict[str, ArrayLike],
    labels: ArrayLike,
    clusters: Clusters,
    *,
    weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Two-level (class-based) softmax NLL, :math:`O(d\,(C + S))` per example.

  .. math::
    -\log P(y \mid x) = \underbrace{\operatorname{lse}(z) - z_{c(y)}}_{
      -\log P(c(y) \mid x)}
      + \underbrace{\operatorname{lse}_{k \in c(y)}(h_k) - h_y}_{
      -\log P(y \mid c(y), x)},
    \qquad z = x^\top W_c + b_c, \quad h_k = x^\top w_k + b_k

  where :math:`c(y)` is the cluster of :math:`y` and the second
  log-sum-exp runs over the members of :math:`c(y)` only. Per example it
  computes the :math:`C` cluster scores and the scores of the at most
  :math:`S` members of its cluster (gathered columns of ``w``; padding
  slots are masked with ``-inf``). Both terms go through
  :func:`~jaxsoftmax.cross_entropy`, whose custom VJP supplies the
  gradients :math:`\operatorname{softmax}(z) - e_{c(y)}` and
  :math:`\operatorname{softmax}_{c(y)}(h) - e_y`. Reductions, weights and
  ``ignore_index`` behave as in :func:`~jaxsoftmax.cross_entropy` (the
  weighted mean of the per-row sums).

  Outside ``jit`` an out-of-range label or non-finite ``x`` raises
  ``ValueError``; under ``jit`` an out-of-range label makes its row's loss
  and gradient NaN.

  Args:
    x: ``[batch, num_features]`` features.
    params: ``{"cluster_w": [d, C], "cluster_b": [C], "w": [d, K],
      "b": [K]}``, e.g. from :func:`class_based_init`.
      ``"w"`` and ``"b"`` may be :class:`jaxsoftmax.sparse.Rows` views of
      the class-major ``[K, d]`` table holding at least the members of the
      labels' clusters (their gradient is then just those rows).
    labels: ``[batch]`` integer classes in ``[0, K)``.
    clusters: from :func:`frequency_clusters`.
    weights: optional ``[batch]`` non-negative per-example weights.
    ignore_index: label value whose rows contribute nothing.
    reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

  Returns:
    A scalar, or ``[batch]`` for ``reduction="none"``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import (class_based_softmax_loss,
    ...     frequency_clusters)
    >>> clusters = frequency_clusters([5, 3, 1, 1], num_clusters=2)
    >>> params = {"cluster_w": jnp.zeros((3, 2)), "cluster_b": jnp.zeros(2),
    ...           "w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
    >>> loss = class_based_softmax_loss(jnp.ones((1, 3)), params,
    ...                                 jnp.array([3]), clusters)
    >>> print(f"{float(loss):.4f}")  # log 2 + log 3: cluster {1, 2, 3}
    1.7918

  References:
    J. Goodman, "Classes for fast maximum entropy training", ICASSP (2001);
    T. Mikolov et al., "Extensions of recurrent neural network language
    model", ICASSP (2011).
  """
  x = _check_x(x)
  cluster_w, cluster_b, w, b = _check_class_params(x, params, clusters)
  cluster_w = _gather.dense("params['cluster_w']", cluster_w)
  cluster_b = _gather.dense("params['cluster_b']", cluster_b)
  v.check_reduction(reduction)
  num_classes = clusters.num_classes
  labels = _check_labels(labels, x.shape[0], num_classes, ignore_index)
  acc = _gather.accumulation(x, cluster_w, w)
  valid = jnp.ones(labels.shape, bool)
  if ignore_index is not None:
    valid = labels != ignore_index
  in_range = (labels >= 0) & (labels < num_classes)
  safe = jnp.where(in_range, labels, 0)
  cluster = clusters.cluster[safe]
  # The inner labels mark ignored rows with -1, since the caller's
  # ignore_index may be a valid cluster id or position, and out-of-range
  # labels with one past the end, which cross_entropy turns into a NaN loss
  # and gradient under jit.
  cluster_labels = jnp.where(
      valid, jnp.where(in_range, cluster, clusters.num_clusters), -1)
  member_labels = jnp.where(
      valid, jnp.where(in_range, clusters.position[safe], clusters.max_size),
      -1)
  cluster_logits = jnp.matmul(x, cluster_w, preferred_element_type=acc)
  cluster_logits = cluster_logits + cluster_b.astype(acc)[None, :]
  members = clusters.members[cluster]
  member_logits = _gather.gathered_scores(x, w, b, members, acc)
  member_logits = jnp.where(clusters.mask[cluster], member_logits, -jnp.inf)
  options = dict(weights=weights, ignore_index=-1, reduction=reduction)
  # Both terms share weights and valid rows, so they share the mean's
  # denominator and their sum is the reduction of the per-row sums.
  return (_losses.cross_entropy(cluster_logits, cluster_labels, **options)
          + _losses.cross_entropy(member_logits, member_labels, **options))


def class_based_log_probs(
    x: ArrayLike,
    params: dict[str, ArrayLike],
    clusters: Clusters,
) -> jax.Array:
  r"""Normalized log-probabilities of every class under a class-based softmax.

  .. math::
    \log P(k \mid x) = z_{c(k)} - \operatorname{lse}(z)
      + h_k - \operatorname{lse}_{j \in c(k)}(h_j)

  with the notation of :func:`class_based_softmax_loss`. Computes all
  :math:`K` class scores (:math:`O(BKd)`, for evaluation) and the
  per-cluster log-sum-exps with max-shifted segment reductions, in
  :math:`O(BK)` memory. Each row's probabilities sum to 1.

  Args:
    x: ``[batch, num_features]`` features.
    params: ``{"cluster_w": [d, C], "cluster_b": [C], "w": [d, K],
      "b": [K]}``.
    clusters: from :func:`frequency_clusters`.

  Returns:
    ``[batch, K]`` log-probabilities (float32 for half-precision inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import (class_based_log_probs,
    ...     frequency_clusters)
    >>> clusters = frequency_clusters([5, 3, 1, 1], num_clusters=2)
    >>> params = {"cluster_w": jnp.zeros((3, 2)), "cluster_b": jnp.zeros(2),
    ...           "w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
    >>> lp = class_based_log_probs(jnp.ones((1, 3)), params, clusters)
    >>> [f"{p:.4f}" for p in jnp.exp(lp)[0].tolist()]
    ['0.5000', '0.1667', '0.1667', '0.1667']

  References:
    J. Goodman, "Classes for fast maximum entropy training", ICASSP (2001).
  """
  x = _check_x(x)
  cluster_w, cluster_b, w, b = _check_class_params(x, params, clusters)
  w, b = _gather.dense("params['w']", w), _gather.dense("params['b']", b)
  acc = _gather.accumulation(x, cluster_w, w)
  z = jnp.matmul(x, cluster_w, preferred_element_type=acc)
  z = z + cluster_b.astype(acc)[None, :]
  log_p_cluster = z - _numerics.logsumexp(z)[:, None]
  h = jnp.matmul(x, w, preferred_element_type=acc) + b.astype(acc)[None, :]
  # Segment reductions run over the leading axis, hence the [K, B] layout.
  ids, num = clusters.cluster, clusters.num_clusters
  h_t = h.T
  m = jax.lax.stop_gradient(jax.ops.segment_max(h_t, ids, num_segments=num))
  sums = jax.ops.segment_sum(jnp.exp(h_t - m[ids]), ids, num_segments=num)
  lse = (jnp.log(sums) + m).T
  return h + jnp.take(log_p_cluster - lse, ids, axis=1)

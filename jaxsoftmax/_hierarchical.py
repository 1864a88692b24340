r"""Tree- and cluster-factored softmax heads for very many classes.

Both heads replace one softmax over :math:`K` classes by a product of small
normalized factors, so a training example touches only the parameters on
its own factors:

* **Hierarchical softmax** puts the classes at the leaves of a binary tree
  with :math:`K - 1` internal nodes, each a logistic classifier. A class's
  probability is the product of the branch probabilities on its
  root-to-leaf path, :math:`O(d \cdot D)` per example for a tree of depth
  :math:`D` (:math:`\lceil \log_2 K \rceil` for :func:`balanced_tree`, the
  entropy of the class frequencies on average for :func:`huffman_tree`).
* **Class-based softmax** groups the classes into :math:`C` clusters,
  :math:`P(y \mid x) = P(c(y) \mid x)\, P(y \mid c(y), x)`, one softmax over
  the clusters and one over the members of :math:`c(y)`:
  :math:`O(d\,(C + S))` per example for clusters of at most :math:`S`
  members (:func:`frequency_clusters`).

The trees and clusters are built once on the host, in NumPy, and are pytrees
of padded ``int32`` / ``bool`` arrays, so they pass through ``jit`` and
``vmap`` as ordinary arguments. The losses gather only the columns of the
weight matrices they need and get their hand-derived gradients from the
custom VJPs of :func:`~jaxsoftmax.binary_cross_entropy` (``sigmoid - target``
per path node) and :func:`~jaxsoftmax.cross_entropy` (``softmax - onehot``
per factor); the gathers and matmuls around them are linear.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike
import numpy as np

from jaxsoftmax import _gather
from jaxsoftmax import _losses
from jaxsoftmax import _numerics
from jaxsoftmax import _validation as v


class Tree(NamedTuple):
  r"""A binary tree over ``K`` classes as padded root-to-leaf paths.

  The tree has ``K - 1`` internal nodes with ids in ``[0, K - 1)``; node 0 is
  the root, so every non-empty path starts with it. Class ``k``'s path is
  ``nodes[k, :depth_k]`` with branch codes ``codes[k, :depth_k]``: code 1
  means the path takes the branch of probability :math:`\sigma(s_n)` at
  node :math:`n` (score :math:`s_n`), code 0 the branch of probability
  :math:`\sigma(-s_n)`. Entries past a class's depth are padding (node 0,
  code 0, ``mask`` False). ``K = 1`` gives ``D = 0``: the lone class has
  probability 1.

  Attributes:
    nodes: ``[num_classes, max_depth]`` int32 internal-node ids.
    codes: ``[num_classes, max_depth]`` int32 branch codes in ``{0, 1}``.
    mask: ``[num_classes, max_depth]`` bool, True on the real path entries.
  """

  nodes: jax.Array
  codes: jax.Array
  mask: jax.Array

  @property
  def num_classes(self) -> int:
    return self.nodes.shape[0]

  @property
  def num_nodes(self) -> int:
    return self.nodes.shape[0] - 1

  @property
  def max_depth(self) -> int:
    return self.nodes.shape[1]


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


# ----------------------------------------------------------------------------
# Building trees and clusters (host side, NumPy).
# ----------------------------------------------------------------------------


def _check_counts(counts: ArrayLike) -> np.ndarray:
  """``counts`` as a float64 NumPy vector, or a clear error."""
  if not v.is_concrete(counts):
    raise TypeError(
        "counts must be concrete (a NumPy array or list): trees and clusters"
        " are built on the host, outside jit."
    )
  a = np.asarray(counts)
  if not (jnp.issubdtype(a.dtype, jnp.integer)
          or jnp.issubdtype(a.dtype, jnp.floating)):
    raise TypeError(
        f"counts must hold integers or floats; got {a.dtype} with shape"
        f" {a.shape}."
    )
  v.check_rank("counts", a, 1, "[num_classes]")
  if a.size == 0:
    raise ValueError("counts must have at least one class; got shape (0,).")
  v.check_finite("counts", a)
  v.check_nonnegative("counts", a)
  a = a.astype(np.float64)
  if not a.sum() > 0:
    raise ValueError(
        f"counts must not be all zero; got {a.size} zero counts."
    )
  return a


def _tree_from_parents(
    parent: np.ndarray, side: np.ndarray, num_classes: int
) -> Tree:
  """Padded root-first paths of a tree given as a parent array.

  Nodes ``0 .. K-2`` are internal (0 the root, parent -1) and node
  ``K - 1 + k`` is the leaf of class ``k``; ``side[i]`` is the code of the
  branch from ``parent[i]`` to ``i``.
  """
  # All leaves climb at once, one vectorized step per level, where a walk
  # per class would take O(K * D) Python steps.
  cur = np.arange(num_classes) + num_classes - 1
  depth = np.zeros(num_classes, np.int32)
  up_nodes, up_codes = [], []
  while True:
    up = parent[cur]
    climbing = up >= 0
    if not climbing.any():
      break
    depth += climbing
    up_nodes.append(up)
    up_codes.append(side[cur])
    cur = np.where(climbing, up, cur)
  max_depth = len(up_nodes)
  # Column j of the root-first path is step depth - 1 - j of the climb.
  step = depth[:, None] - 1 - np.arange(max_depth)[None, :]
  mask = step >= 0
  step = np.maximum(step, 0)

  def root_first(columns):
    if not columns:
      return np.zeros((num_classes, 0), np.int32)
    climbed = np.stack(columns, axis=1)
    return np.where(mask, np.take_along_axis(climbed, step, axis=1), 0)

  nodes = root_first(up_nodes).astype(np.int32)
  codes = root_first(up_codes).astype(np.int32)
  return Tree(jnp.asarray(nodes), jnp.asarray(codes), jnp.asarray(mask))


def balanced_tree(num_classes: int) -> Tree:
  r"""A balanced binary tree over ``num_classes`` classes.

  The tree is the complete binary tree of :math:`2K - 1` nodes in heap
  order (children of node :math:`i` are :math:`2i + 1` with code 0 and
  :math:`2i + 2` with code 1): the first :math:`K - 1` are the internal
  nodes and class :math:`k` is the leaf :math:`K - 1 + k`. Every path has
  :math:`\lfloor \log_2 K \rfloor` or :math:`\lceil \log_2 K \rceil` nodes.
  The grouping of classes is arbitrary (by index); use
  :func:`huffman_tree` when class frequencies are known.

  Args:
    num_classes: :math:`K \ge 1`.

  Returns:
    A :class:`Tree` with ``max_depth`` :math:`= \lceil \log_2 K \rceil`.

  Examples:
    >>> from jaxsoftmax._hierarchical import balanced_tree
    >>> tree = balanced_tree(5)
    >>> tree.nodes.shape, tree.mask.sum(axis=1).tolist()
    ((5, 3), [2, 2, 2, 3, 3])

  References:
    F. Morin, Y. Bengio, "Hierarchical probabilistic neural network language
    model", AISTATS (2005).
  """
  v.check_positive_int("num_classes", num_classes)
  size = 2 * num_classes - 1
  ids = np.arange(size, dtype=np.int32)
  parent = np.where(ids > 0, (ids - 1) // 2, -1)
  side = (ids % 2 == 0).astype(np.int32)
  return _tree_from_parents(parent, side, num_classes)


def huffman_tree(counts: ArrayLike) -> Tree:
  r"""The Huffman tree of class frequencies: frequent classes get short paths.

  Merges the two least frequent subtrees until one is left (one sort, then
  two queues, :math:`O(K \log K)` on the host). The expected path length
  under the class frequencies :math:`p_k` is minimal among binary trees,
  between :math:`H(p)` and :math:`H(p) + 1` bits, so the expected training
  cost per example is :math:`O(d\, H(p))` rather than
  :math:`O(d \log_2 K)`. A more frequent class never gets a longer path than
  a rarer one. Ties go to the lower class index and to leaves before merged
  subtrees (the minimum-variance Huffman code), so the tree is
  deterministic.

  Args:
    counts: ``[num_classes]`` non-negative finite counts or frequencies, not
      all zero (zeros are allowed; such classes get paths at least as long
      as any other class's).

  Returns:
    A :class:`Tree`; ``max_depth`` can reach :math:`K - 1` for very skewed
    counts.

  Examples:
    >>> from jaxsoftmax._hierarchical import huffman_tree
    >>> tree = huffman_tree([45, 13, 12, 16, 9, 5])
    >>> tree.mask.sum(axis=1).tolist()
    [1, 3, 3, 3, 4, 4]

  References:
    D. A. Huffman, "A method for the construction of minimum-redundancy
    codes", Proc. IRE (1952); J. van Leeuwen, "On the construction of
    Huffman trees", ICALP (1976), the two-queue construction; T. Mikolov et
    al., "Distributed representations of words and phrases and their
    compositionality", NeurIPS (2013), hierarchical softmax on a Huffman
    tree.
  """
  counts = _check_counts(counts)
  num_classes = counts.size
  parent = [-1] * (2 * num_classes - 1)
  side = [0] * (2 * num_classes - 1)
  # Two queues instead of a heap: leaves sorted once, and the merged
  # subtrees come out in non-decreasing count, so the two least frequent are
  # always at the queues' heads. The same tree as with heapq, about 7x faster
  # at K ~ 2e5.
  order = np.argsort(counts, kind="stable")
  leaf_counts = counts[order].tolist()
  leaf_ids = (order + num_classes - 1).tolist()
  merged_counts, merged_ids = [], []
  i = j = 0
  for merge in range(num_classes - 1):
    pair = []
    for _ in range(2):
      # On equal counts the leaf goes first: the minimum-variance code.
      if i < num_classes and (j == len(merged_counts)
                              or leaf_counts[i] <= merged_counts[j]):
        pair.append((leaf_counts[i], leaf_ids[i]))
        i += 1
      else:
        pair.append((merged_counts[j], merged_ids[j]))
        j += 1
    (count_a, a), (count_b, b) = pair
    # Numbering merges backwards makes the last one, the root, node 0.
    node = num_classes - 2 - merge
    parent[a], side[a] = node, 0
    parent[b], side[b] = node, 1
    merged_counts.append(count_a + count_b)
    merged_ids.append(node)
  return _tree_from_parents(np.asarray(parent, np.int32),
                            np.asarray(side, np.int32), num_classes)


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
    >>> from jaxsoftmax._hierarchical import frequency_clusters
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


# ----------------------------------------------------------------------------
# Parameters.
# ----------------------------------------------------------------------------


def _lecun_normal(key, shape, dtype):
  return jax.random.normal(key, shape, dtype) * jnp.asarray(
      shape[0]**-0.5, dtype)


def hierarchical_init(
    key: jax.Array,
    num_features: int,
    tree: Tree,
    *,
    dtype: DTypeLike = jnp.float32,
) -> dict[str, jax.Array]:
  r"""Node classifiers for :func:`hierarchical_softmax_loss`.

  LeCun normal weights :math:`\mathcal{N}(0, 1/d)` and zero biases, as
  :func:`~jaxsoftmax.linear_init`.

  Args:
    key: a ``jax.random`` key.
    num_features: :math:`d`.
    tree: the :class:`Tree` the nodes belong to.
    dtype: parameter dtype.

  Returns:
    ``{"w": [d, K - 1], "b": [K - 1]}``; pass them as ``node_w`` and
    ``node_b``.

  Examples:
    >>> import jax
    >>> from jaxsoftmax._hierarchical import balanced_tree, hierarchical_init
    >>> hierarchical_init(jax.random.key(0), 8, balanced_tree(5))["w"].shape
    (8, 4)
  """
  v.check_positive_int("num_features", num_features)
  _check_tree(tree)
  return {
      "w": _lecun_normal(key, (num_features, tree.num_nodes), dtype),
      "b": jnp.zeros((tree.num_nodes,), dtype),
  }


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
    >>> from jaxsoftmax._hierarchical import (class_based_init,
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


# ----------------------------------------------------------------------------
# Boundary checks.
# ----------------------------------------------------------------------------


def _check_tree(tree: Tree) -> None:
  if not isinstance(tree, Tree):
    raise TypeError(
        "tree must be a Tree (from huffman_tree or balanced_tree); got"
        f" {type(tree).__name__}."
    )
  v.check_integer("tree.nodes", tree.nodes)
  v.check_rank("tree.nodes", tree.nodes, 2, "[num_classes, max_depth]")
  v.check_integer("tree.codes", tree.codes)
  v.check_same_shape("tree.codes", tree.codes, tree.nodes.shape,
                     "like tree.nodes")
  v.check_same_shape("tree.mask", tree.mask, tree.nodes.shape,
                     "like tree.nodes")
  if tree.num_classes == 0:
    raise ValueError("tree must have at least one class; got nodes of shape"
                     f" {tree.nodes.shape}.")


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


def _check_x(x: ArrayLike) -> jax.Array:
  x = jnp.asarray(x)
  v.check_floating("x", x)
  v.check_rank("x", x, 2, "[batch, num_features]")
  v.check_finite("x", x)
  return x


def _check_matrix(name, w, num_features, columns, what):
  """A dense ``[d, columns]`` array, or a Rows view of a class-major table."""
  if isinstance(w, _gather.Rows):
    shape = _gather.table_shape(name, w, 2)
    rows = columns if w.ids is None else shape[0]
    if shape != (rows, num_features):
      raise ValueError(
          f"{name} is a Rows view of a class-major table, so {name}.values"
          f" must be [rows, num_features] = [{rows}, {num_features}]"
          f" ({what}, transposed); got {shape}.")
    return w
  w = jnp.asarray(w)
  v.check_floating(name, w)
  v.check_same_shape(name, w, (num_features, columns), what)
  return w


def _check_vector(name, b, size, what):
  """A dense ``[size]`` array, or a Rows view of one."""
  if isinstance(b, _gather.Rows):
    shape = _gather.table_shape(name, b, 1)
    if b.ids is None and shape != (size,):
      raise ValueError(f"{name}.values must be {what}; got shape {shape}.")
    return b
  b = jnp.asarray(b)
  v.check_floating(name, b)
  v.check_same_shape(name, b, (size,), what)
  return b


def _check_labels(labels, batch, num_classes, ignore_index):
  labels = jnp.asarray(labels)
  v.check_integer("labels", labels)
  v.check_same_shape("labels", labels, (batch,), "[batch]")
  v.check_ignore_index(ignore_index)
  v.check_labels_in_range("labels", labels, num_classes, ignore_index)
  # Compared against class indices up to K - 1, which a narrow label dtype
  # (int8 with K > 127) cannot hold.
  return labels.astype(jnp.promote_types(labels.dtype, jnp.int32))


def _check_node_params(x, node_w, node_b, tree):
  _check_tree(tree)
  k = tree.num_classes
  node_w = _check_matrix(
      "node_w", node_w, x.shape[1], k - 1,
      f"[num_features, K - 1] for {x.shape[1]} features and K = {k}")
  if node_b is not None:
    node_b = _check_vector("node_b", node_b, k - 1, f"[K - 1] for K = {k}")
  return node_w, node_b


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


def _check_weights(weights, batch, dtype):
  if weights is None:
    return jnp.ones((batch,), dtype)
  weights = jnp.asarray(weights)
  v.check_floating("weights", weights)
  v.check_same_shape("weights", weights, (batch,), "one per label")
  v.check_nonnegative("weights", weights)
  return weights.astype(dtype)


# ----------------------------------------------------------------------------
# Hierarchical softmax.
# ----------------------------------------------------------------------------


def hierarchical_softmax_loss(
    x: ArrayLike,
    node_w: ArrayLike,
    labels: ArrayLike,
    tree: Tree,
    *,
    node_b: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Hierarchical softmax NLL, :math:`O(d \cdot D)` per example.

  Each internal node :math:`n` of ``tree`` is a logistic classifier with
  score :math:`s_n = x^\top w_n + b_n`. Along the path
  :math:`n_1, \dots, n_{D_y}` of class :math:`y` with codes
  :math:`t_j \in \{0, 1\}` (signs :math:`c_j = 2 t_j - 1`),

  .. math::
    P(y \mid x) = \prod_{j=1}^{D_y} \sigma(c_j s_{n_j}), \qquad
    -\log P(y \mid x) = \sum_{j=1}^{D_y} \operatorname{softplus}(-c_j s_{n_j})
      = \sum_{j} \operatorname{softplus}(s_{n_j}) - t_j s_{n_j},

  a sum of binary cross-entropies, with the hand-derived gradient
  :math:`\partial \ell / \partial s_{n_j} = \sigma(s_{n_j}) - t_j` (the
  custom VJP of :func:`~jaxsoftmax.binary_cross_entropy`), so
  :math:`\partial \ell / \partial w_{n_j} = (\sigma(s_{n_j}) - t_j)\, x`.
  Only the :math:`D_y` path columns of ``node_w`` are gathered per example;
  the :math:`K - 1` node scores are never all computed. The probabilities
  of all classes sum to 1 by construction. The reduction over rows matches
  :func:`~jaxsoftmax.cross_entropy`: ``mean`` is
  :math:`\sum_i w_i v_i \ell_i / \sum_i w_i v_i` with :math:`v_i = 0` for
  ignored rows.

  Numerics: stable for any finite score (scores of ±1e4 are fine); half
  precision accumulates in float32 and returns a float32 loss. Outside
  ``jit`` an out-of-range label or non-finite ``x`` raises ``ValueError``;
  under ``jit`` an out-of-range label makes its row's loss and gradient NaN.

  Args:
    x: ``[batch, num_features]`` features.
    node_w: ``[num_features, K - 1]`` node weights, one column per internal
      node of ``tree``; or a :class:`jaxsoftmax.sparse.Rows` view of the
      class-major ``[K - 1, d]`` table holding at least the labels' path
      nodes, whose gradient is then just those rows.
    labels: ``[batch]`` integer classes in ``[0, K)``.
    tree: from :func:`huffman_tree` or :func:`balanced_tree`.
    node_b: optional ``[K - 1]`` node biases, or a view of them.
    weights: optional ``[batch]`` non-negative per-example weights.
    ignore_index: label value whose rows contribute nothing and are left out
      of the mean's denominator.
    reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

  Returns:
    A scalar, or ``[batch]`` for ``reduction="none"``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax._hierarchical import (balanced_tree,
    ...     hierarchical_softmax_loss)
    >>> tree = balanced_tree(4)
    >>> loss = hierarchical_softmax_loss(jnp.ones((2, 3)), jnp.zeros((3, 3)),
    ...                                  jnp.array([0, 3]), tree)
    >>> print(f"{float(loss):.4f}")  # log 4: every node is a coin flip
    1.3863

  References:
    F. Morin, Y. Bengio, "Hierarchical probabilistic neural network language
    model", AISTATS (2005); A. Mnih, G. Hinton, "A scalable hierarchical
    distributed language model", NeurIPS (2009); T. Mikolov et al.,
    "Distributed representations of words and phrases and their
    compositionality", NeurIPS (2013).
  """
  x = _check_x(x)
  node_w, node_b = _check_node_params(x, node_w, node_b, tree)
  v.check_reduction(reduction)
  num_classes = tree.num_classes
  labels = _check_labels(labels, x.shape[0], num_classes, ignore_index)
  acc = _gather.accumulation(x, node_w)
  weights = _check_weights(weights, x.shape[0], acc)
  valid = jnp.ones(labels.shape, bool)
  if ignore_index is not None:
    valid = labels != ignore_index
  in_range = (labels >= 0) & (labels < num_classes)
  safe = jnp.where(in_range, labels, 0)
  nodes, mask = tree.nodes[safe], tree.mask[safe]
  # Under jit a label cannot raise; NaN targets make that row's loss and
  # gradient NaN instead of silently using class 0's path. Ignored rows keep
  # finite targets so their zero weight gives an exact zero.
  ok = in_range | ~valid
  targets = jnp.where(ok[:, None], tree.codes[safe].astype(acc), jnp.nan)
  scores = _gather.gathered_scores(x, node_w, node_b, nodes, acc)
  elems = _losses.binary_cross_entropy(scores, targets, reduction="none")
  rows = jnp.sum(jnp.where(mask, elems, 0), axis=-1)
  # With K = 1 there is no path to carry the NaN.
  rows = jnp.where(ok, rows, jnp.nan)
  rows = jnp.where(valid, weights * rows, 0)
  return _losses._reduce(rows, jnp.sum(jnp.where(valid, weights, 0)),
                         reduction)


def hierarchical_log_probs(
    x: ArrayLike,
    node_w: ArrayLike,
    tree: Tree,
    *,
    node_b: ArrayLike | None = None,
) -> jax.Array:
  r"""Normalized log-probabilities of every class under a hierarchical softmax.

  .. math::
    \log P(k \mid x) = \sum_{j=1}^{D_k} \log \sigma(c_{kj}\, s_{n_{kj}}),
    \qquad s = x^\top W + b \in \mathbb{R}^{K - 1}

  with the notation of :func:`hierarchical_softmax_loss`. All node scores
  are computed once (:math:`O(B K d)`, the cost of a full softmax, for
  evaluation), then accumulated along the paths one depth level at a time,
  so memory stays :math:`O(BK)` whatever the depth. Each row's
  probabilities sum to 1; :math:`\log\sigma` is evaluated as
  :math:`-\operatorname{softplus}(-s)`, finite for any finite score.

  Args:
    x: ``[batch, num_features]`` features.
    node_w: ``[num_features, K - 1]`` node weights.
    tree: from :func:`huffman_tree` or :func:`balanced_tree`.
    node_b: optional ``[K - 1]`` node biases.

  Returns:
    ``[batch, K]`` log-probabilities (float32 for half-precision inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax._hierarchical import (balanced_tree,
    ...     hierarchical_log_probs)
    >>> lp = hierarchical_log_probs(jnp.ones((1, 2)), jnp.zeros((2, 2)),
    ...                             balanced_tree(3))
    >>> print(jnp.exp(lp))
    [[0.5  0.25 0.25]]

  References:
    F. Morin, Y. Bengio, "Hierarchical probabilistic neural network language
    model", AISTATS (2005).
  """
  x = _check_x(x)
  node_w, node_b = _check_node_params(x, node_w, node_b, tree)
  node_w = _gather.dense("node_w", node_w)
  node_b = _gather.dense("node_b", node_b)
  acc = _gather.accumulation(x, node_w)
  init = jnp.zeros((x.shape[0], tree.num_classes), acc)
  if tree.num_nodes == 0:
    # A lone class has probability 1 and no node scores to gather from.
    return init
  scores = jnp.matmul(x, node_w, preferred_element_type=acc)
  if node_b is not None:
    scores = scores + node_b.astype(acc)[None, :]

  def level(total, path):
    nodes, codes, mask = path
    signs = (2 * codes - 1).astype(acc)
    lp = jax.nn.log_sigmoid(signs[None, :] * jnp.take(scores, nodes, axis=1))
    return total + jnp.where(mask[None, :], lp, 0), None

  total, _ = jax.lax.scan(level, init,
                          (tree.nodes.T, tree.codes.T, tree.mask.T))
  return total


# ----------------------------------------------------------------------------
# Class-based softmax.
# ----------------------------------------------------------------------------


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
    >>> from jaxsoftmax._hierarchical import (class_based_softmax_loss,
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
    >>> from jaxsoftmax._hierarchical import (class_based_log_probs,
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

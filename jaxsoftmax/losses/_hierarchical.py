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

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike
import numpy as np

from jaxsoftmax._core import gather as _gather
from jaxsoftmax._core import reduction as _reduction
from jaxsoftmax.losses import _dense as _losses

from jaxsoftmax._core import validation as v


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
    >>> from jaxsoftmax import balanced_tree
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
    >>> from jaxsoftmax import huffman_tree
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
    >>> from jaxsoftmax import balanced_tree, hierarchical_init
    >>> hierarchical_init(jax.random.key(0), 8, balanced_tree(5))["w"].shape
    (8, 4)
  """
  v.check_positive_int("num_features", num_features)
  _check_tree(tree)
  return {
      "w": _lecun_normal(key, (num_features, tree.num_nodes), dtype),
      "b": jnp.zeros((tree.num_nodes,), dtype),
  }


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


def _check_weights(weights, batch, dtype):
  if weights is None:
    return jnp.ones((batch,), dtype)
  weights = jnp.asarray(weights)
  v.check_floating("weights", weights)
  v.check_same_shape("weights", weights, (batch,), "one per label")
  v.check_nonnegative("weights", weights)
  return weights.astype(dtype)


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
    >>> from jaxsoftmax import (balanced_tree,
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
  return _reduction.reduce(rows, jnp.sum(jnp.where(valid, weights, 0)),
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
    >>> from jaxsoftmax import (balanced_tree,
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

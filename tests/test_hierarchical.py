"""Tests for hierarchical and class-based softmax.

Trees are checked as full binary trees and prefix codes (Huffman against an
independent optimal-cost computation), clusters as frequency-ordered
partitions. The heads' log-probabilities are checked against plain NumPy
products of path / cluster probabilities, the losses against those
log-probabilities, and their gradients (custom VJPs of the binary and
softmax cross-entropies under gathers) against ``jax.grad`` of plain float64
references and ``check_grads``. Also: weights / ignore_index, jit and vmap,
NaN under jit for bad labels, ±1e4 scores, and that the training forward
pass never builds a ``K``-wide array.
"""

import functools
import heapq
import math

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from jaxsoftmax.losses._class_based import Clusters
from jaxsoftmax.losses._hierarchical import Tree
from jaxsoftmax.losses._hierarchical import balanced_tree
from jaxsoftmax.losses._class_based import class_based_init
from jaxsoftmax.losses._class_based import class_based_log_probs
from jaxsoftmax.losses._class_based import class_based_softmax_loss
from jaxsoftmax.losses._class_based import frequency_clusters
from jaxsoftmax.losses._hierarchical import hierarchical_init
from jaxsoftmax.losses._hierarchical import hierarchical_log_probs
from jaxsoftmax.losses._hierarchical import hierarchical_softmax_loss
from jaxsoftmax.losses._hierarchical import huffman_tree

# Library in this dtype vs the float64 reference on the same rounded inputs;
# atol is relative to the largest reference magnitude.
VJP_TOL = {
    np.float32: dict(rtol=2e-5, atol=2e-5),
    np.float64: dict(rtol=1e-10, atol=1e-12),
}
EQ_TOL = dict(rtol=1e-12, atol=1e-12)

B, D = 6, 4  # batch, features
COUNTS = np.array([40, 1, 7, 0, 15, 3, 9])  # K = 7, one zero count
K = COUNTS.size
TREES = {"balanced": balanced_tree(K), "huffman": huffman_tree(COUNTS)}
CLUSTERS = frequency_clusters(COUNTS, num_clusters=3)


def _close(actual, expected, tol):
  scale = max([1.0] + [float(np.max(np.abs(np.asarray(a, np.float64)),
                                    initial=0.0))
                       for a in jax.tree.leaves(expected)])
  chex.assert_trees_all_close(
      jax.tree.map(lambda a: np.asarray(a, np.float64), actual),
      jax.tree.map(lambda a: np.asarray(a, np.float64), expected),
      rtol=tol["rtol"], atol=tol["atol"] * scale)


def _to64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _np_logsumexp(a):
  a = np.asarray(a, np.float64)
  m = a.max(axis=-1, keepdims=True)
  return np.log(np.exp(a - m).sum(axis=-1)) + m[..., 0]


# Eager JAX compiles every op on first use, which would cost more than the
# tests themselves; these compiled programs are shared by the tests below
# (same shapes and options hit the cache). Eager calls are exercised by the
# error tests and the doctests.
hier_loss = jax.jit(hierarchical_softmax_loss,
                    static_argnames=("ignore_index", "reduction"))
hier_log_probs = jax.jit(hierarchical_log_probs)
class_loss = jax.jit(class_based_softmax_loss,
                     static_argnames=("ignore_index", "reduction"))
class_log_probs = jax.jit(class_based_log_probs)


# ----------------------------------------------------------------------------
# Plain references (float64, differentiated by jax.grad).
# ----------------------------------------------------------------------------


def _paths(tree):
  nodes, codes, mask = (np.asarray(a) for a in tree)
  depth = mask.sum(axis=1)
  return [list(zip(nodes[k, :depth[k]].tolist(), codes[k, :depth[k]].tolist()))
          for k in range(nodes.shape[0])]


def _lse(h):
  m = jax.lax.stop_gradient(jnp.max(h, axis=-1, keepdims=True))
  return jnp.log(jnp.sum(jnp.exp(h - m), axis=-1)) + m[..., 0]


def ref_hierarchical_log_probs(x, w, b, tree):
  """Dense: log P(k) sums log sigmoid(+-s_n) over the K - 1 nodes, masked."""
  signs = np.zeros((tree.num_classes, tree.num_nodes))  # +1, -1 on k's path
  for k, path in enumerate(_paths(tree)):
    for n, c in path:
      signs[k, n] = 2 * c - 1
  s = x @ w + b[None, :]
  terms = jax.nn.log_sigmoid(signs[None] * s[:, None, :])  # [B, K, K - 1]
  return jnp.sum(jnp.where(signs[None] != 0, terms, 0), axis=-1)


def ref_class_based_log_probs(x, p, clusters):
  """Dense: log softmax over clusters + over the classes of the same cluster."""
  cluster = np.asarray(clusters.cluster)
  same = cluster[:, None] == cluster[None, :]  # [K, K]
  z = x @ p["cluster_w"] + p["cluster_b"][None, :]
  h = x @ p["w"] + p["b"][None, :]
  within = _lse(jnp.where(same[None], h[:, None, :], -jnp.inf))  # [B, K]
  return (z - _lse(z)[:, None])[:, cluster] + h - within


def ref_nll(log_probs, y, weights, ignore_index, reduction):
  valid = (jnp.ones(y.shape, bool) if ignore_index is None
           else y != ignore_index)
  safe = jnp.where(valid, y, 0)
  nll = -jnp.take_along_axis(log_probs, safe[:, None], axis=1)[:, 0]
  rows = jnp.where(valid, weights * nll, 0)
  if reduction == "none":
    return rows
  if reduction == "sum":
    return jnp.sum(rows)
  return jnp.sum(rows) / jnp.sum(jnp.where(valid, weights, 0))


def _hier_data(dtype, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return dict(
      x=(rng.normal(size=(B, D)) * scale).astype(dtype),
      w=rng.normal(size=(D, K - 1)).astype(dtype),
      b=rng.normal(size=K - 1).astype(dtype),
      y=rng.integers(0, K, size=B),
      weights=rng.uniform(0.5, 2.0, size=B).astype(dtype),
      ct=rng.normal(size=B),
  )


def _class_data(dtype, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  c = CLUSTERS.num_clusters
  shapes = {"cluster_w": (D, c), "cluster_b": (c,), "w": (D, K), "b": (K,)}
  return dict(
      x=rng.normal(size=(B, D)).astype(dtype),
      params={k: (rng.normal(size=s) * scale).astype(dtype)
              for k, s in shapes.items()},
      y=rng.integers(0, K, size=B),
      weights=rng.uniform(0.5, 2.0, size=B).astype(dtype),
      ct=rng.normal(size=B),
  )


# ----------------------------------------------------------------------------
# Trees.
# ----------------------------------------------------------------------------


def assert_valid_tree(tree, num_classes):
  """A full binary tree with K - 1 internal nodes; its paths: a prefix code."""
  assert isinstance(tree, Tree)
  nodes, codes, mask = (np.asarray(a) for a in tree)
  assert nodes.dtype == np.int32 and codes.dtype == np.int32
  assert mask.dtype == bool
  assert nodes.shape == codes.shape == mask.shape
  assert nodes.shape[0] == num_classes == tree.num_classes
  depth = mask.sum(axis=1)
  assert tree.max_depth == (depth.max() if num_classes > 1 else 0)
  # Paths are left-aligned and padded with zeros.
  np.testing.assert_array_equal(
      mask, np.arange(nodes.shape[1])[None, :] < depth[:, None])
  assert not nodes[~mask].any() and not codes[~mask].any()
  assert set(np.unique(codes[mask]).tolist()) <= {0, 1}
  if num_classes == 1:
    return
  assert (nodes[:, 0] == 0).all()  # every path starts at the root
  # Each (node, branch) leads to one place: the next node or one leaf. This
  # fails if a path is repeated or is a prefix of another.
  child = {}
  for k, path in enumerate(_paths(tree)):
    for j, edge in enumerate(path):
      nxt = path[j + 1][0] if j + 1 < len(path) else ("leaf", k)
      assert child.setdefault(edge, nxt) == nxt, (edge, child[edge], nxt)
  assert len(child) == 2 * (num_classes - 1)  # both branches of every node
  assert {n for n, _ in child} == set(range(num_classes - 1))
  words = sorted(tuple(c for _, c in path) for path in _paths(tree))
  for a, b in zip(words, words[1:]):  # a prefix sorts right before its word
    assert b[:len(a)] != a
  assert math.fsum(2.0**-len(w) for w in words) == 1.0  # Kraft equality


@pytest.mark.parametrize("num_classes", [1, 2, 3, 5, 8, 13, 100])
def test_balanced_tree_valid_and_shallow(num_classes):
  tree = balanced_tree(num_classes)
  assert_valid_tree(tree, num_classes)
  depth = np.asarray(tree.mask).sum(axis=1)
  assert tree.max_depth == math.ceil(math.log2(num_classes))
  assert depth.max() - depth.min() <= 1


def _huffman_cost(counts):
  """Optimal expected code length x total: the sum of all merged weights."""
  heap = [float(c) for c in counts]
  heapq.heapify(heap)
  cost = 0.0
  while len(heap) > 1:
    merged = heapq.heappop(heap) + heapq.heappop(heap)
    cost += merged
    heapq.heappush(heap, merged)
  return cost


def test_huffman_tree_textbook_example():
  counts = [45, 13, 12, 16, 9, 5]
  tree = huffman_tree(counts)
  depth = np.asarray(tree.mask).sum(axis=1)
  np.testing.assert_array_equal(depth, [1, 3, 3, 3, 4, 4])
  assert np.dot(depth, counts) == 224 == _huffman_cost(counts)


@pytest.mark.parametrize("counts", [[5], [0, 3], [3, 0], [1, 1]])
def test_huffman_tree_one_and_two_classes(counts):
  tree = huffman_tree(counts)
  assert_valid_tree(tree, len(counts))
  assert tree.max_depth == len(counts) - 1


@hypothesis.given(st.lists(st.integers(0, 30), min_size=1, max_size=40)
                  .filter(lambda c: sum(c) > 0))
def test_huffman_tree_is_optimal_prefix_code(counts):
  counts = np.asarray(counts)
  tree = huffman_tree(counts)
  assert_valid_tree(tree, counts.size)
  depth = np.asarray(tree.mask).sum(axis=1)
  assert np.dot(depth, counts) == _huffman_cost(counts)
  # More frequent classes never get longer paths.
  more = counts[:, None] > counts[None, :]
  assert (depth[:, None] <= depth[None, :])[more].all()


def test_huffman_tree_skewed_counts_reach_depth_k_minus_1():
  tree = huffman_tree(2.0**np.arange(12))
  assert_valid_tree(tree, 12)
  np.testing.assert_array_equal(np.asarray(tree.mask).sum(axis=1)[::-1],
                                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11])


@pytest.mark.parametrize("build", [huffman_tree, frequency_clusters])
@pytest.mark.parametrize("counts, match", [
    ([3, -1, 2], "counts must be >= 0"),
    ([0, 0, 0], "counts must not be all zero"),
    ([1.0, np.nan], "counts must be finite"),
    ([1.0, np.inf], "counts must be finite"),
    ([[1, 2], [3, 4]], r"counts must have rank 1.*\(2, 2\)"),
    ([], "counts must have at least one class"),
])
def test_invalid_counts_raise(build, counts, match):
  with pytest.raises(ValueError, match=match):
    build(np.asarray(counts, dtype=np.float64 if counts else np.int64))


def test_invalid_counts_dtype_and_sizes_raise():
  with pytest.raises(TypeError, match="counts must hold integers or floats"):
    huffman_tree(np.array([True, False]))
  with pytest.raises(TypeError, match="counts must be concrete"):
    jax.jit(huffman_tree)(np.ones(3))
  with pytest.raises(ValueError, match="num_classes"):
    balanced_tree(0)
  with pytest.raises(TypeError, match="num_classes"):
    balanced_tree(2.0)


# ----------------------------------------------------------------------------
# Clusters.
# ----------------------------------------------------------------------------


def assert_valid_clusters(clusters, counts, num_clusters):
  assert isinstance(clusters, Clusters)
  cluster, position, members, mask = (np.asarray(a) for a in clusters)
  num_classes = len(counts)
  assert members.shape[0] == num_clusters == clusters.num_clusters
  assert mask.any(axis=1).all()  # no empty cluster
  assert mask.sum() == num_classes
  np.testing.assert_array_equal(np.sort(members[mask]), np.arange(num_classes))
  np.testing.assert_array_equal(members[cluster, position],
                                np.arange(num_classes))
  assert not members[~mask].any()
  np.testing.assert_array_equal(  # members are left-aligned
      mask, np.arange(mask.shape[1])[None, :] < mask.sum(axis=1)[:, None])
  # Walking down the frequencies, the cluster id never decreases.
  order = np.argsort(-np.asarray(counts), kind="stable")
  assert (np.diff(cluster[order]) >= 0).all()
  # Each cluster holds less than 1/C of the mass beyond its rarest member.
  p = np.asarray(counts, np.float64) / np.sum(counts)
  for c in range(num_clusters):
    m = members[c][mask[c]]
    assert p[m].sum() - p[m].min() < 1 / num_clusters + 1e-12


@pytest.mark.parametrize("num_classes", [1, 2, 4, 5, 10, 17])
def test_frequency_clusters_default_is_ceil_sqrt_k(num_classes):
  counts = np.arange(num_classes, 0, -1)
  clusters = frequency_clusters(counts)
  assert_valid_clusters(clusters, counts, math.ceil(math.sqrt(num_classes)))


def test_frequency_clusters_uniform_counts_give_equal_sizes():
  clusters = frequency_clusters(np.ones(100), num_clusters=10)
  np.testing.assert_array_equal(np.asarray(clusters.mask).sum(axis=1), 10)
  np.testing.assert_array_equal(np.asarray(clusters.cluster),
                                np.repeat(np.arange(10), 10))


def test_frequency_clusters_zipf_frequent_classes_alone():
  counts = 1e6 / np.arange(1, 1001)
  clusters = frequency_clusters(counts, num_clusters=32)
  assert_valid_clusters(clusters, counts, 32)
  sizes = np.asarray(clusters.mask).sum(axis=1)
  assert sizes[0] == 1 and sizes[-1] > 100  # the head alone, the tail shared


@hypothesis.given(st.lists(st.integers(0, 1000), min_size=1, max_size=60)
                  .filter(lambda c: sum(c) > 0), st.data())
def test_frequency_clusters_partition(counts, data):
  num_clusters = data.draw(st.integers(1, len(counts)))
  assert_valid_clusters(frequency_clusters(counts, num_clusters), counts,
                        num_clusters)


def test_frequency_clusters_bad_num_clusters():
  with pytest.raises(ValueError, match=r"num_clusters must be at most .*\(3\)"):
    frequency_clusters([1, 2, 3], num_clusters=4)
  with pytest.raises(ValueError, match="num_clusters"):
    frequency_clusters([1, 2, 3], num_clusters=0)


# ----------------------------------------------------------------------------
# Hierarchical softmax: probabilities, loss, gradients.
# ----------------------------------------------------------------------------


@jax.jit
def _hier_outputs(x, w, b, y, weights, tree):
  """Log-probs and every reduction, one compiled program per tree."""
  loss = functools.partial(hierarchical_softmax_loss, x, w, y, tree, node_b=b)
  return dict(
      log_probs=hierarchical_log_probs(x, w, tree, node_b=b),
      none=loss(reduction="none"),
      mean=loss(),
      weighted_none=loss(weights=weights, reduction="none"),
      weighted_sum=loss(weights=weights, reduction="sum"),
      weighted_mean=loss(weights=weights),
  )


def _check_reductions(out, y, weights):
  """The losses are -log P(label), weighted and reduced as documented."""
  nll = -np.asarray(out["log_probs"])[np.arange(B), y]
  _close(out["none"], nll, EQ_TOL)
  _close(out["mean"], np.mean(nll), EQ_TOL)
  _close(out["weighted_none"], weights * nll, EQ_TOL)
  _close(out["weighted_sum"], np.sum(weights * nll), EQ_TOL)
  _close(out["weighted_mean"], np.sum(weights * nll) / np.sum(weights),
         EQ_TOL)


@pytest.mark.parametrize("kind", sorted(TREES))
def test_hierarchical_log_probs_are_normalized_path_products(kind):
  tree, d = TREES[kind], _hier_data(np.float64)
  lp = hier_log_probs(d["x"], d["w"], tree, node_b=d["b"])
  assert lp.shape == (B, K) and lp.dtype == np.float64
  np.testing.assert_allclose(_np_logsumexp(lp), 0, atol=1e-12)
  s = d["x"] @ d["w"] + d["b"][None, :]
  prob = np.ones((B, K))
  for k, path in enumerate(_paths(tree)):
    for n, c in path:
      prob[:, k] *= 1 / (1 + np.exp(-(2 * c - 1) * s[:, n]))
  np.testing.assert_allclose(np.exp(lp), prob, rtol=1e-12, atol=0)


def test_hierarchical_loss_is_minus_log_prob_of_label():
  d = _hier_data(np.float64)
  _check_reductions(
      _hier_outputs(d["x"], d["w"], d["b"], d["y"], d["weights"],
                    TREES["huffman"]),
      d["y"], d["weights"])


def _vjp_pair(f, f_ref, primals, ct):
  """(value, cotangents) of ``f`` and of ``f_ref`` in float64, one program."""

  def both(primals, ct):
    out, vjp = jax.vjp(f, *primals)
    out_ref, vjp_ref = jax.vjp(
        f_ref, *jax.tree.map(lambda a: a.astype(np.float64), primals))
    return (out, vjp(ct)), (out_ref, vjp_ref(ct.astype(np.float64)))

  return jax.jit(both)(primals, ct)


def _labels_for(y, ignore_index):
  y = y.copy()
  if ignore_index is not None:
    y[[1, 4]] = ignore_index
  y[0] = 2  # a valid row, so the mean is defined
  return y


def _cotangent(ct, reduction, dtype):
  return np.asarray(ct if reduction == "none" else ct[0], dtype)


# Each tree, reduction and dtype once; "sum" is checked against "none" below.
HIER_CASES = [
    ("huffman", "mean", -100, np.float64),
    ("balanced", "none", 0, np.float32),
]


@pytest.mark.parametrize("kind, reduction, ignore_index, dtype", HIER_CASES)
def test_hierarchical_vjp_matches_reference(kind, reduction, ignore_index,
                                            dtype):
  tree, d = TREES[kind], _hier_data(dtype, seed=1)
  y = _labels_for(d["y"], ignore_index)

  def f(x, w, b, weights):
    return hierarchical_softmax_loss(x, w, y, tree, node_b=b, weights=weights,
                                     ignore_index=ignore_index,
                                     reduction=reduction)

  def f_ref(x, w, b, weights):
    lp = ref_hierarchical_log_probs(x, w, b, tree)
    return ref_nll(lp, y, weights, ignore_index, reduction)

  primals = (d["x"], d["w"], d["b"], d["weights"])
  (out, grads), (out_ref, grads_ref) = _vjp_pair(
      f, f_ref, primals, _cotangent(d["ct"], reduction, dtype))
  assert out.dtype == dtype
  assert [g.dtype for g in grads] == [dtype] * 4
  _close(out, out_ref, VJP_TOL[dtype])
  _close(grads, grads_ref, VJP_TOL[dtype])


def test_hierarchical_check_grads():
  tree, d = TREES["huffman"], _hier_data(np.float64, seed=2)
  y = _labels_for(d["y"], -1)
  f = jax.jit(lambda x, w, b, weights: hierarchical_softmax_loss(
      x, w, y, tree, node_b=b, weights=weights, ignore_index=-1))
  check_grads(f, (d["x"], d["w"], d["b"], d["weights"]), order=1,
              modes=["rev"])


def test_hierarchical_ignore_index_matches_slicing():
  tree, d = TREES["huffman"], _hier_data(np.float64, seed=3)
  y = _labels_for(d["y"], -1)
  keep = y != -1
  f = lambda x, y, w, **kw: hier_loss(x, d["w"], y, tree, node_b=d["b"],
                                      weights=w, **kw)
  _close(f(d["x"], y, d["weights"], ignore_index=-1),
         f(d["x"][keep], y[keep], d["weights"][keep]), EQ_TOL)
  assert float(f(d["x"], np.full(B, -1), d["weights"], ignore_index=-1)) == 0


def test_hierarchical_one_and_two_classes():
  x = np.ones((3, D))
  one, w1 = balanced_tree(1), np.zeros((D, 0))
  np.testing.assert_array_equal(hier_log_probs(x, w1, one), np.zeros((3, 1)))
  loss, grad = jax.jit(jax.value_and_grad(hierarchical_softmax_loss,
                                          argnums=1))(x, w1, np.zeros(3, int),
                                                      one)
  assert float(loss) == 0.0 and grad.shape == (D, 0)
  two, w2 = huffman_tree([1, 3]), np.full((D, 1), 0.25)  # score 1
  sig = 1 / (1 + np.exp(-1.0))
  np.testing.assert_allclose(np.exp(hier_log_probs(x, w2, two)[0]),
                             [1 - sig, sig], rtol=1e-12)
  np.testing.assert_allclose(
      hier_loss(x, w2, np.array([0, 1, 1]), two, reduction="none"),
      -np.log([1 - sig, sig, sig]), rtol=1e-12)


# ----------------------------------------------------------------------------
# Class-based softmax.
# ----------------------------------------------------------------------------


@jax.jit
def _class_outputs(x, params, y, weights):
  """Log-probs, the dense reference and every reduction, one program."""
  loss = functools.partial(class_based_softmax_loss, x, params, y, CLUSTERS)
  return dict(
      log_probs=class_based_log_probs(x, params, CLUSTERS),
      reference=ref_class_based_log_probs(x, params, CLUSTERS),
      none=loss(reduction="none"),
      mean=loss(),
      weighted_none=loss(weights=weights, reduction="none"),
      weighted_sum=loss(weights=weights, reduction="sum"),
      weighted_mean=loss(weights=weights),
  )


def test_class_based_log_probs_are_normalized_and_match_reference():
  d = _class_data(np.float64)
  out = _class_outputs(d["x"], d["params"], d["y"], d["weights"])
  lp = out["log_probs"]
  assert lp.shape == (B, K) and lp.dtype == np.float64
  np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1, rtol=1e-12)
  _close(lp, out["reference"], EQ_TOL)
  _check_reductions(out, d["y"], d["weights"])


CLASS_CASES = [
    ("mean", -100, np.float32),
    ("none", 0, np.float64),  # ignore_index 0 is also a cluster id
]


@pytest.mark.parametrize("reduction, ignore_index, dtype", CLASS_CASES)
def test_class_based_vjp_matches_reference(reduction, ignore_index, dtype):
  d = _class_data(dtype, seed=1)
  y = _labels_for(d["y"], ignore_index)

  def f(x, params, weights):
    return class_based_softmax_loss(x, params, y, CLUSTERS, weights=weights,
                                    ignore_index=ignore_index,
                                    reduction=reduction)

  def f_ref(x, params, weights):
    lp = ref_class_based_log_probs(x, params, CLUSTERS)
    return ref_nll(lp, y, weights, ignore_index, reduction)

  primals = (d["x"], d["params"], d["weights"])
  (out, grads), (out_ref, grads_ref) = _vjp_pair(
      f, f_ref, primals, _cotangent(d["ct"], reduction, dtype))
  assert out.dtype == dtype
  assert all(g.dtype == dtype for g in jax.tree.leaves(grads))
  _close(out, out_ref, VJP_TOL[dtype])
  _close(grads, grads_ref, VJP_TOL[dtype])


def test_class_based_ignore_index_matches_slicing():
  d = _class_data(np.float64, seed=3)
  y = _labels_for(d["y"], 0)  # ignore_index 0 is also a class and a cluster
  keep = y != 0
  f = lambda x, y, w, **kw: class_loss(x, d["params"], y, CLUSTERS, weights=w,
                                       **kw)
  _close(f(d["x"], y, d["weights"], ignore_index=0),
         f(d["x"][keep], y[keep], d["weights"][keep]), EQ_TOL)
  assert float(f(d["x"], np.zeros(B, int), d["weights"], ignore_index=0)) == 0


# ----------------------------------------------------------------------------
# Both heads: jit, vmap, NaN under jit, large scores, cost, half precision.
# ----------------------------------------------------------------------------


def _hier_params_loss(p, x, y):
  return hierarchical_softmax_loss(x, p[0], y, TREES["huffman"], node_b=p[1])


def _class_params_loss(p, x, y):
  return class_based_softmax_loss(x, p, y, CLUSTERS)


HEADS = {
    "hierarchical": (_hier_params_loss,
                     jax.jit(jax.value_and_grad(_hier_params_loss))),
    "class_based": (_class_params_loss,
                    jax.jit(jax.value_and_grad(_class_params_loss))),
}


def _head_data(head, scale=1.0):
  if head == "hierarchical":
    d = _hier_data(np.float64, scale=scale)
    return (d["w"], d["b"]), d["x"], d["y"]
  d = _class_data(np.float64, scale=scale)
  return d["params"], d["x"], d["y"]


def _head_log_probs(head, params, x):
  if head == "hierarchical":
    return hier_log_probs(x, params[0], TREES["huffman"], node_b=params[1])
  return class_log_probs(x, params, CLUSTERS)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_vmap_matches_loop(head):
  f, value_and_grad = HEADS[head]
  params, x, y = _head_data(head)
  xs = np.stack([x, 2 * x, -x])
  ys = np.stack([y, y[::-1], (y + 1) % K])
  batched = jax.jit(jax.vmap(jax.value_and_grad(f), in_axes=(None, 0, 0)))(
      params, xs, ys)
  looped = [value_and_grad(params, xs[i], ys[i]) for i in range(3)]
  _close(batched, jax.tree.map(lambda *a: np.stack(a), *looped), EQ_TOL)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_out_of_range_label_under_jit_gives_nan(head):
  f, value_and_grad = HEADS[head]
  params, x, y = _head_data(head)
  bad = y.copy()
  bad[3] = K
  value, grads = value_and_grad(params, x, bad)
  assert np.isnan(value)
  assert all(np.isnan(g).any() for g in jax.tree.leaves(grads))
  if head == "hierarchical":
    d = _hier_data(np.float64)
    rows = _hier_outputs(x, *params, bad, d["weights"], TREES["huffman"])
  else:
    rows = _class_outputs(x, params, bad, _class_data(np.float64)["weights"])
  rows = rows["none"]
  assert np.isnan(rows[3]) and np.isfinite(np.delete(np.asarray(rows), 3)).all()
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 7\)"):
    f(params, x, bad)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_large_scores_stay_finite(head):
  _, value_and_grad = HEADS[head]
  params, x, y = _head_data(head, scale=3e3)  # scores of order 1e4
  value, grads = value_and_grad(params, x, y)
  assert np.isfinite(value) and float(value) > 100
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  lp = _head_log_probs(head, params, x)
  assert np.isfinite(lp).all()
  np.testing.assert_allclose(_np_logsumexp(lp), 0, atol=1e-12)
  _close(value, -np.mean(np.asarray(lp)[np.arange(B), y]), EQ_TOL)


def _shapes_in(jaxpr):
  """Every intermediate shape of a jaxpr, sub-jaxprs included."""
  for eqn in jaxpr.eqns:
    yield from (v.aval.shape for v in eqn.outvars)
    for param in eqn.params.values():
      sub = getattr(param, "jaxpr", param)
      if hasattr(sub, "eqns"):
        yield from _shapes_in(sub)


def test_losses_never_build_a_k_wide_array():
  """The training forward pass gathers path / cluster columns only."""
  num_classes, batch = 97, 5
  counts = 1000 / np.arange(1, num_classes + 1)
  x, y = np.ones((batch, 3)), np.arange(batch)
  tree = huffman_tree(counts)
  assert tree.max_depth < 20
  jaxpr = jax.make_jaxpr(hierarchical_softmax_loss)(
      x, np.zeros((3, num_classes - 1)), y, tree).jaxpr
  shapes = list(_shapes_in(jaxpr))
  assert (batch, tree.max_depth) in shapes
  assert not [s for s in shapes if num_classes - 1 in s]
  clusters = frequency_clusters(counts)
  assert clusters.max_size < num_classes // 2
  params = {"cluster_w": np.zeros((3, clusters.num_clusters)),
            "cluster_b": np.zeros(clusters.num_clusters),
            "w": np.zeros((3, num_classes)), "b": np.zeros(num_classes)}
  jaxpr = jax.make_jaxpr(class_based_softmax_loss)(x, params, y,
                                                   clusters).jaxpr
  shapes = list(_shapes_in(jaxpr))
  assert (batch, clusters.max_size) in shapes
  assert not [s for s in shapes if num_classes in s]


def test_bfloat16_inputs_reduce_in_float32():
  d, tree = _hier_data(np.float64), TREES["huffman"]
  args = [d[k].astype(jnp.bfloat16) for k in ("x", "w", "b")]
  f = lambda x, w, b: hierarchical_softmax_loss(x, w, d["y"], tree, node_b=b)
  value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(*args)
  assert value.dtype == jnp.float32
  assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
  ref = _hier_outputs(*_to64(args), d["y"], d["weights"], tree)["mean"]
  np.testing.assert_allclose(float(value), float(ref), rtol=1e-2)
  lp = jax.eval_shape(hierarchical_log_probs, args[0], args[1], tree)
  assert lp.dtype == jnp.float32


def test_init_shapes():
  p = jax.eval_shape(lambda: hierarchical_init(jax.random.key(0), D,
                                               TREES["huffman"]))
  assert {k: (v.shape, v.dtype) for k, v in p.items()} == {
      "w": ((D, K - 1), np.float32), "b": ((K - 1,), np.float32)}
  p = jax.eval_shape(lambda: class_based_init(jax.random.key(0), D, CLUSTERS,
                                              dtype=jnp.float64))
  assert {k: (v.shape, v.dtype) for k, v in p.items()} == {
      "cluster_w": ((D, 3), np.float64), "cluster_b": ((3,), np.float64),
      "w": ((D, K), np.float64), "b": ((K,), np.float64)}


# ----------------------------------------------------------------------------
# Bad input (eager: values are checked).
# ----------------------------------------------------------------------------


def test_hierarchical_bad_inputs_raise():
  d, tree = _hier_data(np.float64), TREES["huffman"]
  x, w, y = d["x"], d["w"], d["y"]
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 7\)"):
    hierarchical_softmax_loss(x, w, np.where(y == y[0], -1, y), tree)
  with pytest.raises(ValueError,
                     match=r"node_w must have shape \(4, 6\).*got \(4, 7\)"):
    hierarchical_softmax_loss(x, np.zeros((D, K)), y, tree)
  with pytest.raises(ValueError, match=r"node_w must have shape \(4, 6\)"):
    hierarchical_log_probs(x, np.zeros((D + 1, K - 1)), tree)
  with pytest.raises(ValueError, match=r"node_b must have shape \(6,\)"):
    hierarchical_softmax_loss(x, w, y, tree, node_b=np.zeros(K))
  with pytest.raises(ValueError, match=r"x must have rank 2"):
    hierarchical_softmax_loss(x[0], w, y, tree)
  x_nan = x.copy()
  x_nan[1, 2] = np.nan
  with pytest.raises(ValueError, match="x must be finite"):
    hierarchical_softmax_loss(x_nan, w, y, tree)
  with pytest.raises(TypeError, match="x must have a floating dtype"):
    hierarchical_log_probs(x.astype(int), w, tree)
  with pytest.raises(TypeError, match="labels must have an integer dtype"):
    hierarchical_softmax_loss(x, w, y.astype(float), tree)
  with pytest.raises(ValueError, match=r"weights must have shape \(6,\)"):
    hierarchical_softmax_loss(x, w, y, tree, weights=np.ones(B + 1))
  with pytest.raises(ValueError, match="weights must be >= 0"):
    hierarchical_softmax_loss(x, w, y, tree, weights=-np.ones(B))
  with pytest.raises(ValueError, match="reduction"):
    hierarchical_softmax_loss(x, w, y, tree, reduction="avg")
  with pytest.raises(TypeError, match="tree must be a Tree"):
    hierarchical_softmax_loss(x, w, y, tuple(tree))


def test_class_based_bad_inputs_raise():
  d = _class_data(np.float64)
  x, params, y = d["x"], d["params"], d["y"]
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 7\)"):
    class_based_softmax_loss(x, params, np.where(y == y[0], K, y), CLUSTERS)
  bad = dict(params, w=np.zeros((D, K - 1)))
  with pytest.raises(ValueError,
                     match=r"params\['w'\] must have shape \(4, 7\)"):
    class_based_softmax_loss(x, bad, y, CLUSTERS)
  bad = dict(params, cluster_b=np.zeros(4))
  with pytest.raises(ValueError,
                     match=r"params\['cluster_b'\] must have shape \(3,\)"):
    class_based_log_probs(x, bad, CLUSTERS)
  with pytest.raises(ValueError, match="params must hold"):
    class_based_softmax_loss(x, {"w": params["w"]}, y, CLUSTERS)
  with pytest.raises(TypeError, match="clusters must be a Clusters"):
    class_based_softmax_loss(x, params, y, TREES["huffman"])

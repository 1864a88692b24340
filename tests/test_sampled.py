"""Tests for sampled softmax, NCE and negative sampling (``_sampled``).

The losses are checked against plain references written here from the
formulas, evaluated on the same candidate ids (a sampler called with the
same key draws the same ids), values and ``jax.grad`` gradients in float64.
Sampled softmax with a candidate set holding every class must equal the full
``cross_entropy``; its gradient's bias must shrink as the number of samples
grows.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxsoftmax import cross_entropy
from jaxsoftmax.losses import _sampled
from jaxsoftmax import samplers
from jaxsoftmax.losses._sampled import negative_sampling_loss
from jaxsoftmax.losses._sampled import nce_loss
from jaxsoftmax.losses._sampled import sampled_softmax_loss

REDUCTIONS = ("none", "sum", "mean")
# Same float64 formula computed two ways (gathers vs a dense reference).
F64 = dict(rtol=1e-10, atol=1e-12)
# One sampler and one candidate count for most tests, so the sampling code
# compiles once per batch layout. Zipf-like counts put most mass on classes
# 0-2 (accidental hits are certain); class 13 never occurs (q = 0).
K = M = 20
COUNTS = np.floor(200.0 / np.arange(1, K + 1))
COUNTS[13] = 0
UNIGRAM = samplers.unigram(COUNTS)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["w", "b"],
    meta_fields=["num_classes"],
)
@dataclasses.dataclass(frozen=True)
class ExactSoftmaxSampler(samplers.Sampler):
  """q(k | x) = softmax(x w + b): a query-dependent stand-in for MIDX.

  O(K) per query, so only for tests; it exercises the interface a
  query-dependent sampler plugs into.
  """

  w: jax.Array
  b: jax.Array
  num_classes: int
  query_dependent = True

  @property
  def support_size(self):
    return self.num_classes

  def _draw(self, key, query, n):
    # Inverse CDF: O(K) per query, O(log K) per draw.
    cdf = jnp.cumsum(jax.nn.softmax(query @ self.w + self.b))
    u = jax.random.uniform(key, (n,), cdf.dtype) * cdf[-1]
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"),
                       self.num_classes - 1)

  def _log_prob(self, query, ids):
    return jax.nn.log_softmax(query @ self.w + self.b)[ids].astype(jnp.float32)


def _problem(batch=6, dim=5, num_classes=K, dtype=jnp.float64):
  # NumPy data: jax.random would compile a PRNG kernel per shape.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, dim)), dtype)
  w = jnp.asarray(rng.normal(size=(dim, num_classes)), dtype)
  b = jnp.asarray(0.5 * rng.normal(size=num_classes), dtype)
  # Frequent classes of UNIGRAM, so accidental hits happen.
  y = jnp.asarray(rng.integers(0, 3, size=batch), jnp.int32)
  return x, w, b, y


def _rows_reduce(rows, weights, valid, reduction):
  rows = jnp.where(valid, weights * rows, 0)
  if reduction == "none":
    return rows
  if reduction == "sum":
    return jnp.sum(rows)
  return jnp.sum(rows) / jnp.sum(jnp.where(valid, weights, 0))


def _ref_logits(x, w, b, y, ids):
  """Dense reference: full logits, then the label's and candidates' columns."""
  h = x @ w + b[None, :]
  ids = jnp.broadcast_to(ids, (x.shape[0],) + ids.shape[-1:])
  return (jnp.take_along_axis(h, y[:, None], axis=1)[:, 0],
          jnp.take_along_axis(h, ids, axis=1), ids)


def ref_sampled_softmax(x, w, b, y, ids, log_q, *, replace, remove_hits,
                        weights, valid, reduction):
  """-s_y + log(e^{s_y} + sum_j [k_j != y] e^{s_kj - log c_kj})."""
  m = ids.shape[-1]
  s_y, s_c, ids = _ref_logits(x, w, b, y, ids)
  log_count = jnp.broadcast_to(log_q + (math.log(m) if replace else 0.0),
                               s_c.shape)
  keep = jnp.isfinite(log_count)
  if remove_hits:
    keep &= ids != y[:, None]
  terms = jnp.concatenate(
      [s_y[:, None], jnp.where(keep, s_c - log_count, -jnp.inf)], axis=1)
  rows = jax.nn.logsumexp(terms, axis=1) - s_y
  return _rows_reduce(rows, weights, valid, reduction)


def ref_logistic(x, w, b, y, ids, log_q, log_q_y, *, correct, remove_hits,
                 weights, valid, reduction):
  """softplus(-z_y) + sum_j softplus(z_kj), z = s - log(m q) if correct."""
  m = ids.shape[-1]
  s_y, s_c, ids = _ref_logits(x, w, b, y, ids)
  if correct:
    s_y = s_y - (log_q_y + math.log(m))
    s_c = s_c - (jnp.broadcast_to(log_q, s_c.shape) + math.log(m))
  keep = jnp.ones(s_c.shape, bool)
  if remove_hits:
    keep &= ids != y[:, None]
  rows = jax.nn.softplus(-s_y) + jnp.sum(
      jnp.where(keep, jax.nn.softplus(s_c), 0), axis=1)
  return _rows_reduce(rows, weights, valid, reduction)


def _close(actual, expected, tol=F64):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a, np.float64),
                               np.asarray(e, np.float64), **tol)


# ----------------------------------------------------------------------------
# Sampled softmax.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shared", [True, False])
def test_all_classes_sampled_equals_full_cross_entropy(shared, reduction):
  """Every class drawn without replacement (pi = 1): loss and gradients equal
  cross_entropy on x @ w + b, with weights and ignore_index, in float64."""
  x, w, b, _ = _problem()
  y = jnp.array([3, 0, 19, -100, 5, 5])
  weights = jnp.linspace(0.5, 2.0, 6)
  sampler = samplers.uniform(K)

  def sampled(x, w, b, weights):
    return sampled_softmax_loss(
        jax.random.key(1), x, w, b, y, sampler=sampler,
        num_samples=K, replace=False, shared=shared,
        weights=weights, ignore_index=-100, reduction=reduction)

  def full(x, w, b, weights):
    return cross_entropy(x @ w + b[None, :], y, weights=weights,
                         ignore_index=-100, reduction=reduction)

  _close(sampled(x, w, b, weights), full(x, w, b, weights))
  scalar = (lambda f: f) if reduction != "none" else (
      lambda f: lambda *a: jnp.sum(jnp.sin(f(*a))))
  grads = jax.grad(scalar(sampled), argnums=(0, 1, 2, 3))(x, w, b, weights)
  _close(grads, jax.grad(scalar(full), argnums=(0, 1, 2, 3))(x, w, b, weights))


@pytest.mark.parametrize(
    "sampler_name, shared, remove_hits, replace",
    [("unigram", True, True, True), ("unigram", True, False, True),
     ("unigram", False, True, True), ("unigram", True, True, False),
     ("exact_softmax", False, True, True)],
)
def test_sampled_softmax_matches_reference_with_hits(sampler_name, shared,
                                                     remove_hits, replace):
  """Value and gradients equal the formula on the same ids: the label's logit
  uncorrected, candidates shifted by the log expected count (log(m q) with
  replacement, log pi without), hits masked when asked."""
  x, w, b, _ = _problem()
  # Each sampler's likely classes: the model's top class (for the exact
  # softmax proposal) and the head of UNIGRAM.
  top = jnp.argmax(x @ w + b[None, :], axis=1).astype(jnp.int32)
  y = jnp.concatenate([top[:3], jnp.array([0, 1, 2], jnp.int32)])
  m = M if replace else 10
  sampler = UNIGRAM if sampler_name == "unigram" else ExactSoftmaxSampler(
      w, b, K)
  key = jax.random.key(2)
  ids, log_q = sampler.sample(key, None if shared else x, m, replace=replace)
  hits = jnp.broadcast_to(ids, (6, m)) == y[:, None]
  assert hits.any()  # the case under test happens
  weights = jnp.arange(1.0, 7.0)
  valid = jnp.ones(6, bool)

  def loss(x, w, b):
    return sampled_softmax_loss(
        key, x, w, b, y, sampler=sampler, num_samples=m, shared=shared,
        remove_accidental_hits=remove_hits, replace=replace, weights=weights)

  def ref(x, w, b):
    return ref_sampled_softmax(
        x, w, b, y, ids, log_q, replace=replace, remove_hits=remove_hits,
        weights=weights, valid=valid, reduction="mean")

  _close(jax.value_and_grad(loss, (0, 1, 2))(x, w, b),
         jax.value_and_grad(ref, (0, 1, 2))(x, w, b))
  if remove_hits and shared:
    kept = sampled_softmax_loss(
        key, x, w, b, y, sampler=sampler, num_samples=m, shared=shared,
        remove_accidental_hits=False, weights=weights)
    assert float(kept) > float(loss(x, w, b))  # hits add mass to the sum


def test_gradient_bias_shrinks_with_num_samples():
  """Mean sampled gradient vs the exact one at m = 8, 64, 512 on K = 1000.

  512 replicas of 2 rows, each with its own candidate set (shared=False),
  give 512 independent gradients w.r.t. x in one call; their mean's error is
  the bias plus a noise whose norm we estimate and keep out of the margins.
  """
  num_classes, reps = 1000, 512
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 8)))
  w = jnp.asarray(0.7 * rng.normal(size=(8, num_classes)))
  b = jnp.zeros(num_classes)
  y = jnp.asarray(rng.integers(0, num_classes, size=2), jnp.int32)
  exact = jax.grad(lambda x: cross_entropy(x @ w + b[None, :], y,
                                           reduction="sum"))(x)
  xr, yr = jnp.tile(x, (reps, 1)), jnp.tile(y, reps)
  sampler = samplers.log_uniform(num_classes)
  sizes = (8, 64, 512)

  @jax.jit
  def grads(xr):
    return [jax.grad(lambda x, m=m: sampled_softmax_loss(
        jax.random.key(m), x, w, b, yr, sampler=sampler, num_samples=m,
        shared=False, reduction="sum"))(xr).reshape(reps, 2, 8)
            for m in sizes]

  scale = float(jnp.linalg.norm(exact))
  bias, noise = {}, {}
  for m, g in zip(sizes, grads(xr)):
    bias[m] = float(jnp.linalg.norm(g.mean(0) - exact)) / scale
    noise[m] = float(jnp.linalg.norm(g.std(0))) / math.sqrt(reps) / scale
  # Each measured error is within ~1.5 noise norms of the true bias.
  assert bias[8] > bias[64] + 2 * (noise[8] + noise[64])
  assert bias[64] > bias[512] + 2 * (noise[64] + noise[512])
  assert bias[512] < bias[8] / 4


@pytest.mark.parametrize("shared", [True, False])
def test_half_precision_inputs_reduce_in_float32(shared):
  """bf16 parameters: float32 loss, bf16 cotangents, close to float32, for
  the shared gather and the per-row one (its own backward rule)."""
  x, w, b, y = _problem(dtype=jnp.float32)
  key = jax.random.key(3)

  def loss(x, w, b):
    return sampled_softmax_loss(key, x, w, b, y, sampler=UNIGRAM,
                                num_samples=M, shared=shared)

  lo, grads = jax.value_and_grad(loss, (0, 1, 2))(
      *(a.astype(jnp.bfloat16) for a in (x, w, b)))
  assert lo.dtype == jnp.float32
  assert all(g.dtype == jnp.bfloat16 for g in grads)
  np.testing.assert_allclose(lo, loss(x, w, b), rtol=2e-2)
  grads32 = jax.grad(loss, (0, 1, 2))(x, w, b)
  for g, g32 in zip(grads, grads32):
    np.testing.assert_allclose(np.asarray(g, np.float32), g32, atol=2e-2)


# ----------------------------------------------------------------------------
# NCE and negative sampling.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "name, shared, remove_hits",
    [("nce", True, False), ("nce", False, True),
     ("negative_sampling", True, True), ("negative_sampling", False, False)],
)
def test_logistic_losses_match_reference(name, shared, remove_hits, reduction):
  """NCE (scores shifted by log(m q)) and negative sampling (raw scores):
  value and gradients equal the formula, with weights and ignore_index."""
  x, w, b, _ = _problem()
  # Class 13 has q = 0: NCE's label term for it must be exactly 0.
  y = jnp.array([0, 1, -1, 2, 13, 19])
  valid = y != -1
  m = M
  sampler = UNIGRAM
  key = jax.random.key(4)
  ids, log_q = sampler.sample(key, None if shared else x, m)
  log_q_y = sampler.log_prob(None, jnp.where(valid, y, 0))
  weights = jnp.arange(1.0, 7.0)
  fn = nce_loss if name == "nce" else negative_sampling_loss

  def loss(x, w, b):
    out = fn(key, x, w, b, y, sampler=sampler, num_samples=m, shared=shared,
             remove_accidental_hits=remove_hits, weights=weights,
             ignore_index=-1, reduction=reduction)
    return out if reduction != "none" else jnp.sum(jnp.sin(out))

  def ref(x, w, b):
    out = ref_logistic(x, w, b, jnp.where(valid, y, 0), ids, log_q, log_q_y,
                       correct=name == "nce", remove_hits=remove_hits,
                       weights=weights, valid=valid, reduction=reduction)
    return out if reduction != "none" else jnp.sum(jnp.sin(out))

  _close(jax.value_and_grad(loss, (0, 1, 2))(x, w, b),
         jax.value_and_grad(ref, (0, 1, 2))(x, w, b))
  assert np.isfinite(jax.grad(loss)(x, w, b)).all()


# ----------------------------------------------------------------------------
# jit, vmap, NaN semantics.
# ----------------------------------------------------------------------------


def _all_losses(key, x, w, b, y, sampler):
  opts = dict(sampler=sampler, num_samples=M, reduction="none")
  return (
      sampled_softmax_loss(key, x, w, b, y, **opts),
      nce_loss(key, x, w, b, y, shared=False, **opts),
      negative_sampling_loss(key, x, w, b, y, **opts),
  )


def test_jit_and_vmap_over_keys_match_eager():
  """vmap over keys of jit(value_and_grad) equals one eager call per key."""
  x, w, b, y = _problem()
  sampler = UNIGRAM

  def value_and_grads(key, w, sampler):
    def total(w):
      losses = _all_losses(key, x, w, b, y, sampler)
      return sum(jnp.sum(l) for l in losses), losses
    return jax.value_and_grad(total, has_aux=True)(w)

  keys = jax.random.split(jax.random.key(6), 3)
  batched = jax.jit(jax.vmap(value_and_grads, in_axes=(0, None, None)))(
      keys, w, sampler)
  for i in range(3):
    _close(jax.tree.map(lambda a: a[i], batched),
           value_and_grads(keys[i], w, sampler))


def test_out_of_range_labels_under_jit_give_nan_rows():
  """Traced labels cannot be checked: that row's loss and x-gradient are NaN,
  the other rows are unaffected (cross_entropy's convention)."""
  x, w, b, _ = _problem()
  y = jnp.array([0, 20, 1, -3, 2, 0])
  bad = np.array([False, True, False, True, False, False])
  sampler = UNIGRAM

  @jax.jit
  def run(x, y):
    losses = _all_losses(jax.random.key(7), x, w, b, y, sampler)
    grads = [jax.grad(lambda x, i=i: jnp.sum(
        _all_losses(jax.random.key(7), x, w, b, y, sampler)[i]))(x)
             for i in range(len(losses))]
    return losses, grads

  losses, grads = run(x, y)
  for rows, g in zip(losses, grads):
    assert np.isnan(rows[bad]).all() and np.isfinite(rows[~bad]).all()
    assert np.isnan(g[bad]).all(axis=1).all()
    assert np.isfinite(g[~bad]).all()


# ----------------------------------------------------------------------------
# Query-dependent samplers and input checks.
# ----------------------------------------------------------------------------


def test_query_dependent_sampler_per_query_log_prob_and_distinct_sets():
  """A query-dependent sampler refuses queries=None and a shared set without
  replacement; its log_prob is per query; its distinct sets are distinct per
  row."""
  x, w, b, y = _problem()
  sampler = ExactSoftmaxSampler(w, b, K)
  key = jax.random.key(8)
  for fn in (sampled_softmax_loss, negative_sampling_loss):
    with pytest.raises(ValueError, match="query-dependent.*mixture.*"
                       "replace=True or shared=False"):
      fn(key, x, w, b, y, sampler=sampler, num_samples=4, replace=False)
  with pytest.raises(ValueError, match="query-dependent"):
    sampler.sample(key, None, 4)
  ids = jnp.tile(jnp.arange(K), (6, 1))
  _close(sampler.log_prob(x, ids),
         jax.nn.log_softmax(x @ w + b[None, :]), dict(rtol=1e-6, atol=1e-6))
  # A peaked proposal needs a longer horizon to find 7 distinct classes.
  ids, log_q = sampler.sample(key, x, 7, replace=False, max_draws=20_000)
  assert ids.shape == (6, 7)
  assert all(len(set(row)) == 7 for row in np.asarray(ids).tolist())
  assert (np.asarray(log_q) <= 0).all()


def test_max_draws_sets_the_distinct_search_horizon():
  """A peaked per-row proposal fills 7 distinct slots only with a longer
  horizon; the loss then equals the formula on the sampler's own sets."""
  x, w, b, y = _problem()
  sampler = ExactSoftmaxSampler(w, b, K)
  key = jax.random.key(12)
  ids, log_q = sampler.sample(key, x, 7, replace=False, max_draws=20_000)
  assert np.isfinite(np.asarray(log_q)).all()

  def loss(x, w, b, max_draws=20_000):
    return sampled_softmax_loss(key, x, w, b, y, sampler=sampler,
                                num_samples=7, shared=False, replace=False,
                                max_draws=max_draws)

  def ref(x, w, b):
    return ref_sampled_softmax(x, w, b, y, ids, log_q, replace=False,
                               remove_hits=True, weights=jnp.ones(6),
                               valid=jnp.ones(6, bool), reduction="mean")

  _close(jax.value_and_grad(loss, (0, 1, 2))(x, w, b),
         jax.value_and_grad(ref, (0, 1, 2))(x, w, b))
  assert float(loss(x, w, b, max_draws=1)) != float(loss(x, w, b))
  with pytest.raises(ValueError, match="max_draws must be an int >= 1"):
    negative_sampling_loss(key, x, w, b, y, sampler=UNIGRAM, num_samples=4,
                           replace=False, max_draws=0)


def test_shared_set_of_query_dependent_sampler_is_the_rows_mixture():
  """shared=True with a query-dependent q: the set is drawn from qbar = mean
  of the rows' q (chi-square on 8000 draws), corrected by log(m qbar), so the
  partition estimate is unbiased per row; loss and gradients equal the
  formula on the same ids, for sampled softmax and NCE."""
  x, w, b, y = _problem()
  sampler = ExactSoftmaxSampler(w, b, K)
  qbar = jnp.mean(jax.nn.softmax(x @ w + b[None, :]), axis=0)
  m = 8

  def draw(key):
    return _sampled.candidates(key, x, sampler, m, True, True)[:2]

  keys = jax.random.split(jax.random.key(11), 1000)
  ids, log_count = jax.jit(jax.vmap(draw))(keys)
  assert ids.shape == (1000, m)
  _close(log_count - math.log(m), jnp.log(qbar)[ids],
         dict(rtol=1e-5, atol=1e-5))
  freq = np.bincount(np.asarray(ids).ravel(), minlength=K)
  expected = np.asarray(qbar) * freq.sum()
  assert scipy.stats.chisquare(freq, expected).pvalue > 1e-3
  # Hansen-Hurwitz: E[sum_j e^{s_ik_j} / (m qbar(k_j))] = sum_k e^{s_ik}.
  s = x @ w + b[None, :]
  est = jnp.sum(jnp.exp(jnp.take_along_axis(
      jnp.broadcast_to(s[None], (1000,) + s.shape),
      jnp.broadcast_to(ids[:, None, :], (1000, 6, m)), axis=2)
      - log_count[:, None, :]), axis=2)
  mean, se = np.mean(est, 0), np.std(est, 0) / math.sqrt(1000)
  assert (np.abs(mean - np.sum(np.exp(s), 1)) < 5 * se).all()

  key = keys[0]
  ids, log_count = draw(key)  # the losses' own (unbatched) computation
  log_q = log_count - math.log(m)
  valid = jnp.ones(6, bool)
  weights = jnp.arange(1.0, 7.0)

  def loss(x, w, b):
    return sampled_softmax_loss(key, x, w, b, y, sampler=sampler,
                                num_samples=m, weights=weights)

  def ref(x, w, b):
    return ref_sampled_softmax(x, w, b, y, ids, log_q, replace=True,
                               remove_hits=True, weights=weights, valid=valid,
                               reduction="mean")

  _close(jax.value_and_grad(loss, (0, 1, 2))(x, w, b),
         jax.value_and_grad(ref, (0, 1, 2))(x, w, b))

  def nce(x, w, b):
    return nce_loss(key, x, w, b, y, sampler=sampler, num_samples=m,
                    weights=weights)

  def nce_ref(x, w, b):
    # The label's log qbar in the sampler's float32, as the loss has it.
    log_q_y = _sampled._mixture_log_prob(
        sampler, jax.lax.stop_gradient(x), y)
    return ref_logistic(x, w, b, y, ids, log_q, log_q_y,
                        correct=True, remove_hits=False, weights=weights,
                        valid=valid, reduction="mean")

  _close(jax.value_and_grad(nce, (0, 1, 2))(x, w, b),
         jax.value_and_grad(nce_ref, (0, 1, 2))(x, w, b))


def test_bad_inputs_raise_clear_errors():
  x, w, b, y = _problem()
  s = UNIGRAM
  key = jax.random.key(9)
  call = functools.partial(sampled_softmax_loss, key, sampler=s,
                           num_samples=4)
  with pytest.raises(ValueError,
                     match=r"labels must lie in \[0, 20\); got \[20\]"):
    call(x, w, b, y.at[2].set(20))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 20\)"):
    nce_loss(key, x, w, b, y.at[0].set(-1), sampler=s, num_samples=4)
  with pytest.raises(ValueError, match="num_samples=21 distinct"):
    call(x, w, b, y, num_samples=21, replace=False)
  with pytest.raises(ValueError, match="num_samples must be >= 1"):
    call(x, w, b, y, num_samples=0)
  with pytest.raises(ValueError, match="sampler draws from 30 classes but w"
                     " has 20"):
    call(x, w, b, y, sampler=samplers.uniform(30))
  with pytest.raises(TypeError, match="sampler must be a"):
    call(x, w, b, y, sampler="unigram")
  with pytest.raises(ValueError, match=r"b must have shape \(20,\)"):
    call(x, w, b[:5], y)
  with pytest.raises(ValueError, match="x must have 5 features"):
    call(x[:, :3], w, b, y)
  with pytest.raises(ValueError, match=r"labels must have shape \(6,\)"):
    call(x, w, b, y[:4])
  with pytest.raises(TypeError, match="labels must have an integer dtype"):
    call(x, w, b, y.astype(jnp.float32))
  with pytest.raises(ValueError, match="weights must be >= 0"):
    call(x, w, b, y, weights=-jnp.ones(6))
  with pytest.raises(ValueError, match="reduction must be one of"):
    call(x, w, b, y, reduction="avg")
  with pytest.raises(TypeError, match="shared must be a bool"):
    call(x, w, b, y, shared=1)
  with pytest.raises(ValueError, match="x must be finite"):
    call(x.at[0, 0].set(jnp.nan), w, b, y)
  with pytest.raises(ValueError, match="counts must be >= 0"):
    samplers.unigram(np.array([1.0, -1.0]))

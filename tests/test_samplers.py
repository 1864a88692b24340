"""Tests for ``jaxsoftmax.samplers``: distributions, without-replacement
weights, shapes, pytree/jit/vmap behaviour and input checks.

Statistical tests use fixed keys, so they are deterministic; each one also
shows that its statistic rejects a slightly wrong distribution, so a pass
means something.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxsoftmax import samplers
from jaxsoftmax.samplers._base import _alias_tables

K = 50
NUM_DRAWS = 200_000
# Zipf-like counts with a few zeros, so the unigram table has light, heavy
# and impossible classes.
COUNTS = np.floor(1000.0 / np.arange(1, K + 1) ** 1.1)
COUNTS[[7, 19, 33]] = 0


def _samplers():
  return {
      "uniform": samplers.uniform(K),
      "log_uniform": samplers.log_uniform(K),
      "unigram": samplers.unigram(COUNTS, power=0.75),
  }


def _reference_q(name):
  """float64 per-draw probabilities, written from the definitions."""
  if name == "uniform":
    return np.full(K, 1.0 / K)
  if name == "log_uniform":
    k = np.arange(K)
    return (np.log(k + 2) - np.log(k + 1)) / np.log(K + 1)
  w = COUNTS**0.75
  return w / w.sum()


@functools.partial(jax.jit, static_argnums=(2, 3))
def _draw(sampler, key, num_samples, replace):
  return sampler.sample(key, None, num_samples, replace=replace)


def _chi2_pvalue(observed, q):
  support = q > 0
  expected = observed.sum() * q[support]
  stat = np.sum((observed[support] - expected) ** 2 / expected)
  return stats.chi2.sf(stat, support.sum() - 1)


# ----------------------------------------------------------------------------
# Distributions.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uniform", "log_uniform", "unigram"])
def test_log_prob_matches_definition_and_normalizes(name):
  """log_prob equals the formula and logsumexp over all ids is 0."""
  sampler = _samplers()[name]
  log_q = np.asarray(sampler.log_prob(None, jnp.arange(K)), np.float64)
  q = _reference_q(name)
  np.testing.assert_allclose(np.exp(log_q), q, rtol=1e-6, atol=0)
  assert abs(float(jax.nn.logsumexp(jnp.asarray(log_q)))) < 1e-6
  assert np.isneginf(log_q[q == 0]).all()


def test_log_uniform_matches_tensorflow_formula_at_large_k():
  """The Zipfian table stays normalized and exact in the tail at K = 1e6."""
  k = 1_000_000
  s = samplers.log_uniform(k)
  ids = np.array([0, 1, 999, k - 1])
  expected = np.log(np.log((ids + 2.0) / (ids + 1.0)) / np.log(k + 1.0))
  np.testing.assert_allclose(s.log_prob(None, ids), expected, rtol=1e-6)
  log_p = np.asarray(s.log_p, np.float64)
  assert abs(np.log(np.sum(np.exp(log_p)))) < 1e-5
  # The alias table resolves the tail: its implied mass matches q there.
  threshold = np.asarray(s.threshold, np.float64)
  implied = (threshold + np.bincount(np.asarray(s.alias), 1 - threshold, k)) / k
  np.testing.assert_allclose(implied[-1000:], np.exp(log_p[-1000:]), rtol=1e-5)


@pytest.mark.parametrize(
    "p",
    [
        np.full(7, 1 / 7),
        np.array([1.0]),
        np.array([0.5, 0.25, 0.25]),
        np.array([0.0, 0.0, 1.0, 0.0]),
        np.random.default_rng(0).random(40) ** 8,
        np.random.default_rng(1).dirichlet(np.full(300, 0.05)),
    ],
    ids=["flat", "single", "exact_boundary", "point_mass", "skewed", "sparse"],
)
def test_alias_tables_reproduce_distribution(p):
  """The table's implied mass (bucket kept + aliased in) equals p exactly."""
  p = p / p.sum()
  threshold, alias = _alias_tables(p)
  assert ((threshold >= 0) & (threshold <= 1)).all()
  implied = (threshold + np.bincount(alias, 1 - threshold, p.size)) / p.size
  np.testing.assert_allclose(implied, p, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["uniform", "log_uniform", "unigram"])
def test_with_replacement_frequencies_match_log_prob(name):
  """Chi-square of 200k draws against exp(log_prob); a 5% tilt is rejected."""
  sampler = _samplers()[name]
  ids, log_q = _draw(sampler, jax.random.key(0), NUM_DRAWS, True)
  observed = np.bincount(np.asarray(ids), minlength=K)
  q = np.exp(np.asarray(sampler.log_prob(None, jnp.arange(K)), np.float64))
  assert observed[q == 0].sum() == 0
  np.testing.assert_allclose(log_q, sampler.log_prob(None, ids), rtol=0)
  assert _chi2_pvalue(observed, q) > 1e-3
  tilted = q * np.linspace(0.95, 1.05, K)
  assert _chi2_pvalue(observed, tilted / tilted.sum()) < 1e-6


def _inclusion_probabilities(q, m, nodes=400):
  """Successive-sampling inclusion probabilities, by numerical integration.

  pi_j = P(A_j < m-th smallest A_k, k != j) with A_k ~ Exp(q_k) independent
  = int_0^1 P(#{k != j: A_k < t(u)} <= m - 1) du, t(u) = -log(1 - u) / q_j,
  the count being Poisson-binomial (a DP over classes).
  """
  u, wts = np.polynomial.legendre.leggauss(nodes)
  u, wts = (u + 1) / 2, wts / 2
  support = np.flatnonzero(q > 0)
  qs = q[support]
  t = -np.log1p(-u)[None, :] / qs[:, None]  # [j, node]
  dist = np.zeros((qs.size, nodes, m))  # P(count = c) for c < m
  dist[:, :, 0] = 1.0
  for k in range(qs.size):
    hit = -np.expm1(-qs[k] * t)[:, :, None]
    hit[k] = 0.0  # class j does not count against itself
    shifted = np.concatenate([np.zeros_like(dist[..., :1]), dist[..., :-1]],
                             axis=-1)
    dist = dist * (1 - hit) + shifted * hit
  pi = np.zeros(q.size)
  pi[support] = dist.sum(axis=-1) @ wts
  return pi


@pytest.mark.parametrize("name", ["uniform", "unigram"])
def test_without_replacement_inclusion_frequencies(name):
  """Distinct ids; inclusion frequencies match successive sampling; the
  returned log_q is an unbiased Horvitz-Thompson weight; m q is rejected."""
  m, num_sets = 5, 40_000
  sampler = _samplers()[name]
  # One independent set per (empty) query row.
  queries = jnp.zeros((num_sets, 0), jnp.float32)
  ids, log_q = map(np.asarray, sampler.sample(jax.random.key(1), queries, m,
                                              replace=False))
  assert np.isfinite(log_q).all()  # the horizon never binds at m = 5
  assert (np.sort(ids, axis=1)[:, 1:] != np.sort(ids, axis=1)[:, :-1]).all()
  q = _reference_q(name)
  pi = _inclusion_probabilities(q, m)
  assert abs(pi.sum() - m) < 1e-6  # the reference itself is right
  if name == "uniform":
    np.testing.assert_allclose(pi, m / K, rtol=1e-8)
  freq = np.bincount(ids.ravel(), minlength=K) / num_sets
  support = q > 0
  assert (freq[~support] == 0).all()
  se = np.sqrt(pi * (1 - pi) / num_sets)[support]
  assert np.max(np.abs(freq - pi)[support] / se) < 5
  if name == "unigram":
    naive = np.minimum(m * q, 1)[support]
    assert np.max(np.abs(freq[support] - naive) / se) > 20
  # E[1{j in S} / pi_j] = 1 for every class: the weights are unbiased.
  ht = np.zeros((num_sets, K))
  np.put_along_axis(ht, ids, np.exp(-log_q), axis=1)
  mean, sd = ht.mean(0)[support], ht.std(0)[support]
  assert np.max(np.abs(mean - 1) / (sd / np.sqrt(num_sets))) < 5


def test_without_replacement_all_classes_is_a_permutation_with_weight_one():
  """m = K without replacement returns every class once, log_q ~ 0."""
  ids, log_q = _draw(samplers.uniform(K), jax.random.key(2), K, False)
  np.testing.assert_array_equal(np.sort(ids), np.arange(K))
  np.testing.assert_allclose(log_q, 0.0, atol=1e-12)


def test_without_replacement_horizon_leaves_unfilled_slots():
  """A horizon of ~5 draws cannot find 20 classes: the rest are id 0 with
  log_q = +inf (weight 0), and the filled ones are still distinct."""
  s = samplers.unigram(COUNTS, power=0.75)
  ids, log_q = s.sample(jax.random.key(3), None, 20, replace=False,
                        max_draws=5)
  filled = np.isfinite(np.asarray(log_q))
  assert 0 < filled.sum() < 20  # Poisson(5) arrivals fit before the horizon
  assert filled[:filled.sum()].all()  # filled slots come first
  assert (np.asarray(ids)[~filled] == 0).all()
  assert np.isposinf(np.asarray(log_q)[~filled]).all()
  assert len(set(np.asarray(ids)[filled].tolist())) == filled.sum()


# ----------------------------------------------------------------------------
# Shapes, queries, pytree, jit and vmap.
# ----------------------------------------------------------------------------


def test_shapes_with_and_without_queries():
  """[..., d] queries give [..., m]; None gives one shared [m] set. (The
  without-replacement path shares this batching; the inclusion test runs it
  with [40000, 0] queries.)"""
  s = samplers.log_uniform(K)
  key = jax.random.key(4)
  ids, log_q = s.sample(key, None, 6)
  assert ids.shape == log_q.shape == (6,)
  assert ids.dtype == jnp.int32 and log_q.dtype == jnp.float32
  queries = jnp.zeros((2, 3, 8))
  ids, log_q = s.sample(key, queries, 6)
  assert ids.shape == log_q.shape == (2, 3, 6)
  # Per-query sets are independent; a static sampler ignores query values.
  assert not np.array_equal(ids[0, 0], ids[0, 1])
  np.testing.assert_array_equal(ids, s.sample(key, queries + 7.0, 6)[0])
  np.testing.assert_array_equal(s.log_prob(queries, ids),
                                s.log_prob(None, ids))


def test_sampler_is_a_pytree_with_static_sizes():
  """Tables are leaves, sizes are static; jit and vmap over keys agree."""
  s = samplers.unigram(COUNTS)
  leaves, treedef = jax.tree.flatten(s)
  assert len(leaves) == 3
  rebuilt = jax.tree.unflatten(treedef, leaves)
  assert (rebuilt.num_classes, rebuilt.support_size) == (K, K - 3)
  assert jax.tree.leaves(samplers.uniform(K)) == []
  keys = jax.random.split(jax.random.key(5), 4)

  def f(sampler, key):
    return sampler.sample(key, None, 20, replace=False)

  batched = jax.jit(jax.vmap(f, in_axes=(None, 0)))(s, keys)
  for i in range(4):
    eager = f(s, keys[i])
    np.testing.assert_array_equal(batched[0][i], eager[0])
    np.testing.assert_allclose(batched[1][i], eager[1], rtol=1e-6)
  # The tables are jit arguments (sample is jitted inside), not baked-in
  # constants: another table of the same size gives other ids.
  other = samplers.unigram(COUNTS[::-1].copy())
  assert not np.array_equal(f(s, keys[0])[0], f(other, keys[0])[0])


def test_log_prob_under_jit_gives_nan_for_out_of_range_ids():
  """Traced ids cannot be range-checked: they get NaN, not a clamped value."""
  for s in (samplers.uniform(K), samplers.log_uniform(K)):
    out = jax.jit(lambda ids, s=s: s.log_prob(None, ids))(jnp.array([-1, 0, K]))
    assert np.isnan(out[0]) and np.isfinite(out[1]) and np.isnan(out[2])


# ----------------------------------------------------------------------------
# Input checks.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, match",
    [
        (np.array([1.0, -2.0, 3.0]), r"counts must be >= 0; got \[-2.0\]"),
        (np.zeros(4), "at least one positive"),
        (np.array([1.0, np.nan]), "counts must be finite"),
        (np.array([1.0, np.inf]), "counts must be finite"),
        (np.ones((2, 2)), r"shape \[num_classes\].*\(2, 2\)"),
        (np.ones(0), r"shape \[num_classes\].*\(0,\)"),
    ],
)
def test_unigram_rejects_bad_counts(counts, match):
  with pytest.raises(ValueError, match=match):
    samplers.unigram(counts)


def test_unigram_rejects_bad_power_and_traced_counts():
  with pytest.raises(ValueError, match="power"):
    samplers.unigram(np.ones(3), power=-0.5)
  with pytest.raises(TypeError, match="counts must be integer or floating"):
    samplers.unigram(np.ones(3, bool))
  with pytest.raises(TypeError, match="concrete"):
    jax.jit(samplers.unigram)(jnp.ones(3))


def test_sample_rejects_bad_num_samples():
  s = samplers.uniform(10)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="num_samples must be >= 1; got 0"):
    s.sample(key, None, 0)
  with pytest.raises(ValueError, match="num_samples must be >= 1; got -3"):
    s.sample(key, None, -3)
  with pytest.raises(TypeError, match="num_samples must be a Python int"):
    s.sample(key, None, 2.0)
  with pytest.raises(ValueError, match=r"num_samples=11 distinct.*only 10"):
    s.sample(key, None, 11, replace=False)
  assert s.sample(key, None, 11)[0].shape == (11,)  # fine with replacement
  u = samplers.unigram(np.array([1.0, 0.0, 2.0]))
  with pytest.raises(ValueError, match="only 2 of the 3 classes"):
    u.sample(key, None, 3, replace=False)
  with pytest.raises(ValueError, match="max_draws"):
    s.sample(key, None, 2, replace=False, max_draws=0)
  with pytest.raises(ValueError, match="num_classes must be >= 1"):
    samplers.uniform(0)


def test_log_prob_and_queries_checks():
  s = samplers.log_uniform(10)
  with pytest.raises(ValueError,
                     match=r"ids must lie in \[0, 10\); got \[10\]"):
    s.log_prob(None, jnp.array([3, 10]))
  with pytest.raises(TypeError, match="ids must have an integer dtype"):
    s.log_prob(None, jnp.array([1.0]))
  with pytest.raises(ValueError, match=r"ids must have shape \(4,\) \+ \(n,\)"):
    s.log_prob(jnp.zeros((4, 3)), jnp.zeros((5, 2), jnp.int32))
  with pytest.raises(TypeError, match="queries must have a floating dtype"):
    s.sample(jax.random.key(0), jnp.zeros((4, 3), jnp.int32), 2)
  with pytest.raises(ValueError, match="queries must have rank >= 1"):
    s.sample(jax.random.key(0), jnp.zeros(()), 2)

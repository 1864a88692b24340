"""Tests for jaxsoftmax.diagnostics: divergences, ESS and gradient bias."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoftmax import samplers
from jaxsoftmax.diagnostics import Divergence
from jaxsoftmax.diagnostics import GradientBias
from jaxsoftmax.diagnostics import gradient_bias
from jaxsoftmax.diagnostics import importance_ess
from jaxsoftmax.diagnostics import proposal_divergence

K, D = 50, 4


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["w", "b"],
    meta_fields=["num_classes"],
)
@dataclasses.dataclass(frozen=True)
class SoftmaxSampler(samplers.Sampler):
  """A query-dependent proposal equal to the model's own softmax (test only)."""

  w: jax.Array
  b: jax.Array
  num_classes: int
  query_dependent = True

  @property
  def support_size(self) -> int:
    return self.num_classes

  def _logits(self, query):
    return query @ self.w + self.b

  def _draw(self, key, query, n):
    return jax.random.categorical(key, self._logits(query), shape=(n,))

  def _log_prob(self, query, ids):
    s = self._logits(query)
    return (s - jax.nn.logsumexp(s))[ids]


def _model(seed, n=10, k=K, d=D, scale=1.0, dtype=jnp.float64):
  # NumPy draws: every jax.random shape and dtype would be one compilation.
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d))
  w = scale * rng.standard_normal((d, k))
  b = 0.5 * rng.standard_normal(k)
  return tuple(jnp.asarray(a, dtype) for a in (x, w, b))


def _np_log_softmax(x, w, b):
  s = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(
      b, np.float64)[None, :]
  m = s.max(axis=1, keepdims=True)
  return s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))


def _np_q(sampler, k):
  """The sampler's [K] proposal in float64, renormalized as the module does."""
  q = np.exp(np.asarray(sampler.log_prob(None, jnp.arange(k)), np.float64))
  return q / q.sum()


def _np_reference(q, log_p):
  """KL(q||p), KL(p||q) and ESS per row, the textbook formulas in NumPy."""
  p = np.exp(log_p)
  with np.errstate(divide="ignore", invalid="ignore"):
    log_q = np.log(q)
    kl_qp = np.sum(np.where(q > 0, q * (log_q - log_p), 0.0), axis=1)
    kl_pq = np.sum(p * (log_p - log_q), axis=1)
    ess = 1.0 / np.sum(p**2 / q, axis=1)
  return kl_qp, kl_pq, ess


STATIC = {
    "uniform": lambda k: samplers.uniform(k),
    "log_uniform": lambda k: samplers.log_uniform(k),
    "unigram": lambda k: samplers.unigram(
        np.random.default_rng(0).integers(1, 100, size=k), power=0.75),
}


def test_unigram_equal_to_p_has_zero_divergence_and_full_ess():
  x0, w, b = _model(0, n=1)
  x = jnp.tile(x0, (10, 1))  # one query repeated, so a static q can equal p
  p = np.exp(_np_log_softmax(x0, w, b)[0])
  sampler = samplers.unigram(p, power=1.0)
  div = proposal_divergence(sampler, x, w, b)
  ess = importance_ess(sampler, x, w, b)
  assert div.kl_qp.dtype == jnp.float64 and ess.dtype == jnp.float64
  np.testing.assert_allclose(div.kl_qp, 0.0, atol=1e-12)
  np.testing.assert_allclose(div.kl_pq, 0.0, atol=1e-12)
  np.testing.assert_allclose(ess, 1.0, atol=1e-12)


def test_query_dependent_proposal_equal_to_p_per_row():
  x, w, b = _model(1)
  exact = SoftmaxSampler(w=w, b=b, num_classes=K)
  div = proposal_divergence(exact, x, w, b)
  np.testing.assert_allclose(div.kl_qp, 0.0, atol=1e-12)
  np.testing.assert_allclose(div.kl_pq, 0.0, atol=1e-12)
  np.testing.assert_allclose(importance_ess(exact, x, w, b), 1.0, atol=1e-12)
  # A proposal from another model differs row by row and matches NumPy.
  _, w2, b2 = _model(2)
  other = SoftmaxSampler(w=w2, b=b2, num_classes=K)
  q = np.exp(_np_log_softmax(x, w2, b2))
  expected = _np_reference(q, _np_log_softmax(x, w, b))
  div = proposal_divergence(other, x, w, b)
  got = (div.kl_qp, div.kl_pq, importance_ess(other, x, w, b))
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-10)
  assert np.ptp(np.asarray(div.kl_pq)) > 0.1


@pytest.mark.parametrize("name", sorted(STATIC))
def test_static_samplers_match_numpy(name):
  x, w, b = _model(3, scale=2.0)
  sampler = STATIC[name](K)
  log_p = _np_log_softmax(x, w, b)
  kl_qp, kl_pq, ess = _np_reference(
      np.broadcast_to(_np_q(sampler, K), log_p.shape), log_p)
  div = proposal_divergence(sampler, x, w, b)
  assert isinstance(div, Divergence)
  assert div.kl_qp.shape == div.kl_pq.shape == (x.shape[0],)
  np.testing.assert_allclose(div.kl_qp, kl_qp, rtol=1e-10)
  np.testing.assert_allclose(div.kl_pq, kl_pq, rtol=1e-10)
  np.testing.assert_allclose(div.mean_kl_qp, kl_qp.mean(), rtol=1e-10)
  np.testing.assert_allclose(div.mean_kl_pq, kl_pq.mean(), rtol=1e-10)
  got_ess = importance_ess(sampler, x, w, b)
  np.testing.assert_allclose(got_ess, ess, rtol=1e-10)
  assert np.all((got_ess > 0) & (got_ess <= 1))


def test_uniform_kl_qp_is_minus_log_k_minus_mean_log_p():
  x, w, b = _model(4)
  log_p = _np_log_softmax(x, w, b)
  expected = -np.log(K) - log_p.mean(axis=1)
  got = proposal_divergence(samplers.uniform(K), x, w, b).kl_qp
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_zero_in_q_gives_infinite_kl_pq_finite_kl_qp_zero_ess():
  x, w, b = _model(5)
  counts = np.arange(K) % 3  # a third of the classes have q = 0
  sampler = samplers.unigram(counts, power=1.0)
  log_p = _np_log_softmax(x, w, b)
  kl_qp, _, _ = _np_reference(
      np.broadcast_to(_np_q(sampler, K), log_p.shape), log_p)
  div = proposal_divergence(sampler, x, w, b)
  assert np.all(np.isposinf(div.kl_pq))
  assert np.isposinf(div.mean_kl_pq)
  assert np.all(np.isfinite(div.kl_qp))
  np.testing.assert_allclose(div.kl_qp, kl_qp, rtol=1e-10)
  np.testing.assert_array_equal(importance_ess(sampler, x, w, b), 0.0)


def test_divergences_nonnegative_and_ess_in_unit_interval():
  for scale in (0.0, 1.0, 30.0):
    x, w, b = _model(6, scale=scale)
    b = b * scale
    for sampler in [*(f(K) for f in STATIC.values()),
                    SoftmaxSampler(w=w, b=b, num_classes=K)]:
      div = proposal_divergence(sampler, x, w, b)
      ess = importance_ess(sampler, x, w, b)
      assert np.all(np.asarray(div.kl_qp) >= 0)
      assert np.all(np.asarray(div.kl_pq) >= 0)
      assert np.all((np.asarray(ess) > 0) & (np.asarray(ess) <= 1))


def test_float32_q_equal_p_stays_within_bounds():
  # q = p up to float32 rounding, which alone could leave KL < 0 or ESS > 1.
  for scale in (1.0, 30.0):
    x, w, b = _model(6, scale=scale, dtype=jnp.float32)
    sampler = SoftmaxSampler(w=w, b=b, num_classes=K)
    div = proposal_divergence(sampler, x, w, b)
    ess = importance_ess(sampler, x, w, b)
    assert div.kl_qp.dtype == ess.dtype == jnp.float32
    assert np.all(np.asarray(div.kl_qp) >= 0)
    assert np.all(np.asarray(div.kl_pq) >= 0)
    assert np.all((np.asarray(ess) > 0) & (np.asarray(ess) <= 1))
    # Logits of size ~100 (scale 30) carry float32 rounding of ~1e-5.
    np.testing.assert_allclose(div.kl_qp, 0.0, atol=1e-6 * scale)
    np.testing.assert_allclose(div.kl_pq, 0.0, atol=1e-6 * scale)
    np.testing.assert_allclose(ess, 1.0, atol=1e-6 * scale)


def test_half_precision_inputs_compute_in_float32():
  x, w, b = _model(7)
  div = proposal_divergence(samplers.uniform(K), x.astype(jnp.bfloat16),
                            w.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
  assert div.kl_qp.dtype == jnp.float32


def test_block_size_does_not_change_results_eager_or_jitted():
  x, w, b = _model(8)
  sampler = SoftmaxSampler(w=w[::-1], b=b, num_classes=K)
  ref = proposal_divergence(sampler, x, w, b)
  ref_ess = importance_ess(sampler, x, w, b)
  jitted = jax.jit(proposal_divergence, static_argnames="block_size")
  # 1: one query per step; 4: two blocks and a remainder of 2.
  for fn, block_size in ((proposal_divergence, 1), (jitted, 4)):
    div = fn(sampler, x, w, b, block_size=block_size)
    np.testing.assert_allclose(div.kl_qp, ref.kl_qp, rtol=1e-13, atol=0)
    np.testing.assert_allclose(div.kl_pq, ref.kl_pq, rtol=1e-13, atol=0)
  np.testing.assert_allclose(
      importance_ess(sampler, x, w, b, block_size=1), ref_ess, rtol=1e-13,
      atol=0)


def test_no_queries_gives_empty_results():
  _, w, b = _model(10)
  div = proposal_divergence(samplers.uniform(K), jnp.zeros((0, D)), w, b)
  assert div.kl_qp.shape == div.kl_pq.shape == (0,)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(queries=np.zeros((3, D), np.int32)), TypeError, "queries"),
        (dict(queries=np.zeros(D)), ValueError, "queries"),
        (dict(queries=np.zeros((3, D + 1))), ValueError, "queries"),
        (dict(b=np.zeros(K + 1)), ValueError, "b must have shape"),
        (dict(w=np.zeros(D * K)), ValueError, "w must have rank 2"),
        (dict(sampler=samplers.uniform(K + 1)), ValueError, "sampler draws"),
        (dict(sampler="uniform"), TypeError, "sampler must be"),
        (dict(block_size=0), ValueError, "block_size"),
        (dict(block_size=2.0), TypeError, "block_size"),
    ],
)
def test_proposal_divergence_rejects_bad_inputs(kwargs, error, match):
  args = dict(sampler=samplers.uniform(K), queries=np.zeros((3, D)),
              w=np.zeros((D, K)), b=np.zeros(K))
  args.update(kwargs)
  block = {"block_size": args.pop("block_size")} if "block_size" in args else {}
  for fn in (proposal_divergence, importance_ess):
    with pytest.raises(error, match=match):
      fn(args["sampler"], args["queries"], args["w"], args["b"], **block)


# gradient_bias ---------------------------------------------------------------


def _labels(seed, n, k=K):
  return jnp.asarray(np.random.default_rng(seed).integers(0, k, size=n))


def test_gradient_bias_is_zero_when_every_class_is_drawn():
  # The docstring example's call, so the two share one compilation.
  x = jnp.sin(jnp.arange(12.0)).reshape(4, 3)
  w = jnp.cos(jnp.arange(18.0)).reshape(3, 6)
  r = gradient_bias(jax.random.key(2), samplers.uniform(6), x, w, jnp.zeros(6),
                    jnp.array([0, 1, 2, 3]), num_samples=6, num_repeats=2,
                    replace=False)
  assert isinstance(r, GradientBias)
  assert all(f.shape == () and f.dtype == jnp.float64 for f in r)
  np.testing.assert_allclose(r.relative_bias, 0.0, atol=1e-12)
  np.testing.assert_allclose(r.relative_variance, 0.0, atol=1e-24)
  np.testing.assert_allclose(r.cosine, 1.0, atol=1e-12)


def test_gradient_bias_query_dependent_sampler_float32_raw_key():
  x, w, b = _model(13, n=6, dtype=jnp.float32)
  exact = SoftmaxSampler(w=w, b=b, num_classes=K)
  r = gradient_bias(jax.random.PRNGKey(2), exact, x, w, b, _labels(2, 6),
                    num_samples=1000, num_repeats=16)
  assert all(f.shape == () and f.dtype == jnp.float32 for f in r)
  assert r.relative_bias < 3 * r.bias_noise_floor
  assert r.cosine > 0.99
  np.testing.assert_allclose(
      r.bias_noise_floor, np.sqrt(r.relative_variance / 16), rtol=1e-6)


def test_gradient_bias_shrinks_with_num_samples_and_vanishes_for_q_equal_p():
  # unigram(ones) is the uniform proposal as an alias table: the three calls
  # below share a pytree structure, and the last two one compilation.
  x0, w, b = _model(14, n=1, scale=2.0)
  x = jnp.tile(x0, (10, 1))  # one query repeated, so a static q can equal p
  labels = _labels(3, x.shape[0])
  uniform = samplers.unigram(np.ones(K), power=1.0)
  few, many = (gradient_bias(jax.random.key(3), uniform, x, w, b, labels,
                             num_samples=m, num_repeats=128)
               for m in (4, 256))
  assert many.relative_bias < few.relative_bias / 4
  assert many.relative_variance < few.relative_variance / 10
  assert many.cosine > few.cosine
  # With m = 4 the bias is real, not Monte Carlo noise.
  assert few.relative_bias > 2 * few.bias_noise_floor
  exact = samplers.unigram(np.exp(_np_log_softmax(x0, w, b)[0]), power=1.0)
  r = gradient_bias(jax.random.key(4), exact, x, w, b, labels,
                    num_samples=256, num_repeats=128)
  assert r.relative_bias < 3 * r.bias_noise_floor
  assert r.relative_variance < many.relative_variance / 2
  assert r.cosine > 0.99


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(key=0), TypeError, "key"),
        (dict(x=np.zeros((4, D + 1))), ValueError, "x must have"),
        (dict(x=np.zeros((4, D), np.int32)), TypeError, "x must have"),
        (dict(b=np.zeros((1, K))), ValueError, "b must have shape"),
        (dict(labels=np.zeros(3, np.int32)), ValueError, "labels must have"),
        (dict(labels=np.zeros(4)), TypeError, "labels"),
        (dict(labels=np.array([0, 1, K, 2])), ValueError, "labels must lie"),
        (dict(sampler=samplers.uniform(K - 1)), ValueError, "sampler draws"),
        (dict(num_samples=0), ValueError, "num_samples"),
        (dict(num_samples=2.5), TypeError, "num_samples"),
        (dict(num_repeats=1), ValueError, "num_repeats must be >= 2"),
        (dict(num_repeats=True), TypeError, "num_repeats"),
        (dict(replace=1), TypeError, "replace"),
        (dict(remove_accidental_hits=None), TypeError,
         "remove_accidental_hits"),
    ],
)
def test_gradient_bias_rejects_bad_inputs(kwargs, error, match):
  args = dict(key=jax.random.key(0), sampler=samplers.uniform(K),
              x=np.zeros((4, D)), w=np.zeros((D, K)), b=np.zeros(K),
              labels=np.arange(4), num_samples=4, num_repeats=2)
  args.update(kwargs)
  positional = [args.pop(n) for n in ("key", "sampler", "x", "w", "b",
                                      "labels")]
  with pytest.raises(error, match=match):
    gradient_bias(*positional, **args)

"""The MIDX sampler: index structure, exact log q, draws, refresh, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxsoftmax.samplers import _midx
from jaxsoftmax import samplers
from jaxsoftmax.losses._sampled import sampled_softmax_loss

K, D, KC = 240, 7, 5  # odd d: halves of 4 and 3


@pytest.fixture(scope="module")
def problem():
  w = jax.random.normal(jax.random.key(0), (D, K), jnp.float64)
  b = 0.5 * jax.random.normal(jax.random.key(1), (K,), jnp.float64)
  queries = jax.random.normal(jax.random.key(2), (3, D), jnp.float64)
  counts = np.random.default_rng(0).integers(0, 40, K)
  counts[:5] = 0
  return w, b, queries, counts


_BUILT = {}


def build(problem, mode):
  """One sampler per mode for the whole module (building compiles)."""
  if mode not in _BUILT:
    w, b, _, counts = problem
    extra = {"pop": {"counts": counts}, "exact": {"b": b}}.get(mode, {})
    _BUILT[mode] = samplers.midx(w, num_codewords=KC, mode=mode,
                                 key=jax.random.key(3), **extra)
  return _BUILT[mode]


def all_ids(queries):
  return jnp.broadcast_to(jnp.arange(K), (queries.shape[0], K))


MODES = ("uniform", "pop", "exact")


@pytest.mark.parametrize("mode", MODES)
def test_csr_lists_every_class_once_in_its_bucket(problem, mode):
  s = build(problem, mode)
  order, offsets = np.asarray(s.order), np.asarray(s.offsets)
  np.testing.assert_array_equal(np.sort(order), np.arange(K))
  assert offsets[0] == 0 and offsets[-1] == K
  assert np.all(np.diff(offsets) >= 0)
  bucket = np.asarray(s.codes1) * KC + np.asarray(s.codes2)
  for j in range(KC * KC):
    np.testing.assert_array_equal(bucket[order[offsets[j]:offsets[j + 1]]], j)
  # Codes are each half's nearest codeword (of [w_i; b_i] when built
  # with biases).
  w = np.asarray(problem[0]).T
  if s.with_bias:
    w = np.concatenate([w, np.asarray(problem[1])[:, None]], axis=1)
  split = s.split
  for half, book, codes in ((w[:, :split], s.codebook1, s.codes1),
                            (w[:, split:], s.codebook2, s.codes2)):
    d2 = ((half[:, None, :] - np.asarray(book)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(codes), d2.argmin(1))


@pytest.mark.parametrize("mode", MODES)
def test_log_prob_is_normalized_in_float64(problem, mode):
  s = build(problem, mode)
  queries = problem[2]
  log_q = s.log_prob(queries, all_ids(queries))
  assert log_q.dtype == jnp.float64
  np.testing.assert_allclose(jnp.exp(log_q).sum(axis=1), 1.0, rtol=1e-12)


def test_static_modes_follow_their_formula(problem):
  w, _, queries, counts = problem
  for mode, rho in (("uniform", np.ones(K)), ("pop", counts ** 0.75)):
    s = build(problem, mode)
    s1 = np.asarray(queries[:, :4] @ s.codebook1.T)
    s2 = np.asarray(queries[:, 4:] @ s.codebook2.T)
    score = (np.exp(s1[:, np.asarray(s.codes1)] + s2[:, np.asarray(s.codes2)])
             * rho[None, :])
    expected = score / score.sum(axis=1, keepdims=True)
    got = np.exp(np.asarray(s.log_prob(queries, all_ids(queries))))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-300)


def test_biases_are_quantized_with_the_embeddings(problem):
  w, b, queries, _ = problem
  s = samplers.midx(w, b=b, num_codewords=KC, key=jax.random.key(3))
  assert s.with_bias and s.num_features == D and s.split == 4
  aug = np.concatenate([np.asarray(queries), np.ones((3, 1))], axis=1)
  s1 = aug[:, :4] @ np.asarray(s.codebook1).T
  s2 = aug[:, 4:] @ np.asarray(s.codebook2).T
  score = np.exp(s1[:, np.asarray(s.codes1)] + s2[:, np.asarray(s.codes2)])
  np.testing.assert_allclose(
      np.exp(np.asarray(s.log_prob(queries, all_ids(queries)))),
      score / score.sum(axis=1, keepdims=True), rtol=1e-10)
  with pytest.raises(ValueError, match="b must be given exactly"):
    s.refresh(w)
  with pytest.raises(ValueError, match="b must be given exactly"):
    build(problem, "uniform").refresh(w, b)


def test_exact_mode_is_the_softmax(problem):
  w, b, queries, _ = problem
  s = build(problem, "exact")
  log_q = s.log_prob(queries, all_ids(queries))
  log_p = jax.nn.log_softmax(queries @ w + b[None, :], axis=1)
  kl = jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=1)
  assert float(kl.max()) <= 1e-6
  np.testing.assert_allclose(log_q, log_p, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_draw_frequencies_match_log_prob(problem, mode):
  s = build(problem, mode)
  queries = problem[2][:2]
  n = 20_000
  ids, log_q = s.sample(jax.random.key(7), queries, n)
  expected = np.exp(np.asarray(s.log_prob(queries, all_ids(queries))))
  for row in range(2):
    observed = np.bincount(np.asarray(ids[row]), minlength=K)
    # Draws never land on a class of probability 0 (an empty bucket or a
    # zero count) ...
    assert observed[expected[row] == 0].sum() == 0
    # ... and a chi-square test on the classes with enough expected draws
    # (the rest pooled) accepts the draws (fixed key: deterministic).
    e = n * expected[row]
    big = e >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp_ = np.append(e[big], e[~big].sum())
    keep = exp_ > 0
    stat = ((obs[keep] - exp_[keep]) ** 2 / exp_[keep]).sum()
    assert stat < stats.chi2.ppf(0.9999, keep.sum() - 1), (mode, row, stat)
  np.testing.assert_allclose(
      log_q, np.log(np.take_along_axis(expected, np.asarray(ids), 1)),
      rtol=1e-5)


def test_pop_never_draws_zero_count_classes(problem):
  s = build(problem, "pop")
  assert s.support_size == int((problem[3] > 0).sum())
  ids, _ = s.sample(jax.random.key(8), problem[2], 2000)
  assert not np.isin(np.asarray(ids), np.flatnonzero(problem[3] == 0)).any()
  log_q = s.log_prob(problem[2], all_ids(problem[2]))
  assert np.all(np.isneginf(np.asarray(log_q)[:, problem[3] == 0]))


def test_empty_buckets_have_no_mass(problem):
  w = problem[0]
  s = samplers.midx(w, num_codewords=12, key=jax.random.key(4))
  sizes = np.diff(np.asarray(s.offsets))
  assert (sizes == 0).any()  # 144 buckets for 240 classes
  np.testing.assert_array_equal(np.isneginf(np.asarray(s.log_mass)),
                                sizes == 0)
  queries = problem[2]
  ids, log_q = s.sample(jax.random.key(5), queries, 500)
  assert np.isfinite(np.asarray(log_q)).all()


def test_kmeans_objective_never_increases():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(6, 3)) * 5
  points = jnp.asarray(np.repeat(centers, 40, axis=0)
                       + rng.normal(size=(240, 3)))
  fit = _midx.kmeans(jax.random.key(0), points, 8, iterations=15)
  obj = np.asarray(fit.objective)
  assert obj.shape == (16,)
  assert np.all(np.diff(obj) <= 1e-12 * obj[0]), obj
  # A poor warm start with far-away (hence empty) centroids is repaired:
  # every cluster ends up used and the objective still only falls.
  init = jnp.concatenate([points[:2], jnp.full((6, 3), 1e3)])
  fit = _midx.kmeans(None, points, 8, iterations=10, init=init)
  obj = np.asarray(fit.objective)
  assert np.all(np.diff(obj) <= 1e-12 * obj[0]), obj
  assert len(np.unique(np.asarray(fit.assignment))) == 8


def test_refresh_follows_new_embeddings(problem):
  w, b, queries, _ = problem
  s = build(problem, "uniform")
  new_w = w + 2.0 * jax.random.normal(jax.random.key(9), w.shape)
  fresh = jax.jit(lambda s, w: s.refresh(w))(s, new_w)
  assert fresh.num_classes == K and fresh.mode == "uniform"
  log_p = jax.nn.log_softmax(queries @ new_w, axis=1)

  def kl(sampler):
    log_q = sampler.log_prob(queries, all_ids(queries))
    return float(jnp.sum(jnp.exp(log_q) * (log_q - log_p)))

  assert kl(fresh) < kl(s)
  exact = build(problem, "exact").refresh(new_w, b)
  np.testing.assert_allclose(
      exact.log_prob(queries, all_ids(queries)),
      jax.nn.log_softmax(queries @ new_w + b[None, :], axis=1), atol=1e-12)
  with pytest.raises(ValueError, match="w must have shape"):
    s.refresh(new_w[:, :-1])


def test_jit_vmap_and_without_replacement(problem):
  s = build(problem, "pop")
  queries = problem[2]
  draw = jax.jit(lambda s, k: s.sample(k, queries, 6))
  ids, _ = draw(s, jax.random.key(0))
  ids2, _ = s.sample(jax.random.key(0), queries, 6)
  np.testing.assert_array_equal(ids, ids2)
  many, _ = jax.vmap(lambda k: s.sample(k, queries, 4))(
      jax.random.split(jax.random.key(1), 5))
  assert many.shape == (5, 3, 4)
  distinct, log_pi = s.sample(jax.random.key(2), queries, 20, replace=False)
  for row in np.asarray(distinct):
    assert len(set(row.tolist())) == 20
  assert np.all(np.asarray(log_pi) <= 0)


def test_sampled_softmax_with_exact_midx_recovers_full_loss(problem):
  w, b, queries, _ = problem
  s = build(problem, "exact")
  labels = jnp.array([3, 50, 199])
  full = jnp.mean(-jnp.take_along_axis(
      jax.nn.log_softmax(queries @ w + b[None, :], axis=1),
      labels[:, None], 1))
  keys = jax.random.split(jax.random.key(11), 16)
  est = jax.vmap(lambda k: sampled_softmax_loss(
      k, queries, w, b, labels, sampler=s, num_samples=200, shared=False))(
          keys)
  # A proposal equal to p: each estimate is already close, the mean closer.
  assert abs(float(est.mean()) - float(full)) < 0.02 * float(full)


def test_bad_inputs_raise_clear_errors(problem):
  w, b, queries, counts = problem
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="num_codewords"):
    samplers.midx(w, num_codewords=0, key=key)
  with pytest.raises(ValueError, match="num_codewords"):
    samplers.midx(w, num_codewords=K + 1, key=key)
  with pytest.raises(ValueError, match="at least 2 features"):
    samplers.midx(w[:1], num_codewords=2, key=key)
  with pytest.raises(ValueError, match=r"counts must be >= 0; got \[-1.0"):
    samplers.midx(w, mode="pop", counts=np.where(counts > 0, counts, -1),
                  key=key)
  with pytest.raises(ValueError, match="pass counts"):
    samplers.midx(w, mode="pop", key=key)
  with pytest.raises(ValueError, match="only used by mode='pop'"):
    samplers.midx(w, counts=counts, key=key)
  with pytest.raises(ValueError, match="mode must be one of"):
    samplers.midx(w, mode="fast", key=key)
  with pytest.raises(ValueError, match="b must have shape"):
    samplers.midx(w, mode="exact", b=b[:-1], key=key)
  with pytest.raises(ValueError, match="w must be finite|non-finite|NaN"):
    samplers.midx(w.at[0, 0].set(jnp.nan), key=key)
  s = samplers.midx(w, num_codewords=3, key=key)
  with pytest.raises(ValueError, match=r"queries must have shape \[\.\.\., 7\]"):
    s.sample(key, queries[:, :6], 3)
  with pytest.raises(ValueError, match="query-dependent"):
    s.sample(key, None, 3)

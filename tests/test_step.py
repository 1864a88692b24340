"""The shared optimizer step: dense, row-sparse, guarded, under jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsoftmax import samplers
from jaxsoftmax import sparse
from jaxsoftmax.losses._sampled import sampled_softmax_loss
from jaxsoftmax.training._step import make_train_step

K, D, B, M = 50, 4, 6, 5
TIGHT = dict(rtol=1e-12, atol=1e-12)
SAMPLER = samplers.uniform(K)


def problem(seed=0):
  kw, kx, ky = jax.random.split(jax.random.key(seed), 3)
  params = {"w": 0.1 * jax.random.normal(kw, (K, D)), "b": jnp.zeros(K)}
  batch = (jax.random.normal(kx, (B, D)), jax.random.randint(ky, (B,), 0, K))
  return params, batch


def sampled_loss(params, batch, key):
  """Sampled softmax of a class-major table, dense or a Rows view."""
  w, b = params["w"], params["b"]
  if not isinstance(w, sparse.Rows):
    w, b = sparse.Rows(None, w), sparse.Rows(None, b)
  x, labels = batch
  return sampled_softmax_loss(key, x, w, b, labels, sampler=SAMPLER,
                              num_samples=M)


def rows_used(params, batch, key):
  del params
  ids = jnp.concatenate([batch[1], SAMPLER.sample(key, None, M)[0]])
  return {"w": ids, "b": ids}


def test_dense_step_equals_a_hand_written_optax_step():
  params, batch = problem()
  key = jax.random.key(1)
  opt = optax.adam(0.1)
  step = jax.jit(make_train_step(sampled_loss, opt))
  state = opt.init(params)
  got, got_state, metrics = step(params, state, batch, key)

  loss, grads = jax.value_and_grad(sampled_loss)(params, batch, key)
  updates, want_state = opt.update(grads, state, params)
  want = optax.apply_updates(params, updates)
  np.testing.assert_allclose(metrics["loss"], loss, **TIGHT)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT),
               (got, got_state), (want, want_state))
  assert bool(metrics["good"]) and metrics["grads_finite"].shape == (2,)


def test_row_sparse_sgd_step_equals_the_dense_step():
  params, batch = problem()
  opt = optax.sgd(0.5)
  dense = jax.jit(make_train_step(sampled_loss, opt))
  rows = jax.jit(make_train_step(sampled_loss, opt, rows_fn=rows_used))
  p_dense = p_rows = params
  s_dense = s_rows = opt.init(params)
  for t in range(3):
    key = jax.random.key(10 + t)
    p_dense, s_dense, m_dense = dense(p_dense, s_dense, batch, key)
    p_rows, s_rows, m_rows = rows(p_rows, s_rows, batch, key)
    np.testing.assert_allclose(m_rows["loss"], m_dense["loss"], **TIGHT)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT),
               p_rows, p_dense)


def test_rows_fn_must_name_leaves_of_params():
  params, batch = problem()
  step = make_train_step(sampled_loss, optax.sgd(0.1),
                         rows_fn=lambda p, b, k: {"v": b[1]})
  with pytest.raises(ValueError, match="rows_fn names 'v'"):
    step(params, optax.sgd(0.1).init(params), batch, jax.random.key(0))


@pytest.mark.parametrize("rows_fn", [None, rows_used], ids=["dense", "rows"])
def test_guard_keeps_params_and_state_on_a_nan_step(rows_fn):
  params, (x, labels) = problem()
  opt = optax.adam(0.1)
  state = opt.init(params)
  step = jax.jit(make_train_step(sampled_loss, opt, rows_fn=rows_fn))
  bad = (x.at[0, 0].set(jnp.nan), labels)
  new, new_state, metrics = step(params, state, bad, jax.random.key(0))
  assert not bool(metrics["good"]) and not bool(metrics["loss_finite"])
  jax.tree.map(np.testing.assert_array_equal, (new, new_state),
               (params, state))


def test_vmap_over_learning_rates_equals_a_loop():
  params, batch = problem()
  key = jax.random.key(3)
  lrs = jnp.array([0.01, 0.1, 1.0])

  def train(lr):
    opt = optax.sgd(lr)
    step = make_train_step(sampled_loss, opt)
    p, _, m = step(params, opt.init(params), batch, key)
    return p, m["loss"]

  batched = jax.jit(jax.vmap(train))(lrs)
  for i, lr in enumerate(lrs):
    want = train(lr)
    jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, **TIGHT),
                 batched, want)


def test_hand_derived_gradient_and_mixed_precision():
  params, batch = problem()
  key = jax.random.key(4)
  opt = optax.sgd(0.1)
  calls = []

  def value_and_grad_fn(p, b, k):
    calls.append(p["w"].dtype)
    return jax.value_and_grad(sampled_loss)(p, b, k)

  step = make_train_step(sampled_loss, opt, value_and_grad_fn=value_and_grad_fn,
                         compute_dtype=jnp.float32)
  new, _, metrics = jax.jit(step)(params, opt.init(params), batch, key)
  assert calls == [jnp.float32]
  assert new["w"].dtype == jnp.float64 and bool(metrics["good"])

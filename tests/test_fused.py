"""fused_linear_cross_entropy equals cross_entropy on materialized logits."""

import functools

import hypothesis
from hypothesis import strategies as st
import jax
import jax.test_util
from jax._src.ad_checkpoint import saved_residuals
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoftmax import cross_entropy
from jaxsoftmax.losses._fused import fused_linear_cross_entropy

TOL = {jnp.float64: 1e-12, jnp.float32: 2e-5}


def _problem(seed, n, d, k, dtype=jnp.float64, scale=1.0):
  ks = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(ks[0], (n, d), dtype) * scale
  w = jax.random.normal(ks[1], (d, k), dtype)
  b = jax.random.normal(ks[2], (k,), dtype)
  y = jax.random.randint(ks[3], (n,), 0, k)
  wt = jax.random.uniform(ks[4], (n,), dtype, 0.1, 2.0)
  return x, w, b, y, wt


def _both(x, w, b, y, wt, *, fused_kw=None, **kw):
  """(value, grads) of the reference and the fused op, summed to a scalar."""

  def ref(x, w, b, wt):
    h = x @ w + b[None, :]
    return jnp.sum(cross_entropy(h, y, weights=wt, **kw))

  def fused(x, w, b, wt):
    return jnp.sum(
        fused_linear_cross_entropy(x, w, b, y, weights=wt, **kw, **fused_kw)
    )

  args = (x, w, b, wt)
  return (
      jax.value_and_grad(ref, argnums=(0, 1, 2, 3))(*args),
      jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2, 3)))(*args),
  )


def _assert_close(a, b, tol):
  (va, ga), (vb, gb) = a, b
  np.testing.assert_allclose(va, vb, rtol=tol, atol=tol)
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


@hypothesis.settings(max_examples=12)
@hypothesis.given(
    n=st.integers(1, 9),
    d=st.integers(1, 6),
    k=st.integers(1, 40),
    chunk=st.integers(1, 48),
    rows=st.one_of(st.none(), st.integers(1, 10)),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    eps=st.sampled_from([0.0, 0.3]),
)
def test_matches_unfused_for_any_chunking(n, d, k, chunk, rows, reduction, eps):
  x, w, b, y, wt = _problem(n * 1000 + k, n, d, k)
  _assert_close(
      *_both(
          x, w, b, y, wt, reduction=reduction, label_smoothing=eps,
          fused_kw=dict(chunk_size=chunk, row_chunk_size=rows),
      ),
      TOL[jnp.float64],
  )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_ignore_index_masked_classes_and_smoothing(dtype):
  x, w, b, y, wt = _problem(1, 11, 5, 37, dtype)
  b = b.at[jnp.array([0, 7, 36])].set(-jnp.inf)
  y = y.at[jnp.array([1, 4])].set(-100)
  y = jnp.where(jnp.isin(y, jnp.array([0, 7, 36])), 3, y)
  _assert_close(
      *_both(
          x, w, b, y, wt, ignore_index=-100, label_smoothing=0.1,
          fused_kw=dict(chunk_size=8, row_chunk_size=4),
      ),
      TOL[dtype],
  )


def test_fully_masked_row_is_ignored_not_nan():
  x, w, _, y, _ = _problem(2, 4, 3, 10)
  b = jnp.full((10,), -jnp.inf)
  f = lambda x, w, b: fused_linear_cross_entropy(x, w, b, y, chunk_size=3)
  val, grads = jax.value_and_grad(f, argnums=(0, 1, 2))(x, w, b)
  assert float(val) == 0.0
  for g in grads:
    assert not np.any(np.isnan(g)) and not np.any(g)


def test_large_logits_stay_finite():
  x, w, b, y, _ = _problem(3, 6, 4, 25, jnp.float32, scale=3e3)
  ref = cross_entropy(x @ w + b[None, :], y)
  val, grads = jax.value_and_grad(
      lambda w: fused_linear_cross_entropy(x, w, b, y, chunk_size=7)
  )(w)
  assert np.isfinite(float(val)) and np.all(np.isfinite(grads))
  np.testing.assert_allclose(val, ref, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_accumulates_in_float32(dtype):
  x, w, b, y, _ = _problem(4, 16, 32, 300, jnp.float32)
  xh, wh, bh = (a.astype(dtype) for a in (x, w, b))
  out = fused_linear_cross_entropy(xh, wh, bh, y, chunk_size=64)
  assert out.dtype == jnp.float32
  h = jnp.matmul(xh, wh, preferred_element_type=jnp.float32)
  ref = cross_entropy(h + bh.astype(jnp.float32)[None, :], y)
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  grads = jax.grad(
      lambda x, w, b: fused_linear_cross_entropy(x, w, b, y, chunk_size=64),
      argnums=(0, 1, 2),
  )(xh, wh, bh)
  ref_grads = jax.grad(
      lambda x, w, b: cross_entropy(x @ w + b[None, :], y), argnums=(0, 1, 2)
  )(x, w, b)
  for g, r, a in zip(grads, ref_grads, (xh, wh, bh)):
    assert g.dtype == a.dtype
    np.testing.assert_allclose(g.astype(jnp.float32), r, atol=3e-2, rtol=5e-2)


def test_z_loss_and_lse_output_are_differentiable():
  x, w, b, y, _ = _problem(5, 7, 4, 30)
  z = 1e-2

  def ref(x, w, b):
    h = x @ w + b[None, :]
    lse = jax.nn.logsumexp(h, axis=-1)
    ce = lse - jnp.take_along_axis(h, y[:, None], axis=-1)[:, 0]
    return jnp.mean(ce + z * lse**2) + 0.5 * jnp.sum(jnp.sin(lse))

  def fused(x, w, b):
    loss, lse = fused_linear_cross_entropy(
        x, w, b, y, chunk_size=9, z_loss=z, return_lse=True
    )
    return loss + 0.5 * jnp.sum(jnp.sin(lse))

  _assert_close(
      jax.value_and_grad(ref, argnums=(0, 1, 2))(x, w, b),
      jax.value_and_grad(fused, argnums=(0, 1, 2))(x, w, b),
      1e-12,
  )


def test_check_grads():
  x, w, b, y, wt = _problem(6, 5, 3, 11)
  f = functools.partial(
      fused_linear_cross_entropy, labels=y, chunk_size=4, weights=None,
      label_smoothing=0.2,
  )
  jax.test_util.check_grads(
      lambda x, w, b: f(x, w, b), (x, w, b), order=1, modes=["rev"]
  )


def test_leading_batch_dims_and_no_bias():
  x, w, _, _, _ = _problem(7, 12, 4, 20)
  x = x.reshape(3, 4, 4)
  y = jax.random.randint(jax.random.key(1), (3, 4), 0, 20)
  out = fused_linear_cross_entropy(x, w, None, y, reduction="none", chunk_size=6)
  assert out.shape == (3, 4)
  np.testing.assert_allclose(
      out, cross_entropy(x @ w, y, reduction="none"), rtol=1e-12
  )


def test_vmap_over_a_batch_of_problems():
  x, w, b, y, _ = _problem(8, 6, 3, 17)
  xs = jnp.stack([x, 2 * x])
  f = lambda x: fused_linear_cross_entropy(x, w, b, y, chunk_size=5)
  np.testing.assert_allclose(
      jax.vmap(f)(xs), jnp.stack([f(x), f(2 * x)]), rtol=1e-12
  )


def test_out_of_range_label_under_jit_is_nan():
  x, w, b, y, _ = _problem(9, 4, 3, 10)
  f = jax.jit(lambda y: fused_linear_cross_entropy(x, w, b, y, chunk_size=4))
  assert np.isnan(float(f(y.at[0].set(10))))
  assert np.isfinite(float(f(y)))


def test_saves_no_logits_sized_residual():
  n, d, k = 8, 4, 4096
  x, w, b, y, _ = _problem(10, n, d, k, jnp.float32)
  f = lambda x, w, b: fused_linear_cross_entropy(x, w, b, y, chunk_size=256)
  sizes = [r[0].size for r in saved_residuals(f, x, w, b)]
  assert max(sizes) <= d * k  # w itself, never an [n, k] logits block
  assert n * k not in sizes


def test_temporary_memory_is_a_small_fraction_of_materialized():
  n, d, k = 64, 32, 65536
  x, w, b, y, _ = _problem(11, n, d, k, jnp.float32)
  fused = jax.jit(
      jax.grad(
          lambda w: fused_linear_cross_entropy(x, w, b, y, chunk_size=1024)
      )
  )
  plain = jax.jit(jax.grad(lambda w: cross_entropy(x @ w + b[None, :], y)))
  temp = lambda f: f.lower(w).compile().memory_analysis().temp_size_in_bytes
  assert temp(fused) < 0.1 * temp(plain)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size=2.5), "chunk_size"),
        (dict(row_chunk_size=-1), "row_chunk_size"),
        (dict(z_loss=-1.0), "z_loss"),
        (dict(reduction="avg"), "reduction"),
        (dict(label_smoothing=1.5), "label_smoothing"),
    ],
)
def test_bad_options_raise(kwargs, match):
  x, w, b, y, _ = _problem(12, 4, 3, 10)
  with pytest.raises((ValueError, TypeError), match=match):
    fused_linear_cross_entropy(x, w, b, y, **kwargs)


def test_bad_arrays_raise():
  x, w, b, y, _ = _problem(13, 4, 3, 10)
  with pytest.raises(ValueError, match="features"):
    fused_linear_cross_entropy(x[:, :2], w, b, y)
  with pytest.raises(ValueError, match="b"):
    fused_linear_cross_entropy(x, w, b[:5], y)
  with pytest.raises(ValueError, match="labels"):
    fused_linear_cross_entropy(x, w, b, y.at[0].set(10))
  with pytest.raises(ValueError, match="labels"):
    fused_linear_cross_entropy(x, w, b, y[:3])
  with pytest.raises(TypeError, match="labels"):
    fused_linear_cross_entropy(x, w, b, y.astype(jnp.float32))
  with pytest.raises(ValueError, match="x"):
    fused_linear_cross_entropy(x.at[0, 0].set(jnp.nan), w, b, y)

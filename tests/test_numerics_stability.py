"""Numerical edge cases of the losses: huge and masked logits, half precision.

Pins the documented numerics of ``cross_entropy`` and friends: logits of
magnitude 1e4, ``-inf`` masks (masked classes get no probability, no
smoothing mass and gradient 0; fully masked rows count as ignored), float16 /
bfloat16 inputs (float32 loss, input-dtype gradient) and the NaN a bad label
produces under ``jit``.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoftmax import binary_cross_entropy
from jaxsoftmax import cross_entropy
from jaxsoftmax import penalty
from jaxsoftmax import soft_cross_entropy
from jaxsoftmax import zero_one_loss

N, K = 6, 7  # same [N, K] as test_losses.py, so eager ops compile once
INF = np.inf
HALF_DTYPES = (jnp.float16, jnp.bfloat16)


def _eps(dtype):
  return float(jnp.finfo(dtype).eps)


def _acc_dtype(dtype):
  return np.float64 if dtype == np.float64 else np.float32


# ----------------------------------------------------------------------------
# Float64 numpy references, written on max-shifted logits.
# ----------------------------------------------------------------------------


def np_cross_entropy(h, y, eps=0.0):
  """Per-row smoothed CE and its gradient ``softmax - q``, in float64."""
  h = np.asarray(h, np.float64)
  n, k = h.shape
  hs = h - h.max(axis=-1, keepdims=True)
  lse = np.log(np.exp(hs).sum(axis=-1))
  nll = lse - hs[np.arange(n), y]
  loss = (1 - eps) * nll + eps * (lse - hs.mean(axis=-1))
  q = (1 - eps) * np.eye(k)[y] + eps / k
  return loss, np.exp(hs - lse[:, None]) - q


def np_soft_cross_entropy(h, t):
  h = np.asarray(h, np.float64)
  hs = h - h.max(axis=-1, keepdims=True)
  logp = hs - np.log(np.exp(hs).sum(axis=-1, keepdims=True))
  return -(t * logp).sum(-1), t.sum(-1, keepdims=True) * np.exp(logp) - t


def np_binary_cross_entropy(h, y):
  h = np.asarray(h, np.float64)
  sigmoid = 0.5 * (1 + np.tanh(h / 2))  # no exp overflow at |h| = 1e4
  return np.logaddexp(0.0, h) - y * h, sigmoid - y


# ----------------------------------------------------------------------------
# 4a. Logits of magnitude 1e4.
# ----------------------------------------------------------------------------


def _huge_logits(dtype, seed=0):
  """Entries +-1e4 plus small offsets, a row near +1e4 and one near -1e4."""
  rng = np.random.default_rng(seed)
  # Offsets on a grid of 8 are exact in float16 at 1e4; bfloat16 rounds.
  h = rng.choice([-1e4, 1e4], size=(N, K)) + 8.0 * rng.integers(-3, 4, (N, K))
  h[0] = 1e4 + 8.0 * np.arange(K)
  h[1] = -1e4 - 8.0 * np.arange(K)
  h = jnp.asarray(h, dtype)
  y = jnp.asarray(rng.integers(0, K, size=N)).at[0].set(K - 1).at[1].set(3)
  return h, y


def _huge_tol(dtype):
  """Float32 accumulation loses ~ulp(1e4) in lse; half grads round too."""
  acc = _acc_dtype(dtype)
  return dict(rtol=2 * _eps(dtype), atol=8 * _eps(acc) * 1e4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, *HALF_DTYPES])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_huge_logits(dtype, eps):
  """At |h| = 1e4 the loss and gradient are finite and match float64."""
  h, y = _huge_logits(dtype)
  f = lambda h: cross_entropy(h, y, label_smoothing=eps, reduction="none")
  rows, vjp = jax.vjp(f, h)
  (g,) = vjp(jnp.ones_like(rows))
  loss_ref, g_ref = np_cross_entropy(h, np.asarray(y), eps)
  assert rows.dtype == _acc_dtype(dtype) and g.dtype == dtype
  assert np.all(np.isfinite(rows)) and np.all(np.isfinite(np.asarray(g, float)))
  tol = _huge_tol(dtype)
  np.testing.assert_allclose(rows, loss_ref, **tol)
  np.testing.assert_allclose(np.asarray(g, np.float64), g_ref, **tol)
  mean, g_mean = jax.value_and_grad(
      lambda h: cross_entropy(h, y, label_smoothing=eps))(h)
  np.testing.assert_allclose(mean, loss_ref.mean(), **tol)
  np.testing.assert_allclose(np.asarray(g_mean, np.float64), g_ref / N,
                             rtol=tol["rtol"], atol=tol["atol"] / N)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, *HALF_DTYPES])
def test_soft_and_binary_cross_entropy_huge_logits(dtype):
  """Soft CE and BCE at |h| = 1e4: finite and equal to float64 references."""
  h, _ = _huge_logits(dtype, seed=1)
  t = np.random.default_rng(1).dirichlet(np.ones(K), size=N)
  tol = _huge_tol(dtype)
  rows, vjp = jax.vjp(
      lambda h: soft_cross_entropy(h, jnp.asarray(t, dtype), reduction="none"),
      h)
  loss_ref, g_ref = np_soft_cross_entropy(h, np.asarray(jnp.asarray(t, dtype),
                                                        np.float64))
  np.testing.assert_allclose(rows, loss_ref, **tol)
  np.testing.assert_allclose(
      np.asarray(vjp(jnp.ones_like(rows))[0], np.float64), g_ref, **tol)

  yb = jnp.asarray(np.random.default_rng(2).integers(0, 2, (N, K)), dtype)
  elems, vjp = jax.vjp(
      lambda h: binary_cross_entropy(h, yb, reduction="none"), h)
  loss_ref, g_ref = np_binary_cross_entropy(h, np.asarray(yb, np.float64))
  np.testing.assert_allclose(elems, loss_ref, **tol)
  np.testing.assert_allclose(
      np.asarray(vjp(jnp.ones_like(elems))[0], np.float64), g_ref, **tol)


# ----------------------------------------------------------------------------
# 4b. -inf masks.
# ----------------------------------------------------------------------------

# Row 0: two masked classes. Row 1: none. Row 2: one finite class. Row 3: fully
# masked. Row 4: masked at the ends. Row 5: none. Labels are finite classes
# (row 3 has none; its label 2 is in range).
MASKED_LOGITS = np.array([
    [0.5, -INF, 1.0, -INF, 2.0, 0.0, -1.0],
    [0.3, 1.2, -0.7, 2.2, 0.0, -1.5, 0.9],
    [-INF, -INF, -INF, 1.5, -INF, -INF, -INF],
    [-INF] * K,
    [-INF, 3.0, 1.0, -2.0, 0.0, 0.4, -INF],
    [1.0, 0.0, -1.0, 2.0, -2.0, 0.5, 0.25],
])
MASKED_LABELS = np.array([2, 6, 3, 2, 1, 0])
FULLY_MASKED = 3


def _per_row_on_finite_classes(eps):
  """CE of each row with its masked classes deleted (fully masked: 0, 0)."""
  losses, grads = [], np.zeros((N, K))
  for i, (row, label) in enumerate(zip(MASKED_LOGITS, MASKED_LABELS)):
    finite = np.isfinite(row)
    if not finite.any():
      losses.append(0.0)
      continue
    loss, g = np_cross_entropy(
        row[finite][None], [np.flatnonzero(finite).tolist().index(label)], eps)
    losses.append(loss[0])
    grads[i, finite] = g[0]
  return np.array(losses), grads


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.7])
@pytest.mark.parametrize("use_jit", [False, True])
def test_masked_classes_equal_deleting_them(eps, use_jit):
  """-inf classes: same loss/grad as deleting them; grad exactly 0 there.

  Smoothing spreads its mass over the finite classes only (so the loss stays
  finite) and the fully masked row is ignored: loss 0, gradient 0, no NaN.
  """
  h = jnp.asarray(MASKED_LOGITS)
  y = jnp.asarray(MASKED_LABELS)

  def rows_and_grad(h):
    f = lambda h: cross_entropy(h, y, label_smoothing=eps, reduction="none")
    rows, vjp = jax.vjp(f, h)
    return rows, vjp(jnp.ones_like(rows))[0]

  if use_jit:
    rows_and_grad = jax.jit(rows_and_grad)
  rows, g = rows_and_grad(h)
  loss_ref, g_ref = _per_row_on_finite_classes(eps)
  assert np.all(np.isfinite(rows)) and np.all(np.isfinite(g))
  np.testing.assert_allclose(rows, loss_ref, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(np.asarray(g)[~np.isfinite(MASKED_LOGITS)], 0)
  assert rows[FULLY_MASKED] == 0.0
  # Rows of softmax - q sum to 0 iff q (smoothing included) sums to 1 on the
  # finite classes; the fully masked row's gradient is all zeros.
  np.testing.assert_allclose(jnp.sum(g, axis=-1), 0.0, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_fully_masked_row_left_out_of_mean(eps):
  """The mean skips a fully masked row, like ignore_index; no NaN anywhere."""
  h = jnp.asarray(MASKED_LOGITS)
  y = jnp.asarray(MASKED_LABELS)
  w = jnp.linspace(0.5, 2.0, N)
  keep = np.arange(N) != FULLY_MASKED
  f = lambda h, w: cross_entropy(h, y, weights=w, label_smoothing=eps)
  v, (g, gw) = jax.value_and_grad(f, argnums=(0, 1))(h, w)
  loss_ref, _ = _per_row_on_finite_classes(eps)
  np.testing.assert_allclose(
      v, np.sum(w[keep] * loss_ref[keep]) / np.sum(w[keep]), rtol=1e-12)
  ignored = cross_entropy(h, y.at[FULLY_MASKED].set(-100), weights=w,
                          label_smoothing=eps, ignore_index=-100)
  np.testing.assert_allclose(v, ignored, rtol=1e-12)
  np.testing.assert_allclose(v, f(h, w), rtol=1e-12)  # primal == fwd rule
  assert np.all(np.isfinite(g)) and np.all(np.isfinite(gw))
  np.testing.assert_array_equal(g[FULLY_MASKED], 0.0)
  assert gw[FULLY_MASKED] == 0.0


def test_all_rows_fully_masked():
  """A batch of fully masked rows: mean 0, gradients 0, nothing NaN."""
  h = jnp.full((N, K), -jnp.inf)
  y = jnp.zeros(N, jnp.int32)
  for eps in (0.0, 0.5):
    v, g = jax.value_and_grad(cross_entropy)(h, y, label_smoothing=eps)
    assert v == 0.0
    np.testing.assert_array_equal(g, 0.0)
  t = jnp.full((N, K), 1.0 / K)
  v, (g, gt) = jax.value_and_grad(soft_cross_entropy, argnums=(0, 1))(h, t)
  assert v == 0.0
  np.testing.assert_array_equal(g, 0.0)
  np.testing.assert_array_equal(gt, 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_label_on_masked_class_is_infinite(eps):
  """A label pointing at a -inf class costs +inf; other rows are unaffected."""
  h = jnp.asarray(MASKED_LOGITS)
  y = jnp.asarray(MASKED_LABELS).at[0].set(1)  # class 1 of row 0 is masked
  rows = cross_entropy(h, y, label_smoothing=eps, reduction="none")
  assert rows[0] == np.inf
  loss_ref, _ = _per_row_on_finite_classes(eps)
  np.testing.assert_allclose(rows[1:], loss_ref[1:], rtol=1e-12, atol=1e-12)
  assert cross_entropy(h, y, label_smoothing=eps) == np.inf


def test_full_smoothing_ignores_label_on_masked_class():
  """Regression: eps=1 with a label on a -inf class gave NaN (0 * inf).

  With eps = 1 the target is uniform over the finite classes and the label
  has no weight, so the loss is finite and equals soft_cross_entropy on those
  targets (the gradient, softmax - q, already was finite).
  """
  h = jnp.asarray(MASKED_LOGITS[:1])
  y = jnp.array([1])  # masked
  finite = np.isfinite(MASKED_LOGITS[0])
  targets = jnp.asarray(finite / finite.sum())[None]
  expected = soft_cross_entropy(h, targets)
  np.testing.assert_allclose(cross_entropy(h, y, label_smoothing=1.0),
                             expected, rtol=1e-12)


def test_soft_cross_entropy_masked_classes():
  """Soft CE: zero target mass on -inf classes costs nothing, grad 0 there."""
  h = jnp.asarray(MASKED_LOGITS)
  finite = np.isfinite(MASKED_LOGITS)
  t = np.where(finite, np.random.default_rng(0).uniform(0.1, 1, (N, K)), 0.0)
  t = t / np.maximum(t.sum(-1, keepdims=True), 1)
  t[FULLY_MASKED] = 1.0 / K  # mass on a fully masked row: row is ignored
  t = jnp.asarray(t)
  rows, vjp = jax.vjp(lambda h, t: soft_cross_entropy(h, t, reduction="none"),
                      h, t)
  g, gt = vjp(jnp.ones(N))
  assert rows.shape == (N,)
  for i in range(N):
    if i == FULLY_MASKED:
      continue
    loss_ref, g_ref = np_soft_cross_entropy(
        MASKED_LOGITS[i, finite[i]][None], np.asarray(t[i, finite[i]])[None])
    np.testing.assert_allclose(rows[i], loss_ref[0], rtol=1e-12)
    np.testing.assert_allclose(g[i, finite[i]], g_ref[0], rtol=1e-12,
                               atol=1e-12)
  np.testing.assert_array_equal(np.asarray(g)[~finite], 0.0)
  assert rows[FULLY_MASKED] == 0.0
  np.testing.assert_array_equal(gt[FULLY_MASKED], 0.0)
  # The mean is over the rows that have a finite class, called directly and
  # through the custom VJP's forward rule.
  v, g_mean = jax.value_and_grad(soft_cross_entropy)(h, t)
  for mean in (soft_cross_entropy(h, t), v):
    np.testing.assert_allclose(mean, jnp.sum(rows) / (N - 1), rtol=1e-12)
  np.testing.assert_allclose(g_mean, g / (N - 1), rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------
# 4c. Half precision.
# ----------------------------------------------------------------------------

# Half-precision cotangents vs the float32 computation on the same inputs.
HALF_GRAD_TOL = {
    jnp.float16: dict(rtol=2e-3, atol=1e-4),
    jnp.bfloat16: dict(rtol=1.6e-2, atol=1e-3),
}


def _half_inputs(dtype):
  rng = np.random.default_rng(4)
  h = jnp.asarray(rng.normal(size=(N, K)) * 3, dtype)
  y = jnp.asarray(rng.integers(0, K, size=N))
  t = jnp.asarray(rng.dirichlet(np.ones(K), size=N), dtype)
  yb = jnp.asarray(rng.uniform(size=(N, K)), dtype)
  w = jnp.asarray(rng.uniform(0.5, 2, size=N), dtype)
  return h, y, t, yb, w


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_losses(dtype):
  """float16/bfloat16: float32 loss equal to the float32 computation on the
  same rounded inputs, cotangents in the input dtype and close to float32's."""
  h, y, t, yb, w = _half_inputs(dtype)
  losses = [
      lambda h, w: cross_entropy(h, y, weights=w, label_smoothing=0.1),
      lambda h, t: soft_cross_entropy(h, t),
      lambda h, yb: binary_cross_entropy(h, yb),
  ]
  for f, other in zip(losses, (w, t, yb)):
    v, grads = jax.value_and_grad(f, argnums=(0, 1))(h, other)
    v32, grads32 = jax.value_and_grad(f, argnums=(0, 1))(
        h.astype(jnp.float32), other.astype(jnp.float32))
    assert v.dtype == jnp.float32
    np.testing.assert_allclose(v, v32, rtol=1e-6)
    for gr, gr32, x in zip(grads, grads32, (h, other)):
      assert gr.dtype == x.dtype
      chex.assert_trees_all_close(gr.astype(jnp.float32), gr32,
                                  **HALF_GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_reduction_none_and_others(dtype):
  """Per-row losses, the 0/1 loss and the penalty are float32 for half input."""
  h, y, _, _, w = _half_inputs(dtype)
  rows = cross_entropy(h, y, reduction="none")
  assert rows.dtype == jnp.float32
  np.testing.assert_allclose(
      rows, cross_entropy(h.astype(jnp.float32), y, reduction="none"),
      rtol=1e-6)
  assert zero_one_loss(h, y).dtype == jnp.float32
  params = {"w": h, "b": w}
  v, g = jax.value_and_grad(lambda p: penalty(p, l1=0.1, l2=0.5))(params)
  assert v.dtype == jnp.float32 and g["w"].dtype == dtype
  p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
  np.testing.assert_allclose(v, penalty(p32, l1=0.1, l2=0.5), rtol=1e-6)


# ----------------------------------------------------------------------------
# 6. Bad labels under jit: NaN, never a silently wrong number.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad_label", [K, -1, 1000])
def test_out_of_range_label_under_jit_is_nan(bad_label):
  """Under jit an out-of-range label makes its row's loss and grad NaN."""
  rng = np.random.default_rng(5)
  h = jnp.asarray(rng.normal(size=(N, K)))
  y = jnp.asarray(rng.integers(0, K, size=N))
  y_bad = y.at[2].set(bad_label)

  @jax.jit
  def rows_and_grad(h, y):
    f = lambda h: cross_entropy(h, y, label_smoothing=0.1, reduction="none")
    rows, vjp = jax.vjp(f, h)
    return rows, vjp(jnp.ones_like(rows))[0]

  rows, g = rows_and_grad(h, y_bad)
  rows_ok, g_ok = rows_and_grad(h, y)
  assert np.isnan(rows[2]) and np.all(np.isnan(g[2]))
  others = np.arange(N) != 2
  np.testing.assert_allclose(rows[others], rows_ok[others], rtol=1e-12)
  np.testing.assert_allclose(g[others], g_ok[others], rtol=1e-12)
  mean, g_mean = jax.jit(jax.value_and_grad(cross_entropy))(h, y_bad)
  assert np.isnan(mean) and np.all(np.isnan(g_mean[2]))


def test_ignored_out_of_range_labels_fine_under_jit():
  """Under jit, rows labelled ignore_index (-100) are skipped without NaN,
  while another negative label still poisons its row."""
  rng = np.random.default_rng(6)
  h = jnp.asarray(rng.normal(size=(N, K)))
  y = jnp.asarray(rng.integers(0, K, size=N)).at[1].set(-100).at[4].set(-100)
  f = jax.jit(jax.value_and_grad(
      lambda h, y: cross_entropy(h, y, ignore_index=-100, label_smoothing=0.2)))
  v, g = f(h, y)
  keep = np.array([0, 2, 3, 5])
  np.testing.assert_allclose(
      v, cross_entropy(h[keep], y[keep], label_smoothing=0.2), rtol=1e-12)
  assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(g[1], 0.0)
  v_bad, g_bad = f(h, y.at[0].set(-5))
  assert np.isnan(v_bad) and np.all(np.isnan(g_bad[0]))
  np.testing.assert_array_equal(g_bad[1], 0.0)

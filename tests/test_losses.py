"""Tests for the losses' values, hand-derived VJPs, equivalences and checks.

Each custom VJP is compared with ``jax.grad`` of a plain reference written
here (float64 to 1e-10, float32 to a per-dtype tolerance), run through
``jax.test_util.check_grads`` to second order, and pinned to save no second
``[N, K]`` array. Numerical edge cases (huge and masked logits, half
precision, NaN semantics under jit) live in ``test_numerics_stability.py``.
"""

import chex
import hypothesis
from hypothesis import strategies as st
import jax
from jax._src.ad_checkpoint import saved_residuals
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import optax
import pytest

import jaxsoftmax
from jaxsoftmax import binary_cross_entropy
from jaxsoftmax import cross_entropy
from jaxsoftmax import penalty
from jaxsoftmax import soft_cross_entropy
from jaxsoftmax import zero_one_loss

REDUCTIONS = ("none", "sum", "mean")
DTYPES = (np.float32, np.float64)

# Custom VJP in this dtype vs jax.grad of the reference in float64. ``atol``
# is in units of the largest reference magnitude (a normwise bound): the
# float32 weight gradient of a mean, ``(l_i - mean) / denom``, carries
# ~eps32 * |l| / denom of rounding even where its exact value is 0.
VJP_TOL = {
    np.float32: dict(rtol=2e-5, atol=2e-5),
    np.float64: dict(rtol=1e-10, atol=1e-12),
}
# Two implementations of the same float64 formula (optax, slicing, jit).
EQ_TOL = dict(rtol=1e-12, atol=1e-12)


def _close(actual, expected, tol):
  chex.assert_trees_all_close(
      jax.tree.map(lambda a: np.asarray(a, np.float64), actual),
      jax.tree.map(lambda a: np.asarray(a, np.float64), expected), **tol)


def _close_normwise(actual, expected, tol):
  """Like ``_close`` with ``atol`` scaled by max(1, max |expected|)."""
  scale = max([1.0] + [float(np.max(np.abs(a), initial=0.0))
                       for a in jax.tree.leaves(expected)])
  _close(actual, expected, dict(rtol=tol["rtol"], atol=tol["atol"] * scale))


# ----------------------------------------------------------------------------
# Plain references: written for readability, differentiated by jax.grad.
# ----------------------------------------------------------------------------


def _reduce(rows, denom, reduction):
  if reduction == "none":
    return rows
  if reduction == "sum":
    return jnp.sum(rows)
  return jnp.sum(rows) / denom


def _lse(h):
  """Plain max-shifted log-sum-exp over the last axis."""
  m = jax.lax.stop_gradient(jnp.max(h, axis=-1, keepdims=True))
  return jnp.log(jnp.sum(jnp.exp(h - m), axis=-1)) + m[:, 0]


def ref_cross_entropy(h, y, w, eps=0.0, ignore_index=None, reduction="mean"):
  """``(1-eps) (lse - h_y) + eps (lse - mean h)``, weighted, rows masked."""
  if ignore_index is None:
    valid = jnp.ones(y.shape, bool)
  else:
    valid = y != ignore_index
  y_safe = jnp.where(valid, y, 0)
  lse = _lse(h)
  nll = lse - jnp.take_along_axis(h, y_safe[:, None], axis=-1)[:, 0]
  loss = (1 - eps) * nll + eps * (lse - jnp.mean(h, axis=-1))
  rows = jnp.where(valid, w * loss, 0)
  return _reduce(rows, jnp.sum(jnp.where(valid, w, 0)), reduction)


def ref_soft_cross_entropy(h, t, reduction="mean"):
  rows = -jnp.sum(t * (h - _lse(h)[:, None]), axis=-1)  # t * log_softmax
  return _reduce(rows, rows.shape[0], reduction)


def ref_binary_cross_entropy(h, y, reduction="mean"):
  elems = jax.nn.softplus(h) - y * h
  return _reduce(elems, elems.size, reduction)


def _is_bias(path):
  last = path[-1] if path else None
  return getattr(last, "key", getattr(last, "name", None)) in ("b", "bias")


def ref_penalty(params, l1, l2):
  leaves = [
      leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if not _is_bias(path)
  ]
  return sum(
      l1 * jnp.sum(jnp.abs(w)) + l2 / 2 * jnp.sum(w**2) for w in leaves
  )


def _to64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, np.float64), tree)


def _vjp_both(f, f_ref, primals, ct):
  """(value, cotangents) of ``f`` and of ``f_ref`` for the cotangent ``ct``.

  ``f`` runs in the primals' dtype; ``f_ref`` runs in float64 on the same
  (rounded) primals and cotangent, so a float32 comparison measures the
  library's rounding only, not the reference's (``d/dw`` of a weighted mean,
  ``l/w - w l / w**2``, cancels badly in float32).
  """
  out, vjp = jax.vjp(f, *primals)
  ct = jnp.asarray(ct, out.dtype).reshape(-1)[:out.size].reshape(out.shape)
  grads = vjp(ct)
  out_ref, vjp_ref = jax.vjp(f_ref, *_to64(primals))
  assert jax.tree.map(lambda a: a.dtype, grads) == jax.tree.map(
      lambda a: a.dtype, primals)
  return (out, grads), (out_ref, vjp_ref(_to64(ct)))


# ----------------------------------------------------------------------------
# Hypothesis strategies: small shapes and a seed for numpy to fill them.
# ----------------------------------------------------------------------------

smoothing = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))
# Eager JAX compiles each op once per shape (seconds per new shape), so the
# [N, K] shapes come from three that cover the corners (one row, one class,
# 40 classes) and share N, and so most [N] ops, with the deterministic
# tests; values, labels, weights and options vary freely.
N, K = 6, 7  # the deterministic tests' [N, K] logits
SHAPES = [(1, 40), (N, 1), (N, K)]
shapes = st.sampled_from(SHAPES)
# The dtype is drawn too, rather than parametrized, so both dtypes share one
# budget of examples.
dtypes = st.sampled_from(DTYPES)


@st.composite
def ce_cases(draw):
  n, k = draw(shapes)
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  ignore_index = draw(st.sampled_from([None, -100, 0]))
  if k == 1 and ignore_index == 0:
    ignore_index = None
  logits = rng.normal(size=(n, k)) * draw(st.sampled_from([0.1, 1.0, 5.0]))
  labels = rng.integers(0, k, size=n)
  if ignore_index == -100:
    labels = np.where(rng.random(n) < 0.3, -100, labels)
  if ignore_index == 0:
    labels[0] = rng.integers(1, k)
  else:
    labels[0] = rng.integers(0, k)
  # Row 0 is valid and has weight > 0, so the weighted mean is defined.
  weights = rng.uniform(0.1, 2.0, size=n)
  if draw(st.booleans()):
    weights = np.where(rng.random(n) < 0.2, 0.0, weights)
    weights[0] = 1.5
  return dict(
      logits=logits,
      labels=labels,
      weights=weights,
      label_smoothing=draw(smoothing),
      ignore_index=ignore_index,
      reduction=draw(st.sampled_from(REDUCTIONS)),
      ct=rng.normal(size=n),
      dtype=draw(dtypes),
  )


@st.composite
def soft_cases(draw):
  n, k = draw(shapes)
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  t = rng.dirichlet(np.ones(k), size=n)
  t = np.where(rng.random((n, k)) < 0.3, 0.0, t)  # some exact zeros
  if draw(st.booleans()):  # rows summing to 1, else an arbitrary mass
    t = t / np.maximum(t.sum(-1, keepdims=True), 1e-12)
  else:
    t = t * rng.uniform(0.1, 3.0, size=(n, 1))
  return dict(
      logits=rng.normal(size=(n, k)) * 3,
      targets=t,
      reduction=draw(st.sampled_from(REDUCTIONS)),
      ct=rng.normal(size=n),
      dtype=draw(dtypes),
  )


@st.composite
def bce_cases(draw):
  shape = draw(st.sampled_from([(), (N, K), (2, 3, K)]))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  labels = rng.uniform(0, 1, size=shape)
  labels = np.where(rng.random(shape) < 0.3, rng.integers(0, 2, shape), labels)
  return dict(
      logits=rng.normal(size=shape) * 4,
      labels=labels,
      reduction=draw(st.sampled_from(REDUCTIONS)),
      ct=rng.normal(size=shape),
      dtype=draw(dtypes),
  )


@st.composite
def penalty_cases(draw):
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  dims = [N, K, 1][:draw(st.integers(2, 3))]  # one or two layers
  layers = [
      {"w": rng.normal(size=(a, b)), "b": rng.normal(size=(b,))}
      for a, b in zip(dims[:-1], dims[1:])
  ]
  params = {"layers": layers, "emb": rng.normal(size=(N, K)),
            "bias": rng.normal(size=(N,))}
  return dict(
      params=params,
      l1=draw(st.floats(0.0, 2.0)),
      l2=draw(st.floats(0.0, 2.0)),
      ct=rng.normal(),
      dtype=draw(dtypes),
  )


# ----------------------------------------------------------------------------
# 1. Manual VJP == jax.grad of the reference.
# ----------------------------------------------------------------------------


@hypothesis.given(case=ce_cases())
def test_cross_entropy_vjp_matches_reference(case):
  """CE value and cotangents w.r.t. logits and weights equal the reference's."""
  dtype = case["dtype"]
  h = jnp.asarray(case["logits"], dtype)
  w = jnp.asarray(case["weights"], dtype)
  y = jnp.asarray(case["labels"])
  opts = dict(
      label_smoothing=case["label_smoothing"],
      ignore_index=case["ignore_index"],
      reduction=case["reduction"],
  )
  f = lambda h, w: cross_entropy(h, y, weights=w, **opts)
  f_ref = lambda h, w: ref_cross_entropy(
      h, y, w, opts["label_smoothing"], opts["ignore_index"], opts["reduction"]
  )
  (out, grads), (out_ref, grads_ref) = _vjp_both(f, f_ref, (h, w), case["ct"])
  assert out.dtype == dtype and out.shape == out_ref.shape
  _close(f(h, w), out, VJP_TOL[dtype])  # the primal equals the fwd rule
  _close_normwise((out, grads), (out_ref, grads_ref), VJP_TOL[dtype])


@hypothesis.given(case=soft_cases())
def test_soft_cross_entropy_vjp_matches_reference(case):
  """Soft CE cotangents w.r.t. logits and target_probs equal the reference's."""
  dtype = case["dtype"]
  h = jnp.asarray(case["logits"], dtype)
  t = jnp.asarray(case["targets"], dtype)
  r = case["reduction"]
  (out, grads), (out_ref, grads_ref) = _vjp_both(
      lambda h, t: soft_cross_entropy(h, t, reduction=r),
      lambda h, t: ref_soft_cross_entropy(h, t, r),
      (h, t),
      case["ct"],
  )
  _close(soft_cross_entropy(h, t, reduction=r), out, VJP_TOL[dtype])
  _close_normwise((out, grads), (out_ref, grads_ref), VJP_TOL[dtype])


@hypothesis.given(case=bce_cases())
def test_binary_cross_entropy_vjp_matches_reference(case):
  """BCE cotangents w.r.t. logits and float labels equal the reference's."""
  dtype = case["dtype"]
  h = jnp.asarray(case["logits"], dtype)
  y = jnp.asarray(case["labels"], dtype)
  r = case["reduction"]
  (out, grads), (out_ref, grads_ref) = _vjp_both(
      lambda h, y: binary_cross_entropy(h, y, reduction=r),
      lambda h, y: ref_binary_cross_entropy(h, y, r),
      (h, y),
      case["ct"],
  )
  _close_normwise((out, grads), (out_ref, grads_ref), VJP_TOL[dtype])


@hypothesis.given(case=penalty_cases())
def test_penalty_vjp_matches_reference(case):
  """Penalty cotangents w.r.t. every leaf (biases: 0), l1 and l2 match."""
  dtype = case["dtype"]
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), case["params"])
  l1 = jnp.asarray(case["l1"], dtype)
  l2 = jnp.asarray(case["l2"], dtype)
  (out, grads), (out_ref, grads_ref) = _vjp_both(
      lambda p, a, b: penalty(p, l1=a, l2=b), ref_penalty, (params, l1, l2),
      case["ct"],
  )
  _close_normwise((out, grads), (out_ref, grads_ref), VJP_TOL[dtype])
  assert not np.any(np.asarray(grads[0]["bias"]))
  for layer in grads[0]["layers"]:
    assert not np.any(np.asarray(layer["b"]))


def test_penalty_subgradient_at_zero_is_zero():
  """At w = 0 the L1 term contributes sign(0) = 0, not jax.grad(abs)(0) = 1."""
  params = {"w": jnp.array([0.0, 2.0, -3.0, 0.0]), "b": jnp.array([0.0])}
  g = jax.grad(lambda p: penalty(p, l1=0.5, l2=0.25))(params)
  np.testing.assert_array_equal(g["w"], [0.0, 0.5 + 0.5, -0.5 - 0.75, 0.0])
  np.testing.assert_array_equal(g["b"], [0.0])
  # The deliberate difference from autodiff of the plain formula.
  g_ref = jax.grad(lambda p: ref_penalty(p, 0.5, 0.25))(params)
  assert g_ref["w"][0] != 0.0


def test_penalty_value_and_bias_names():
  """Leaves keyed ``b``/``bias`` (dict keys or attributes) are not penalized."""

  class Layer:  # an attribute-style pytree node, like a module

    def __init__(self, weight, bias):
      self.weight, self.bias = weight, bias

  jax.tree_util.register_pytree_with_keys(
      Layer,
      lambda l: (((jax.tree_util.GetAttrKey("weight"), l.weight),
                  (jax.tree_util.GetAttrKey("bias"), l.bias)), None),
      lambda _, c: Layer(*c),
  )
  params = [
      {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([5.0])},
      Layer(jnp.array([3.0]), jnp.array([7.0])),
      jnp.array([-1.0]),
  ]
  # l1 * (1 + 2 + 3 + 1) + l2 / 2 * (1 + 4 + 9 + 1)
  np.testing.assert_allclose(penalty(params, l1=0.1, l2=2.0), 0.7 + 15.0)
  np.testing.assert_allclose(penalty(params), 0.0)


# ----------------------------------------------------------------------------
# 2. Finite-difference checks, first and second order.
# ----------------------------------------------------------------------------


def _rng_arrays(seed=0, n=N, k=K):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.normal(size=(n, k)))
  y = jnp.asarray(rng.integers(0, k, size=n))
  w = jnp.asarray(rng.uniform(0.5, 2.0, size=n))
  t = jnp.asarray(rng.dirichlet(np.ones(k), size=n) * 0.8 + 0.2 / k)
  return rng, h, y, w, t


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_check_grads(order, reduction):
  """CE's rule passes finite differences w.r.t. logits and weights."""
  _, h, y, w, _ = _rng_arrays()
  y = y.at[1].set(-100)
  f = lambda h, w: cross_entropy(
      h, y, weights=w, label_smoothing=0.2, ignore_index=-100,
      reduction=reduction,
  )
  check_grads(f, (h, w), order=order, modes=["rev"])


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_cross_entropy_check_grads(order, reduction):
  """Soft CE's rule passes finite differences w.r.t. logits and targets."""
  _, h, _, _, t = _rng_arrays()
  f = lambda h, t: soft_cross_entropy(h, t, reduction=reduction)
  check_grads(f, (h, t), order=order, modes=["rev"])


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_check_grads(order, reduction):
  """BCE's rule passes finite differences w.r.t. logits and soft labels."""
  rng, h, _, _, _ = _rng_arrays()
  y = jnp.asarray(rng.uniform(0.1, 0.9, size=h.shape))
  f = lambda h, y: binary_cross_entropy(h, y, reduction=reduction)
  check_grads(f, (h, y), order=order, modes=["rev"])


@pytest.mark.parametrize("order", [1, 2])
def test_penalty_check_grads(order):
  """The penalty's rule passes finite differences w.r.t. params, l1, l2."""
  rng = np.random.default_rng(0)
  # |w| >= 0.5 keeps the finite differences off the kink of |w|.
  w = rng.uniform(0.5, 2.0, size=(3, 4)) * rng.choice([-1, 1], size=(3, 4))
  params = {"w": jnp.asarray(w), "b": jnp.asarray(rng.normal(size=4))}
  f = lambda p, a, b: penalty(p, l1=a, l2=b)
  check_grads(f, (params, jnp.float64(0.3), jnp.float64(0.7)), order=order,
              modes=["rev"])


# ----------------------------------------------------------------------------
# 3. Equivalences.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_cross_entropy_equals_optax(reduction):
  """CE equals optax's integer-label CE, per row and as the batch mean."""
  _, h, y, _, _ = _rng_arrays()
  expected = optax.softmax_cross_entropy_with_integer_labels(h, y)
  if reduction == "mean":
    expected = expected.mean()
  _close(cross_entropy(h, y, reduction=reduction), expected, EQ_TOL)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_integer_labels_equal_one_hot_soft_cross_entropy(reduction):
  """Integer labels == one-hot targets for soft CE: values and gradients."""
  _, h, y, _, _ = _rng_arrays()
  one_hot = jax.nn.one_hot(y, K, dtype=h.dtype)
  v, g = jax.value_and_grad(
      lambda h: jnp.sum(cross_entropy(h, y, reduction=reduction)))(h)
  v2, g2 = jax.value_and_grad(
      lambda h: jnp.sum(soft_cross_entropy(h, one_hot, reduction=reduction)))(h)
  _close((v, g), (v2, g2), EQ_TOL)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index_equals_slicing_rows_out(reduction):
  """Ignored rows: loss 0, gradient 0, left out of the mean's denominator."""
  _, h, y, w, _ = _rng_arrays()
  ignored = np.array([1, 0, 0, 1, 0, 1], bool)
  y_masked = jnp.where(ignored, -100, y)
  keep = np.flatnonzero(~ignored)
  for weights in (None, w):
    kw = dict(label_smoothing=0.1, reduction=reduction)
    f = lambda h: cross_entropy(
        h, y_masked, weights=weights, ignore_index=-100, **kw)
    f_sliced = lambda h: cross_entropy(
        h[keep], y[keep], weights=None if weights is None else weights[keep],
        **kw)
    out, vjp = jax.vjp(f, h)
    out_sliced, vjp_sliced = jax.vjp(f_sliced, h)
    ct = jnp.arange(1.0, out.size + 1).reshape(out.shape)
    if reduction == "none":
      np.testing.assert_array_equal(out[ignored], 0.0)
      _close(out[keep], out_sliced, EQ_TOL)
      (g,), (g_sliced,) = vjp(ct), vjp_sliced(ct[keep])
    else:
      _close(out, out_sliced, EQ_TOL)
      (g,), (g_sliced,) = vjp(ct), vjp_sliced(ct)
    np.testing.assert_array_equal(g[ignored], 0.0)
    _close(g, g_sliced, EQ_TOL)  # g_sliced is 0 on the ignored rows too


def test_ignore_index_can_be_a_real_class():
  """``ignore_index=0`` drops the rows labelled 0 and keeps class 0's logit."""
  _, h, _, _, _ = _rng_arrays()
  y = jnp.array([0, 2, 0, 3, 1, 6])
  keep = np.array([1, 3, 4, 5])
  _close(cross_entropy(h, y, ignore_index=0),
         cross_entropy(h[keep], y[keep]), EQ_TOL)


def test_all_rows_ignored_mean_is_zero():
  """A fully ignored batch has mean loss 0 and gradient 0, not NaN."""
  _, h, _, w, _ = _rng_arrays()
  y = jnp.full(N, -100)
  v, g = jax.value_and_grad(cross_entropy, argnums=(0,))(
      h, y, weights=w, ignore_index=-100)
  assert v == 0.0
  np.testing.assert_array_equal(g[0], 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_label_smoothing_equals_smoothed_soft_targets(eps):
  """Smoothing == soft CE on optax.smooth_labels targets == the formula."""
  _, h, y, _, _ = _rng_arrays()
  targets = optax.smooth_labels(jax.nn.one_hot(y, K, dtype=h.dtype), eps)
  f = lambda h: cross_entropy(h, y, label_smoothing=eps, reduction="none")
  ct = jnp.arange(1.0, N + 1)
  v, g = jax.value_and_grad(lambda h: jnp.sum(f(h) * ct))(h)
  v2, g2 = jax.value_and_grad(lambda h: jnp.sum(
      soft_cross_entropy(h, targets, reduction="none") * ct))(h)
  _close((v, g), (v2, g2), EQ_TOL)
  _close(f(h), optax.softmax_cross_entropy(h, targets), EQ_TOL)
  lse = jax.nn.logsumexp(h, axis=-1)
  formula = (1 - eps) * (lse - h[np.arange(N), y]) + eps * (lse - h.mean(-1))
  _close(f(h), formula, EQ_TOL)


def test_weights_give_weighted_mean():
  """``reduction="mean"`` with weights is sum(w * loss) / sum(w)."""
  _, h, y, w, _ = _rng_arrays()
  rows = cross_entropy(h, y, reduction="none")
  _close(cross_entropy(h, y, weights=w), jnp.sum(w * rows) / jnp.sum(w),
         EQ_TOL)
  _close(cross_entropy(h, y, weights=w, reduction="sum"), jnp.sum(w * rows),
         EQ_TOL)
  _close(cross_entropy(h, y, weights=w, reduction="none"), w * rows, EQ_TOL)
  # Class weights, as in PyTorch: weights=class_weights[labels].
  cw = jnp.array([1.0, 2.0, 0.5, 3.0, 0.0, 1.0, 4.0])
  _close(cross_entropy(h, y, weights=cw[y]),
         jnp.sum(cw[y] * rows) / jnp.sum(cw[y]), EQ_TOL)


def test_jit_equals_eager():
  """jit and eager agree on values and gradients, all options on."""
  _, h, y, w, _ = _rng_arrays()
  y = y.at[2].set(-100)

  def f(h, w):
    return cross_entropy(h, y, weights=w, label_smoothing=0.3,
                         ignore_index=-100)

  eager = jax.value_and_grad(f, argnums=(0, 1))(h, w)
  jitted = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(h, w)
  _close(jitted, eager, EQ_TOL)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_vmap_over_examples_equals_reduction_none(eps):
  """vmap of the loss on one example ([K], scalar label) == reduction none."""
  _, h, y, _, _ = _rng_arrays()
  single = lambda h, y: cross_entropy(h, y, label_smoothing=eps)
  rows = cross_entropy(h, y, label_smoothing=eps, reduction="none")
  _close(jax.vmap(single)(h, y), rows, EQ_TOL)
  per_example_grads = jax.vmap(jax.grad(single))(h, y)
  g = jax.grad(lambda h: jnp.sum(
      cross_entropy(h, y, label_smoothing=eps, reduction="none")))(h)
  _close(per_example_grads, g, EQ_TOL)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_leading_batch_dims_equal_flattened(reduction):
  """[2, 3, K] logits with [2, 3] labels/weights == the flattened call."""
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.normal(size=(2, 3, K)))
  y = jnp.asarray(rng.integers(0, K, size=(2, 3)))
  w = jnp.asarray(rng.uniform(0.5, 2, size=(2, 3)))
  t = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 3, K))))
  yb = jnp.asarray(rng.uniform(size=(2, 3, K)))
  kw = dict(reduction=reduction)
  cases = [
      (lambda h: cross_entropy(h, y, weights=w, label_smoothing=0.1, **kw),
       lambda h: cross_entropy(h.reshape(N, K), y.reshape(N),
                               weights=w.reshape(N), label_smoothing=0.1,
                               **kw),
       (2, 3)),
      (lambda h: soft_cross_entropy(h, t, **kw),
       lambda h: soft_cross_entropy(h.reshape(N, K), t.reshape(N, K), **kw),
       (2, 3)),
      (lambda h: binary_cross_entropy(h, yb, **kw),
       lambda h: binary_cross_entropy(h.reshape(N, K), yb.reshape(N, K),
                                      **kw),
       (2, 3, K)),
  ]
  for f, f_flat, rows_shape in cases:
    out, vjp = jax.vjp(f, h)
    out_flat, vjp_flat = jax.vjp(f_flat, h)
    assert out.shape == (rows_shape if reduction == "none" else ())
    ct = jnp.asarray(rng.normal(size=out.shape))
    _close(out.reshape(-1), out_flat.reshape(-1), EQ_TOL)
    _close(vjp(ct), vjp_flat(ct.reshape(out_flat.shape)), EQ_TOL)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_binary_cross_entropy_equals_optax(reduction):
  """BCE equals optax.sigmoid_binary_cross_entropy, hard and soft labels."""
  rng = np.random.default_rng(2)
  h = jnp.asarray(rng.normal(size=(N, K)) * 5)
  y = jnp.asarray(rng.uniform(size=(N, K))).at[0].set(1.0).at[1].set(0.0)
  expected = optax.sigmoid_binary_cross_entropy(h, y)
  if reduction == "mean":
    expected = expected.mean()
  _close(binary_cross_entropy(h, y, reduction=reduction), expected, EQ_TOL)


def test_binary_cross_entropy_integer_and_bool_labels():
  """Integer / bool labels give the float labels' loss and logits gradient."""
  h = jnp.array([-2.0, 0.5, 3.0, 0.0])
  yf = jnp.array([0.0, 1.0, 1.0, 0.0])
  expected = jax.value_and_grad(binary_cross_entropy)(h, yf)
  for y in (yf.astype(jnp.int32), yf.astype(bool)):
    _close(jax.value_and_grad(binary_cross_entropy)(h, y), expected, EQ_TOL)


# ----------------------------------------------------------------------------
# 5. Invariants (hypothesis).
# ----------------------------------------------------------------------------


@hypothesis.given(case=ce_cases(), shift=st.floats(-100.0, 100.0))
def test_cross_entropy_invariants(case, shift):
  """loss >= 0, row shifts leave CE unchanged, gradient rows sum to 0."""
  h = jnp.asarray(case["logits"])
  y = jnp.asarray(case["labels"])
  w = jnp.asarray(case["weights"])
  kw = dict(weights=w, label_smoothing=case["label_smoothing"],
            ignore_index=case["ignore_index"], reduction="none")
  rows = cross_entropy(h, y, **kw)
  assert np.all(np.asarray(rows) >= 0)
  row_shift = shift * jnp.asarray(
      np.random.default_rng(0).uniform(-1, 1, size=(h.shape[0], 1)))
  _close(cross_entropy(h + row_shift, y, **kw), rows,
         dict(rtol=1e-9, atol=1e-9))
  g = jax.grad(lambda h: jnp.sum(cross_entropy(h, y, **kw)))(h)
  np.testing.assert_allclose(jnp.sum(g, axis=-1), 0.0, atol=1e-12)


@hypothesis.given(case=soft_cases(), shift=st.floats(-100.0, 100.0))
def test_soft_cross_entropy_invariants(case, shift):
  """Soft CE >= 0, shift invariant for unit-mass targets, rows of grad sum 0."""
  h = jnp.asarray(case["logits"])
  t = jnp.asarray(case["targets"])
  t = t / jnp.maximum(jnp.sum(t, axis=-1, keepdims=True), 1e-12)
  t = jnp.where(jnp.sum(t, axis=-1, keepdims=True) > 0, t, 1.0 / t.shape[-1])
  rows = soft_cross_entropy(h, t, reduction="none")
  assert np.all(np.asarray(rows) >= 0)
  _close(soft_cross_entropy(h + shift, t, reduction="none"), rows,
         dict(rtol=1e-9, atol=1e-9))
  g = jax.grad(soft_cross_entropy)(h, t)
  np.testing.assert_allclose(jnp.sum(g, axis=-1), 0.0, atol=1e-12)


@hypothesis.given(case=bce_cases())
def test_binary_cross_entropy_nonnegative(case):
  """softplus(h) - y h >= 0 for y in [0, 1]."""
  rows = binary_cross_entropy(case["logits"], case["labels"], reduction="none")
  assert np.all(np.asarray(rows) >= 0)


# ----------------------------------------------------------------------------
# 7. Bad input raises a clear error naming the argument.
# ----------------------------------------------------------------------------

_H = np.zeros((3, 4))
_Y = np.array([0, 1, 3])

BAD_INPUTS = [
    ("ce_label_too_big", lambda: cross_entropy(_H, np.array([0, 4, 1])),
     ValueError, r"labels must lie in \[0, 4\).*\[4\]"),
    ("ce_label_negative", lambda: cross_entropy(_H, np.array([0, -1, 1])),
     ValueError, r"labels must lie in \[0, 4\)"),
    ("ce_label_not_ignore_index",
     lambda: cross_entropy(_H, np.array([-100, -1, 1]), ignore_index=-100),
     ValueError, r"labels must lie in \[0, 4\) or equal ignore_index=-100"),
    ("ce_batch_mismatch", lambda: cross_entropy(_H, np.array([0, 1])),
     ValueError, r"labels must have shape \(3,\)"),
    ("ce_int_logits", lambda: cross_entropy(_H.astype(np.int32), _Y),
     TypeError, "logits must have a floating dtype"),
    ("ce_float_labels", lambda: cross_entropy(_H, _Y.astype(np.float32)),
     TypeError, "labels must have an integer dtype"),
    ("ce_scalar_logits", lambda: cross_entropy(np.float32(1.0), np.int32(0)),
     ValueError, r"logits must have rank >= 1"),
    ("ce_no_classes",
     lambda: cross_entropy(np.zeros((3, 0)), np.zeros(3, np.int32)),
     ValueError, "at least one class"),
    ("ce_reduction", lambda: cross_entropy(_H, _Y, reduction="avg"),
     ValueError, "reduction must be one of"),
    ("ce_smoothing_high", lambda: cross_entropy(_H, _Y, label_smoothing=1.5),
     ValueError, r"label_smoothing must lie in \[0, 1\]"),
    ("ce_smoothing_negative",
     lambda: cross_entropy(_H, _Y, label_smoothing=-0.1),
     ValueError, r"label_smoothing must lie in \[0, 1\]"),
    ("ce_smoothing_array",
     lambda: cross_entropy(_H, _Y, label_smoothing=jnp.array(0.1)),
     TypeError, "label_smoothing must be a Python float"),
    ("ce_ignore_index_float",
     lambda: cross_entropy(_H, _Y, ignore_index=-100.0),
     TypeError, "ignore_index must be None or a Python int"),
    ("ce_weights_shape", lambda: cross_entropy(_H, _Y, weights=np.ones(4)),
     ValueError, r"weights must have shape \(3,\)"),
    ("ce_weights_negative",
     lambda: cross_entropy(_H, _Y, weights=np.array([1.0, -0.5, 1.0])),
     ValueError, "weights must be >= 0"),
    ("ce_weights_int",
     lambda: cross_entropy(_H, _Y, weights=np.ones(3, np.int32)),
     TypeError, "weights must have a floating dtype"),
    ("soft_shape", lambda: soft_cross_entropy(_H, np.ones((3, 5)) / 5),
     ValueError, r"target_probs must have shape \(3, 4\)"),
    ("soft_negative",
     lambda: soft_cross_entropy(_H, np.full((3, 4), 0.5) - np.eye(3, 4)),
     ValueError, "target_probs must be >= 0"),
    ("soft_int_targets",
     lambda: soft_cross_entropy(_H, np.ones((3, 4), np.int32)),
     TypeError, "target_probs must have a floating dtype"),
    ("soft_int_logits",
     lambda: soft_cross_entropy(_H.astype(np.int32), np.ones((3, 4)) / 4),
     TypeError, "logits must have a floating dtype"),
    ("soft_reduction",
     lambda: soft_cross_entropy(_H, np.ones((3, 4)) / 4, reduction=None),
     ValueError, "reduction must be one of"),
    ("bce_label_high",
     lambda: binary_cross_entropy(np.zeros(3), np.array([0.0, 1.5, 1.0])),
     ValueError, r"labels must lie in \[0, 1\].*1\.5"),
    ("bce_label_negative",
     lambda: binary_cross_entropy(np.zeros(2), np.array([-1, 1])),
     ValueError, r"labels must lie in \[0, 1\]"),
    ("bce_label_nan",
     lambda: binary_cross_entropy(np.zeros(2), np.array([np.nan, 1.0])),
     ValueError, r"labels must lie in \[0, 1\]"),
    ("bce_shape", lambda: binary_cross_entropy(np.zeros(3), np.zeros(4)),
     ValueError, r"labels must have shape \(3,\)"),
    ("bce_int_logits",
     lambda: binary_cross_entropy(np.zeros(3, np.int32), np.zeros(3)),
     TypeError, "logits must have a floating dtype"),
    ("bce_reduction",
     lambda: binary_cross_entropy(np.zeros(3), np.zeros(3), reduction="max"),
     ValueError, "reduction must be one of"),
    ("zero_one_label_range", lambda: zero_one_loss(_H, np.array([0, 4, 1])),
     ValueError, r"labels must lie in \[0, 4\)"),
    ("zero_one_float_labels", lambda: zero_one_loss(_H, _Y.astype(float)),
     TypeError, "labels must have an integer dtype"),
    ("zero_one_shape", lambda: zero_one_loss(_H, np.array([0, 1])),
     ValueError, r"labels must have shape \(3,\)"),
    ("zero_one_reduction", lambda: zero_one_loss(_H, _Y, reduction="mea"),
     ValueError, "reduction must be one of"),
    ("penalty_l1", lambda: penalty({"w": jnp.ones(2)}, l1=-0.1),
     ValueError, "l1 must be >= 0"),
    ("penalty_l2", lambda: penalty({"w": jnp.ones(2)}, l2=-1e-3),
     ValueError, "l2 must be >= 0"),
    ("penalty_l2_nan", lambda: penalty({"w": jnp.ones(2)}, l2=np.nan),
     ValueError, "l2 must be >= 0"),
]


@pytest.mark.parametrize(
    "call, error, match", [c[1:] for c in BAD_INPUTS],
    ids=[c[0] for c in BAD_INPUTS],
)
def test_bad_input_raises(call, error, match):
  """Each bad argument raises the right exception naming that argument."""
  with pytest.raises(error, match=match):
    call()


def test_labels_equal_to_ignore_index_are_not_range_errors():
  """Out-of-range labels equal to ``ignore_index`` are accepted eagerly."""
  out = cross_entropy(_H, np.array([-100, 0, 3]), ignore_index=-100,
                      reduction="none")
  np.testing.assert_allclose(out, [0.0, np.log(4), np.log(4)])


def test_out_of_range_label_raises_under_grad():
  """The eager range check also runs when only the logits are traced."""
  with pytest.raises(ValueError, match="labels must lie"):
    jax.grad(cross_entropy)(jnp.asarray(_H), jnp.array([0, 7, 1]))


# ----------------------------------------------------------------------------
# 8. 0/1 loss.
# ----------------------------------------------------------------------------


@hypothesis.given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_zero_one_loss_matches_numpy(shape, seed):
  """Values for all reductions equal numpy's argmax comparison."""
  n, k = shape
  rng = np.random.default_rng(seed)
  h = rng.integers(-2, 3, size=(n, k)).astype(np.float64)  # ties likely
  y = rng.integers(0, k, size=n)
  wrong = (np.argmax(h, axis=-1) != y).astype(np.float32)
  for reduction, expected in [("none", wrong), ("sum", wrong.sum()),
                              ("mean", wrong.mean())]:
    out = zero_one_loss(h, y, reduction=reduction)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_zero_one_loss_ties_and_leading_dims():
  """Ties go to the lowest index; [..., K] logits give [...] errors."""
  h = jnp.array([[[1.0, 1.0], [0.0, 2.0]], [[3.0, 3.0], [5.0, -1.0]]])
  y = jnp.array([[0, 0], [1, 0]])
  np.testing.assert_array_equal(
      zero_one_loss(h, y, reduction="none"), [[0.0, 1.0], [1.0, 0.0]])
  assert zero_one_loss(h, y) == 0.5
  assert zero_one_loss(h, y, reduction="sum") == 2.0


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_one_loss_gradient_is_exactly_zero(reduction):
  """The gradient of the 0/1 loss is exactly zero, eager and under jit."""
  _, h, y, _, _ = _rng_arrays()
  f = lambda h: jnp.sum(zero_one_loss(h, y, reduction=reduction))
  for grad in (jax.grad(f), jax.jit(jax.grad(f))):
    g = grad(h)
    assert g.shape == h.shape
    np.testing.assert_array_equal(g, np.zeros(h.shape))


# ----------------------------------------------------------------------------
# 9. Residuals: no second [N, K] array saved for the backward pass.
# ----------------------------------------------------------------------------


def _nk_residuals(f, *args, shape):
  """Descriptions of the saved residuals of shape ``shape`` (floating)."""
  return [
      (str(aval), where) for aval, where in saved_residuals(f, *args)
      if aval.shape == shape and jnp.issubdtype(aval.dtype, jnp.floating)
  ]


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_saves_no_softmax_matrix(dtype, eps):
  """CE's VJP keeps the logits it was given and only [N] vectors besides."""
  _, h, y, w, _ = _rng_arrays()
  h = h.astype(dtype)
  f = lambda logits, w: cross_entropy(logits, y, weights=w,
                                      label_smoothing=eps)
  nk = _nk_residuals(f, h, w, shape=(N, K))
  assert nk == [(str(jax.core.ShapedArray((N, K), h.dtype)),
                 "from the argument logits")], nk
  for aval, _ in saved_residuals(f, h, w):
    assert aval.size <= N or aval.shape == (N, K), aval


def test_soft_cross_entropy_saves_only_its_inputs():
  """Soft CE's VJP keeps logits and targets, no softmax or log-softmax."""
  _, h, _, _, t = _rng_arrays()
  nk = _nk_residuals(lambda logits, t: soft_cross_entropy(logits, t), h, t,
                     shape=(N, K))
  assert sorted(where for _, where in nk) == [
      "from the argument logits", "from the argument t"], nk


# ----------------------------------------------------------------------------
# Regression tests.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, num_classes, label_values",
    [(np.int8, 200, [1, 100]), (np.uint8, 300, [5, 200]),
     (np.int16, 40000, [3, 30000])],
)
def test_narrow_int_labels_with_more_classes_than_dtype_max(
    dtype, num_classes, label_values):
  """Regression: the range check compared labels with K in the labels' dtype.

  ``y < num_classes`` with int8 labels and K = 200 wrapped K to -56, so every
  (valid) row came out NaN; the class grid ``arange(K, dtype=y.dtype)``
  wrapped too. Narrow labels must give the int32 labels' loss and gradient.
  """
  rng = np.random.default_rng(3)
  h = jnp.asarray(rng.normal(size=(2, num_classes)))
  y32 = jnp.array(label_values, jnp.int32)
  y = y32.astype(dtype)
  # Smoothing on: the backward rule's class grid is exercised too.
  f = jax.value_and_grad(
      lambda h, y: cross_entropy(h, y, label_smoothing=0.1))
  _close(f(h, y), f(h, y32), EQ_TOL)
  np.testing.assert_array_equal(zero_one_loss(h, y, reduction="none"),
                                zero_one_loss(h, y32, reduction="none"))


def test_public_names_exported():
  """The losses are re-exported at the package top level."""
  for name in ("cross_entropy", "soft_cross_entropy", "binary_cross_entropy",
               "zero_one_loss", "penalty"):
    assert callable(getattr(jaxsoftmax, name))


def test_weights_with_smoothing_follow_the_documented_formula():
  """c_y [(1-eps)(-log p_y) + eps/K sum_j -log p_j]; PyTorch's form via soft CE."""
  rng = np.random.default_rng(7)
  h = rng.normal(size=(6, 5))
  y = rng.integers(0, 5, size=6)
  c = rng.uniform(0.5, 3.0, size=5)
  eps = 0.3
  nll = -(h - np.log(np.exp(h).sum(-1, keepdims=True)))
  ours = c[y] * ((1 - eps) * nll[np.arange(6), y] + eps / 5 * nll.sum(-1))
  torch_form = ((1 - eps) * c[y] * nll[np.arange(6), y]
                + eps / 5 * (nll * c).sum(-1))
  got = cross_entropy(h, y, weights=c[y], label_smoothing=eps)
  np.testing.assert_allclose(got, ours.sum() / c[y].sum(), rtol=1e-12)
  q = (1 - eps) * c[y][:, None] * np.eye(5)[y] + eps / 5 * c
  np.testing.assert_allclose(
      soft_cross_entropy(h, q, reduction="sum") / c[y].sum(),
      torch_form.sum() / c[y].sum(), rtol=1e-12)
  assert not np.isclose(ours.sum(), torch_form.sum())

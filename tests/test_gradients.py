"""Manual gradients: autodiff of plain references, finite differences, check_grads.

The references below are the lecture's formulas written as plainly as possible
and differentiated by ``jax.grad``; they live only here, never in the library.
"""

import functools
import math

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

import jaxsoftmax as js

# Relative tolerance per dtype. The absolute part of each comparison is the
# same number times max(1, largest magnitude of the expected leaf), so entries
# that cancel to ~0 (bias gradients, K = 1) are judged against the leaf's scale.
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
DTYPES = [np.float32, np.float64]

# One standard problem size, shared by the eager tests so that eager op
# compilation is paid once per process.
BATCH, FEATURES, CLASSES = 8, 5, 4
HIDDEN = {1: (6,), 2: (6, 7), 3: (6, 7, 3)}


# ----------------------------------------------------------------------------
# Plain references (autodiff side) and problem builders.
# ----------------------------------------------------------------------------


def _nll(h, labels):
  rows = jnp.arange(labels.shape[0])
  return jnp.mean(jax.nn.logsumexp(h, axis=-1) - h[rows, labels])


def _elastic_net(w, l1, l2):
  return l1 * jnp.sum(jnp.abs(w)) + l2 / 2 * jnp.sum(w**2)


def ref_softmax_regression_loss(params, x, labels, l1=0.0, l2=0.0):
  h = x @ params["w"] + params["b"][None, :]
  return _nll(h, labels) + _elastic_net(params["w"], l1, l2)


def ref_mlp_loss(params, x, labels, l1=0.0, l2=0.0):
  h = x
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"][None, :])
  h = h @ params[-1]["w"] + params[-1]["b"][None, :]
  reg = sum(_elastic_net(layer["w"], l1, l2) for layer in params)
  return _nll(h, labels) + reg


def linear_problem(
    seed, batch=BATCH, features=FEATURES, classes=CLASSES, dtype=np.float64
):
  rng = np.random.default_rng(seed)
  params = {
      "w": jnp.asarray(rng.normal(size=(features, classes)), dtype),
      "b": jnp.asarray(rng.normal(size=(classes,)), dtype),
  }
  x = jnp.asarray(rng.normal(size=(batch, features)), dtype)
  labels = jnp.asarray(rng.integers(0, classes, size=batch), jnp.int32)
  return params, x, labels


def mlp_problem(seed, num_hidden=2, dtype=np.float64, batch=BATCH):
  rng = np.random.default_rng(seed)
  sizes = [FEATURES, *HIDDEN[num_hidden], CLASSES]
  params = [
      {
          "w": jnp.asarray(rng.normal(size=(a, b)) / math.sqrt(a), dtype),
          "b": jnp.asarray(0.3 * rng.normal(size=(b,)), dtype),
      }
      for a, b in zip(sizes[:-1], sizes[1:])
  ]
  x = jnp.asarray(rng.normal(size=(batch, FEATURES)), dtype)
  labels = jnp.asarray(rng.integers(0, CLASSES, size=batch), jnp.int32)
  return params, x, labels


def assert_trees_close(actual, expected, rtol):
  """Same structure, shapes and dtypes; values within rtol (scaled atol)."""
  chex.assert_trees_all_equal_structs(actual, expected)
  chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    e = np.asarray(e)
    scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
    np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=rtol * scale)


def _tree_vdot(a, b):
  return sum(
      float(np.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


# ----------------------------------------------------------------------------
# Equality with jax.grad of the references.
# ----------------------------------------------------------------------------


# Both sides, both dtypes, under one jit: one compile per drawn shape (eager
# dispatch of a new shape costs more). l1 and l2 are traced, so changing them
# never recompiles. jit == eager, grad == value_and_grad[1] and
# loss == value_and_grad[0] are pinned separately below.
@jax.jit
def _linear_manual_and_reference(problems, l1, l2):
  return [
      (
          js.softmax_regression_value_and_grad(params, x, labels, l1=l1, l2=l2),
          jax.value_and_grad(ref_softmax_regression_loss)(params, x, labels, l1, l2),
      )
      for params, x, labels in problems
  ]


_penalties = st.floats(0.0, 2.0, allow_subnormal=False)


@hypothesis.settings(max_examples=6)
@hypothesis.given(
    batch=st.integers(1, 32),
    features=st.integers(1, 20),
    classes=st.integers(1, 20),
    l1=_penalties,
    l2=_penalties,
    seed=st.integers(0, 2**32 - 1),
)
def test_softmax_regression_grad_matches_autodiff(
    batch, features, classes, l1, l2, seed
):
  """Pins softmax_regression_value_and_grad == jax.value_and_grad of the plain loss, any shape, f32 and f64."""
  problems = [
      linear_problem(seed, batch, features, classes, dtype) for dtype in DTYPES
  ]
  results = _linear_manual_and_reference(problems, l1, l2)
  for dtype, ((loss, grads), (ref_loss, ref_grads)) in zip(DTYPES, results):
    rtol = RTOL[np.dtype(dtype)]
    assert_trees_close(grads, ref_grads, rtol)
    assert_trees_close(loss, ref_loss, rtol)
    chex.assert_type([loss, grads["w"], grads["b"]], dtype)


@jax.jit
def _mlp_manual_and_reference(problems, l1, l2):
  # All depths in one program: one compile per dtype.
  return [
      (
          js.mlp_value_and_grad(params, x, labels, l1=l1, l2=l2),
          jax.value_and_grad(ref_mlp_loss)(params, x, labels, l1, l2),
      )
      for params, x, labels in problems
  ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_grad_matches_autodiff(dtype):
  """Pins mlp_value_and_grad == jax.value_and_grad of a plain ReLU MLP loss, 1-3 hidden layers, l1/l2."""
  problems = [mlp_problem(h, h, dtype, batch=16) for h in (1, 2, 3)]
  rtol = RTOL[np.dtype(dtype)]
  for l1, l2 in [(0.0, 0.0), (0.03, 0.2)]:
    results = _mlp_manual_and_reference(problems, l1, l2)
    for num_hidden, ((loss, grads), (ref_loss, ref_grads)) in zip((1, 2, 3), results):
      assert len(grads) == num_hidden + 1
      assert_trees_close(grads, ref_grads, rtol)
      assert_trees_close(loss, ref_loss, rtol)


@pytest.mark.parametrize(
    "batch, features, classes", [(BATCH, FEATURES, CLASSES), (1, 1, 1), (3, 7, 2)]
)
def test_naive_jacobian_grad_matches_structured(batch, features, classes):
  """Pins naive_jacobian_grad == softmax_regression_grad (no penalty) in float64."""
  params, x, labels = linear_problem(1, batch, features, classes)
  naive, structured = jax.jit(
      lambda *a: (js.naive_jacobian_grad(*a), js.softmax_regression_grad(*a))
  )(params, x, labels)
  assert_trees_close(naive, structured, RTOL[np.dtype(np.float64)])


def test_l1_subgradient_at_zero_is_zero():
  """Pins sign(0) = 0 for the L1 term (jax.grad(abs)(0) = 1): zero weights get no L1 push."""
  params, x, labels = linear_problem(2)
  w = params["w"].at[0].set(0.0).at[2, 1].set(0.0)
  params = {**params, "w": w}
  zero = np.asarray(w) == 0
  grad = jax.jit(js.softmax_regression_grad)
  with_l1 = grad(params, x, labels, l1=0.3)
  without = grad(params, x, labels, l1=0.0)
  diff = np.asarray(with_l1["w"] - without["w"])
  np.testing.assert_array_equal(diff[zero], 0.0)
  np.testing.assert_allclose(diff[~zero], 0.3 * np.sign(np.asarray(w))[~zero])
  np.testing.assert_array_equal(with_l1["b"], without["b"])
  assert jax.grad(jnp.abs)(0.0) == 1.0  # why the plain reference differs at w = 0
  # The library's loss (penalty's custom VJP) uses the same convention.
  autodiff = jax.jit(jax.grad(js.softmax_regression_loss))(params, x, labels, l1=0.3)
  assert_trees_close(autodiff, with_l1, 1e-12)
  # And so does the MLP backprop.
  mlp_params, mlp_x, mlp_labels = mlp_problem(2)
  mlp_params[0]["w"] = mlp_params[0]["w"].at[1].set(0.0)
  mlp_grad = jax.jit(js.mlp_grad)
  mlp_with = mlp_grad(mlp_params, mlp_x, mlp_labels, l1=0.3)
  mlp_without = mlp_grad(mlp_params, mlp_x, mlp_labels, l1=0.0)
  np.testing.assert_array_equal((mlp_with[0]["w"] - mlp_without[0]["w"])[1], 0.0)


# ----------------------------------------------------------------------------
# Finite differences and check_grads (float64).
# ----------------------------------------------------------------------------


def _random_direction(seed, params):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype), params
  )


def _check_directional_derivatives(loss, grads, params, num_directions=6, eps=1e-5):
  """Central differences (L(p + eps v) - L(p - eps v)) / 2 eps == <grad, v>."""
  moved_loss = jax.jit(
      lambda p, v, step: loss(jax.tree.map(lambda a, b: a + step * b, p, v))
  )
  for i in range(num_directions):
    v = _random_direction(i, params)
    fd = (moved_loss(params, v, eps) - moved_loss(params, v, -eps)) / (2 * eps)
    analytic = _tree_vdot(grads, v)
    np.testing.assert_allclose(fd, analytic, rtol=1e-7, atol=1e-7 * max(1.0, abs(float(analytic))))


def test_softmax_regression_grad_matches_finite_differences():
  """Pins softmax_regression_grad against central differences of the loss along random directions."""
  params, x, labels = linear_problem(3)
  loss = lambda p: ref_softmax_regression_loss(p, x, labels, 0.05, 0.3)
  grads = jax.jit(js.softmax_regression_grad)(params, x, labels, l1=0.05, l2=0.3)
  _check_directional_derivatives(loss, grads, params)
  library_loss = lambda p: js.softmax_regression_loss(p, x, labels, l1=0.05, l2=0.3)
  _check_directional_derivatives(library_loss, grads, params, num_directions=2)


def test_mlp_grad_matches_finite_differences():
  """Pins mlp_grad against central differences of the loss along random directions."""
  params, x, labels = mlp_problem(4, num_hidden=2)
  loss = lambda p: ref_mlp_loss(p, x, labels, 0.05, 0.3)
  grads = jax.jit(js.mlp_grad)(params, x, labels, l1=0.05, l2=0.3)
  _check_directional_derivatives(loss, grads, params)


# check_grads(order=2) checks the first-order VJP and then the VJP of the VJP,
# so one call covers orders 1 and 2.


def test_check_grads_softmax_regression_loss():
  """Pins the custom VJPs under softmax_regression_loss with check_grads, orders 1 and 2, rev mode."""
  params, x, labels = linear_problem(5)
  f = jax.jit(lambda p, x: js.softmax_regression_loss(p, x, labels, l1=0.05, l2=0.3))
  check_grads(f, (params, x), order=2, modes=["rev"])


def test_check_grads_mlp_loss():
  """Pins the custom VJPs under mlp_loss with check_grads, orders 1 and 2, rev mode."""
  params, x, labels = mlp_problem(6, num_hidden=2)
  f = jax.jit(lambda p, x: js.mlp_loss(p, x, labels, l1=0.05, l2=0.3))
  check_grads(f, (params, x), order=2, modes=["rev"])


# ----------------------------------------------------------------------------
# Transformations: jit, vmap.
# ----------------------------------------------------------------------------


def test_jit_equals_eager():
  """Pins jit(f) == f for the manual gradient functions, and f_grad == f_value_and_grad[1]."""
  params, x, labels = linear_problem(7)
  eager = js.softmax_regression_value_and_grad(params, x, labels, l1=0.05, l2=0.3)
  jitted = jax.jit(js.softmax_regression_value_and_grad)(params, x, labels, l1=0.05, l2=0.3)
  assert_trees_close(jitted, eager, 1e-12)
  assert_trees_close(
      js.softmax_regression_grad(params, x, labels, l1=0.05, l2=0.3), eager[1], 0
  )
  assert_trees_close(
      jax.jit(js.softmax_regression_loss)(params, x, labels, l1=0.05, l2=0.3),
      eager[0],
      1e-12,
  )
  assert_trees_close(
      jax.jit(js.naive_jacobian_grad)(params, x, labels),
      js.naive_jacobian_grad(params, x, labels),
      1e-12,
  )
  mlp_params, mlp_x, mlp_labels = mlp_problem(7)
  mlp_eager = js.mlp_value_and_grad(mlp_params, mlp_x, mlp_labels, l1=0.05, l2=0.3)
  assert_trees_close(
      jax.jit(js.mlp_value_and_grad)(mlp_params, mlp_x, mlp_labels, l1=0.05, l2=0.3),
      mlp_eager,
      1e-12,
  )
  assert_trees_close(
      js.mlp_grad(mlp_params, mlp_x, mlp_labels, l1=0.05, l2=0.3), mlp_eager[1], 0
  )
  assert_trees_close(
      jax.jit(js.mlp_loss)(mlp_params, mlp_x, mlp_labels, l1=0.05, l2=0.3),
      mlp_eager[0],
      1e-12,
  )


def test_vmap_over_parameter_stack_equals_loop():
  """Pins vmap over a stack of parameter sets == a Python loop over them."""
  stack = [linear_problem(10 + i)[0] for i in range(3)]
  _, x, labels = linear_problem(9)
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *stack)
  fn = functools.partial(js.softmax_regression_value_and_grad, l1=0.05, l2=0.3)
  batched = jax.jit(jax.vmap(fn, in_axes=(0, None, None)))(stacked, x, labels)
  looped = [jax.jit(fn)(p, x, labels) for p in stack]
  assert_trees_close(
      batched, jax.tree.map(lambda *leaves: jnp.stack(leaves), *looped), 1e-12
  )


def test_vmap_over_l2_equals_loop():
  """Pins vmap over penalty strengths (a regularization path) == a Python loop."""
  params, x, labels = linear_problem(11)
  l2s = [0.0, 0.1, 1.0, 3.0]
  fn = lambda l2: js.softmax_regression_value_and_grad(params, x, labels, l1=0.05, l2=l2)
  batched = jax.jit(jax.vmap(fn))(jnp.asarray(l2s))
  looped = [jax.jit(fn)(l2) for l2 in l2s]
  assert_trees_close(
      batched, jax.tree.map(lambda *leaves: jnp.stack(leaves), *looped), 1e-12
  )
  mlp_params, mlp_x, mlp_labels = mlp_problem(11)
  mlp_fn = lambda l2: js.mlp_grad(mlp_params, mlp_x, mlp_labels, l2=l2)
  mlp_batched = jax.jit(jax.vmap(mlp_fn))(jnp.asarray(l2s))
  mlp_looped = [jax.jit(mlp_fn)(l2) for l2 in l2s]
  assert_trees_close(
      mlp_batched, jax.tree.map(lambda *leaves: jnp.stack(leaves), *mlp_looped), 1e-12
  )


def test_per_example_losses_and_grads_via_vmap():
  """Pins vmap of cross_entropy over rows == reduction="none", and mean per-example grad == batch grad."""

  @jax.jit
  def compute(params, x, labels):
    per_row = jax.vmap(
        lambda xi, yi: js.cross_entropy(js.linear_logits(params, xi), yi)
    )(x, labels)
    none = js.cross_entropy(js.linear_logits(params, x), labels, reduction="none")
    per_example_grads = jax.vmap(
        lambda xi, yi: js.softmax_regression_grad(params, xi[None], yi[None])
    )(x, labels)
    return (
        per_row,
        none,
        js.softmax_regression_loss(params, x, labels),
        per_example_grads,
        js.softmax_regression_grad(params, x, labels),
    )

  per_row, none, mean_loss, per_example_grads, batch_grads = compute(*linear_problem(12))
  assert_trees_close(per_row, none, 1e-12)
  assert_trees_close(jnp.mean(per_row), mean_loss, 1e-12)
  assert_trees_close(
      jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example_grads), batch_grads, 1e-12
  )


# ----------------------------------------------------------------------------
# Out-of-range labels under jit: NaN, never a silently wrong number.
# ----------------------------------------------------------------------------

# -1 is the regression case: a negative label must not wrap around to a valid
# class (the NumPy negative-index convention) and yield a finite loss.
BAD_LABELS = [CLASSES, CLASSES + 3, -1, -CLASSES - 1]


@pytest.mark.parametrize("bad", BAD_LABELS)
def test_jit_out_of_range_label_gives_nan_loss_and_grads(bad):
  """Pins the documented NaN semantics of an out-of-range label under jit (loss and grads)."""
  params, x, labels = linear_problem(13)
  labels = labels.at[2].set(bad)
  loss, grads = jax.jit(js.softmax_regression_value_and_grad)(params, x, labels)
  assert np.isnan(loss)
  assert np.isnan(grads["w"]).all() and np.isnan(grads["b"]).all()
  assert np.isnan(jax.jit(js.softmax_regression_loss)(params, x, labels))
  autodiff = jax.jit(jax.grad(js.softmax_regression_loss))(params, x, labels)
  assert np.isnan(autodiff["b"]).all()
  mlp_params, mlp_x, _ = mlp_problem(13)
  mlp_loss, mlp_grads = jax.jit(js.mlp_value_and_grad)(mlp_params, mlp_x, labels)
  assert np.isnan(mlp_loss)
  assert np.isnan(mlp_grads[-1]["w"]).all() and np.isnan(mlp_grads[-1]["b"]).all()


@pytest.mark.parametrize("bad", BAD_LABELS)
def test_jit_out_of_range_label_poisons_only_its_row(bad):
  """Pins that per-example (vmapped) losses and grads are NaN only in the bad label's row."""
  params, x, labels = linear_problem(14)
  labels = labels.at[2].set(bad)
  per_example = jax.jit(
      jax.vmap(
          lambda xi, yi: js.softmax_regression_value_and_grad(params, xi[None], yi[None])
      )
  )
  losses, grads = per_example(x, labels)
  bad_row = np.arange(BATCH) == 2
  assert np.isnan(losses[bad_row]).all() and np.isfinite(losses[~bad_row]).all()
  for g in (grads["w"], grads["b"]):
    assert np.isnan(g[bad_row]).all() and np.isfinite(g[~bad_row]).all()


# ----------------------------------------------------------------------------
# Bad inputs: clear errors naming the argument.
# ----------------------------------------------------------------------------


def _with(params=None, x=None, labels=None, **kwargs):
  """A transform of the standard (params, x, labels) replacing some parts."""

  def transform(p, xx, yy):
    return (
        p if params is None else params(p),
        xx if x is None else x(xx),
        yy if labels is None else labels(yy),
        kwargs,
    )

  return transform


LINEAR_BAD_INPUTS = {
    "x_rank1": (_with(x=lambda x: x[0]), ValueError, r"x must have rank 2"),
    "x_rank3": (_with(x=lambda x: x[None]), ValueError, r"x must have rank 2"),
    "x_features": (_with(x=lambda x: x[:, :-1]), ValueError, r"x must have 5 features"),
    "x_integer": (_with(x=lambda x: x.astype(jnp.int32)), TypeError, r"x must have a floating dtype"),
    "x_nan": (_with(x=lambda x: x.at[2, 1].set(jnp.nan)), ValueError, r"x must be finite"),
    "x_inf": (_with(x=lambda x: x.at[0, 0].set(-jnp.inf)), ValueError, r"x must be finite"),
    "labels_batch": (_with(labels=lambda y: y[:-1]), ValueError, r"labels must have shape \(8,\)"),
    "labels_float": (_with(labels=lambda y: y.astype(jnp.float32)), TypeError, r"labels must have an integer dtype"),
    "label_too_large": (_with(labels=lambda y: y.at[3].set(CLASSES)), ValueError, r"labels must lie in \[0, 4\)"),
    "label_negative": (_with(labels=lambda y: y.at[3].set(-1)), ValueError, r"labels must lie in \[0, 4\)"),
    "bias_shape": (_with(params=lambda p: {**p, "b": p["b"][:-1]}), ValueError, r"params\['b'\] must have shape \(4,\)"),
    "bias_rank": (_with(params=lambda p: {**p, "b": p["b"][None]}), ValueError, r"params\['b'\] must have shape \(4,\)"),
    "w_rank": (_with(params=lambda p: {**p, "w": p["w"][None]}), ValueError, r"params\['w'\] must have rank 2"),
}
PENALTY_BAD_INPUTS = {
    "l1_negative": (_with(l1=-0.1), ValueError, r"l1 must be >= 0"),
    "l2_negative": (_with(l2=-1.0), ValueError, r"l2 must be >= 0"),
    "l2_nan": (_with(l2=float("nan")), ValueError, r"l2 must be >= 0"),
}


@pytest.mark.parametrize(
    "case", list({**LINEAR_BAD_INPUTS, **PENALTY_BAD_INPUTS}), ids=str
)
@pytest.mark.parametrize(
    "fn", [js.softmax_regression_grad, js.softmax_regression_value_and_grad]
)
def test_softmax_regression_grad_rejects_bad_input(fn, case):
  """Pins a TypeError/ValueError naming the argument for each kind of bad input."""
  transform, error, match = {**LINEAR_BAD_INPUTS, **PENALTY_BAD_INPUTS}[case]
  params, x, labels, kwargs = transform(*linear_problem(15))
  with pytest.raises(error, match=match):
    fn(params, x, labels, **kwargs)


@pytest.mark.parametrize("case", list(LINEAR_BAD_INPUTS), ids=str)
def test_naive_jacobian_grad_rejects_bad_input(case):
  """Pins the same boundary checks on naive_jacobian_grad."""
  transform, error, match = LINEAR_BAD_INPUTS[case]
  params, x, labels, kwargs = transform(*linear_problem(15))
  with pytest.raises(error, match=match):
    js.naive_jacobian_grad(params, x, labels, **kwargs)


def _mlp_layer(params, i, **changes):
  params = [dict(layer) for layer in params]
  params[i].update(changes)
  return params


MLP_BAD_INPUTS = {
    "empty_params": (_with(params=lambda p: []), ValueError, r"params must hold at least one layer"),
    "bias_shape": (
        _with(params=lambda p: _mlp_layer(p, 1, b=p[1]["b"][:-1])),
        ValueError,
        r"params\[1\]\['b'\] must have shape",
    ),
    "width_mismatch": (
        _with(params=lambda p: _mlp_layer(p, 1, w=p[1]["w"][:-1])),
        ValueError,
        r"params\[1\]",
    ),
    "x_features": (_with(x=lambda x: x[:, :-1]), ValueError, r"x must have 5 features"),
    "x_rank1": (_with(x=lambda x: x[0]), ValueError, r"x must have rank 2"),
    "x_nan": (_with(x=lambda x: x.at[2, 1].set(jnp.nan)), ValueError, r"x must be finite"),
    "labels_batch": (_with(labels=lambda y: y[:-1]), ValueError, r"labels must have shape \(8,\)"),
    "labels_float": (_with(labels=lambda y: y.astype(jnp.float64)), TypeError, r"labels must have an integer dtype"),
    "label_too_large": (_with(labels=lambda y: y.at[0].set(CLASSES)), ValueError, r"labels must lie in \[0, 4\)"),
    **PENALTY_BAD_INPUTS,
}


@pytest.mark.parametrize("case", list(MLP_BAD_INPUTS), ids=str)
@pytest.mark.parametrize("fn", [js.mlp_grad, js.mlp_value_and_grad])
def test_mlp_grad_rejects_bad_input(fn, case):
  """Pins a TypeError/ValueError naming the argument for each kind of bad MLP input."""
  transform, error, match = MLP_BAD_INPUTS[case]
  params, x, labels, kwargs = transform(*mlp_problem(16))
  with pytest.raises(error, match=match):
    fn(params, x, labels, **kwargs)


def test_mlp_loss_rejects_empty_params():
  """Pins that mlp_loss, like mlp_grad, rejects params with no layer instead of using x as logits."""
  _, x, labels = mlp_problem(16)
  with pytest.raises(ValueError, match=r"params"):
    js.mlp_loss([], x, labels)

"""Second-order solvers: closed-form Hessian and HVP against autodiff of a
plain reference loss, Newton and L-BFGS against each other and scikit-learn."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from jaxsoftmax import data
from jaxsoftmax.models._gradients import softmax_regression_loss
from jaxsoftmax.models._gradients import softmax_regression_value_and_grad
from jaxsoftmax.training._solvers import lbfgs_solve
from jaxsoftmax.training._solvers import newton_solve
from jaxsoftmax.training._solvers import ravel_linear_params
from jaxsoftmax.training._solvers import softmax_regression_hessian
from jaxsoftmax.training._solvers import softmax_regression_hvp
from jaxsoftmax.training._solvers import unravel_linear_params

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
BATCH, FEATURES, CLASSES = 12, 3, 4
L2 = 1e-3  # digits: scikit-learn's C = 1 / (L2 * n) = 0.70


def ref_loss(params, x, labels, l2):
  """The objective written as plainly as possible, for autodiff."""
  h = x @ params["w"] + params["b"][None, :]
  rows = jnp.arange(labels.shape[0])
  nll = jnp.mean(jax.nn.logsumexp(h, axis=-1) - h[rows, labels])
  return nll + l2 / 2 * jnp.sum(params["w"] ** 2)


def _problem(seed, dtype=np.float64):
  rng = np.random.default_rng(seed)

  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape), dtype)

  labels = jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32)
  x = normal(BATCH, FEATURES)
  params = {"w": normal(FEATURES, CLASSES), "b": normal(CLASSES)}
  v = {"w": normal(FEATURES, CLASSES), "b": normal(CLASSES)}
  return params, x, labels, v


@functools.partial(jax.jit, static_argnums=0)
def _flat_hessian(loss, params, x, labels, l2):
  def f(flat):
    return loss(unravel_linear_params(flat, CLASSES), x, labels, l2)

  return jax.hessian(f)(ravel_linear_params(params))


@jax.jit
def _jvp_of_grad(params, x, labels, v, l2):
  grad = functools.partial(jax.grad(ref_loss), x=x, labels=labels, l2=l2)
  return jax.jvp(grad, (params,), (v,))


def _assert_tree_close(actual, expected, rtol):
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    scale = max(1.0, float(jnp.max(jnp.abs(e))))
    np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def digits():
  d = data.load_digits()
  x, _ = data.standardize(d.x_train, d.x_test)
  return jnp.asarray(x, jnp.float64), jnp.asarray(d.y_train)


def _zeros(num_features, num_classes):
  return {
      "w": jnp.zeros((num_features, num_classes), jnp.float64),
      "b": jnp.zeros((num_classes,), jnp.float64),
  }


def objective(params, x, labels, l2):
  return softmax_regression_loss(params, x, labels, l2=l2)


@jax.jit
def _value_and_grad_norm(params, x, labels, l2):
  value, grad = softmax_regression_value_and_grad(params, x, labels, l2=l2)
  return value, jnp.linalg.norm(ravel_linear_params(grad))


def _at(tree, i):
  return jax.tree.map(lambda leaf: leaf[i], tree)


# ----------------------------------------------------------------------------
# Flattening.
# ----------------------------------------------------------------------------


def test_ravel_order_is_the_augmented_weight_matrix_and_round_trips():
  params, *_ = _problem(0)
  flat = ravel_linear_params(params)
  np.testing.assert_array_equal(
      flat.reshape(FEATURES + 1, CLASSES),
      jnp.concatenate([params["w"], params["b"][None, :]]),
  )
  back = unravel_linear_params(flat, CLASSES)
  np.testing.assert_array_equal(back["w"], params["w"])
  np.testing.assert_array_equal(back["b"], params["b"])


# ----------------------------------------------------------------------------
# Hessian and Hessian-vector product.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_hessian_equals_autodiff_hessian(l2):
  params, x, labels, _ = _problem(1)
  h = softmax_regression_hessian(params, x, labels, l2=l2)
  assert h.shape == ((FEATURES + 1) * CLASSES,) * 2
  # Against the plain reference, and the house loss with its custom VJP.
  for loss in (ref_loss, objective):
    expected = _flat_hessian(loss, params, x, labels, l2)
    np.testing.assert_allclose(h, expected, rtol=1e-10, atol=1e-12)


def test_hessian_is_psd_and_flat_along_a_common_bias_shift():
  params, x, labels, _ = _problem(2)
  h = softmax_regression_hessian(params, x, labels, l2=0.1)
  np.testing.assert_allclose(h, h.T, rtol=0, atol=1e-15)
  eigenvalues = jnp.linalg.eigvalsh(h)
  assert float(eigenvalues[0]) > -1e-12
  bias_shift = _zeros(FEATURES, CLASSES) | {"b": jnp.ones(CLASSES)}
  shift = ravel_linear_params(bias_shift)
  np.testing.assert_allclose(h @ shift, 0.0, atol=1e-14)
  # l2 lifts the common shift of a weight row, so only the bias one is null.
  assert int(jnp.sum(eigenvalues < 1e-10)) == 1


def test_hessian_under_jit_and_vmap_over_l2():
  params, x, labels, _ = _problem(3)
  l2s = jnp.array([0.0, 0.1, 1.0])
  batched = jax.jit(
      jax.vmap(lambda l2: softmax_regression_hessian(params, x, labels, l2=l2))
  )(l2s)
  for h, l2 in zip(batched, l2s):
    np.testing.assert_allclose(
        h,
        softmax_regression_hessian(params, x, labels, l2=float(l2)),
        rtol=1e-12,
        atol=1e-15,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_hvp_equals_jvp_of_grad_and_hessian_times_v(dtype, l2):
  params, x, labels, v = _problem(4, dtype)
  hv = softmax_regression_hvp(params, x, labels, v, l2=l2)
  assert jax.tree.map(lambda a: a.dtype, hv) == {"w": dtype, "b": dtype}
  params64, x64, v64 = jax.tree.map(
      lambda a: a.astype(np.float64), (params, x, v)
  )
  _, expected = _jvp_of_grad(params64, x64, labels, v64, l2)
  _assert_tree_close(hv, expected, RTOL[np.dtype(dtype)])
  h = _flat_hessian(ref_loss, params64, x64, labels, l2)
  _assert_tree_close(
      ravel_linear_params(hv),
      h @ ravel_linear_params(v64),
      RTOL[np.dtype(dtype)],
  )


def test_hvp_vmapped_over_directions_is_the_hessian_matrix():
  params, x, labels, _ = _problem(5)
  h = softmax_regression_hessian(params, x, labels, l2=0.2)
  n = h.shape[0]
  basis = jax.vmap(lambda e: unravel_linear_params(e, CLASSES))(jnp.eye(n))
  columns = jax.jit(
      jax.vmap(lambda v: softmax_regression_hvp(params, x, labels, v, l2=0.2))
  )(basis)
  np.testing.assert_allclose(
      jax.vmap(ravel_linear_params)(columns), h, rtol=1e-12, atol=1e-14
  )


# ----------------------------------------------------------------------------
# Newton and L-BFGS.
# ----------------------------------------------------------------------------


def test_newton_lbfgs_and_sklearn_agree_on_digits(digits):
  x, y = digits
  start = _zeros(x.shape[1], 10)
  params, info = newton_solve(start, x, y, l2=L2, tol=1e-8)
  assert bool(info.converged)
  assert float(info.grad_norm) < 1e-8
  assert int(info.iterations) <= 12
  # The reported figures are the solution's, not the loop's bookkeeping.
  value, grad_norm = _value_and_grad_norm(params, x, y, L2)
  assert grad_norm < 1e-8
  np.testing.assert_allclose(float(info.value), value, rtol=1e-14)

  q, q_info = lbfgs_solve(objective, start, args=(x, y, L2), tol=1e-8)
  assert bool(q_info.converged) and int(q_info.iterations) < 500
  np.testing.assert_allclose(
      float(q_info.value), _value_and_grad_norm(q, x, y, L2)[0], rtol=1e-14
  )
  np.testing.assert_allclose(float(q_info.value), value, rtol=1e-9)
  # Same function and shapes: this reuses the compiled loop.
  _, short = lbfgs_solve(objective, start, args=(x, y, L2), max_iter=2, tol=0.0)
  assert int(short.iterations) == 2 and not bool(short.converged)
  assert float(short.value) > float(q_info.value)

  # OpenBLAS threads spinning against XLA's pool make lbfgs 40x slower on a
  # 2-core machine; one thread is plenty for 1437 x 64.
  with threadpool_limits(1):
    clf = LogisticRegression(C=1 / (L2 * x.shape[0]), tol=1e-10, max_iter=1000)
    clf.fit(np.asarray(x), np.asarray(y))
  sk = {"w": jnp.asarray(clf.coef_.T), "b": jnp.asarray(clf.intercept_)}
  sk_value = _value_and_grad_norm(sk, x, y, L2)[0]
  np.testing.assert_allclose(value, sk_value, rtol=1e-6)
  assert value <= sk_value * (1 + 1e-12)


def test_newton_under_jit_and_vmap_over_l2_including_zero():
  # Random labels overlap, so a minimizer exists even at l2 = 0, where the
  # Hessian is singular along every common shift of a column of W~.
  params, x, labels, _ = _problem(7)
  l2s = jnp.array([0.0, 0.1, 1.0])
  solve = jax.jit(
      jax.vmap(lambda l2: newton_solve(params, x, labels, l2=l2, tol=1e-10))
  )
  solved, info = solve(l2s)
  assert bool(jnp.all(info.converged)), info
  for i, l2 in enumerate(l2s):
    _, grad_norm = _value_and_grad_norm(_at(solved, i), x, labels, l2)
    assert grad_norm < 1e-10
  # Stronger L2, smaller weights.
  norms = jnp.linalg.norm(solved["w"].reshape(3, -1), axis=1)
  assert bool(jnp.all(jnp.diff(norms) < 0))


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_bad_input_raises():
  params, x, labels, v = _problem(8)
  with pytest.raises(ValueError, match=r"v\['w'\] must have shape \(3, 4\)"):
    softmax_regression_hvp(params, x, labels, {"w": v["w"].T, "b": v["b"]})
  with pytest.raises(ValueError, match="v must be a dict"):
    softmax_regression_hvp(params, x, labels, v["w"])
  with pytest.raises(ValueError, match="l2 must be >= 0"):
    softmax_regression_hessian(params, x, labels, l2=-1.0)
  with pytest.raises(ValueError, match="x must have 3 features"):
    softmax_regression_hessian(params, x[:, :2], labels)
  with pytest.raises(ValueError, match="labels must lie in"):
    newton_solve(params, x, labels + CLASSES, l2=0.1)
  with pytest.raises(ValueError, match=r"flat must have .* got shape \(13,\)"):
    unravel_linear_params(jnp.zeros(13), CLASSES)
  with pytest.raises(ValueError, match="max_iter"):
    newton_solve(params, x, labels, l2=0.1, max_iter=0)
  with pytest.raises(TypeError, match="loss_fn must be callable"):
    lbfgs_solve("objective", params)
  with pytest.raises(TypeError, match=r"params\['w'\] must have a floating"):
    lbfgs_solve(objective, {"w": jnp.zeros(3, jnp.int32)})

"""jaxsoftmax.nn: NNX modules equal the pure functions and train with nnx.Optimizer."""

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsoftmax import data
from jaxsoftmax.models._gradients import mlp_grad
from jaxsoftmax.models._gradients import softmax_regression_grad
from jaxsoftmax.models._functional import linear_init
from jaxsoftmax.models._functional import linear_logits
from jaxsoftmax.models._functional import mlp_init
from jaxsoftmax.models._functional import mlp_logits
from jaxsoftmax.nn import MLP
from jaxsoftmax.nn import SoftmaxRegression

FEATURES, CLASSES, BATCH = 5, 4, 8
SIZES = [FEATURES, 6, 7, CLASSES]
CLASS_WEIGHTS = jnp.array([0.5, 2.0, 1.0, 3.0])


def _batch(seed, dtype=np.float64):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(BATCH, FEATURES)), dtype)
  labels = jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32)
  return x, labels


def assert_trees_close(actual, expected, rtol):
  chex.assert_trees_all_equal_structs(actual, expected)
  chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    scale = max(1.0, float(np.max(np.abs(np.asarray(e)), initial=0.0)))
    np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=rtol * scale)


def _pure(grads_state, model):
  """An nnx.grad State as the model's plain params pytree."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  return nnx.merge(graphdef, grads_state, rest).params


def test_softmax_regression_params_are_linear_init_and_forward_is_linear_logits():
  """Pins the module's Params == linear_init from rngs.params() and __call__ == linear_logits."""
  model = SoftmaxRegression(FEATURES, CLASSES, dtype=jnp.float64, rngs=nnx.Rngs(params=3))
  expected = linear_init(
      nnx.Rngs(params=3).params(), FEATURES, CLASSES, dtype=jnp.float64
  )
  chex.assert_trees_all_equal(model.params, expected)
  state = nnx.state(model, nnx.Param)
  assert {k: v[...].shape for k, v in state.items()} == {
      "w": (FEATURES, CLASSES), "b": (CLASSES,)
  }
  x, _ = _batch(0)
  chex.assert_trees_all_equal(model(x), linear_logits(expected, x))


# nnx.grad of the module's loss next to the library's manual gradient, under
# nnx.jit: one compile each instead of many eagerly compiled ops.
PENALTIES = dict(l1=0.01, l2=0.1, class_weights=CLASS_WEIGHTS)


@nnx.jit
def _linear_grads(model, x, labels):
  grads = nnx.grad(lambda m: m.loss(x, labels, **PENALTIES))(model)
  return grads, softmax_regression_grad(model.params, x, labels, **PENALTIES)


@nnx.jit
def _mlp_grads(model, x, labels, key):
  grads = nnx.grad(lambda m: m.loss(x, labels, **PENALTIES))(model)
  manual = mlp_grad(
      model.params, x, labels, dropout_rate=model.dropout_rate, key=key,
      **PENALTIES,
  )
  return grads, manual


def test_softmax_regression_nnx_grad_equals_manual_gradient():
  """Pins nnx.grad of model.loss (l1, l2, class weights) == softmax_regression_grad at the module's params, float64."""
  model = SoftmaxRegression(FEATURES, CLASSES, dtype=jnp.float64, rngs=nnx.Rngs(0))
  grads, manual = _linear_grads(model, *_batch(1))
  assert_trees_close(_pure(grads, model), manual, 1e-10)


def test_mlp_params_are_mlp_init_and_eval_forward_is_mlp_logits():
  """Pins the MLP's Params == mlp_init, eval mode (eval() or nnx.view) == mlp_logits without dropout, bitwise."""
  model = MLP(SIZES, dropout_rate=0.5, dtype=jnp.float64, rngs=nnx.Rngs(params=1, dropout=2))
  expected = mlp_init(nnx.Rngs(params=1).params(), SIZES, dtype=jnp.float64)
  chex.assert_trees_all_equal(model.params, expected)
  x, _ = _batch(2)
  reference = mlp_logits(expected, x)
  chex.assert_trees_all_equal(nnx.view(model, deterministic=True)(x), reference)
  assert not model.deterministic  # the view left the module in training mode
  model.eval()
  chex.assert_trees_all_equal(model(x), reference)
  model.train()
  assert not np.allclose(model(x), reference)


def test_mlp_without_dropout_needs_no_dropout_stream():
  """Pins MLP(dropout_rate=0) building from an Rngs with only a params stream, deterministic in train mode."""
  model = MLP(SIZES, dtype=jnp.float64, rngs=nnx.Rngs(params=0))
  x, _ = _batch(3)
  chex.assert_trees_all_equal(model(x), mlp_logits(model.params, x))


def test_mlp_train_mode_draws_a_fresh_key_per_call():
  """Pins train-mode calls == mlp_logits with the keys the module's dropout stream hands out, new masks per call."""
  model = MLP(SIZES, dropout_rate=0.3, dtype=jnp.float64, rngs=nnx.Rngs(params=0, dropout=1))
  stream = nnx.clone(model.rngs)
  x, _ = _batch(4)
  first, second = model(x), model(x)
  for out in (first, second):
    expected = mlp_logits(model.params, x, dropout_rate=0.3, key=stream())
    chex.assert_trees_all_equal(out, expected)
  assert not np.allclose(first, second)


def test_mlp_nnx_grad_with_dropout_equals_manual_gradient():
  """Pins nnx.grad of model.loss in train mode == mlp_grad with the same dropout key, float64; nnx.jit advances the stream."""
  model = MLP(SIZES, dropout_rate=0.4, dtype=jnp.float64, rngs=nnx.Rngs(params=5, dropout=6))
  stream = nnx.clone(model.rngs)
  x, labels = _batch(5)
  grads, manual = _mlp_grads(model, x, labels, stream())
  assert_trees_close(_pure(grads, model), manual, 1e-10)
  # The next step draws the stream's next key, so it drops other units.
  next_grads, next_manual = _mlp_grads(model, x, labels, stream())
  assert_trees_close(_pure(next_grads, model), next_manual, 1e-10)
  assert not np.allclose(next_manual[0]["w"], manual[0]["w"])


@pytest.fixture(scope="module")
def digits():
  d = data.load_digits()
  x_train, x_test = data.standardize(d.x_train, d.x_test)
  return (jnp.asarray(x_train), jnp.asarray(d.y_train)), (
      jnp.asarray(x_test), jnp.asarray(d.y_test)
  )


@nnx.jit
def _train_step(model, optimizer, x, labels):
  loss, grads = nnx.value_and_grad(lambda m: m.loss(x, labels, l2=1e-4))(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def _accuracy(model, x, labels):
  return jnp.mean(jnp.argmax(model(x), axis=-1) == labels)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SoftmaxRegression(64, 10, rngs=nnx.Rngs(0)),
        lambda: MLP([64, 32, 10], dropout_rate=0.2, rngs=nnx.Rngs(0)),
    ],
    ids=["softmax_regression", "mlp_dropout"],
)
def test_nnx_optimizer_training_on_digits_under_nnx_jit(make, digits):
  """Pins a few optax steps (nnx.Optimizer, nnx.jit) cutting the digits loss and reaching >= 90% test accuracy in eval mode."""
  (x, labels), (x_test, y_test) = digits
  model = make()
  optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
  losses = [float(_train_step(model, optimizer, x, labels)) for _ in range(25)]
  assert losses[-1] < 0.25 * losses[0], losses
  model.eval()
  assert float(_accuracy(model, x_test, y_test)) >= 0.9
  assert int(optimizer.step[...]) == 25


def test_mlp_rejects_bad_dropout_rate():
  """Pins the constructor's check on dropout_rate (a probability below 1)."""
  with pytest.raises(ValueError, match=r"dropout_rate must lie in \[0, 1\); got 1.0"):
    MLP(SIZES, dropout_rate=1.0, rngs=nnx.Rngs(0))

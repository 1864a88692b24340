"""Optimizer and schedule factory: every name trains, schedules follow their
formulas, and clipping, weight decay and accumulation compose as documented."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsoftmax import data
from jaxsoftmax.models._gradients import softmax_regression_loss
from jaxsoftmax.models._gradients import softmax_regression_value_and_grad
from jaxsoftmax.training._optim import OPTIMIZERS
from jaxsoftmax.training._optim import make_optimizer
from jaxsoftmax.training._optim import make_schedule

# Learning rates that suit each rule on standardized digits.
LEARNING_RATES = {
    "sgd": 0.5,
    "momentum": 0.1,
    "nesterov": 0.1,
    "adam": 0.02,
    "adamw": 0.02,
    "adagrad": 0.2,
    "rmsprop": 0.01,
    "lbfgs": 1.0,
}


@pytest.fixture(scope="module")
def digits():
  d = data.load_digits()
  x, _ = data.standardize(d.x_train, d.x_test)
  return jnp.asarray(x[:256], jnp.float64), jnp.asarray(d.y_train[:256])


def _zeros(num_features=64, num_classes=10):
  return {
      "w": jnp.zeros((num_features, num_classes), jnp.float64),
      "b": jnp.zeros((num_classes,), jnp.float64),
  }


def _random_params(seed, shape=(3, 2)):
  rng = np.random.default_rng(seed)
  return {
      "w": jnp.asarray(rng.standard_normal(shape)),
      "b": jnp.asarray(rng.standard_normal(shape[1:])),
  }


def _tree_norm(tree):
  return float(optax.tree.norm(tree))


@functools.partial(jax.jit, static_argnums=0)
def _train(opt, params, xs, ys):
  """One optimizer update per batch in ``xs``/``ys`` (stacked), jitted once."""

  def step(carry, batch):
    params, state = carry
    _, grads = softmax_regression_value_and_grad(params, *batch)
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), updates

  carry = (params, opt.init(params))
  (params, _), updates = jax.lax.scan(step, carry, (xs, ys))
  return params, updates


@functools.partial(jax.jit, static_argnums=0)
def _updates(opt, grads, params):
  """The updates ``opt`` makes from a stack of gradients at fixed ``params``."""

  def step(state, g):
    updates, state = opt.update(g, state, params)
    return state, updates

  return jax.lax.scan(step, opt.init(params), grads)[1]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _train_lbfgs(opt, params, x, y, steps):
  def loss(p):
    return softmax_regression_loss(p, x, y)

  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(_, carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(
        grad, state, params, value=value, grad=grad, value_fn=loss
    )
    return optax.apply_updates(params, updates), state

  return jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))[0]


def _stack(*trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _at(tree, i):
  return jax.tree.map(lambda leaf: leaf[i], tree)


# ----------------------------------------------------------------------------
# Every optimizer trains.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_decreases_the_digits_loss(digits, name):
  x, y = digits
  params = _zeros()
  opt = make_optimizer(name, LEARNING_RATES[name])
  if name == "lbfgs":
    trained = _train_lbfgs(opt, params, x, y, 3)
  else:
    steps = 10
    xs, ys = jnp.stack([x] * steps), jnp.stack([y] * steps)
    trained, _ = _train(opt, params, xs, ys)
  before = float(softmax_regression_loss(params, x, y))
  after = float(softmax_regression_loss(trained, x, y))
  assert np.isfinite(after)
  # log(10) = 2.30 at zero params; ten steps of any sane rule halve it.
  assert after < 0.5 * before, (name, before, after)


# ----------------------------------------------------------------------------
# Schedules give their documented values.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("constant", {}, {0: 1.0, 7: 1.0, 1000: 1.0}),
        (
            "step",
            {"decay_rate": 0.5, "decay_steps": 10},
            {0: 1.0, 9: 1.0, 10: 0.5, 19: 0.5, 25: 0.25, 100: 0.5**10},
        ),
        (
            "step",
            {"decay_rate": 0.5, "decay_steps": 10, "end_value": 0.2},
            {10: 0.5, 20: 0.25, 30: 0.2, 90: 0.2},
        ),
        (
            "exponential",
            {"decay_rate": 0.1, "decay_steps": 10},
            {0: 1.0, 5: 0.1**0.5, 10: 0.1, 15: 0.1**1.5, 20: 0.01},
        ),
        (
            "exponential",
            {"decay_rate": 0.1, "decay_steps": 10, "end_value": 0.05},
            {10: 0.1, 20: 0.05},
        ),
        (
            "cosine",
            {"total_steps": 100},
            {0: 1.0, 25: 0.5 + 0.5 * np.cos(np.pi / 4), 50: 0.5, 100: 0.0,
             200: 0.0},
        ),
        (
            "cosine",
            {"total_steps": 100, "end_value": 0.1},
            {0: 1.0, 50: 0.55, 100: 0.1, 150: 0.1},
        ),
        (
            "warmup_cosine",
            {"total_steps": 110, "warmup_steps": 10},
            {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.5, 110: 0.0, 500: 0.0},
        ),
        (
            "warmup_cosine",
            {"total_steps": 100, "end_value": 0.2},
            {0: 1.0, 50: 0.6, 100: 0.2},
        ),
    ],
)
def test_schedule_values(name, kwargs, expected):
  schedule = make_schedule(name, 1.0, **kwargs)
  got = [float(schedule(jnp.int32(t))) for t in expected]
  # Optax evaluates int32 step counts in float32.
  np.testing.assert_allclose(got, list(expected.values()), rtol=1e-6, atol=1e-7)


def test_schedule_scales_with_the_learning_rate():
  schedule = make_schedule("step", 0.1, decay_rate=0.5, decay_steps=10)
  np.testing.assert_allclose(float(schedule(25)), 0.025, rtol=1e-12)


@pytest.mark.parametrize(
    "learning_rate, kwargs, rates",
    [
        (2.0, {"schedule": "step", "decay_rate": 0.5, "decay_steps": 2},
         [2.0, 2.0, 1.0, 1.0, 0.5]),
        (optax.linear_schedule(1.0, 0.0, 4), {}, [1.0, 0.75, 0.5, 0.25, 0.0]),
    ],
)
def test_schedule_drives_the_sgd_step(learning_rate, kwargs, rates):
  opt = make_optimizer("sgd", learning_rate, **kwargs)
  params = _random_params(0)
  ones = jax.tree.map(jnp.ones_like, params)
  updates = _updates(opt, _stack(*[ones] * 5), params)
  np.testing.assert_allclose(-updates["w"][:, 0, 0], rates, rtol=1e-6)


# ----------------------------------------------------------------------------
# Clipping, weight decay, accumulation.
# ----------------------------------------------------------------------------


def test_clipping_caps_the_update_norm():
  opt = make_optimizer("sgd", 1.0, clip_norm=0.5)
  params = _random_params(0)
  big = jax.tree.map(lambda a: 10 * a, _random_params(1))
  small = jax.tree.map(lambda a: 1e-3 * a, big)
  updates = _updates(opt, _stack(big, small), params)
  np.testing.assert_allclose(_tree_norm(_at(updates, 0)), 0.5, rtol=1e-12)
  # Same direction as the gradient, only shorter; small gradients untouched.
  scale = 0.5 / _tree_norm(big)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(big)):
    np.testing.assert_allclose(u[0], -scale * g, rtol=1e-12)
    np.testing.assert_allclose(u[1], -1e-3 * g, rtol=1e-12)


def test_clipping_comes_before_weight_decay():
  opt = make_optimizer("sgd", 1.0, clip_norm=0.5, weight_decay=0.3)
  params = _random_params(0)
  grads = jax.tree.map(lambda a: 10 * a, _random_params(1))
  updates = _at(_updates(opt, _stack(grads), params), 0)
  scale = 0.5 / _tree_norm(grads)
  np.testing.assert_allclose(
      updates["w"], -(scale * grads["w"] + 0.3 * params["w"]), rtol=1e-12
  )
  np.testing.assert_allclose(updates["b"], -scale * grads["b"], rtol=1e-12)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_coupled_weight_decay_is_an_l2_gradient_on_weights_only(name):
  params = _random_params(2)
  grads = _stack(*[_random_params(10 + i) for i in range(3)])
  # The gradient of (wd / 2) ||w||^2, biases excluded as in penalty().
  with_l2 = {"w": grads["w"] + 0.05 * params["w"][None], "b": grads["b"]}
  decayed_opt = make_optimizer(name, 0.3, weight_decay=0.05)
  decayed = _updates(decayed_opt, grads, params)
  plain = _updates(make_optimizer(name, 0.3), with_l2, params)
  for a, b in zip(jax.tree.leaves(decayed), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_adamw_decay_is_decoupled_and_adam_decay_is_not():
  params = _random_params(3)
  zero = _stack(jax.tree.map(jnp.zeros_like, params))
  lr, wd, eps = 0.01, 0.1, 1e-8
  adamw = make_optimizer("adamw", lr, weight_decay=wd)
  updates = _at(_updates(adamw, zero, params), 0)
  # Decoupled: with no gradient the step is exactly -lr * wd * w ...
  np.testing.assert_allclose(updates["w"], -lr * wd * params["w"], rtol=1e-12)
  np.testing.assert_array_equal(updates["b"], 0.0)
  # ... while Adam normalizes the coupled decay term like a gradient: its
  # first step is -lr * g / (|g| + eps) with g = wd * w, about -lr * sign(w).
  adam = make_optimizer("adam", lr, weight_decay=wd)
  updates = _at(_updates(adam, zero, params), 0)
  g = wd * params["w"]
  expected = -lr * g / (jnp.abs(g) + eps)
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-12)
  np.testing.assert_array_equal(updates["b"], 0.0)


def test_accumulating_k_batches_equals_one_k_times_larger_batch(digits):
  x, y = digits
  k, batch = 4, 32
  start = _random_params(4, (64, 10))
  big_x, big_y = x.reshape(2, k * batch, 64), y.reshape(2, k * batch)
  one, _ = _train(make_optimizer("sgd", 0.5), start, big_x, big_y)
  acc, updates = _train(
      make_optimizer("sgd", 0.5, accumulate_steps=k),
      start,
      x.reshape(2 * k, batch, 64),
      y.reshape(2 * k, batch),
  )
  for a, b in zip(jax.tree.leaves(acc), jax.tree.leaves(one)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
  # Only every k-th mini-batch moves the parameters.
  moved = np.any(np.asarray(updates["w"]) != 0, axis=(1, 2))
  assert moved.tolist() == [False, False, False, True] * 2


def test_accumulation_keeps_float64_and_clips_the_mean():
  opt = make_optimizer("sgd", 1.0, accumulate_steps=2, clip_norm=2.0)
  params = _random_params(5)
  accumulators = jax.tree.leaves(opt.init(params).acc_grads)
  assert all(a.dtype == jnp.float64 for a in accumulators)
  raw = _random_params(6)
  unit = jax.tree.map(lambda a: a / _tree_norm(raw), raw)
  grads = _stack(
      jax.tree.map(lambda a: 3 * a, unit), jax.tree.map(jnp.negative, unit)
  )
  updates = _at(_updates(opt, grads, params), 1)
  # The mean of 3u and -u is u, under the bound: the step is -u. Clipping
  # each mini-batch first would average 2u and -u into u / 2.
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(unit)):
    np.testing.assert_allclose(a, -b, rtol=1e-12)


# ----------------------------------------------------------------------------
# Bad names and arguments.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": "adamax"}, ValueError, "sgd.*momentum.*lbfgs"),
        ({"learning_rate": -0.1}, ValueError, "learning_rate must be > 0"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be > 0"),
        ({"clip_norm": 0.0}, ValueError, "clip_norm must be > 0"),
        ({"weight_decay": -1e-3}, ValueError, "weight_decay must be >= 0"),
        ({"accumulate_steps": 0}, ValueError, "accumulate_steps"),
        ({"accumulate_steps": 2.0}, TypeError, "accumulate_steps"),
        (
            {"name": "momentum", "momentum": 1.0},
            ValueError,
            r"momentum must lie in \[0, 1\)",
        ),
        ({"name": "lbfgs", "weight_decay": 1e-3}, ValueError, "weight_decay"),
        ({"name": "lbfgs", "clip_norm": 1.0}, ValueError, "clip_norm"),
        ({"name": "lbfgs", "accumulate_steps": 2}, ValueError, "accumulate"),
        ({"total_steps": 10}, ValueError, "schedule is None"),
        ({"schedule": "linear"}, ValueError, "constant.*warmup_cosine"),
        ({"schedule": "cosine"}, ValueError, "'cosine' needs total_steps"),
        (
            {
                "learning_rate": optax.constant_schedule(0.1),
                "schedule": "cosine",
                "total_steps": 10,
            },
            ValueError,
            "callable learning_rate",
        ),
    ],
)
def test_make_optimizer_rejects(kwargs, error, match):
  kwargs = {"name": "sgd", "learning_rate": 0.1} | kwargs
  with pytest.raises(error, match=match):
    make_optimizer(kwargs.pop("name"), kwargs.pop("learning_rate"), **kwargs)


@pytest.mark.parametrize(
    "name, kwargs, error, match",
    [
        ("cosine", {}, ValueError, "'cosine' needs total_steps"),
        ("warmup_cosine", {"warmup_steps": 5}, ValueError, "needs total_steps"),
        ("step", {}, ValueError, "'step' needs decay_steps"),
        ("exponential", {}, ValueError, "'exponential' needs decay_steps"),
        ("step", {"decay_steps": 0}, ValueError, "decay_steps"),
        ("step", {"decay_steps": 5, "decay_rate": 0.0}, ValueError, r"\(0, 1\]"),
        (
            "exponential",
            {"decay_steps": 5, "decay_rate": 2.0},
            ValueError,
            r"decay_rate must lie in \(0, 1\]",
        ),
        (
            "cosine",
            {"total_steps": 10, "warmup_steps": 2},
            ValueError,
            "only by the 'warmup_cosine'",
        ),
        (
            "warmup_cosine",
            {"total_steps": 10, "warmup_steps": 10},
            ValueError,
            "smaller than total_steps",
        ),
        ("cosine", {"total_steps": 10.5}, TypeError, "total_steps"),
        ("cosine", {"total_steps": 10, "end_value": -1.0}, ValueError, "end_"),
        ("sawtooth", {}, ValueError, "constant.*step.*exponential"),
    ],
)
def test_make_schedule_rejects(name, kwargs, error, match):
  with pytest.raises(error, match=match):
    make_schedule(name, 0.1, **kwargs)


def test_make_schedule_rejects_a_callable_learning_rate():
  with pytest.raises(TypeError, match="must be a number"):
    make_schedule("cosine", optax.constant_schedule(0.1), total_steps=10)

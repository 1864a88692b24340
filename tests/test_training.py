"""fit: scanned epochs, gradient paths, early stopping, NaN guard, mixed precision.

Compilation dominates the cost here, so the tests share a few configurations
(module-level optimizers and datasets): fit's jitted epoch is cached on its
static options, and a repeated configuration runs without recompiling.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsoftmax as js
from jaxsoftmax.training._fit import History, TrainingDiverged, fit

SGD = optax.sgd(0.1, momentum=0.9)
PLAIN_SGD = optax.sgd(0.5)
KEY = jax.random.key(7)

# Small float64 problem with a linear teacher, so training makes progress;
# 120 rows in batches of 16 leave 8 rows out of each epoch.
N, D, K, B = 120, 5, 3, 16
_x = np.random.default_rng(0).normal(size=(N, D))
_teacher = np.random.default_rng(1).normal(size=(D, K))
X64 = jnp.asarray(_x)
Y64 = jnp.asarray(np.argmax(_x @ _teacher, axis=1).astype(np.int32))
P64 = js.linear_init(jax.random.key(0), D, K, dtype=jnp.float64)


@pytest.fixture(scope="module")
def digits():
  data = js.data.load_digits()
  x_train, x_test = js.data.standardize(data.x_train, data.x_test)
  return (x_train, data.y_train), (x_test, data.y_test)


@pytest.fixture(scope="module")
def digits_run(digits):
  return _fit_digits(digits, epochs=4)


def _fit_digits(digits, **kwargs):
  train, test = digits
  options = dict(
      optimizer=SGD, epochs=3, batch_size=64, key=KEY,
      logits_fn=js.linear_logits, eval_data=test, loss_kwargs={"l2": 1e-3},
  )
  options.update(kwargs)
  return fit(
      js.softmax_regression_loss,
      js.linear_init(jax.random.key(0), 64, 10),
      train,
      **options,
  )


@functools.partial(jax.jit, static_argnames="optimizer")
def _reference_step(params, state, xb, yb, *, optimizer):
  _, grads = js.softmax_regression_value_and_grad(params, xb, yb)
  updates, state = optimizer.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def _loop_reference(params, x, y, key, *, epochs, batch_size, optimizer,
                    max_steps=None):
  """fit's steps with the manual gradient, one jitted step per Python iteration."""
  state = optimizer.init(params)
  n = x.shape[0]
  steps = n // batch_size
  taken = 0
  for epoch in range(1, epochs + 1):
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
    for s in range(steps):
      if taken == max_steps:
        return params
      idx = perm[s * batch_size : (s + 1) * batch_size]
      params, state = _reference_step(
          params, state, x[idx], y[idx], optimizer=optimizer
      )
      taken += 1
  return params


def _assert_trees_close(actual, expected, rtol):
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype
    np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max())


# ----------------------------------------------------------------------------
# Training works and records a sane history.
# ----------------------------------------------------------------------------


def test_digits_loss_decreases_and_history_is_sane(digits, digits_run):
  params, history = digits_run
  assert history.epoch == [1, 2, 3, 4]
  assert history.loss[-1] < 0.5 * history.loss[0]
  assert all(b < a for a, b in zip(history.loss, history.loss[1:]))
  for acc in (history.train_accuracy, history.test_accuracy):
    assert len(acc) == 4 and all(0.0 <= a <= 1.0 for a in acc)
  assert history.test_accuracy[-1] > 0.9
  assert len(history.test_loss) == 4 and history.test_loss[-1] < history.test_loss[0]
  assert history.val_loss == history.val_accuracy == []
  assert len(history.seconds) == 4 and all(s > 0 for s in history.seconds)
  # The recorded test figures are the returned params' own.
  x_test, y_test = digits[1]
  pred = np.argmax(np.asarray(js.linear_logits(params, x_test)), axis=1)
  assert history.test_accuracy[-1] == np.mean(pred == y_test)
  loss = float(jax.jit(js.softmax_regression_loss)(params, x_test, y_test, l2=1e-3))
  assert history.test_loss[-1] == pytest.approx(loss, rel=1e-5)
  assert jax.tree.map(lambda a: a.dtype, params) == {"w": jnp.float32, "b": jnp.float32}


def test_history_round_trips_through_json(digits_run):
  _, history = digits_run
  again = History.from_dict(json.loads(json.dumps(history.to_dict())))
  assert again == history


def test_progress_bar_shows_loss_and_accuracy(digits, capsys):
  _fit_digits(digits, epochs=2, progress=True)
  err = capsys.readouterr().err
  assert "2/2" in err and "loss=" in err and "test_acc=" in err
  _fit_digits(digits, epochs=2, progress=False)
  assert capsys.readouterr().err == ""


def test_bfloat16_compute_trains_with_float32_params(digits, digits_run):
  params, history = _fit_digits(digits, epochs=4, compute_dtype=jnp.bfloat16)
  assert history.loss[-1] < 0.5 * history.loss[0]
  assert history.test_accuracy[-1] > 0.85
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  # Rounding x and params to bfloat16 changes the trajectory: it really ran
  # in bfloat16 rather than silently in float32.
  params32, _ = digits_run
  assert not np.array_equal(params["w"], params32["w"])
  np.testing.assert_allclose(params["w"], params32["w"], atol=0.05)


# ----------------------------------------------------------------------------
# Gradient paths and the scan.
# ----------------------------------------------------------------------------


def test_manual_and_autodiff_gradients_give_the_same_params():
  loss_fn = js.softmax_regression_loss
  run = lambda **kw: fit(loss_fn, P64, (X64, Y64), optimizer=PLAIN_SGD,
                         epochs=2, batch_size=B, key=KEY, **kw)[0]
  manual = run()  # the default for softmax_regression_loss
  autodiff = run(value_and_grad_fn=jax.value_and_grad(loss_fn))
  _assert_trees_close(manual, autodiff, rtol=1e-12)
  assert not np.allclose(manual["w"], P64["w"], atol=0.1)


def test_scan_epochs_equal_a_python_loop_of_the_same_steps():
  params, history = fit(js.softmax_regression_loss, P64, (X64, Y64),
                        optimizer=PLAIN_SGD, epochs=2, batch_size=B, key=KEY)
  expected = _loop_reference(
      P64, X64, Y64, KEY, epochs=2, batch_size=B, optimizer=PLAIN_SGD
  )
  _assert_trees_close(params, expected, rtol=1e-12)
  assert history.epoch == [1, 2]


def test_a_loss_key_gives_fresh_dropout_masks_each_step_and_none_at_eval():
  """loss_kwargs["key"]: step t trains with fold_in(key, t), as a Python
  loop over the same minibatches does; evaluation uses no dropout."""
  params = js.mlp_init(jax.random.key(0), [D, 8, K], dtype=jnp.float64)
  drop_key = jax.random.key(5)
  opts = {"dropout_rate": 0.5}
  trained, history = fit(
      js.mlp_loss, params, (X64, Y64), optimizer=PLAIN_SGD, epochs=2,
      batch_size=B, key=KEY, eval_data=(X64, Y64),
      loss_kwargs={**opts, "key": drop_key})

  def loop(step_key):
    p, t = params, 0
    for epoch in (1, 2):
      perm = np.asarray(
          jax.random.permutation(jax.random.fold_in(KEY, epoch), N))
      for s in range(N // B):
        t += 1
        idx = perm[s * B:(s + 1) * B]
        grads = jax.grad(js.mlp_loss)(p, X64[idx], Y64[idx], **opts,
                                      key=step_key(t))
        p = jax.tree.map(lambda a, g: a - 0.5 * g, p, grads)
    return p

  _assert_trees_close(trained, loop(lambda t: jax.random.fold_in(drop_key, t)),
                      rtol=1e-10)
  same_mask = loop(lambda t: drop_key)
  assert not np.allclose(trained[0]["w"], same_mask[0]["w"], rtol=1e-3)
  np.testing.assert_allclose(history.test_loss[-1],
                             js.mlp_loss(trained, X64, Y64), rtol=1e-12)


def test_optimizers_get_the_loss_and_a_loss_function():
  # What optax.lbfgs's line search asks for: value, grad and value_fn, at the
  # current params. This transform scales the step by value_fn(params) / value,
  # exactly 1 when both are the minibatch loss there, so training must match
  # plain SGD.
  def update(updates, state, params, *, value, grad, value_fn, **extra):
    del grad, extra
    ratio = value_fn(params) / value
    return jax.tree.map(lambda u: u * ratio, updates), state

  needs_loss = optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update
  )
  run = lambda opt: fit(js.softmax_regression_loss, P64, (X64, Y64),
                        optimizer=opt, epochs=2, batch_size=B, key=KEY)[0]
  _assert_trees_close(run(optax.chain(needs_loss, PLAIN_SGD)), run(PLAIN_SGD),
                      rtol=1e-12)


# ----------------------------------------------------------------------------
# Early stopping.
# ----------------------------------------------------------------------------


def test_early_stopping_stops_and_returns_the_best_params():
  # Random labels: past the first epochs the model only memorizes, so the
  # validation loss turns up. 150 rows, a fifth held out, leave 120 to train
  # on: the shapes of the other float64 tests, whose compilation this reuses.
  rng = np.random.default_rng(1)
  x = rng.normal(size=(150, D))
  y = rng.integers(0, K, size=150).astype(np.int32)
  run = lambda **kw: fit(js.softmax_regression_loss, P64, (x, y),
                         optimizer=PLAIN_SGD, batch_size=B, key=KEY,
                         validation_fraction=0.2, **kw)
  params, history = run(epochs=30, patience=2)
  assert history.stopped_early
  best = history.best_epoch
  assert best > 1 and history.epoch[-1] == best + 2
  assert history.val_loss[best - 1] == min(history.val_loss)
  assert all(v >= history.val_loss[best - 1] for v in history.val_loss[best:])
  assert len(history.loss) == len(history.epoch)
  # The returned params are those after the best epoch, not the last.
  at_best, _ = run(epochs=best)
  _assert_trees_close(params, at_best, rtol=0)
  last, _ = run(epochs=history.epoch[-1])
  assert not np.array_equal(params["w"], last["w"])


# ----------------------------------------------------------------------------
# NaN / inf guard.
# ----------------------------------------------------------------------------

# Finite markers in x[:, 0] that make the loss (1e3) or grads['w'] (2e3)
# non-finite for the minibatch that holds them.
LOSS_MARK, GRAD_MARK = 1e3, 2e3


def _injecting_value_and_grad(params, x, y):
  loss, grads = js.softmax_regression_value_and_grad(params, x, y)
  mark = jnp.max(x[:, 0])
  loss = jnp.where(mark == LOSS_MARK, jnp.inf, loss)
  w = jnp.where(mark == GRAD_MARK, jnp.nan, grads["w"])
  return loss, {"w": w, "b": grads["b"]}


def _fit_injected(x, epochs=3):
  return fit(js.softmax_regression_loss, P64, (x, Y64), optimizer=PLAIN_SGD,
             epochs=epochs, batch_size=B, key=KEY,
             value_and_grad_fn=_injecting_value_and_grad)


def test_nan_guard_reports_the_step_and_the_loss():
  # A row that epoch 1 skips (it falls in the dropped remainder) and epoch 2
  # reaches at a known step.
  steps = N // B
  perm1 = np.asarray(jax.random.permutation(jax.random.fold_in(KEY, 1), N))
  perm2 = list(np.asarray(jax.random.permutation(jax.random.fold_in(KEY, 2), N)))
  row = next(r for r in perm1[steps * B :] if perm2.index(r) < steps * B)
  step = perm2.index(row) // B + 1
  x = np.array(X64)
  x[row, 0] = LOSS_MARK
  with pytest.raises(TrainingDiverged) as info:
    _fit_injected(x)
  err = info.value
  assert isinstance(err, FloatingPointError)
  assert (err.epoch, err.step, err.global_step, err.tensor) == (
      2, step, steps + step, "loss")
  msg = str(err)
  assert f"epoch 2, step {step} of {steps} (global step {steps + step})" in msg
  assert "loss became non-finite" in msg
  assert err.history.epoch == [1]
  # The params kept are those from just before the bad step.
  expected = _loop_reference(
      P64, jnp.asarray(x), Y64, KEY, epochs=2, batch_size=B,
      optimizer=PLAIN_SGD, max_steps=steps + step - 1,
  )
  _assert_trees_close(err.params, expected, rtol=1e-12)


def test_nan_guard_names_the_gradient_leaf():
  perm1 = np.asarray(jax.random.permutation(jax.random.fold_in(KEY, 1), N))
  x = np.array(X64)
  x[perm1[0], 0] = GRAD_MARK
  bad = r"grads\['w'\] became non-finite"
  with pytest.raises(TrainingDiverged, match=bad) as info:
    _fit_injected(x)
  err = info.value
  assert (err.epoch, err.step, err.tensor) == (1, 1, "grads['w']")
  _assert_trees_close(err.params, P64, rtol=0)


def test_nan_guard_names_the_param_leaf_for_an_infinite_learning_rate():
  bad = r"params\['b'\] became non-finite"
  with pytest.raises(TrainingDiverged, match=bad) as info:
    fit(js.softmax_regression_loss, P64, (X64, Y64),
        optimizer=optax.sgd(float("inf")), epochs=2, batch_size=B, key=KEY)
  err = info.value
  assert (err.epoch, err.step, err.global_step) == (1, 1, 1)
  # Nothing finite came after the initial params.
  _assert_trees_close(err.params, P64, rtol=0)


def test_infinite_input_is_rejected_up_front():
  x = np.array(X64)
  x[5, 2] = np.inf
  with pytest.raises(ValueError, match=r"data\[0\] \(x\) must be finite.*\(5, 2\)"):
    fit(js.softmax_regression_loss, P64, (x, Y64), optimizer=PLAIN_SGD,
        epochs=1, batch_size=B, key=KEY)


# ----------------------------------------------------------------------------
# Bad arguments.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": N + 1}, ValueError,
         r"batch_size must be at most .* 120; got 121"),
        ({"batch_size": 100, "validation_fraction": 0.25}, ValueError,
         r"at most .* 90 \(30 of 120 held out for validation\); got 100"),
        ({"epochs": 0}, ValueError, r"epochs must be a positive int"),
        ({"epochs": 2.0}, TypeError, r"epochs must be a positive int"),
        ({"validation_fraction": 1.0}, ValueError,
         r"validation_fraction must lie in \[0, 1\)"),
        ({"patience": 2}, ValueError, r"patience=2 needs a validation split"),
        ({"resume": True}, ValueError, r"resume=True needs checkpoint_dir"),
        ({"key": 0}, TypeError, r"key must be a jax.random key"),
        ({"key": jax.random.split(KEY)}, ValueError,
         r"key must be a single key of shape \(\)"),
        ({"optimizer": "sgd"}, TypeError, r"optimizer must be an optax"),
        ({"compute_dtype": jnp.int32}, TypeError,
         r"compute_dtype must be None or a floating"),
        ({"loss_kwargs": {"l2": [1.0]}}, TypeError,
         r"loss_kwargs\['l2'\] must be an array or hashable"),
        ({"loss_kwargs": {"key": jax.random.split(KEY)}}, ValueError,
         r"loss_kwargs\['key'\] must be a single key of shape \(\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
  options = dict(optimizer=PLAIN_SGD, epochs=1, batch_size=B, key=KEY)
  options.update(kwargs)
  with pytest.raises(error, match=match):
    fit(js.softmax_regression_loss, P64, (X64, Y64), **options)


def test_mismatched_data_raise_clear_errors():
  run = lambda data, **kw: fit(js.softmax_regression_loss, P64, data,
                               optimizer=PLAIN_SGD, epochs=1, batch_size=B,
                               key=KEY, **kw)
  with pytest.raises(ValueError, match=r"one entry per example .* 120; got x"
                     r" of shape \(120, 5\) and y of shape \(119,\)"):
    run((X64, Y64[:-1]))
  with pytest.raises(TypeError, match=r"data\[0\] \(x\) must have a floating dtype"):
    run((np.ones((N, D), np.int32), Y64))
  with pytest.raises(TypeError, match=r"data must be a pair"):
    run(X64)
  with pytest.raises(ValueError, match=r"data\[1\] \(y\) must lie in \[0, 3\)"):
    run((X64, Y64.at[4].set(3)), logits_fn=js.linear_logits)
  with pytest.raises(ValueError, match=r"eval_data\[1\] \(y\) must have one entry"):
    run((X64, Y64), eval_data=(X64, Y64[:3]))

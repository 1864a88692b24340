"""Model selection: folds, vmapped training and CV against plain loops,
sparsity, the linear-scaling sweep, power iteration against eigvalsh, figures.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsoftmax.training._solvers import softmax_regression_hessian
from jaxsoftmax.model_selection import CrossValidation
from jaxsoftmax.model_selection import Panel
from jaxsoftmax.model_selection import TrainConfig
from jaxsoftmax.model_selection import cross_validate
from jaxsoftmax.model_selection import elastic_net_grid
from jaxsoftmax.model_selection import evaluate_linear
from jaxsoftmax.model_selection import hessian_top_eigenvalue
from jaxsoftmax.model_selection import kfold_indices
from jaxsoftmax.model_selection import linear_scaling_sweep
from jaxsoftmax.model_selection import plot_panels
from jaxsoftmax.model_selection import regularization_path
from jaxsoftmax.model_selection import scaled_learning_rates
from jaxsoftmax.model_selection import train_softmax_regression
from jaxsoftmax.model_selection import weight_sparsity

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-11}
N, D, K = 48, 3, 3
# One config shared by most tests, so the training program compiles once.
CONFIG = TrainConfig(optimizer="momentum", learning_rate=0.3, epochs=3,
                     batch_size=8)


def _problem(dtype=np.float64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((N, D))
  scores = x @ rng.standard_normal((D, K)) + rng.standard_normal((N, K))
  labels = np.argmax(scores, axis=1).astype(np.int32)
  params = {"w": jnp.asarray(0.1 * rng.standard_normal((D, K)), dtype),
            "b": jnp.zeros(K, dtype)}
  return params, jnp.asarray(x, dtype), jnp.asarray(labels)


def _ref_loss(params, x, labels, l1, l2):
  h = x @ params["w"] + params["b"][None, :]
  target = h[jnp.arange(x.shape[0]), labels]
  nll = jnp.mean(jax.nn.logsumexp(h, axis=1) - target)
  w = params["w"]
  return nll + l1 * jnp.sum(jnp.abs(w)) + l2 / 2 * jnp.sum(w**2)


def _ref_train(params, x, labels, key, config, train_idx, l1, l2):
  """The training loop written out: Python loops, autodiff, optax directly."""
  steps = len(train_idx) // config.batch_size
  total = config.epochs * steps
  lr = (optax.cosine_decay_schedule(config.learning_rate, total)
        if config.schedule == "cosine" else config.learning_rate)
  tx = {"sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=0.9),
        "adam": lambda: optax.adam(lr)}[config.optimizer]()
  state = tx.init(params)

  @jax.jit
  def step(params, state, rows):
    g = jax.grad(_ref_loss)(params, x[rows], labels[rows], l1, l2)
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  for e in range(1, config.epochs + 1):
    perm = np.asarray(
        jax.random.permutation(jax.random.fold_in(key, e), len(train_idx)))
    for s in range(steps):
      rows = train_idx[perm[s * config.batch_size:(s + 1) * config.batch_size]]
      params, state = step(params, state, rows)
  return params


def _assert_tree_close(a, b, rtol):
  for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(w), rtol=rtol,
                               atol=rtol)


# ----------------------------------------------------------------------------
# Folds.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,k", [(10, 3), (12, 4), (7, 7)])
def test_kfold_indices_partition(n, k):
  train, held = kfold_indices(jax.random.key(3), n, k)
  f = n // k
  assert train.shape == (k, (k - 1) * f) and held.shape == (k, f)
  held_np, train_np = np.asarray(held), np.asarray(train)
  # Folds are disjoint and each row sits out at most once.
  assert len(set(held_np.ravel())) == k * f
  assert set(held_np.ravel()) <= set(range(n))
  for j in range(k):
    others = set(held_np.ravel()) - set(held_np[j])
    assert set(train_np[j]) == others and len(train_np[j]) == len(others)


def test_kfold_indices_errors():
  with pytest.raises(ValueError, match="num_folds must lie in"):
    kfold_indices(jax.random.key(0), 10, 1)
  with pytest.raises(ValueError, match="num_folds must lie in"):
    kfold_indices(jax.random.key(0), 3, 4)
  with pytest.raises(TypeError, match="key"):
    kfold_indices(0, 10, 2)


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_train_matches_plain_loop(dtype):
  params, x, labels = _problem(dtype)
  key = jax.random.key(5)
  idx = jnp.arange(5, N, dtype=jnp.int32)
  got = train_softmax_regression(params, x, labels, key, CONFIG,
                                 train_idx=idx, l1=1e-3, l2=1e-2)
  want = _ref_train(params, x, labels, key, CONFIG, idx, 1e-3, 1e-2)
  assert got["w"].dtype == dtype
  _assert_tree_close(got, want, 10 * RTOL[np.dtype(dtype)])


def test_train_cosine_adam_matches_plain_loop():
  params, x, labels = _problem()
  config = TrainConfig(optimizer="adam", learning_rate=0.05,
                       schedule="cosine", epochs=2, batch_size=16)
  key = jax.random.key(1)
  got = train_softmax_regression(params, x, labels, key, config)
  want = _ref_train(params, x, labels, key, config,
                    jnp.arange(N, dtype=jnp.int32), 0.0, 0.0)
  _assert_tree_close(got, want, 1e-10)


def test_train_ignores_rows_outside_train_idx():
  params, x, labels = _problem()
  idx = jnp.arange(0, 40, dtype=jnp.int32)
  a = train_softmax_regression(params, x, labels, jax.random.key(0), CONFIG,
                               train_idx=idx)
  x2 = x.at[40:].set(1e3)
  labels2 = labels.at[40:].set(0)
  b = train_softmax_regression(params, x2, labels2, jax.random.key(0), CONFIG,
                               train_idx=idx)
  _assert_tree_close(a, b, 0.0)


def test_train_under_jit_and_vmap_equals_loop():
  params, x, labels = _problem()
  l2s = jnp.array([0.0, 0.1, 1.0])
  keys = jax.random.split(jax.random.key(0), 3)

  @jax.jit
  def batched(l2s, keys):
    return jax.vmap(lambda l2, k: train_softmax_regression(
        params, x, labels, k, CONFIG, l2=l2))(l2s, keys)

  got = batched(l2s, keys)
  for i in range(3):
    one = train_softmax_regression(params, x, labels, keys[i], CONFIG,
                                   l2=float(l2s[i]))
    _assert_tree_close(jax.tree.map(lambda a: a[i], got), one, 1e-12)


def test_train_errors():
  params, x, labels = _problem()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="lbfgs_solve"):
    TrainConfig(optimizer="lbfgs")
  with pytest.raises(ValueError, match="schedule must be one of"):
    TrainConfig(schedule="step")
  with pytest.raises(ValueError, match="learning_rate must be > 0"):
    TrainConfig(learning_rate=0.0)
  with pytest.raises(TypeError, match="epochs must be a positive int"):
    TrainConfig(epochs=1.5)
  with pytest.raises(TypeError, match="config must be a TrainConfig"):
    train_softmax_regression(params, x, labels, key, {"epochs": 1})
  with pytest.raises(ValueError, match=r"batch_size must be at most .* 4"):
    train_softmax_regression(params, x, labels, key, CONFIG,
                             train_idx=jnp.arange(4))
  with pytest.raises(ValueError, match=r"batch_size must be at most .* 48"):
    train_softmax_regression(params, x, labels, key, TrainConfig(batch_size=64))
  with pytest.raises(ValueError, match=r"train_idx must lie in \[0, 48\)"):
    train_softmax_regression(params, x, labels, key, CONFIG,
                             train_idx=jnp.arange(40, 60))
  with pytest.raises(TypeError, match="train_idx must have an integer dtype"):
    train_softmax_regression(params, x, labels, key, CONFIG,
                             train_idx=jnp.ones(10))
  with pytest.raises(ValueError, match="l2 must be >= 0"):
    train_softmax_regression(params, x, labels, key, CONFIG, l2=-1.0)
  with pytest.raises(ValueError, match="labels must lie in"):
    train_softmax_regression(params, x, labels.at[0].set(K), key, CONFIG)


def test_evaluate_linear_values_and_nan_for_diverged():
  params, x, labels = _problem()
  loss, acc = evaluate_linear(params, x, labels)
  h = np.asarray(x @ params["w"])
  np.testing.assert_allclose(
      loss, _ref_loss(params, x, labels, 0.0, 0.0), rtol=1e-12)
  hits = np.argmax(h, 1) == np.asarray(labels)
  assert float(acc) == pytest.approx(np.mean(hits))
  bad = {"w": params["w"].at[0, 0].set(jnp.nan), "b": params["b"]}
  loss, acc = evaluate_linear(bad, x, labels)
  assert np.isnan(loss) and np.isnan(acc)


# ----------------------------------------------------------------------------
# Paths and cross-validation.
# ----------------------------------------------------------------------------


def test_elastic_net_grid():
  l1, l2 = elastic_net_grid(np.logspace(-3, 0, 4), 0.3)
  np.testing.assert_allclose(l1 + l2, np.logspace(-3, 0, 4))
  np.testing.assert_allclose(l1 / (l1 + l2), 0.3)
  assert not elastic_net_grid([1.0], 1.0)[1].any()
  with pytest.raises(ValueError, match="l1_ratio"):
    elastic_net_grid([1.0], 1.5)
  with pytest.raises(ValueError, match="strengths must be >= 0"):
    elastic_net_grid([-1.0], 0.5)


def test_regularization_path_equals_separate_runs_and_shrinks():
  params, x, labels = _problem()
  l1, l2 = elastic_net_grid([0.0, 0.01, 0.3], 0.5)
  key = jax.random.key(2)
  path = regularization_path(params, x, labels, key, CONFIG, l1=l1, l2=l2)
  assert path["w"].shape == (3, D, K)
  for i in range(3):
    one = train_softmax_regression(params, x, labels, key, CONFIG,
                                   l1=float(l1[i]), l2=float(l2[i]))
    _assert_tree_close(jax.tree.map(lambda a: a[i], path), one, 1e-12)
  norms = np.linalg.norm(np.asarray(path["w"]).reshape(3, -1), axis=1)
  assert norms[0] > norms[1] > norms[2]


def test_regularization_path_strength_shapes():
  params, x, labels = _problem()
  with pytest.raises(ValueError, match="same number of strengths"):
    regularization_path(params, x, labels, jax.random.key(0), CONFIG,
                        l1=jnp.zeros(2), l2=jnp.zeros(3))
  with pytest.raises(ValueError, match=r"l2 must be a scalar or \[num_str"):
    regularization_path(params, x, labels, jax.random.key(0), CONFIG,
                        l2=jnp.zeros((2, 2)))


def test_cross_validate_equals_fold_by_fold_loop():
  params, x, labels = _problem()
  key = jax.random.key(7)
  l2 = jnp.array([1e-3, 30.0])
  cv = cross_validate(params, x, labels, key, CONFIG, l2=l2, num_folds=3)
  assert isinstance(cv, CrossValidation)
  assert cv.loss.shape == cv.accuracy.shape == (2, 3)
  split_key, train_key = jax.random.split(key)
  train, held = kfold_indices(split_key, N, 3)
  for j in range(3):
    for s in range(2):
      model = train_softmax_regression(params, x, labels, train_key, CONFIG,
                                       train_idx=train[j], l2=float(l2[s]))
      loss, acc = evaluate_linear(model, x[held[j]], labels[held[j]])
      np.testing.assert_allclose(cv.loss[s, j], loss, rtol=1e-10)
      np.testing.assert_allclose(cv.accuracy[s, j], acc, rtol=1e-10)
  # A penalty that crushes the weights must lose to a mild one.
  assert cv.mean_loss[1] > cv.mean_loss[0] and cv.best == 0
  np.testing.assert_allclose(cv.mean_accuracy, np.mean(cv.accuracy, 1))


def test_cross_validation_best_skips_diverged_and_refuses_all_nan():
  nan = jnp.nan
  cv = CrossValidation(jnp.zeros(3), jnp.zeros(3),
                       jnp.array([[nan, 1.0], [0.5, 0.7], [0.9, 0.9]]),
                       jnp.zeros((3, 2)))
  assert cv.best == 1
  with pytest.raises(ValueError, match="diverged"):
    CrossValidation(jnp.zeros(1), jnp.zeros(1), jnp.full((1, 2), nan),
                    jnp.zeros((1, 2))).best


# ----------------------------------------------------------------------------
# Sparsity.
# ----------------------------------------------------------------------------


def test_weight_sparsity_counts_weights_not_biases():
  params = {"w": jnp.array([[0.0, 5e-4, -2e-3], [1.0, 0.0, -0.0]]),
            "b": jnp.zeros(3)}
  assert float(weight_sparsity(params)) == pytest.approx(3 / 6)
  assert float(weight_sparsity(params, tol=1e-3)) == pytest.approx(4 / 6)
  mlp = [{"w": jnp.zeros((2, 2)), "b": jnp.ones(2)},
         {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}]
  assert float(weight_sparsity(mlp)) == pytest.approx(0.5)
  nan = {"w": jnp.array([jnp.nan, 0.0]), "b": jnp.zeros(1)}
  assert float(weight_sparsity(nan, tol=1.0)) == pytest.approx(0.5)
  stacked = {"w": jnp.stack([params["w"], jnp.ones((2, 3))]),
             "b": jnp.zeros((2, 3))}
  np.testing.assert_allclose(jax.vmap(weight_sparsity)(stacked), [0.5, 0.0])
  with pytest.raises(ValueError, match="tol must be >= 0"):
    weight_sparsity(params, tol=-1.0)
  with pytest.raises(ValueError, match="no penalized"):
    weight_sparsity({"b": jnp.zeros(2)})


def test_l1_drives_weights_toward_zero():
  params, x, labels = _problem()
  config = TrainConfig(optimizer="sgd", learning_rate=0.2, schedule="cosine",
                       epochs=4, batch_size=8)
  path = regularization_path(params, x, labels, jax.random.key(0), config,
                             l1=jnp.array([0.0, 0.3]))
  near = jax.vmap(lambda p: weight_sparsity(p, tol=1e-2))(path)
  exact = jax.vmap(weight_sparsity)(path)
  assert float(near[1]) > 0.5 > float(near[0])
  # The subgradient step hovers around zero without landing on it.
  assert float(exact[1]) < 0.5


# ----------------------------------------------------------------------------
# Batch size and curvature.
# ----------------------------------------------------------------------------


def test_scaled_learning_rates():
  np.testing.assert_allclose(
      scaled_learning_rates([16, 64, 512], base_batch_size=64,
                            base_learning_rate=0.2), [0.05, 0.2, 1.6])
  with pytest.raises(ValueError, match="base_learning_rate must be > 0"):
    scaled_learning_rates([16], base_batch_size=64, base_learning_rate=0.0)
  with pytest.raises(TypeError, match="batch_sizes entry"):
    scaled_learning_rates([16.0], base_batch_size=64, base_learning_rate=0.1)


def test_linear_scaling_sweep_rows_equal_direct_runs_and_flag_divergence():
  params, x, labels = _problem()
  base = TrainConfig(optimizer="sgd", learning_rate=0.5, epochs=2,
                     batch_size=8)
  key = jax.random.key(4)
  sweep = linear_scaling_sweep(
      params, x, labels, key, base, batch_sizes=[8, 16],
      multipliers=[1.0, 100.0], eval_data=(x[:20], labels[:20]), l2=0.01)
  np.testing.assert_allclose(sweep.learning_rates, [[0.5, 50.0], [1.0, 100.0]])
  assert sweep.train_loss.shape == sweep.test_accuracy.shape == (2, 2)
  assert sweep.seconds.shape == (2,)
  config16 = TrainConfig(optimizer="sgd", learning_rate=1.0, epochs=2,
                         batch_size=16)
  direct = train_softmax_regression(params, x, labels, key, config16, l2=0.01)
  test_loss, test_acc = evaluate_linear(direct, x[:20], labels[:20])
  train_loss = _ref_loss(direct, x, labels, 0.0, 0.01)
  np.testing.assert_allclose(sweep.train_loss[1, 0], train_loss, rtol=1e-10)
  np.testing.assert_allclose(sweep.test_loss[1, 0], test_loss, rtol=1e-10)
  assert sweep.test_accuracy[1, 0] == pytest.approx(float(test_acc))
  # 100 times the rule's rate overshoots: the bounded cross-entropy gradient
  # keeps it finite, but the loss ends far above the rule's.
  assert (sweep.train_loss[:, 1] > 5 * sweep.train_loss[:, 0]).all()
  with pytest.raises(ValueError, match="multipliers"):
    linear_scaling_sweep(params, x, labels, key, base, batch_sizes=[8],
                         multipliers=[0.0], eval_data=(x, labels))
  with pytest.raises(ValueError, match="at most the 48 training rows"):
    linear_scaling_sweep(params, x, labels, key, base, batch_sizes=[64],
                         eval_data=(x, labels))


def test_hessian_top_eigenvalue_matches_eigvalsh():
  params, x, labels = _problem()
  params = {"w": 3 * params["w"], "b": jnp.arange(K, dtype=jnp.float64)}
  want = np.linalg.eigvalsh(
      np.asarray(softmax_regression_hessian(params, x, labels, l2=0.05)))[-1]
  got = hessian_top_eigenvalue(params, x, labels, jax.random.key(0), l2=0.05,
                               iterations=300)
  np.testing.assert_allclose(got, want, rtol=1e-8)


# ----------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------


def test_plot_panels_writes_png(tmp_path):
  panels = [
      Panel("loss vs time", "seconds", "loss",
            {"sgd": ([0.1, 0.2], [1.0, 0.5]), "adam": ([0.1, 0.3], [0.9, 0.4])},
            yscale="log"),
      Panel("accuracy", "epoch", "acc", {"sgd": ([1, 2], [0.8, 0.9])}),
  ]
  path = plot_panels(tmp_path / "sub" / "fig.png", panels, title="t")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert [p.name for p in path.parent.iterdir()] == ["fig.png"]
  with pytest.raises(ValueError, match="scales must be"):
    plot_panels(tmp_path / "x.png", [Panel("a", "x", "y", {}, xscale="ln")])
  with pytest.raises(ValueError, match="at least one Panel"):
    plot_panels(tmp_path / "x.png", [])

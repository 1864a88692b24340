"""Model options: MLP dropout, per-class weights, mixup targets, sparse inputs.

Every manual gradient is compared with ``jax.grad`` of a plain reference (or
of the library's own forward pass with the same dropout key) in float64 to
1e-10 and float32 to 1e-5; the sparse path with the dense one.
"""

import math

import chex
import jax
from jax.experimental import sparse
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from jaxsoftmax.models._augment import mixup
from jaxsoftmax.models._gradients import mlp_grad
from jaxsoftmax.models._gradients import mlp_loss
from jaxsoftmax.models._gradients import mlp_value_and_grad
from jaxsoftmax.models._gradients import softmax_regression_grad
from jaxsoftmax.models._gradients import softmax_regression_loss
from jaxsoftmax.models._gradients import softmax_regression_value_and_grad
from jaxsoftmax.losses._dense import soft_cross_entropy
from jaxsoftmax.models._functional import linear_logits
from jaxsoftmax.models._functional import mlp_logits

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
DTYPES = [np.float32, np.float64]
BATCH, FEATURES, CLASSES = 8, 5, 4
HIDDEN = {1: (6,), 2: (6, 7), 3: (6, 7, 3)}
CLASS_WEIGHTS = np.array([0.5, 2.0, 0.0, 3.0])


def linear_problem(seed, dtype=np.float64, batch=BATCH, features=FEATURES):
  rng = np.random.default_rng(seed)
  params = {
      "w": jnp.asarray(rng.normal(size=(features, CLASSES)), dtype),
      "b": jnp.asarray(rng.normal(size=(CLASSES,)), dtype),
  }
  x = jnp.asarray(rng.normal(size=(batch, features)), dtype)
  labels = jnp.asarray(rng.integers(0, CLASSES, size=batch), jnp.int32)
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


def assert_trees_equal(actual, expected):
  chex.assert_trees_all_equal_structs(actual, expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


# Plain references, differentiated by jax.grad: the weighted mean of the NLL
# written out, with none of the library's custom VJPs.


def _weighted_nll(h, labels, class_weights):
  rows = jnp.arange(labels.shape[0])
  nll = jax.nn.logsumexp(h, axis=-1) - h[rows, labels]
  if class_weights is None:
    return jnp.mean(nll)
  c = class_weights[labels]
  return jnp.sum(c * nll) / jnp.sum(c)


def _elastic_net(w, l1, l2):
  return l1 * jnp.sum(jnp.abs(w)) + l2 / 2 * jnp.sum(w**2)


def ref_linear_loss(params, x, labels, class_weights=None, l1=0.0, l2=0.0):
  h = x @ params["w"] + params["b"][None, :]
  return _weighted_nll(h, labels, class_weights) + _elastic_net(
      params["w"], l1, l2
  )


def ref_mlp_loss(params, x, labels, class_weights=None, l1=0.0, l2=0.0, **drop):
  """The NLL of the library's forward pass (which draws the dropout masks)."""
  h = mlp_logits(params, x, **drop)
  reg = sum(_elastic_net(layer["w"], l1, l2) for layer in params)
  return _weighted_nll(h, labels, class_weights) + reg


# ----------------------------------------------------------------------------
# Dropout.
# ----------------------------------------------------------------------------
# Each random draw compiles its own copy of the PRNG (about a second of CPU),
# so the dropout checks share few jitted programs.


# Identity weights and all-ones inputs make the logits the product of the two
# hidden layers' dropout scales: each entry is 0 or 1 / (1 - p)^2.
STAT_BATCH, STAT_WIDTH, RATE = 512, 64, 0.3
_IDENTITY_MLP = [{"w": jnp.eye(STAT_WIDTH), "b": jnp.zeros(STAT_WIDTH)}] * 3
_dropped_ones = jax.jit(
    lambda key: mlp_logits(
        _IDENTITY_MLP, jnp.ones((STAT_BATCH, STAT_WIDTH)),
        dropout_rate=RATE, key=key,
    )
)


def test_dropout_is_inverted_and_preserves_the_expected_activation():
  """Pins kept units scaled by 1/(1-p), independent masks per layer and example, and the mean activation near 1."""
  out = np.asarray(_dropped_ones(jax.random.key(0)))
  kept = out != 0
  np.testing.assert_allclose(out[kept], 1 / (1 - RATE) ** 2, rtol=1e-15)
  # A unit survives both layers with probability (1 - p)^2 = 0.49 (it would
  # be 0.7 if the layers shared a mask).
  assert abs(kept.mean() - (1 - RATE) ** 2) < 0.01
  assert abs(out.mean() - 1.0) < 0.02
  assert len({row.tobytes() for row in kept[:16]}) == 16


def test_dropout_masks_differ_per_key_and_repeat_per_key():
  """Pins that a key determines the masks: same key, same masks; another key, others."""
  a = np.asarray(_dropped_ones(jax.random.key(0)))
  again = np.asarray(_dropped_ones(jax.random.key(0)))
  b = np.asarray(_dropped_ones(jax.random.key(1)))
  np.testing.assert_array_equal(a, again)
  # Independent masks of keep rate q = 0.49 disagree on 2 q (1 - q) ~ 50%.
  assert 0.45 < np.mean((a != 0) != (b != 0)) < 0.55


@jax.jit
def _dropout_program(params, stack, x, labels, key, class_weights):
  """Every jitted dropout check in one program.

  One key and one x shape: all calls draw the same random bits, which XLA
  computes once.
  """

  def vg(p=params, **kw):
    return mlp_value_and_grad(p, x, labels, l2=0.1, **kw)

  drop = lambda p=params: vg(p, dropout_rate=0.5, key=key)
  unstack = lambda tree, i: jax.tree.map(lambda leaf: leaf[i], tree)
  # The unweighted mean's branch is pinned by test_gradients; dropout does
  # not touch it.
  kw = dict(dropout_rate=0.6, key=key)
  return dict(
      manual=mlp_value_and_grad(
          params, x, labels, l1=0.03, l2=0.2, class_weights=class_weights, **kw
      ),
      autodiff=jax.value_and_grad(ref_mlp_loss)(
          params, x, labels, class_weights, 0.03, 0.2, **kw
      ),
      logits=mlp_logits(params, x),
      logits_no_key=mlp_logits(params, x, dropout_rate=0.5),
      logits_rate_0=mlp_logits(params, x, dropout_rate=0.0, key=key),
      logits_drop=mlp_logits(params, x, dropout_rate=0.5, key=key),
      vg=vg(),
      vg_no_key=vg(dropout_rate=0.5),
      vg_rate_0=vg(dropout_rate=0.0, key=key),
      vg_drop=drop(),
      # vmap over a stack of parameter sets sharing one key. (vmap over keys
      # is left out: a vmapped threefry draw costs ~4 s of CPU to compile.)
      stack_vmap=jax.vmap(drop)(stack),
      stack_loop=[drop(unstack(stack, i)) for i in range(2)],
  )


@pytest.fixture(scope="module")
def dropout_problem():
  params, x, labels = mlp_problem(3, 2, batch=16)
  stack = jax.tree.map(lambda *l: jnp.stack(l), params, mlp_problem(4, 2)[0])
  out = _dropout_program(
      params, stack, x, labels, jax.random.key(5), jnp.asarray(CLASS_WEIGHTS)
  )
  return params, x, out


def test_dropout_manual_grad_matches_autodiff_same_key(dropout_problem):
  """Pins mlp_value_and_grad with dropout (and class weights) == jax.grad of the dropout forward with the same key, float64."""
  out = dropout_problem[2]
  assert_trees_close(out["manual"], out["autodiff"], RTOL[np.dtype(np.float64)])


def test_dropout_eval_path_is_identical_to_no_dropout_and_vmaps(dropout_problem):
  """Pins key=None or rate 0 as the unchanged eval path (forward and manual backprop), a key changing both, and vmap == loop."""
  params, x, out = dropout_problem
  for name in ("logits", "vg"):
    assert_trees_equal(out[f"{name}_no_key"], out[name])
    assert_trees_equal(out[f"{name}_rate_0"], out[name])
  assert not np.allclose(out["logits_drop"], out["logits"])
  assert not np.allclose(out["vg_drop"][1][0]["w"], out["vg"][1][0]["w"])
  assert_trees_close(
      out["stack_vmap"],
      jax.tree.map(lambda *l: jnp.stack(l), *out["stack_loop"]),
      1e-12,
  )
  # Eager (boundary checks on concrete values) agrees with jit.
  assert_trees_close(mlp_logits(params, x, dropout_rate=0.5), out["logits"], 1e-12)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(dropout_rate=1.0, key=jax.random.key(0)), ValueError, r"dropout_rate must lie in \[0, 1\); got 1.0"),
        (dict(dropout_rate=-0.1, key=jax.random.key(0)), ValueError, r"dropout_rate must lie in \[0, 1\)"),
        (dict(dropout_rate=float("nan"), key=jax.random.key(0)), ValueError, r"dropout_rate must lie in \[0, 1\)"),
        (dict(dropout_rate=jnp.asarray(0.5), key=jax.random.key(0)), TypeError, r"dropout_rate must be a Python float"),
        (dict(dropout_rate=0.5, key=0), TypeError, r"key must be a jax.random key"),
        (dict(dropout_rate=0.5, key=jax.random.split(jax.random.key(0), 2)), ValueError, r"key must be a single key"),
    ],
)
@pytest.mark.parametrize("fn", [mlp_logits, mlp_grad, mlp_loss])
def test_dropout_rejects_bad_options(fn, kwargs, error, match):
  """Pins a TypeError/ValueError naming dropout_rate or key."""
  params, x, labels = mlp_problem(4)
  args = (params, x) if fn is mlp_logits else (params, x, labels)
  with pytest.raises(error, match=match):
    fn(*args, **kwargs)


# ----------------------------------------------------------------------------
# Class weights.
# ----------------------------------------------------------------------------


@jax.jit
def _weighted_manual_and_reference(linears, mlp, class_weights):
  out = []
  for params, x, labels in linears:
    cw = class_weights.astype(x.dtype)
    out.append((
        softmax_regression_value_and_grad(
            params, x, labels, l1=0.05, l2=0.3, class_weights=cw
        ),
        jax.value_and_grad(ref_linear_loss)(params, x, labels, cw, 0.05, 0.3),
        jax.value_and_grad(softmax_regression_loss)(
            params, x, labels, l1=0.05, l2=0.3, class_weights=cw
        ),
    ))
  params, x, labels = mlp
  out.append((
      mlp_value_and_grad(params, x, labels, l2=0.3, class_weights=class_weights),
      jax.value_and_grad(ref_mlp_loss)(params, x, labels, class_weights, 0.0, 0.3),
  ))
  return out


def test_class_weighted_grads_match_autodiff():
  """Pins the class-weighted manual gradients == jax.grad of sum c_y l / sum c_y (linear f32/f64, MLP f64)."""
  linears = [linear_problem(20, dtype, batch=16) for dtype in DTYPES]
  results = _weighted_manual_and_reference(
      linears, mlp_problem(20, 2, batch=16), jnp.asarray(CLASS_WEIGHTS)
  )
  for dtype, (manual, reference, *library) in zip(
      [*DTYPES, np.float64], results
  ):
    rtol = RTOL[np.dtype(dtype)]
    assert_trees_close(manual, reference, rtol)
    for autodiff in library:  # jax.grad of the library loss (linear only)
      assert_trees_close(autodiff, reference, rtol)
    chex.assert_type(jax.tree.leaves(manual), dtype)


_linear_vg = jax.jit(softmax_regression_value_and_grad)


def test_integer_class_weights_equal_repeating_examples():
  """Pins weight c_k == each class-k example repeated c_k times (unweighted), and scale invariance."""
  params, x, labels = linear_problem(21)
  counts = np.array([1, 3, 0, 2])
  weighted = _linear_vg(params, x, labels, l2=0.1, class_weights=jnp.asarray(counts, x.dtype))
  repeat = np.repeat(np.arange(BATCH), counts[np.asarray(labels)])
  repeated = jax.jit(softmax_regression_value_and_grad)(
      params, x[repeat], labels[repeat], l2=0.1
  )
  assert_trees_close(weighted, repeated, 1e-12)
  scaled = _linear_vg(params, x, labels, l2=0.1, class_weights=jnp.asarray(7.5 * counts, x.dtype))
  assert_trees_close(scaled, weighted, 1e-12)
  ones = _linear_vg(params, x, labels, l2=0.1, class_weights=jnp.ones(CLASSES))
  assert_trees_close(ones, _linear_vg(params, x, labels, l2=0.1), 1e-12)


def test_class_weights_match_sklearn_optimum():
  """Pins the objective to sklearn's class_weight: the gradient vanishes at sklearn's fit with l2 = 1/(C sum c_y)."""
  rng = np.random.default_rng(22)
  n, d, c = 120, 4, 0.5
  centers = 1.5 * rng.normal(size=(CLASSES, d))
  y = rng.integers(0, CLASSES, size=n)
  x = centers[y] + rng.normal(size=(n, d))
  class_weights = np.array([1.0, 4.0, 0.5, 2.0])
  with threadpool_limits(1):
    clf = LogisticRegression(
        C=c, class_weight=dict(enumerate(class_weights)), tol=1e-12,
        max_iter=10_000,
    ).fit(x, y)
  params = {"w": jnp.asarray(clf.coef_.T), "b": jnp.asarray(clf.intercept_)}
  l2 = 1.0 / (c * class_weights[y].sum())
  x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
  _, grads = _linear_vg(params, x, y, l2=l2, class_weights=jnp.asarray(class_weights))
  for g in jax.tree.leaves(grads):
    assert np.max(np.abs(g)) < 1e-7
  # Not a vacuous zero: the unweighted objective is far from stationary there.
  _, unweighted = _linear_vg(params, x, y, l2=l2)
  assert np.max(np.abs(unweighted["w"])) > 1e-2


def test_all_zero_class_weights_give_only_the_penalty():
  """Pins that a batch whose weights are all 0 has CE loss 0 and gradient 0 (as cross_entropy), not NaN."""
  params, x, labels = linear_problem(23)
  zeros = jnp.zeros(CLASSES)
  loss, grads = _linear_vg(params, x, labels, l2=0.2, class_weights=zeros)
  np.testing.assert_allclose(loss, 0.1 * np.sum(np.asarray(params["w"]) ** 2), rtol=1e-14)
  np.testing.assert_allclose(grads["w"], 0.2 * params["w"], rtol=1e-14)
  np.testing.assert_array_equal(grads["b"], 0.0)
  np.testing.assert_allclose(
      jax.jit(softmax_regression_loss)(params, x, labels, l2=0.2, class_weights=zeros),
      loss,
      rtol=1e-14,
  )


def test_class_weights_vmap_equals_loop():
  """Pins vmap over a stack of class-weight vectors == a Python loop."""
  params, x, labels = linear_problem(24)
  stack = jnp.asarray([CLASS_WEIGHTS, np.ones(CLASSES), [3.0, 0.1, 1.0, 1.0]])
  fn = lambda cw: softmax_regression_value_and_grad(params, x, labels, class_weights=cw)
  batched = jax.jit(jax.vmap(fn))(stack)
  looped = [_linear_vg(params, x, labels, class_weights=cw) for cw in stack]
  assert_trees_close(
      batched, jax.tree.map(lambda *leaves: jnp.stack(leaves), *looped), 1e-12
  )


BAD_CLASS_WEIGHTS = [
    (jnp.ones(CLASSES + 1), ValueError, r"class_weights must have shape \(4,\) \(one weight per class\); got \(5,\)"),
    (jnp.ones((1, CLASSES)), ValueError, r"class_weights must have shape \(4,\)"),
    (jnp.array([1.0, -1.0, 1.0, 1.0]), ValueError, r"class_weights must be >= 0"),
    (jnp.array([1.0, np.nan, 1.0, 1.0]), ValueError, r"class_weights must be >= 0"),
    (jnp.ones(CLASSES, jnp.int32), TypeError, r"class_weights must have a floating dtype"),
]


@pytest.mark.parametrize("class_weights, error, match", BAD_CLASS_WEIGHTS)
@pytest.mark.parametrize(
    "fn, problem",
    [
        (softmax_regression_grad, linear_problem),
        (softmax_regression_loss, linear_problem),
        (mlp_grad, mlp_problem),
        (mlp_loss, mlp_problem),
    ],
    ids=["softmax_regression_grad", "softmax_regression_loss", "mlp_grad", "mlp_loss"],
)
def test_class_weights_rejects_bad_input(fn, problem, class_weights, error, match):
  """Pins a TypeError/ValueError naming class_weights, its shape or value."""
  params, x, labels = problem(25)
  with pytest.raises(error, match=match):
    fn(params, x, labels, class_weights=class_weights)


def test_class_weighted_loss_with_float_labels_names_labels():
  """Pins that float labels get the labels' TypeError, not an indexing error from class_weights[labels]."""
  params, x, labels = linear_problem(26)
  with pytest.raises(TypeError, match=r"labels must have an integer dtype"):
    softmax_regression_loss(
        params, x, labels.astype(jnp.float64), class_weights=jnp.ones(CLASSES)
    )


# ----------------------------------------------------------------------------
# Mixup.
# ----------------------------------------------------------------------------


# Each program holding a Beta draw costs ~3 s of CPU to compile (the Gamma
# sampler's rejection loop), so one jitted mixup of one shape serves most
# tests below.
_mixup = jax.jit(mixup, static_argnums=3)
MIX_LABELS = jnp.asarray(np.random.default_rng(31).integers(0, CLASSES, 16))


@jax.jit
def _soft_ce_grad_and_closed_form(params, x_mixed, targets):
  grads = jax.grad(
      lambda p: soft_cross_entropy(linear_logits(p, x_mixed), targets)
  )(params)
  g = jax.nn.softmax(x_mixed @ params["w"] + params["b"][None, :]) - targets
  batch = x_mixed.shape[0]
  return grads, {"w": x_mixed.T @ g / batch, "b": jnp.sum(g, 0) / batch}


def test_mixup_soft_ce_grad_equals_closed_form():
  """Pins jax.grad of soft_cross_entropy on mixed data == X~^T (softmax - T) / B (float64)."""
  params, x, _ = linear_problem(30, features=CLASSES, batch=16)
  x_mixed, targets = _mixup(jax.random.key(0), x, MIX_LABELS, CLASSES, alpha=0.4)
  grads, closed = _soft_ce_grad_and_closed_form(params, x_mixed, targets)
  assert_trees_close(grads, closed, RTOL[np.dtype(np.float64)])
  assert x_mixed.dtype == targets.dtype == x.dtype
  # Mixing happened: rows moved and some targets are not one-hot.
  assert not np.allclose(x_mixed, x)
  assert np.max(targets, axis=1).min() < 1


def test_mixup_targets_mix_the_same_pairs_as_the_features():
  """Pins x~ and t built from one lambda and one permutation (with x_i = e_{y_i}, x~ == t); a key fixes both."""
  x = jnp.eye(CLASSES)[MIX_LABELS]
  results = [
      _mixup(jax.random.key(seed), x, MIX_LABELS, CLASSES, alpha=1.0)
      for seed in (0, 1, 0)
  ]
  for x_mixed, targets in results:
    np.testing.assert_allclose(x_mixed, targets, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(np.sum(targets, axis=1), 1.0, rtol=1e-15)
    assert np.all(np.asarray(targets) >= 0)
  assert_trees_equal(results[2], results[0])
  assert not np.allclose(results[1][0], results[0][0])


def test_mixup_out_of_range_label_under_jit_gives_nan_target():
  """Pins the jit NaN semantics: a bad label poisons its rows' targets instead of moving mass to another class."""
  labels = MIX_LABELS.at[3].set(-1)
  _, targets = _mixup(
      jax.random.key(0), jnp.eye(CLASSES)[MIX_LABELS], labels, CLASSES, alpha=1.0
  )
  bad_rows = np.isnan(np.asarray(targets)).any(axis=1)
  assert bad_rows[3] and not bad_rows.all()
  assert np.all(np.isfinite(np.asarray(targets)[~bad_rows]))


@pytest.mark.parametrize("alpha", [0.2, 2.0])
def test_mixup_lambda_follows_beta_alpha_alpha(alpha):
  """Pins lambda ~ Beta(alpha, alpha): mean 1/2 and variance 1 / (4 (2 alpha + 1)) over 400 keys."""
  # A row whose partner has another label keeps mass lambda on its own
  # label (else 1), so the smallest own-label mass of a batch is lambda.
  x = jnp.eye(CLASSES)[MIX_LABELS]
  rows = np.arange(len(MIX_LABELS))
  lam = np.array([
      np.min(np.asarray(targets)[rows, MIX_LABELS])
      for _, targets in (
          _mixup(k, x, MIX_LABELS, CLASSES, alpha=alpha)
          for k in jax.random.split(jax.random.key(33), 400)
      )
  ])
  assert abs(lam.mean() - 0.5) < 0.03
  np.testing.assert_allclose(lam.var(), 1 / (4 * (2 * alpha + 1)), rtol=0.15)


def test_mixup_keeps_extra_feature_axes():
  """Pins image-shaped x ([B, H, W]) mixed along the batch axis (shapes traced, nothing compiled)."""
  shapes = jax.eval_shape(
      lambda key, x: mixup(key, x, MIX_LABELS, CLASSES, alpha=0.4),
      jax.random.key(0),
      jax.ShapeDtypeStruct((16, 3, 2), jnp.float32),
  )
  assert [(a.shape, a.dtype) for a in shapes] == [
      ((16, 3, 2), jnp.float32),
      ((16, CLASSES), jnp.float32),
  ]


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(alpha=0.0), ValueError, r"alpha must be > 0; got 0.0"),
        (dict(alpha=-1.0), ValueError, r"alpha must be > 0"),
        (dict(labels=jnp.array([0, 1, 4])), ValueError, r"labels must lie in \[0, 4\)"),
        (dict(labels=jnp.array([0, 1])), ValueError, r"labels must have shape \(3,\)"),
        (dict(labels=jnp.array([0.0, 1.0, 2.0])), TypeError, r"labels must have an integer dtype"),
        (dict(x=jnp.ones((3, 2), jnp.int32)), TypeError, r"x must have a floating dtype"),
        (dict(num_classes=0), ValueError, r"num_classes must be a positive int"),
        (dict(key=0), TypeError, r"key must be a jax.random key"),
    ],
)
def test_mixup_rejects_bad_input(change, error, match):
  """Pins a TypeError/ValueError naming the argument for each kind of bad mixup input."""
  args = dict(
      key=jax.random.key(0), x=jnp.ones((3, 2)), labels=jnp.array([0, 1, 2]),
      num_classes=CLASSES, alpha=0.4,
  )
  args.update(change)
  with pytest.raises(error, match=match):
    mixup(args["key"], args["x"], args["labels"], args["num_classes"], alpha=args["alpha"])


# ----------------------------------------------------------------------------
# Sparse (BCOO) inputs.
# ----------------------------------------------------------------------------


def sparse_problem(seed, batch=16, features=30):
  """Bag-of-words counts (NumPy): ~10% non-zeros, an all-zero row."""
  params, _, labels = linear_problem(seed, batch=batch, features=features)
  rng = np.random.default_rng(seed)
  counts = rng.poisson(0.1, size=(batch, features)).astype(np.float64)
  counts[1] = 0
  return params, counts, labels


def to_bcoo(a, n_batch=0):
  """A BCOO matrix built in NumPy (BCOO.fromdense compiles per shape)."""
  a = np.asarray(a)
  if n_batch == 0:
    return sparse.BCOO((a[a != 0], np.argwhere(a != 0)), shape=a.shape)
  # One row of stored entries per example, padded with explicit zeros at
  # column 0 (duplicates add up, so a stored 0 changes nothing).
  nse = int(max(1, (a != 0).sum(axis=1).max()))
  data = np.zeros((a.shape[0], nse), a.dtype)
  indices = np.zeros((a.shape[0], nse, 1), np.int32)
  for i, row in enumerate(a):
    cols = np.flatnonzero(row)
    data[i, : len(cols)] = row[cols]
    indices[i, : len(cols), 0] = cols
  return sparse.BCOO((data, indices), shape=a.shape)


@jax.jit
def _sparse_and_dense(params, xs, labels, class_weights):
  def all_paths(x, cw):
    kw = dict(l1=0.05, l2=0.3, class_weights=cw)
    return (
        linear_logits(params, x),
        softmax_regression_value_and_grad(params, x, labels, **kw),
        jax.value_and_grad(softmax_regression_loss)(params, x, labels, **kw),
    )

  return [[all_paths(x, cw) for cw in (None, class_weights)] for x in xs]


def test_sparse_input_equals_dense_under_jit():
  """Pins logits, manual value-and-grad and autodiff of the loss on BCOO x (plain and batched) == the dense path, under jit."""
  params, x, labels = sparse_problem(40)
  xs = [jnp.asarray(x), to_bcoo(x), to_bcoo(x, n_batch=1)]
  assert xs[2].n_batch == 1
  dense, *from_sparse = _sparse_and_dense(
      params, xs, labels, jnp.asarray(CLASS_WEIGHTS)
  )
  rtol = RTOL[np.dtype(np.float64)]
  for paths in from_sparse:
    assert_trees_close(paths, dense, rtol)
    for _, manual, autodiff in paths:
      assert_trees_close(manual, autodiff, rtol)
  # The class weights changed the result (the weighted path was taken).
  assert not np.allclose(dense[0][1][1]["w"], dense[1][1][1]["w"])


def test_sparse_input_is_never_densified():
  """Pins X Theta and X^T G as bcoo_dot_general on the stored entries, with no bcoo_todense anywhere."""
  params, x, labels = sparse_problem(42)
  x_sparse = to_bcoo(x)
  for fn in (
      lambda p, xs: linear_logits(p, xs),
      lambda p, xs: softmax_regression_value_and_grad(p, xs, labels, l2=0.1),
      lambda p, xs: jax.grad(softmax_regression_loss)(p, xs, labels),
  ):
    jaxpr = str(jax.make_jaxpr(fn)(params, x_sparse))
    assert "bcoo_dot_general" in jaxpr
    assert "todense" not in jaxpr
  manual = str(jax.make_jaxpr(softmax_regression_grad)(params, x_sparse, labels))
  assert manual.count("bcoo_dot_general") == 2  # X Theta and X^T G


def _with_nan(x):
  x = x.copy()
  x[2, 3] = np.nan
  return x


@pytest.mark.parametrize(
    "make, fn, error, match",
    [
        (lambda x: to_bcoo(_with_nan(x)), softmax_regression_grad, ValueError, r"x.data must be finite"),
        (lambda x: to_bcoo(x[:, :-1]), softmax_regression_grad, ValueError, r"x must have 30 features"),
        (lambda x: to_bcoo(x[:, :-1]), linear_logits, ValueError, r"x must have 30 features"),
        (lambda x: to_bcoo(x.astype(np.int32)), softmax_regression_grad, TypeError, r"x must have a floating dtype"),
        (lambda x: to_bcoo(x[None]), softmax_regression_grad, ValueError, r"x must have rank 2"),
    ],
    ids=["nan", "features", "logits_features", "integer", "rank3"],
)
def test_sparse_input_rejects_bad_input(make, fn, error, match):
  """Pins the boundary checks on a BCOO x, naming x and its shape."""
  params, x, labels = sparse_problem(43)
  args = (params, make(x)) if fn is linear_logits else (params, make(x), labels)
  with pytest.raises(error, match=match):
    fn(*args)


@pytest.mark.parametrize("fn", [mlp_logits, mlp_grad, mlp_loss])
def test_mlp_rejects_sparse_input_clearly(fn):
  """Pins a TypeError saying the MLP needs dense x (instead of NumPy's 'setting an array element with a sequence')."""
  params, x, labels = mlp_problem(44)
  args = (params, to_bcoo(np.asarray(x)))
  args = args if fn is mlp_logits else (*args, labels)
  with pytest.raises(TypeError, match=r"x must be a dense array here; got a BCOO"):
    fn(*args)

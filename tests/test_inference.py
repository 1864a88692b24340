"""Tests for inference (predict, predict_proba, top_k) and temperature scaling.

Predictions are checked against argmax / softmax / sort of the model's logits
(float64 to 1e-12), the chunked ``batch_size`` path against the unbatched
one, and ``fit_temperature`` on labels sampled from ``softmax(z / T0)``,
whose maximum-likelihood temperature is T0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoftmax import metrics
from jaxsoftmax.evaluation._inference import fit_temperature
from jaxsoftmax.evaluation._inference import predict
from jaxsoftmax.evaluation._inference import predict_proba
from jaxsoftmax.evaluation._inference import top_k
from jaxsoftmax.losses._dense import cross_entropy
from jaxsoftmax.models._functional import linear_logits
from jaxsoftmax.models._functional import mlp_logits

TOL = dict(rtol=1e-12, atol=1e-12)
NUM_FEATURES, NUM_CLASSES, NUM_EXAMPLES = 5, 7, 37
# 8 leaves a remainder chunk of 5; 64 exceeds the number of examples.
BATCH_SIZES = [None, 8, 64]


def _layer(rng, fan_in, fan_out):
  # NumPy draws: jax.random would compile its threefry kernel for every shape.
  return {"w": jnp.asarray(rng.normal(size=(fan_in, fan_out))),
          "b": jnp.asarray(rng.normal(size=fan_out))}


@pytest.fixture(scope="module")
def model():
  """float64 linear params, inputs [37, 5], and their logits from NumPy."""
  rng = np.random.default_rng(0)
  params = _layer(rng, NUM_FEATURES, NUM_CLASSES)
  x = rng.normal(size=(NUM_EXAMPLES, NUM_FEATURES))
  logits = x @ np.asarray(params["w"]) + np.asarray(params["b"])[None, :]
  return params, jnp.asarray(x), logits


def _softmax(z):
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------
# predict / predict_proba / top_k.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_predict_is_the_argmax_of_the_logits(model, batch_size):
  params, x, logits = model
  out = predict(params, x, batch_size=batch_size)
  assert out.dtype == jnp.int32 and out.shape == (NUM_EXAMPLES,)
  np.testing.assert_array_equal(out, logits.argmax(axis=1))


@pytest.mark.parametrize("batch_size", BATCH_SIZES[:2])
@pytest.mark.parametrize("temperature", [1.0, 0.3, 2.5])
def test_predict_proba_is_the_tempered_softmax(model, batch_size, temperature):
  params, x, logits = model
  out = predict_proba(params, x, temperature=temperature,
                      batch_size=batch_size)
  assert out.dtype == jnp.float64
  np.testing.assert_allclose(out, _softmax(logits / temperature), **TOL)
  np.testing.assert_allclose(np.sum(out, axis=1), 1.0, **TOL)
  np.testing.assert_array_equal(np.argmax(out, axis=1), logits.argmax(axis=1))


@pytest.mark.parametrize("batch_size", BATCH_SIZES[:2])
def test_top_k_is_the_sorted_head_of_the_softmax(model, batch_size):
  params, x, logits = model
  probs, ids = top_k(params, x, 3, temperature=2.0, batch_size=batch_size)
  assert probs.shape == ids.shape == (NUM_EXAMPLES, 3)
  assert ids.dtype == jnp.int32
  full = _softmax(logits / 2.0)
  expected_ids = np.argsort(-full, axis=1, kind="stable")[:, :3]
  np.testing.assert_array_equal(ids, expected_ids)
  np.testing.assert_allclose(
      probs, np.take_along_axis(full, expected_ids, axis=1), **TOL)
  np.testing.assert_array_equal(ids[:, 0], predict(params, x))


def test_logits_fn_selects_the_model(model):
  """An MLP's predictions go through mlp_logits, batched or not."""
  _, x, _ = model
  rng = np.random.default_rng(1)
  params = [_layer(rng, NUM_FEATURES, 6), _layer(rng, 6, NUM_CLASSES)]
  hidden = np.maximum(np.asarray(x) @ params[0]["w"] + params[0]["b"][None, :],
                      0)
  expected = _softmax(np.asarray(hidden @ params[1]["w"]
                                 + params[1]["b"][None, :]))
  for batch_size in BATCH_SIZES[:2]:
    np.testing.assert_allclose(
        predict_proba(params, x, logits_fn=mlp_logits, batch_size=batch_size),
        expected, **TOL)


def _masked_logits(params, x):
  """Linear logits with class 1 masked (-inf) and classes 4 and 5 tied."""
  h = linear_logits(params, x)
  h = h.at[:, 1].set(-jnp.inf)
  return h.at[:, 5].set(h[:, 4])


def test_masked_classes_get_zero_probability_and_ties_keep_index_order(model):
  params, x, _ = model
  probs = predict_proba(params, x, logits_fn=_masked_logits)
  assert np.all(probs[:, 1] == 0)
  np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, **TOL)
  _, ids = top_k(params, x, NUM_CLASSES, logits_fn=_masked_logits)
  ids = np.asarray(ids)
  assert np.all(ids[:, -1] == 1)
  pos4 = np.argmax(ids == 4, axis=1)
  pos5 = np.argmax(ids == 5, axis=1)
  np.testing.assert_array_equal(pos5, pos4 + 1)


def test_half_precision_probabilities_are_normalized_in_float32(model):
  params, x, _ = model
  half = jax.tree.map(lambda a: a.astype(jnp.float16), params)
  probs = predict_proba(half, x.astype(jnp.float16), temperature=0.5)
  assert probs.dtype == jnp.float32
  np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, rtol=1e-6)
  reference = _softmax(np.asarray(linear_logits(half, x.astype(jnp.float16)),
                                  np.float64) / 0.5)
  np.testing.assert_allclose(probs, reference, rtol=1e-5, atol=1e-6)


def test_under_jit_and_vmap_the_temperature_may_be_traced(model):
  params, x, logits = model

  @jax.jit
  def proba(params, x, temperature):
    return predict_proba(params, x, temperature=temperature, batch_size=8)

  np.testing.assert_allclose(proba(params, x, 1.7), _softmax(logits / 1.7),
                             **TOL)
  temperatures = jnp.array([0.5, 1.0, 4.0])
  swept = jax.vmap(lambda t: predict_proba(params, x, temperature=t))(
      temperatures)
  for t, out in zip([0.5, 1.0, 4.0], swept):
    np.testing.assert_allclose(out, _softmax(logits / t), **TOL)


def test_huge_logits_are_safe(model):
  """Max-shifted: logits of 1e4 at a small temperature still sum to 1."""
  params, x, _ = model
  big = jax.tree.map(lambda a: a * 1e4, params)
  probs = predict_proba(big, x, temperature=0.3)
  assert np.all(np.isfinite(probs))
  # Rounding of a log-sum-exp of size ~3e4 is ~3e4 * eps64 in each exponent.
  np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, rtol=1e-10)


def _wrong_rank_logits(params, x):
  return linear_logits(params, x)[:, :, None]


@pytest.mark.parametrize("call, error, match", [
    (lambda p, x: predict_proba(p, x, temperature=0.0), ValueError,
     "temperature must be > 0"),
    (lambda p, x: predict_proba(p, x, temperature=float("nan")), ValueError,
     "temperature must be > 0"),
    (lambda p, x: predict_proba(p, x, temperature=jnp.ones(2)), ValueError,
     "temperature must have rank 0"),
    (lambda p, x: predict_proba(p, x, temperature=jnp.ones((), jnp.int32)),
     TypeError, "temperature must have a floating dtype"),
    (lambda p, x: predict(p, x, batch_size=0), ValueError,
     "batch_size must be a positive int"),
    (lambda p, x: predict(p, x, batch_size=8.0), TypeError,
     "batch_size must be a positive int"),
    (lambda p, x: predict(p, x[0, 0]), ValueError, "x must have rank >= 1"),
    (lambda p, x: predict(p, x[0]), ValueError, "logits_fn must return"),
    (lambda p, x: predict(p, x[:, 0]), ValueError, "x must have 5 features"),
    (lambda p, x: predict(p, x[:, :3]), ValueError, "x must have 5 features"),
    (lambda p, x: predict(p, x, logits_fn="linear"), TypeError,
     "logits_fn must be a callable"),
    (lambda p, x: predict(p, x, logits_fn=_wrong_rank_logits), ValueError,
     "logits_fn must return"),
    (lambda p, x: top_k(p, x, 0), ValueError, "k must be a positive int"),
    (lambda p, x: top_k(p, x, NUM_CLASSES + 1), ValueError,
     r"k must lie in \[1, num_classes=7\]"),
])
def test_bad_inputs_raise_clear_errors(model, call, error, match):
  params, x, _ = model
  with pytest.raises(error, match=match):
    call(params, x)


# ----------------------------------------------------------------------------
# fit_temperature.
# ----------------------------------------------------------------------------

T0 = 2.5


@pytest.fixture(scope="module")
def tempered():
  """Logits z and labels drawn from softmax(z / T0): the MLE of T is ~T0."""
  rng = np.random.default_rng(3)
  z = rng.normal(size=(5000, 10)) * 5
  cdf = np.cumsum(_softmax(z / T0), axis=1)
  labels = np.minimum((rng.random(5000)[:, None] > cdf).sum(1), 9)
  return z, labels


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_fit_temperature_recovers_the_sampling_temperature(tempered, dtype):
  z, labels = tempered
  logits = z.astype(dtype)
  temperature = fit_temperature(logits, labels)
  assert isinstance(temperature, float)
  assert abs(temperature / T0 - 1) < 0.03
  # A minimum of the held-out NLL: lower than the unscaled logits' and than
  # its neighbours' (the NLL is measured on the same rounded logits, in
  # float64).
  wide = np.asarray(logits, np.float64)

  def nll(t):
    return float(cross_entropy(wide / t, labels))

  assert nll(temperature) < nll(1.0)
  assert nll(temperature) <= min(nll(temperature * 1.01),
                                 nll(temperature / 1.01))


def test_fit_temperature_leaves_accuracy_unchanged(tempered):
  z, labels = tempered
  temperature = fit_temperature(z, labels)
  np.testing.assert_array_equal(np.argmax(z / temperature, 1),
                                np.argmax(z, 1))


_Z = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [1.0, 0.0, 3.0]])


@pytest.mark.parametrize("call, error, match", [
    (lambda: fit_temperature(_Z, np.array([0.0, 1.0, 2.0])), TypeError,
     "labels must have an integer dtype"),
    (lambda: fit_temperature(_Z, np.array([0, 1])), ValueError,
     r"labels must have shape \(3,\)"),
    (lambda: fit_temperature(_Z[0], np.array([0])), ValueError, "rank 2"),
    (lambda: fit_temperature(_Z, np.array([0, 1, 3])), ValueError,
     r"labels must lie in \[0, 3\)"),
    (lambda: fit_temperature(_Z, np.array([0, 1, 2]), max_iter=0), ValueError,
     "max_iter must be a positive int"),
    (lambda: fit_temperature(_Z, np.array([0, 2, 1]), tol=-1.0), ValueError,
     "tol must be > 0"),
    (lambda: fit_temperature(_Z, np.array([0, 1, 2])), ValueError,
     "has no minimizer"),
    (lambda: fit_temperature(_Z, np.array([2, 0, 1])), ValueError,
     r"T -> infinity"),
])
def test_fit_temperature_bad_inputs_raise_clear_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_predict_proba_with_temperature_never_exceeds_one():
  """Pins the bug where exp(h/T - lse) rounded to 1 + 1e-6 in float32 and the
  calibration metrics then rejected the probabilities."""
  x = jnp.asarray(
      np.random.default_rng(0).normal(size=(1000, 10)) * 8, jnp.float32
  )
  params = {"w": jnp.eye(10, dtype=jnp.float32), "b": jnp.zeros(10, jnp.float32)}
  p = predict_proba(params, x, temperature=0.7)
  assert float(p.max()) <= 1.0
  metrics.expected_calibration_error(p, jnp.zeros(1000, jnp.int32))

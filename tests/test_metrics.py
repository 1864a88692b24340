"""Tests for ``jaxsoftmax.metrics``: scikit-learn agreement, jit, calibration.

Every classification metric is compared with scikit-learn on random
predictions of several sizes (float64, to 1e-12), ROC-AUC also on tied
scores and against a brute-force pairwise count; calibration errors against
hand computations and on synthetic predictors whose calibration is known.
"""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxsoftmax.metrics import accuracy
from jaxsoftmax.metrics import average_calibration_error
from jaxsoftmax.metrics import confusion_matrix
from jaxsoftmax.metrics import expected_calibration_error
from jaxsoftmax.metrics import precision_recall_f1
from jaxsoftmax.metrics import reliability_diagram
from jaxsoftmax.metrics import roc_auc_ovr
from jaxsoftmax.metrics import top_k_accuracy

TOL = dict(rtol=1e-12, atol=1e-12)
# (num_examples, num_classes): one example, a few, many with most classes.
# (50, 4) is also the shape of the jit / vmap / NaN tests, which then reuse
# the programs compiled here.
SIZES = [(1, 3), (50, 4), (400, 10)]
AVERAGES = ("macro", "micro", "weighted", None)


def _softmax(z):
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _data(n, k, seed=0, every_class=False):
  """float64 logits [n, k], their softmax, and labels (all classes if asked)."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, k)) * 2
  labels = rng.integers(0, k, n)
  if every_class:
    labels[:k] = np.arange(k)
    rng.shuffle(labels)
  return logits, _softmax(logits), labels


def _sample_labels(probs, rng):
  """One label per row drawn from that row's distribution (inverse CDF)."""
  u = rng.random(probs.shape[0])
  return np.minimum((u[:, None] > np.cumsum(probs, axis=1)).sum(1),
                    probs.shape[1] - 1)


# ----------------------------------------------------------------------------
# Agreement with scikit-learn.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n, k", SIZES)
def test_accuracy_matches_sklearn(n, k):
  logits, _, labels = _data(n, k)
  expected = skm.accuracy_score(labels, logits.argmax(1))
  np.testing.assert_allclose(accuracy(logits, labels), expected, **TOL)


@pytest.mark.parametrize("n, k", SIZES)
def test_top_k_accuracy_matches_sklearn(n, k):
  logits, _, labels = _data(n, k, seed=1)
  # k >= num_classes makes scikit-learn warn (warnings are errors here).
  for top in range(1, k):
    expected = skm.top_k_accuracy_score(labels, logits, k=top,
                                        labels=np.arange(k))
    np.testing.assert_allclose(top_k_accuracy(logits, labels, top), expected,
                               **TOL)


def test_top_k_accuracy_breaks_ties_toward_lower_index():
  """With ties, rank = #higher + #equal at a lower index (as lax.top_k)."""
  rng = np.random.default_rng(2)
  logits = rng.integers(0, 3, size=(50, 4)).astype(np.float64)
  labels = rng.integers(0, 4, 50)
  order = np.argsort(-logits, axis=1, kind="stable")
  for top in (1, 2, 3, 4):
    expected = np.mean([labels[i] in order[i, :top] for i in range(50)])
    np.testing.assert_allclose(top_k_accuracy(logits, labels, top), expected,
                               **TOL)
  np.testing.assert_allclose(top_k_accuracy(logits, labels, 1),
                             accuracy(logits, labels), **TOL)


@pytest.mark.parametrize("n, k", SIZES)
def test_confusion_matrix_matches_sklearn(n, k):
  rng = np.random.default_rng(3)
  labels, predictions = rng.integers(0, k, n), rng.integers(0, k, n)
  expected = skm.confusion_matrix(labels, predictions, labels=np.arange(k))
  out = confusion_matrix(labels, predictions, k)
  assert out.dtype == jnp.int32 and out.shape == (k, k)
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("n, k", SIZES)
@pytest.mark.parametrize("average", AVERAGES)
def test_precision_recall_f1_matches_sklearn(n, k, average):
  rng = np.random.default_rng(4)
  labels = rng.integers(0, k, n)
  # Class k - 1 is never predicted: its precision is 0/0, set to 0.
  predictions = rng.integers(0, max(k - 1, 1), n)
  expected = skm.precision_recall_fscore_support(
      labels, predictions, labels=np.arange(k), average=average,
      zero_division=0)[:3]
  out = precision_recall_f1(labels, predictions, k, average=average)
  for got, want in zip(out, expected):
    assert np.shape(got) == np.shape(want)
    np.testing.assert_allclose(got, want, **TOL)


def _tied_probs(n, k, rng):
  """Rows of small integers over their sum: exact ties in and across rows."""
  counts = rng.integers(1, 4, size=(n, k)).astype(np.float64)
  return counts / counts.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n, k", [(5, 3), (400, 10)])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("average", AVERAGES)
def test_roc_auc_ovr_matches_sklearn(n, k, tied, average):
  _, probs, labels = _data(n, k, seed=5, every_class=True)
  if tied:
    probs = _tied_probs(n, k, np.random.default_rng(6))
  expected = skm.roc_auc_score(labels, probs, multi_class="ovr",
                               average=average, labels=np.arange(k))
  np.testing.assert_allclose(roc_auc_ovr(probs, labels, average=average),
                             expected, **TOL)


_auc_jit = jax.jit(roc_auc_ovr, static_argnames="average")


@hypothesis.settings(max_examples=15)
@hypothesis.given(
    st.lists(st.integers(0, 3), min_size=36, max_size=36),
    st.permutations(list(range(3)) + [0, 1, 2] * 3),
)
def test_roc_auc_ovr_equals_pairwise_mann_whitney(values, labels):
  """Per-class AUC = P(pos > neg) + P(pos = neg) / 2, counted pair by pair."""
  scores = np.asarray(values, np.float64).reshape(12, 3)
  labels = np.asarray(labels)
  for c in range(3):
    pos, neg = scores[labels == c, c], scores[labels != c, c]
    diff = pos[:, None] - neg[None, :]
    expected = np.mean((diff > 0) + 0.5 * (diff == 0))
    np.testing.assert_allclose(_auc_jit(scores, labels, average=None)[c],
                               expected, **TOL)


# ----------------------------------------------------------------------------
# jit, vmap, and the jit-time semantics of bad labels.
# ----------------------------------------------------------------------------


METRICS = {
    "accuracy": (accuracy, {}),
    "top_k_accuracy": (top_k_accuracy, dict(k=2)),
    "roc_auc_ovr": (roc_auc_ovr, {}),
    "ece": (expected_calibration_error, dict(num_bins=7)),
    "ace": (average_calibration_error, dict(num_bins=7)),
    "ace_classwise": (average_calibration_error,
                      dict(num_bins=7, classwise=True)),
}


# Compiled once per shape; the NaN test below reuses them at the same shape.
JITTED = {name: jax.jit(fn, static_argnames=tuple(static))
          for name, (fn, static) in METRICS.items()}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_under_jit_equals_eager(name):
  fn, static = METRICS[name]
  _, probs, labels = _data(50, 4, seed=7, every_class=True)
  np.testing.assert_allclose(JITTED[name](probs, labels, **static),
                             fn(probs, labels, **static), **TOL)


def test_label_metrics_under_jit_equal_eager():
  rng = np.random.default_rng(8)
  labels, predictions = rng.integers(0, 4, 50), rng.integers(0, 3, 50)
  cm = jax.jit(confusion_matrix, static_argnums=2)
  np.testing.assert_array_equal(cm(labels, predictions, 4),
                                confusion_matrix(labels, predictions, 4))
  prf = jax.jit(precision_recall_f1, static_argnames=("num_classes", "average"))
  for average in ("macro", None):
    np.testing.assert_allclose(
        prf(labels, predictions, num_classes=4, average=average),
        precision_recall_f1(labels, predictions, 4, average=average), **TOL)


_diagram_jit = jax.jit(reliability_diagram, static_argnames="num_bins")


def test_reliability_diagram_under_jit_equals_eager():
  _, probs, labels = _data(50, 4, seed=9)
  for got, want in zip(_diagram_jit(probs, labels),
                       reliability_diagram(probs, labels)):
    np.testing.assert_allclose(got, want, **TOL)


def test_metrics_vmap_over_datasets_equals_loop():
  _, probs, _ = _data(3 * 50, 4, seed=10)
  probs = probs.reshape(3, 50, 4)
  labels = np.random.default_rng(11).integers(0, 4, (3, 50))
  for fn in (accuracy, average_calibration_error):
    batched = jax.vmap(fn)(probs, labels)
    looped = [fn(probs[i], labels[i]) for i in range(3)]
    np.testing.assert_allclose(batched, looped, **TOL)
  cms = jax.vmap(confusion_matrix, in_axes=(0, 0, None))(
      labels, probs.argmax(-1), 4)
  for i in range(3):
    np.testing.assert_array_equal(
        cms[i], confusion_matrix(labels[i], probs[i].argmax(-1), 4))


def test_out_of_range_label_under_jit_gives_nan_not_a_number():
  """Unchecked under jit, a bad label poisons float metrics with NaN."""
  _, probs, labels = _data(50, 4, seed=12, every_class=True)
  labels[5] = 4
  for name in sorted(METRICS):
    out = JITTED[name](probs, labels, **METRICS[name][1])
    assert np.isnan(out), name
  prf = jax.jit(precision_recall_f1, static_argnums=2)
  assert all(np.isnan(s) for s in prf(labels, probs.argmax(-1), 4))
  diagram = _diagram_jit(probs, labels)
  assert np.all(np.isnan(diagram.accuracy))


def test_confusion_matrix_under_jit_drops_out_of_range_pairs():
  """A negative label must not wrap onto the last class."""
  labels = np.array([0, 1, -1, 2, 1])
  predictions = np.array([0, 1, 2, 5, 2])
  out = jax.jit(confusion_matrix, static_argnums=2)(labels, predictions, 3)
  expected = np.zeros((3, 3), int)
  expected[0, 0] = expected[1, 1] = expected[1, 2] = 1
  np.testing.assert_array_equal(out, expected)


# ----------------------------------------------------------------------------
# Calibration.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated():
  """Probabilities and labels drawn from them (N = 100k): calibrated."""
  rng = np.random.default_rng(13)
  logits = rng.normal(size=(100_000, 5)) * 1.5
  labels = _sample_labels(_softmax(logits), rng)
  return logits, labels


def test_ece_and_ace_of_a_calibrated_predictor_are_near_zero(calibrated):
  logits, labels = calibrated
  probs = _softmax(logits)
  assert expected_calibration_error(probs, labels) < 0.01
  assert average_calibration_error(probs, labels) < 0.01


def test_ece_and_ace_of_an_overconfident_predictor_are_large(calibrated):
  """Sharpening calibrated logits 3x reports confidence far above accuracy."""
  logits, labels = calibrated
  probs = _softmax(3 * logits)
  assert np.mean(probs.max(1)) - accuracy(probs, labels) > 0.2
  assert expected_calibration_error(probs, labels) > 0.2
  assert average_calibration_error(probs, labels) > 0.2


def _ece_by_hand(probs, labels, num_bins):
  conf, hit = probs.max(1), probs.argmax(1) == labels
  total = 0.0
  for m in range(num_bins):
    lo, hi = m / num_bins, (m + 1) / num_bins
    in_bin = (conf > lo) & (conf <= hi) | ((m == 0) & (conf == 0))
    if in_bin.any():
      total += in_bin.sum() / len(conf) * abs(hit[in_bin].mean()
                                              - conf[in_bin].mean())
  return total


def test_equal_width_bins_are_closed_on_the_right():
  """Confidence 0.5 with 2 bins lies in (0, 0.5], confidence 1 in (0.5, 1]."""
  probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])
  diagram = reliability_diagram(probs, np.array([0, 0, 1]), num_bins=2)
  np.testing.assert_array_equal(diagram.count, [2, 1])
  np.testing.assert_allclose(diagram.accuracy, [0.5, 1.0], **TOL)
  np.testing.assert_allclose(diagram.edges, [0.0, 0.5, 1.0], **TOL)


@pytest.mark.parametrize("n, num_bins", [(300, 15), (301, 7), (4, 10)])
def test_reliability_diagram_and_ece_match_hand_computation(n, num_bins):
  _, probs, labels = _data(n, 4, seed=15)
  d = jax.tree.map(np.asarray, reliability_diagram(probs, labels,
                                                   num_bins=num_bins))
  assert int(np.sum(d.count)) == n
  assert d.edges.shape == (num_bins + 1,)
  filled = d.count > 0
  assert np.all(np.isnan(d.confidence[~filled]))
  assert np.all(np.isnan(d.accuracy[~filled]))
  assert np.all((d.confidence[filled] > d.edges[:-1][filled])
                & (d.confidence[filled] <= d.edges[1:][filled]))
  ece = expected_calibration_error(probs, labels, num_bins=num_bins)
  np.testing.assert_allclose(ece, _ece_by_hand(probs, labels, num_bins), **TOL)
  gaps = np.abs(d.accuracy[filled] - d.confidence[filled])
  np.testing.assert_allclose(np.sum(d.count[filled] / n * gaps), ece, **TOL)


def _ace_by_hand(conf, hit, num_bins):
  """Sort, cut at ceil(r n / R), average the non-empty bins' gaps."""
  order = np.argsort(conf, kind="stable")
  conf, hit = conf[order], hit[order]
  n = len(conf)
  cuts = [-(-r * n // num_bins) for r in range(num_bins + 1)]
  gaps = [abs(hit[a:b].mean() - conf[a:b].mean())
          for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
  return np.mean(gaps)


@pytest.mark.parametrize("n, num_bins", [(300, 15), (301, 7), (4, 10)])
def test_average_calibration_error_matches_hand_computation(n, num_bins):
  _, probs, labels = _data(n, 4, seed=16)
  top = _ace_by_hand(probs.max(1), (probs.argmax(1) == labels).astype(float),
                     num_bins)
  np.testing.assert_allclose(
      average_calibration_error(probs, labels, num_bins=num_bins), top, **TOL)
  classwise = np.mean([
      _ace_by_hand(probs[:, c], (labels == c).astype(float), num_bins)
      for c in range(4)
  ])
  np.testing.assert_allclose(
      average_calibration_error(probs, labels, num_bins=num_bins,
                                classwise=True), classwise, **TOL)


def test_equal_mass_bins_hold_equal_counts_when_n_divides():
  """With N = 3R, ACE is the mean of R gaps of 3 consecutive sorted examples."""
  conf = np.linspace(0.55, 0.95, 12)
  probs = np.stack([conf, 1 - conf], axis=1)
  labels = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0])
  hit = (labels == 0).astype(float)
  expected = np.mean([abs(hit[i:i + 3].mean() - conf[i:i + 3].mean())
                      for i in range(0, 12, 3)])
  np.testing.assert_allclose(
      average_calibration_error(probs, labels, num_bins=4), expected, **TOL)


# ----------------------------------------------------------------------------
# Dtypes.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, expected", [
    (jnp.float16, jnp.float32), (jnp.bfloat16, jnp.float32),
    (jnp.float32, jnp.float32), (jnp.float64, jnp.float64)])
def test_float_metrics_return_the_accumulation_dtype(dtype, expected):
  _, probs, labels = _data(50, 4, seed=17, every_class=True)
  probs = jnp.asarray(probs, dtype)
  for name, (fn, static) in METRICS.items():
    out = jax.eval_shape(lambda p, y: fn(p, y, **static), probs, labels)
    assert out.dtype == expected, name


def test_half_precision_ece_accumulates_in_float32():
  """float16 inputs' ECE equals the float64 ECE of the same rounded values."""
  _, probs, labels = _data(50, 4, seed=17, every_class=True)
  probs = jnp.asarray(probs, jnp.float16)
  wide = np.asarray(probs, np.float64)
  np.testing.assert_allclose(
      expected_calibration_error(probs, labels, num_bins=7),
      expected_calibration_error(wide, labels, num_bins=7),
      rtol=1e-5, atol=1e-6)


def test_narrow_label_dtype_is_widened_for_many_classes():
  """int8 labels with K = 200 are compared against classes up to 199."""
  labels = np.array([5, 100, 127], np.int8)
  logits = np.zeros((3, 200))
  logits[np.arange(3), [5, 100, 150]] = 1.0
  np.testing.assert_allclose(accuracy(logits, labels), 2 / 3, **TOL)
  assert top_k_accuracy(logits, labels, 199) == 1.0


# ----------------------------------------------------------------------------
# Bad inputs.
# ----------------------------------------------------------------------------


_, _PROBS, _LABELS = _data(20, 3, seed=18, every_class=True)


@pytest.mark.parametrize("call, error, match", [
    (lambda: accuracy(_PROBS, _LABELS.astype(float)), TypeError,
     "labels must have an integer dtype"),
    (lambda: accuracy(_PROBS.astype(int), _LABELS), TypeError,
     "logits must have a floating dtype"),
    (lambda: accuracy(_PROBS[0], _LABELS), ValueError, r"rank 2"),
    (lambda: accuracy(_PROBS, _LABELS[:5]), ValueError, r"shape \(20,\)"),
    (lambda: accuracy(_PROBS[:0], _LABELS[:0]), ValueError,
     "at least one example"),
    (lambda: accuracy(_PROBS, _LABELS + 1), ValueError, r"\[0, 3\)"),
    (lambda: top_k_accuracy(_PROBS, _LABELS, 4), ValueError, "k must lie"),
    (lambda: top_k_accuracy(_PROBS, _LABELS, 0), ValueError, "k must be"),
    (lambda: top_k_accuracy(_PROBS, _LABELS, 1.0), TypeError, "k must be"),
    (lambda: confusion_matrix(_LABELS, _LABELS, 0), ValueError,
     "num_classes must be"),
    (lambda: confusion_matrix(_LABELS, _LABELS[:3], 3), ValueError,
     "predictions must have shape"),
    (lambda: confusion_matrix(_LABELS, _PROBS[:, 0], 3), TypeError,
     "predictions must have an integer dtype"),
    (lambda: confusion_matrix(_LABELS, _LABELS + 1, 3), ValueError,
     r"predictions must lie in \[0, 3\)"),
    (lambda: precision_recall_f1(_LABELS, _LABELS, 3, average="binary"),
     ValueError, "average must be one of"),
    (lambda: roc_auc_ovr(_PROBS, _LABELS, average="samples"), ValueError,
     "average must be one of"),
    (lambda: roc_auc_ovr(_PROBS, _LABELS % 2), ValueError,
     r"classes \[2\] do not occur"),
    (lambda: roc_auc_ovr(_PROBS[:, :1], _LABELS * 0), ValueError,
     "at least 2 classes"),
    (lambda: roc_auc_ovr(np.where(_PROBS > 0.5, np.nan, _PROBS), _LABELS),
     ValueError, "probs must be finite"),
    (lambda: expected_calibration_error(_PROBS * 3 - 1, _LABELS), ValueError,
     r"probs must hold probabilities in \[0, 1\]"),
    (lambda: expected_calibration_error(_PROBS, _LABELS, num_bins=0),
     ValueError, "num_bins must be"),
    (lambda: reliability_diagram(_PROBS, _LABELS, num_bins=2.5), TypeError,
     "num_bins must be"),
    (lambda: average_calibration_error(_PROBS, _LABELS, classwise=1),
     TypeError, "classwise must be a bool"),
])
def test_bad_inputs_raise_clear_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_micro_roc_auc_needs_no_every_class():
  """Micro averaging pools all (example, class) pairs: a class may be absent."""
  labels = _LABELS % 2
  expected = skm.roc_auc_score(np.eye(3)[labels].ravel(), _PROBS.ravel())
  np.testing.assert_allclose(roc_auc_ovr(_PROBS, labels, average="micro"),
                             expected, **TOL)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_weighted_roc_auc_averages_over_the_classes_present(jit):
  """A class absent from labels has weight 0, as in scikit-learn (not NaN)."""
  labels = _LABELS % 2
  expected = skm.roc_auc_score(labels, _PROBS, multi_class="ovr",
                               average="weighted", labels=np.arange(3))
  auc = _auc_jit if jit else roc_auc_ovr
  got = auc(_PROBS, labels, average="weighted")
  assert np.isfinite(got)
  np.testing.assert_allclose(got, expected, **TOL)

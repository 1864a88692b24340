"""Classification metrics: accuracy, top-k accuracy, the confusion matrix,
precision / recall / F1 and one-vs-rest ROC-AUC. Their conventions (shapes,
dtypes, scikit-learn's tie and zero-division rules, bad labels) are stated
once, in :mod:`jaxsoftmax.metrics`, which re-exports them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax._core import validation as v


PRF_AVERAGES = ("macro", "micro", "weighted", None)


AUC_AVERAGES = ("macro", "micro", "weighted", None)


def _check_labels(labels: jax.Array, num_examples: int) -> jax.Array:
  v.check_integer("labels", labels)
  v.check_same_shape("labels", labels, (num_examples,), "[num_examples]")
  # Compared against class indices up to K - 1, which int8 cannot hold.
  return labels.astype(jnp.promote_types(labels.dtype, jnp.int32))


def _scores_and_labels(name, scores, labels):
  """``[N, K]`` floating scores (N, K >= 1) and in-range ``[N]`` labels."""
  scores = jnp.asarray(scores)
  labels = jnp.asarray(labels)
  v.check_floating(name, scores)
  v.check_rank(name, scores, 2, "[num_examples, num_classes]")
  if 0 in scores.shape:
    raise ValueError(
        f"{name} must hold at least one example and one class; got shape"
        f" {scores.shape}."
    )
  labels = _check_labels(labels, scores.shape[0])
  v.check_labels_in_range("labels", labels, scores.shape[1])
  return scores, labels


def _probs_and_labels(probs, labels):
  probs, labels = _scores_and_labels("probs", probs, labels)
  v.check_probabilities("probs", probs)
  return probs, labels


def _check_option(name: str, value, allowed: tuple) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}; got {value!r}.")


def _all_in_range(labels: jax.Array, num_classes: int) -> jax.Array:
  return jnp.all((labels >= 0) & (labels < num_classes))


def _nan_unless(ok: jax.Array, value: jax.Array) -> jax.Array:
  """``value``, or NaN where a jit-time label check failed."""
  return jnp.where(ok, value, jnp.nan)


def _divide(num: jax.Array, den: jax.Array, dtype) -> jax.Array:
  """``num / den`` with ``0 / 0 = 0`` (scikit-learn's ``zero_division=0``)."""
  num = num.astype(dtype)
  den = den.astype(dtype)
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)


def accuracy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""Fraction of examples whose highest-scoring class is the label.

  .. math::
    \operatorname{acc} = \frac{1}{N} \sum_{i=1}^{N}
      \mathbf{1}\{\operatorname{argmax}_j h_{ij} = y_i\}

  for logits (or probabilities) :math:`h_{ij}` and labels :math:`y_i`. Ties
  go to the lowest class index, as in ``jnp.argmax``. This is
  ``1 - zero_one_loss``.

  Args:
    logits: ``[num_examples, num_classes]`` scores; logits or probabilities.
    labels: ``[num_examples]`` integer class indices.

  Returns:
    A scalar in ``[0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.metrics import accuracy
    >>> logits = jnp.array([[2.0, 1.0], [0.0, 3.0]])
    >>> print(float(accuracy(logits, jnp.array([0, 0]))))
    0.5

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026),
    the 0/1 loss.
  """
  logits, labels = _scores_and_labels("logits", logits, labels)
  return _accuracy(logits, labels)


@jax.jit
def _accuracy(logits, labels):
  dtype = _numerics.accumulation_dtype(logits.dtype)
  hit = jnp.argmax(logits, axis=-1) == labels
  ok = _all_in_range(labels, logits.shape[1])
  return _nan_unless(ok, jnp.mean(hit.astype(dtype)))


def top_k_accuracy(logits: ArrayLike, labels: ArrayLike, k: int) -> jax.Array:
  r"""Fraction of examples whose label is among the ``k`` highest scores.

  .. math::
    \operatorname{acc}_k = \frac{1}{N} \sum_{i=1}^{N} \mathbf{1}\{r_i < k\},
    \qquad
    r_i = \#\{j : h_{ij} > h_{iy_i}\} + \#\{j < y_i : h_{ij} = h_{iy_i}\}

  where :math:`r_i` is the label's 0-based rank with ties broken toward the
  lower class index, as in ``jnp.argmax`` and ``jax.lax.top_k`` (so ``k = 1``
  is :func:`accuracy`). Counting instead of sorting costs one ``[N, K]``
  comparison. scikit-learn's ``top_k_accuracy_score`` breaks ties toward the
  higher index instead; without ties the two agree.

  Args:
    logits: ``[num_examples, num_classes]`` scores; logits or probabilities.
    labels: ``[num_examples]`` integer class indices.
    k: static int in ``[1, num_classes]``.

  Returns:
    A scalar in ``[0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.metrics import top_k_accuracy
    >>> logits = jnp.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    >>> print(float(top_k_accuracy(logits, jnp.array([1, 2]), k=2)))
    0.5

  References:
    O. Russakovsky et al., "ImageNet Large Scale Visual Recognition
    Challenge", IJCV (2015), the top-5 error.
  """
  logits, labels = _scores_and_labels("logits", logits, labels)
  num_classes = logits.shape[1]
  v.check_positive_int("k", k)
  if k > num_classes:
    raise ValueError(
        f"k must lie in [1, num_classes={num_classes}]; got k={k}."
    )
  # k only enters a comparison, so it is traced: one compiled program serves
  # every k.
  return _top_k_accuracy(logits, labels, k)


@jax.jit
def _top_k_accuracy(logits, labels, k):
  num_classes = logits.shape[1]
  dtype = _numerics.accumulation_dtype(logits.dtype)
  safe = jnp.clip(labels, 0, num_classes - 1)
  target = jnp.take_along_axis(logits, safe[:, None], axis=-1)
  classes = jnp.arange(num_classes, dtype=labels.dtype)
  ahead = (logits > target) | (
      (logits == target) & (classes[None, :] < safe[:, None])
  )
  hit = jnp.sum(ahead, axis=-1) < k
  ok = _all_in_range(labels, num_classes)
  return _nan_unless(ok, jnp.mean(hit.astype(dtype)))


def _label_pair(labels, predictions, num_classes):
  labels = jnp.asarray(labels)
  predictions = jnp.asarray(predictions)
  v.check_positive_int("num_classes", num_classes)
  v.check_rank("labels", labels, 1, "[num_examples]")
  labels = _check_labels(labels, labels.shape[0])
  v.check_integer("predictions", predictions)
  v.check_same_shape(
      "predictions", predictions, labels.shape, "one per label, [num_examples]"
  )
  predictions = predictions.astype(
      jnp.promote_types(predictions.dtype, jnp.int32)
  )
  v.check_labels_in_range("labels", labels, num_classes)
  v.check_labels_in_range("predictions", predictions, num_classes)
  return labels, predictions


@functools.partial(jax.jit, static_argnums=2)
def _confusion(labels, predictions, num_classes):
  valid = (
      (labels >= 0)
      & (labels < num_classes)
      & (predictions >= 0)
      & (predictions < num_classes)
  )
  # Invalid pairs get a segment id past the end, which segment_sum drops;
  # indexing would wrap a negative label onto the last class instead.
  cell = jnp.where(
      valid, labels * num_classes + predictions, num_classes * num_classes
  )
  counts = jax.ops.segment_sum(
      jnp.ones(cell.shape, jnp.int32), cell,
      num_segments=num_classes * num_classes,
  )
  return counts.reshape(num_classes, num_classes), jnp.all(valid)


def confusion_matrix(
    labels: ArrayLike, predictions: ArrayLike, num_classes: int
) -> jax.Array:
  r"""Counts of (true class, predicted class) pairs.

  .. math::
    C_{ab} = \#\{i : y_i = a,\ \hat y_i = b\}

  Rows are true classes and columns predicted ones, as in scikit-learn, so
  the diagonal holds the correct predictions, row sums the class supports and
  column sums the prediction counts. Built with one ``segment_sum`` over the
  flattened cell index, no one-hot matrices. Under ``jit`` a pair with a
  value outside ``[0, num_classes)`` is left out (the counts then sum to less
  than ``num_examples``).

  Args:
    labels: ``[num_examples]`` integer true classes.
    predictions: ``[num_examples]`` integer predicted classes, e.g.
      ``jnp.argmax(logits, -1)``.
    num_classes: static int :math:`K`.

  Returns:
    ``[num_classes, num_classes]`` int32 counts.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.metrics import confusion_matrix
    >>> confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 0, 1]), 2).tolist()
    [[1, 0], [1, 1]]

  References:
    scikit-learn, ``sklearn.metrics.confusion_matrix``.
  """
  labels, predictions = _label_pair(labels, predictions, num_classes)
  return _confusion(labels, predictions, int(num_classes))[0]


def precision_recall_f1(
    labels: ArrayLike,
    predictions: ArrayLike,
    num_classes: int,
    *,
    average: str | None = "macro",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Precision, recall and F1 per class or averaged, from the confusion matrix.

  For class :math:`k` with true positives :math:`TP_k`, false positives
  :math:`FP_k` and false negatives :math:`FN_k`,

  .. math::
    P_k = \frac{TP_k}{TP_k + FP_k}, \qquad
    R_k = \frac{TP_k}{TP_k + FN_k}, \qquad
    F_k = \frac{2\, TP_k}{2\, TP_k + FP_k + FN_k}
        = \frac{2 P_k R_k}{P_k + R_k},

  with any :math:`0/0` set to 0 (scikit-learn's ``zero_division=0``: a class
  never predicted has precision 0, one never present has recall 0).
  ``"macro"`` takes the unweighted mean over all ``num_classes`` classes,
  ``"weighted"`` the mean weighted by each class's support
  :math:`TP_k + FN_k`, and ``"micro"`` applies the formulas to the summed
  counts (for single-label data all three then equal the accuracy).

  Args:
    labels: ``[num_examples]`` integer true classes.
    predictions: ``[num_examples]`` integer predicted classes.
    num_classes: static int :math:`K`.
    average: ``"macro"`` (default), ``"micro"``, ``"weighted"``, or ``None``
      for per-class values.

  Returns:
    ``(precision, recall, f1)``: scalars, or ``[num_classes]`` each when
    ``average`` is ``None``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.metrics import precision_recall_f1
    >>> labels, predictions = jnp.array([0, 1, 1]), jnp.array([0, 0, 1])
    >>> p, r, f = precision_recall_f1(labels, predictions, 2)
    >>> print(f"{float(p):.3f} {float(r):.3f} {float(f):.3f}")
    0.750 0.750 0.667

  References:
    scikit-learn, ``sklearn.metrics.precision_recall_fscore_support``;
    "Multilayer perceptron (MLP)", evaluation metrics (blog post, 2024).
  """
  _check_option("average", average, PRF_AVERAGES)
  labels, predictions = _label_pair(labels, predictions, num_classes)
  every = _precision_recall_f1(labels, predictions, int(num_classes))
  return every[PRF_AVERAGES.index(average)]


def _prf(tp, support, predicted, dtype):
  return (
      _divide(tp, predicted, dtype),
      _divide(tp, support, dtype),
      _divide(2 * tp, predicted + support, dtype),
  )


@functools.partial(jax.jit, static_argnums=2)
def _precision_recall_f1(labels, predictions, num_classes):
  """(P, R, F1) for every average, in PRF_AVERAGES order.

  All of them are O(K) once the confusion matrix exists, so one compiled
  program serves every ``average`` (under an outer jit the unused ones are
  dead code).
  """
  counts, ok = _confusion(labels, predictions, num_classes)
  dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
  tp = jnp.diagonal(counts)
  support = jnp.sum(counts, axis=1)
  predicted = jnp.sum(counts, axis=0)
  per_class = _prf(tp, support, predicted, dtype)
  weights = support.astype(dtype) / jnp.sum(support)
  every = {
      "macro": tuple(jnp.mean(s) for s in per_class),
      "micro": _prf(jnp.sum(tp), jnp.sum(support), jnp.sum(predicted), dtype),
      "weighted": tuple(jnp.sum(weights * s) for s in per_class),
      None: per_class,
  }
  return tuple(
      tuple(_nan_unless(ok, s) for s in every[average])
      for average in PRF_AVERAGES
  )


def _binary_auc(scores: jax.Array, positive: jax.Array, dtype) -> jax.Array:
  """Tie-aware ROC-AUC of one binary problem, ``[M]`` scores and flags.

  Sorting with ties broken negatives-first puts the positive at position p_A
  after exactly #(neg <= score) negatives and p_A - #(neg <= score)
  positives; positives-first gives p_B and #(neg < score). Summed over the
  positives, the positive counts cancel against sum_j j = n+(n+ - 1)/2, so

    AUC = 1/2 + sum_pos (p_A + p_B - (M - 1)) / (2 n+ n-)

  with no cumulative sum (whose scan is several times costlier to compile
  than the two sorts) and no [M, M] comparison. Centred terms keep the sum's
  rounding small in float32.
  """
  m = scores.shape[0]
  pos = positive.astype(jnp.int32)
  _, neg_first = jax.lax.sort((scores, pos), num_keys=2)
  _, pos_first = jax.lax.sort((scores, 1 - pos), num_keys=2)
  centred = jnp.arange(m, dtype=dtype) - (m - 1) / 2
  total = jnp.sum(centred * neg_first) + jnp.sum(centred * (1 - pos_first))
  n_pos = jnp.sum(pos).astype(dtype)
  # n+ n- in floating point: as int32 it overflows beyond ~92k examples. A
  # class without positives or negatives gives 0 / 0 = NaN.
  auc = 0.5 + total / (2 * n_pos * (m - n_pos))
  # NaN scores sort last and would be ranked silently.
  return jnp.where(jnp.any(jnp.isnan(scores)), jnp.nan, auc)


def roc_auc_ovr(
    probs: ArrayLike, labels: ArrayLike, *, average: str | None = "macro"
) -> jax.Array:
  r"""One-vs-rest ROC-AUC, tie-aware, equal to scikit-learn's.

  Class :math:`k`'s AUC is the probability that a random example of class
  :math:`k` scores higher on column :math:`k` than a random example of
  another class, ties counting one half (the Mann-Whitney U statistic):

  .. math::
    \operatorname{AUC}_k = \frac{1}{n_k^{+} n_k^{-}}
      \sum_{i : y_i = k} \sum_{l : y_l \ne k}
      \Big(\mathbf{1}\{p_{ik} > p_{lk}\}
        + \tfrac12 \mathbf{1}\{p_{ik} = p_{lk}\}\Big),

  which is the area under the ROC curve with ties drawn as diagonal
  segments. Computed with one sort per class, :math:`O(N K \log N)`.
  ``"macro"`` averages the :math:`K` values, ``"weighted"`` weights them by
  :math:`n_k^{+}` (so a class absent from ``labels`` has weight 0: the mean
  runs over the classes present, as scikit-learn computes it), and
  ``"micro"`` is the AUC of the :math:`N K` flattened (example, class)
  decisions, positive where :math:`y_i = k`.

  Pass probabilities (e.g. ``jax.nn.softmax(logits)``): the AUC depends on
  each column's ordering, which softmax changes relative to raw logits. The
  columns' ranking is all that matters, so rows need not sum to 1. A class
  without positives (or negatives) has no AUC: outside ``jit`` that raises
  for ``"macro"`` and ``None``, under ``jit`` it is NaN, as is any result
  from NaN scores.

  Args:
    probs: ``[num_examples, num_classes]`` class probabilities,
      ``num_classes >= 2``.
    labels: ``[num_examples]`` integer class indices; every class must occur
      for ``average="macro"`` and ``None``.
    average: ``"macro"`` (default), ``"weighted"``, ``"micro"``, or ``None``
      for the ``[num_classes]`` per-class values.

  Returns:
    A scalar in ``[0, 1]``, or ``[num_classes]`` when ``average`` is
    ``None``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.metrics import roc_auc_ovr
    >>> probs = jnp.array([[0.6, 0.4], [0.5, 0.5], [0.5, 0.5]])
    >>> print(float(roc_auc_ovr(probs, jnp.array([0, 1, 0]))))
    0.75

  References:
    J. A. Hanley, B. J. McNeil, "The meaning and use of the area under a
    receiver operating characteristic (ROC) curve", Radiology (1982);
    T. Fawcett, "An introduction to ROC analysis", Pattern Recognition
    Letters (2006), the one-vs-rest average; scikit-learn,
    ``sklearn.metrics.roc_auc_score(multi_class="ovr")``.
  """
  _check_option("average", average, AUC_AVERAGES)
  probs, labels = _scores_and_labels("probs", probs, labels)
  num_classes = probs.shape[1]
  if num_classes < 2:
    raise ValueError(
        f"probs must have at least 2 classes for ROC-AUC; got shape"
        f" {probs.shape}."
    )
  v.check_finite("probs", probs)
  found = average in ("macro", None) and v.is_concrete(labels) and v.find_bad(
      lambda xp, y: xp.bincount(y, minlength=num_classes) == 0, labels)
  if found:
    missing = np.flatnonzero(found[0])
    raise ValueError(
        "labels must contain every class for one-vs-rest ROC-AUC with"
        f" average={average!r} (a class without positives has no AUC);"
        f" classes {missing[:10].tolist()} do not occur among"
        f" {labels.shape[0]} labels. Use average='weighted' (over the"
        " classes present), 'micro', or more data."
    )
  if average == "micro":
    return _roc_auc_micro(probs, labels)
  every = _roc_auc_per_class(probs, labels)
  return every[("macro", "weighted", None).index(average)]


def _positives(probs, labels):
  classes = jnp.arange(probs.shape[1], dtype=labels.dtype)
  return labels[:, None] == classes[None, :]


@jax.jit
def _roc_auc_micro(probs, labels):
  dtype = _numerics.accumulation_dtype(probs.dtype)
  positive = _positives(probs, labels)
  auc = _binary_auc(probs.reshape(-1), positive.reshape(-1), dtype)
  return _nan_unless(_all_in_range(labels, probs.shape[1]), auc)


@jax.jit
def _roc_auc_per_class(probs, labels):
  """(macro, weighted, per-class) AUCs from one set of per-class sorts."""
  dtype = _numerics.accumulation_dtype(probs.dtype)
  positive = _positives(probs, labels)
  auc = functools.partial(_binary_auc, dtype=dtype)
  per_class = jax.vmap(auc, in_axes=1)(probs, positive)
  support = jnp.sum(positive, axis=0).astype(dtype)
  # An absent class has weight 0 and a NaN AUC, and 0 * NaN is NaN.
  present = jnp.where(support > 0, support * per_class, 0)
  every = (
      jnp.mean(per_class),
      jnp.sum(present) / jnp.sum(support),
      per_class,
  )
  ok = _all_in_range(labels, probs.shape[1])
  return tuple(_nan_unless(ok, a) for a in every)

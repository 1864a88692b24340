r"""Calibration of predicted probabilities: expected and average calibration
error and the reliability diagram (see :mod:`jaxsoftmax.metrics`).

References:
  C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On calibration of modern
  neural networks", ICML (2017); J. Nixon, M. W. Dusenberry, L. Zhang,
  G. Jerfel, D. Tran, "Measuring calibration in deep learning", CVPR
  Workshops (2019).
"""

from __future__ import annotations

from typing import NamedTuple

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax._core import validation as v
from jaxsoftmax.evaluation._metrics import (
    _all_in_range,
    _nan_unless,
    _probs_and_labels,
    accuracy,
)


class ReliabilityDiagram(NamedTuple):
  """Per-bin data of a reliability diagram (see :func:`reliability_diagram`).

  Attributes:
    confidence: ``[num_bins]`` mean top-label probability in each bin, NaN
      for an empty bin.
    accuracy: ``[num_bins]`` fraction of correct predictions in each bin,
      NaN for an empty bin.
    count: ``[num_bins]`` int32 number of examples in each bin.
    edges: ``[num_bins + 1]`` bin edges, ``0, 1/M, ..., 1``.
  """

  confidence: jax.Array
  accuracy: jax.Array
  count: jax.Array
  edges: jax.Array


def _top_label(probs, labels):
  """Top-label confidence and correctness (as 0/1) in the accumulation dtype."""
  p = _numerics.upcast(probs)
  confidence = jnp.max(p, axis=-1)
  hit = (jnp.argmax(p, axis=-1) == labels).astype(p.dtype)
  return confidence, hit


def _equal_width_bins(confidence, num_bins):
  """Bin ids for the right-closed bins ((m-1)/M, m/M], and the edges."""
  edges = jnp.linspace(0, 1, num_bins + 1, dtype=confidence.dtype)
  # num_bins + 1 edges: comparing against all of them is the cheapest search.
  ids = jnp.searchsorted(
      edges, confidence, side="left", method="compare_all"
  ) - 1
  # A confidence of exactly 0 falls left of the first edge: bin 0, the one
  # place the first bin is closed on the left.
  return jnp.clip(ids, 0, num_bins - 1), edges


def _check_num_bins(num_bins):
  v.check_positive_int("num_bins", num_bins)


def expected_calibration_error(
    probs: ArrayLike, labels: ArrayLike, *, num_bins: int = 15
) -> jax.Array:
  r"""Expected calibration error (ECE) of the top-label confidence.

  Examples are binned by their confidence
  :math:`\hat p_i = \max_j p_{ij}` into :math:`M` equal-width bins
  :math:`B_m = ((m-1)/M, m/M]` (a confidence of 0 goes to :math:`B_1`), and
  each bin's gap between accuracy and mean confidence is weighted by its
  share of the examples:

  .. math::
    \operatorname{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{N}
      \big|\operatorname{acc}(B_m) - \operatorname{conf}(B_m)\big|
    = \frac{1}{N} \sum_{m=1}^{M}
      \Big|\sum_{i \in B_m} (c_i - \hat p_i)\Big|,

  where :math:`c_i = \mathbf{1}\{\operatorname{argmax}_j p_{ij} = y_i\}`. The
  right-hand form needs no per-bin division, so empty bins simply add 0.
  0 for a perfectly calibrated model (up to sampling noise, which grows with
  :math:`M/N`); large for an over- or under-confident one.

  Args:
    probs: ``[num_examples, num_classes]`` probabilities in ``[0, 1]``.
    labels: ``[num_examples]`` integer class indices.
    num_bins: static int :math:`M`.

  Returns:
    A scalar in ``[0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.metrics import expected_calibration_error
    >>> probs = jnp.array([[0.9, 0.1], [0.9, 0.1]])
    >>> ece = expected_calibration_error(probs, jnp.array([0, 1]))
    >>> print(f"{float(ece):.2f}")
    0.40

  References:
    M. P. Naeini, G. F. Cooper, M. Hauskrecht, "Obtaining well calibrated
    probabilities using Bayesian binning", AAAI (2015); C. Guo, G. Pleiss,
    Y. Sun, K. Q. Weinberger, "On calibration of modern neural networks",
    ICML (2017).
  """
  probs, labels = _probs_and_labels(probs, labels)
  _check_num_bins(num_bins)
  return _equal_width_calibration(probs, labels, int(num_bins))[0]


def reliability_diagram(
    probs: ArrayLike, labels: ArrayLike, *, num_bins: int = 15
) -> ReliabilityDiagram:
  r"""Per-bin confidence, accuracy and count of the top-label prediction.

  The data of a reliability diagram, in the equal-width bins of
  :func:`expected_calibration_error` (no plotting here): plot ``accuracy``
  against ``confidence``, or bars over ``edges``; a calibrated model lies on
  the diagonal. For each bin :math:`B_m`,

  .. math::
    \operatorname{conf}(B_m) = \frac{1}{|B_m|}\sum_{i \in B_m} \hat p_i,
    \qquad
    \operatorname{acc}(B_m) = \frac{1}{|B_m|}\sum_{i \in B_m} c_i,

  NaN where :math:`|B_m| = 0` (plotting libraries skip NaN). The ECE is
  ``sum(count / N * |accuracy - confidence|)`` over the non-empty bins.

  Args:
    probs: ``[num_examples, num_classes]`` probabilities in ``[0, 1]``.
    labels: ``[num_examples]`` integer class indices.
    num_bins: static int :math:`M`.

  Returns:
    A :class:`ReliabilityDiagram` of ``[num_bins]`` confidence, accuracy and
    int32 count, and ``[num_bins + 1]`` edges.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.metrics import reliability_diagram
    >>> probs = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> diagram = reliability_diagram(probs, jnp.array([0, 1, 1]), num_bins=2)
    >>> diagram.count.tolist()
    [0, 3]

  References:
    A. Niculescu-Mizil, R. Caruana, "Predicting good probabilities with
    supervised learning", ICML (2005); C. Guo et al., "On calibration of
    modern neural networks", ICML (2017).
  """
  probs, labels = _probs_and_labels(probs, labels)
  _check_num_bins(num_bins)
  return _equal_width_calibration(probs, labels, int(num_bins))[1]


@functools.partial(jax.jit, static_argnums=2)
def _equal_width_calibration(probs, labels, num_bins):
  """The ECE and the reliability diagram: one program serves both."""
  confidence, hit = _top_label(probs, labels)
  ids, edges = _equal_width_bins(confidence, num_bins)
  count = jax.ops.segment_sum(
      jnp.ones(ids.shape, jnp.int32), ids, num_segments=num_bins
  )
  sums = jax.ops.segment_sum(
      jnp.stack([confidence, hit], axis=-1), ids, num_segments=num_bins
  )
  ok = _all_in_range(labels, probs.shape[1])
  # The ECE from per-bin sums, (1/N) sum_m |sum_{i in m} (c_i - p_i)|, needs
  # no division by the counts, so empty bins add an exact 0.
  ece = jnp.sum(jnp.abs(sums[:, 1] - sums[:, 0])) / labels.shape[0]
  # An empty bin's mean is undefined: NaN, not a 0 that would plot as a
  # perfectly wrong bin.
  means = sums / jnp.where(count > 0, count, jnp.nan)[:, None]
  means = _nan_unless(ok, means)
  diagram = ReliabilityDiagram(
      confidence=means[:, 0], accuracy=means[:, 1], count=count, edges=edges
  )
  return _nan_unless(ok, ece), diagram


def _adaptive_gap(confidence, hit, num_bins):
  """Unweighted mean over equal-mass bins of |accuracy - confidence|.

  Sorted position i goes to bin floor(i M / N), so bin sizes differ by at
  most one; with fewer examples than bins the empty ones are left out.
  """
  n = confidence.shape[0]
  _, diff = jax.lax.sort((confidence, hit - confidence), num_keys=1)
  # Boundaries ceil(m N / M) come from NumPy's exact integers: M + 1 values,
  # so the jitted program closes over no [N] constant and i * M cannot
  # overflow int32 at large N.
  bounds = -(-np.arange(1, num_bins) * n // num_bins)
  ids = jnp.searchsorted(
      jnp.asarray(bounds), jnp.arange(n), side="right", method="compare_all"
  )
  gap = jax.ops.segment_sum(diff, ids, num_segments=num_bins)
  count = jax.ops.segment_sum(
      jnp.ones((n,), diff.dtype), ids, num_segments=num_bins
  )
  per_bin = jnp.abs(gap) / jnp.maximum(count, 1)
  return jnp.sum(per_bin) / jnp.sum(count > 0)


def average_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    classwise: bool = False,
) -> jax.Array:
  r"""Adaptive calibration error (ACE): equal-mass bins, unweighted mean.

  The confidences are sorted and cut into :math:`R` bins of (nearly) equal
  count, so every bin is populated where ECE's equal-width bins leave the
  low-confidence range almost empty; each bin's gap counts equally:

  .. math::
    \operatorname{ACE} = \frac{1}{R} \sum_{r=1}^{R}
      \big|\operatorname{acc}(r) - \operatorname{conf}(r)\big|.

  By default this is the top-label version, on :math:`\hat p_i = \max_j
  p_{ij}` and :math:`c_i = \mathbf{1}\{\operatorname{argmax}_j p_{ij} =
  y_i\}`. With ``classwise=True`` it is Nixon et al.'s ACE, averaged over all
  :math:`K` classes: for class :math:`k` the bins cut the sorted column
  :math:`p_{\cdot k}`, :math:`\operatorname{acc}(r, k)` is the fraction of
  the bin's examples labelled :math:`k` and :math:`\operatorname{conf}(r,
  k)` their mean :math:`p_{ik}`, and
  :math:`\operatorname{ACE} = \frac{1}{KR}\sum_k\sum_r |\operatorname{acc}(r,
  k) - \operatorname{conf}(r, k)|`.

  Sorted position :math:`i` (0-based) goes to bin
  :math:`\lfloor i R / N \rfloor`; examples tied on a bin boundary are split
  by their order in the input. With fewer examples than bins the empty bins
  are left out of the mean.

  Args:
    probs: ``[num_examples, num_classes]`` probabilities in ``[0, 1]``.
    labels: ``[num_examples]`` integer class indices.
    num_bins: static int :math:`R`.
    classwise: static bool; average over every class's probability instead
      of the top label's.

  Returns:
    A scalar in ``[0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.metrics import average_calibration_error
    >>> probs = jnp.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    >>> labels = jnp.array([0, 0, 0, 1])
    >>> ace = average_calibration_error(probs, labels, num_bins=2)
    >>> print(f"{float(ace):.2f}")
    0.10

  References:
    J. Nixon, M. W. Dusenberry, L. Zhang, G. Jerfel, D. Tran, "Measuring
    calibration in deep learning", CVPR Workshops (2019); "Multilayer
    perceptron (MLP)", calibration (blog post, 2024).
  """
  probs, labels = _probs_and_labels(probs, labels)
  _check_num_bins(num_bins)
  if not isinstance(classwise, bool):
    raise TypeError(f"classwise must be a bool; got {classwise!r}.")
  return _average_calibration_error(probs, labels, int(num_bins), classwise)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _average_calibration_error(probs, labels, num_bins, classwise):
  ok = _all_in_range(labels, probs.shape[1])
  if not classwise:
    confidence, hit = _top_label(probs, labels)
    return _nan_unless(ok, _adaptive_gap(confidence, hit, num_bins))
  p = _numerics.upcast(probs)
  classes = jnp.arange(p.shape[1], dtype=labels.dtype)
  hit = (labels[:, None] == classes[None, :]).astype(p.dtype)
  gap = functools.partial(_adaptive_gap, num_bins=num_bins)
  per_class = jax.vmap(gap, in_axes=1)(p, hit)
  return _nan_unless(ok, jnp.mean(per_class))

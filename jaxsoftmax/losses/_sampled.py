r"""Sampled output layers for very large K: sampled softmax, NCE, negatives.

Each loss scores the label and ``num_samples`` (:math:`m`) candidate classes
drawn from a :mod:`jaxsoftmax.samplers` proposal :math:`q`, instead of all
:math:`K` classes. ``w`` (``[d, K]``) and ``b`` (``[K]``) are read only through
gathers of the label's and the candidates' columns, so the forward and
backward passes cost O(B m d) instead of O(B K d). Given a dense ``w`` the
gradient is a dense ``[d, K]`` array (zero outside the gathered columns);
given a :class:`jaxsoftmax.sparse.Rows` view of a class-major table it is
just the view's rows, and the whole step can stay O(B m d)
(:mod:`jaxsoftmax.sparse`). The losses themselves are
:func:`jaxsoftmax.cross_entropy` and :func:`jaxsoftmax.binary_cross_entropy`
on the small ``[B, 1 + m]`` logits, so their hand-derived backward rules
give the gradient; the sampler's output is treated as a constant.

Candidate sets are shared by the batch (``shared=True``: one gather of
:math:`m` columns, the cheapest) or drawn per example (``shared=False``:
``[B, m]`` ids). A query-dependent sampler such as MIDX fits either: per
row, each row draws from its own proposal :math:`q(\cdot \mid x_i)`;
shared, each candidate comes from the proposal of a uniformly chosen row, so
the set is drawn from the mixture :math:`\bar q = \frac1B \sum_i q(\cdot
\mid x_i)` and every row is corrected with :math:`\log \bar q` (the
balance heuristic). The per-row set follows each row more closely; the
shared one keeps the single ``[d, m]`` gather and dense ``[B, d] @ [d, m]``
product, which on CPU is several times cheaper than the per-row gather and
its scatter in the backward pass.

Rows follow :func:`jaxsoftmax.cross_entropy`'s conventions: ``weights``,
``ignore_index`` and ``reduction`` mean the same thing; out-of-range labels
raise on eager calls and give NaN loss and gradient under ``jit``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsoftmax._core import gather as _gather
from jaxsoftmax._core import reduction as _reduction
from jaxsoftmax.losses import _dense as _losses
from jaxsoftmax._core import validation as v
from jaxsoftmax import samplers as _samplers
from jaxsoftmax.samplers import _base as _sampler_base


def _check_inputs(x, w, b, labels, sampler, num_samples, weights,
                  ignore_index, reduction):
  """Validates the shared arguments; returns arrays and the row weights.

  ``w`` and ``b`` may be dense (``[d, K]``, ``[K]``) or
  :class:`~jaxsoftmax.sparse.Rows` views of class-major tables (``[n, d]``,
  ``[n]`` rows); a view's ``K`` is the sampler's.
  """
  x = jnp.asarray(x)
  labels = jnp.asarray(labels)
  v.check_floating("x", x)
  v.check_rank("x", x, 2, "[batch, num_features]")
  w, b = _as_table(w), _as_table(b)
  if isinstance(w, _gather.Rows):
    check_sampler(sampler)
    num_features = _gather.table_shape("w", w, 2)[1]
  else:
    v.check_floating("w", w)
    v.check_rank("w", w, 2, "[num_features, num_classes]")
    check_sampler(sampler, w)
    num_features = w.shape[0]
  num_classes = sampler.num_classes
  if isinstance(b, _gather.Rows):
    _gather.table_shape("b", b, 1)
  else:
    v.check_floating("b", b)
    v.check_same_shape("b", b, (num_classes,), "[num_classes], as w's columns")
  if x.shape[1] != num_features:
    raise ValueError(
        f"x must have {num_features} features to match w of shape"
        f" {_gather.table_shape('w', w, 2)}; got x of shape {x.shape}."
    )
  v.check_integer("labels", labels)
  v.check_same_shape("labels", labels, x.shape[:1], "[batch]")
  _sampler_base.check_num_samples(num_samples)
  v.check_reduction(reduction)
  v.check_ignore_index(ignore_index)
  v.check_labels_in_range("labels", labels, num_classes, ignore_index)
  v.check_finite("x", x)
  acc = _gather.accumulation(x, w, b)
  if weights is None:
    weights = jnp.ones(labels.shape, acc)
  else:
    weights = jnp.asarray(weights)
    v.check_floating("weights", weights)
    v.check_same_shape("weights", weights, labels.shape, "one per label")
    v.check_nonnegative("weights", weights)
    weights = weights.astype(acc)
  return x, w, b, labels, weights


def _as_table(w):
  return w if isinstance(w, _gather.Rows) else jnp.asarray(w)


def check_sampler(sampler, w=None):
  """Raises unless ``sampler`` is a Sampler (over ``w``'s ``K`` columns)."""
  if not isinstance(sampler, _samplers.Sampler):
    raise TypeError(
        "sampler must be a jaxsoftmax.samplers.Sampler (e.g."
        f" samplers.log_uniform(K)); got {type(sampler).__name__}."
    )
  if w is not None and sampler.num_classes != w.shape[1]:
    raise ValueError(
        f"sampler draws from {sampler.num_classes} classes but w has"
        f" {w.shape[1]} (shape {w.shape})."
    )


def _check_bool(name, value):
  if not isinstance(value, bool):
    raise TypeError(f"{name} must be a bool; got {value!r}.")


def _rows(labels, num_classes, ignore_index):
  """Row masks ``valid`` (not ignored) and ``in_range``; a gatherable label."""
  in_range = (labels >= 0) & (labels < num_classes)
  valid = jnp.ones(labels.shape, bool)
  if ignore_index is not None:
    valid = labels != ignore_index
  return valid, in_range, jnp.where(in_range, labels, 0)


def _nan_if_out_of_range(in_range, valid, dtype):
  """``[B]``: NaN for a kept row whose (traced) label is out of range, else 0.

  Added to the label's logit rather than substituted with ``where``, so the
  NaN reaches the gradient too (a ``where`` would send the row's cotangent
  to the constant branch and report a finite gradient).
  """
  return jnp.where(in_range | ~valid, 0, jnp.nan).astype(dtype)


def candidates(key, x, sampler, num_samples, shared, replace,
                max_draws=None):
  """Candidate ids, their log expected counts, and which slots hold a class.

  ``ids`` and ``log_count`` are ``[m]`` when shared, else ``[B, m]``. The
  expected number of times class k appears among the candidates is ``m q(k)``
  with replacement and the inclusion probability ``pi_k`` without.
  """
  x = jax.lax.stop_gradient(x)
  if shared and sampler.query_dependent:
    if not replace:
      raise ValueError(
          f"{type(sampler).__name__} is query-dependent: a candidate set"
          " shared by the batch is drawn from the mixture of the rows'"
          " proposals, which has no without-replacement inclusion"
          " probabilities; pass replace=True or shared=False."
      )
    k_rows, k_draw = jax.random.split(key)
    rows = jax.random.randint(k_rows, (num_samples,), 0, x.shape[0])
    ids = _sampler_base.draw_rows(sampler, k_draw, x[rows], 1)[:, 0]
    log_q = _mixture_log_prob(sampler, x, ids)
  else:
    ids, log_q = sampler.sample(
        key, None if shared else x, num_samples, replace=replace,
        max_draws=max_draws)
  log_q = jax.lax.stop_gradient(log_q)
  if replace:
    log_q = log_q + math.log(num_samples)
  return ids, log_q, log_q < jnp.inf


def _mixture_log_prob(sampler, x, ids):
  r"""``[n]`` :math:`\log \bar q(k)`, :math:`\bar q = \frac1B \sum_i
  q(\cdot \mid x_i)`, the proposal of a set shared by a batch of queries.

  Drawing a row uniformly and then a class from that row's proposal samples
  :math:`\bar q`; weighting every row's draws by :math:`1 / \bar q` (the
  balance heuristic of multiple importance sampling, Veach & Guibas 1995)
  keeps each row's estimate unbiased wherever :math:`\bar q > 0`. Costs
  O(B n) log-probabilities: one ``[B, n]`` table.
  """
  rows = jnp.broadcast_to(ids, x.shape[:1] + ids.shape)
  log_q = _sampler_base.log_prob_rows(sampler, x, rows)
  return jax.nn.logsumexp(log_q, axis=0) - math.log(x.shape[0])


def _candidate_logits(x, w, b, ids, acc):
  """``[B, m]`` logits of the candidates, gathering only their rows."""
  if ids.ndim == 1:
    return _gather.row_scores(x, w, b, ids, acc)
  return _gather.gathered_scores(x, w, b, ids, acc)


def _broadcast_rows(a, batch):
  """A shared ``[m]`` per-candidate array as ``[B, m]``."""
  return jnp.broadcast_to(a[None, :], (batch,) + a.shape) if a.ndim == 1 else a


def sampled_softmax_loss(
    key: jax.Array,
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike,
    labels: ArrayLike,
    *,
    sampler: _samplers.Sampler,
    num_samples: int,
    remove_accidental_hits: bool = True,
    shared: bool = True,
    replace: bool = True,
    max_draws: int | None = None,
    weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Sampled softmax cross-entropy with the log-q correction.

  For a row with features :math:`x`, label :math:`y`, logits :math:`s_k =
  x^\top w_k + b_k` and candidates :math:`k_1, \dots, k_m` from the sampler,

  .. math::
    \ell = -s_y + \log\Big(e^{s_y} + \sum_{j=1}^{m} [k_j \ne y]\,
      e^{s_{k_j} - \log c_{k_j}}\Big),

  the cross-entropy of label 0 over the ``[1 + m]`` logits :math:`(s_y,\;
  s_{k_j} - \log c_{k_j})`, where :math:`c_k` is the expected number of
  times :math:`k` appears among the candidates: :math:`c_k = m\, q(k)` when
  drawing with replacement, the inclusion probability :math:`\pi_k` without
  (see :meth:`jaxsoftmax.samplers.Sampler.sample`). The sum is then an
  unbiased estimate (Hansen-Hurwitz, resp. Horvitz-Thompson) of
  :math:`\sum_{k \ne y} e^{s_k}`, so the loss is a consistent estimate of the
  full cross-entropy: its bias and its gradient's bias vanish as :math:`m`
  grows, and a candidate set that holds every class with :math:`\pi = 1`
  gives the full loss exactly. The label is always in the denominator with
  probability 1, so its logit is *not* corrected; TensorFlow's
  ``sampled_softmax_loss`` also subtracts :math:`\log(m q(y))` from it, which
  overweights the label by :math:`1 / (m q(y))` and leaves a bias that does
  not vanish as :math:`m` grows. A candidate equal to the label (an
  accidental hit) is masked to :math:`-\infty` when
  ``remove_accidental_hits`` (the default), so the label is counted once.

  Cost: O(B m d) for the candidates' logits (O(m d) gather when
  ``shared``), O(B m) for the loss, no ``[B, K]`` array.

  The candidates are ``sampler.sample(key, None if shared else x,
  num_samples, replace=replace, max_draws=max_draws)`` for a static sampler
  (also in :func:`nce_loss` and :func:`negative_sampling_loss`), so a step
  can draw them first to gather their rows
  (:func:`jaxsoftmax.sparse.gather`).

  Args:
    key: a ``jax.random`` key for the candidates.
    x: ``[batch, num_features]`` features (the output layer's input).
    w: ``[num_features, num_classes]`` output weights, or a
      :class:`jaxsoftmax.sparse.Rows` view of the class-major ``[K, d]``
      table holding at least the labels' and candidates' rows (its gradient
      is then just those rows, see :mod:`jaxsoftmax.sparse`).
    b: ``[num_classes]`` output biases, or a view of them.
    labels: ``[batch]`` integer labels in ``[0, num_classes)``.
    sampler: a :class:`jaxsoftmax.samplers.Sampler` over ``num_classes``.
    num_samples: :math:`m`, a Python int >= 1 (at most the sampler's support
      size without replacement).
    remove_accidental_hits: mask candidates equal to the row's label.
    shared: one candidate set for the batch (default; drawn from the
      mixture of the rows' proposals for a query-dependent sampler, with
      ``replace=True`` only) or one per row.
    replace: i.i.d. candidates (default) or distinct ones.
    max_draws: the horizon of the without-replacement search, see
      :meth:`jaxsoftmax.samplers.Sampler.sample`; default ``32 (m + 1)``.
      A peaked proposal may need more to fill ``m`` distinct slots.
    weights: optional ``[batch]`` non-negative per-row weights.
    ignore_index: label value whose rows contribute nothing.
    reduction: ``"mean"`` (weighted, default), ``"sum"`` or ``"none"``.

  Returns:
    A scalar, or ``[batch]`` for ``reduction="none"``; float32 for
    half-precision inputs.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import samplers
    >>> from jaxsoftmax import sampled_softmax_loss
    >>> x, w, b = jnp.ones((2, 3)), jnp.zeros((3, 10)), jnp.zeros(10)
    >>> loss = sampled_softmax_loss(
    ...     jax.random.key(0), x, w, b, jnp.array([1, 7]),
    ...     sampler=samplers.uniform(10), num_samples=10, replace=False)
    >>> print(f"{float(loss):.4f}")  # every class drawn: the full log(10)
    2.3026

  References:
    Y. Bengio, J.-S. Senécal, "Adaptive importance sampling to accelerate
    training of a neural probabilistic language model", IEEE TNN 19(4)
    (2008); S. Jean, K. Cho, R. Memisevic, Y. Bengio, "On using very large
    target vocabulary for neural machine translation", ACL (2015);
    A. S. Rawat et al., "Sampled softmax with random Fourier features",
    NeurIPS (2019) (the uncorrected label logit); J. Chen et al., "Adaptive
    sampled softmax with inverted multi-index: methods, theory and
    applications", (2025).
  """
  v.check_prng_key("key", key)
  x, w, b, labels, weights = _check_inputs(
      x, w, b, labels, sampler, num_samples, weights, ignore_index, reduction)
  _check_bool("remove_accidental_hits", remove_accidental_hits)
  _check_bool("shared", shared)
  _check_bool("replace", replace)
  acc = _gather.accumulation(x, w, b)
  batch, num_classes = x.shape[0], sampler.num_classes
  valid, in_range, safe = _rows(labels, num_classes, ignore_index)
  ids, log_count, filled = candidates(
      key, x, sampler, num_samples, shared, replace, max_draws)
  keep = _broadcast_rows(filled, batch)
  if remove_accidental_hits:
    keep &= _broadcast_rows(ids, batch) != labels[:, None]
  s = _candidate_logits(x, w, b, ids, acc)
  corrected = s - _broadcast_rows(log_count, batch).astype(acc)
  logits = jnp.concatenate(
      [_gather.label_scores(x, w, b, safe, acc)[:, None],
       jnp.where(keep, corrected, -jnp.inf)], axis=1)
  # The label sits at column 0. Ignored rows use -1 (no clash with a caller's
  # ignore_index in [0, m]); an out-of-range label under jit points past the
  # last column, which cross_entropy turns into a NaN row.
  small = jnp.where(in_range, 0, num_samples + 1)
  small = jnp.where(valid, small, -1).astype(jnp.int32)
  return _losses.cross_entropy(
      logits, small, weights=weights,
      ignore_index=None if ignore_index is None else -1, reduction=reduction)


def _logistic_rows(true_logit, cand_logit, keep_true, keep, valid, weights,
                   reduction):
  """Per-row ``sum of BCE`` over [label (target 1), candidates (target 0)]."""
  batch = cand_logit.shape[0]
  z = jnp.concatenate([true_logit[:, None], cand_logit], axis=1)
  mask = jnp.concatenate([keep_true[:, None], keep], axis=1)
  targets = jnp.concatenate(
      [jnp.ones((batch, 1), z.dtype), jnp.zeros(cand_logit.shape, z.dtype)],
      axis=1)
  # Masked entries are fed a finite 0 so their zero cotangent cannot meet an
  # infinite logit (0 * inf) in the BCE backward rule.
  elems = _losses.binary_cross_entropy(
      jnp.where(mask, z, 0), targets, reduction="none")
  rows = jnp.sum(jnp.where(mask, elems, 0), axis=1)
  rows = jnp.where(valid, weights * rows, 0)
  denom = jnp.sum(jnp.where(valid, weights, 0))
  return _reduction.reduce(rows, denom, reduction)


def nce_loss(
    key: jax.Array,
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike,
    labels: ArrayLike,
    *,
    sampler: _samplers.Sampler,
    num_samples: int,
    remove_accidental_hits: bool = False,
    shared: bool = True,
    weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Noise-contrastive estimation: the label against :math:`m` noise draws.

  A logistic classifier tells the data class from :math:`m` i.i.d. noise
  classes :math:`k_j \sim q`, with the unnormalized model score as its
  log-odds, shifted by the log of the noise's expected count:

  .. math::
    \ell = -\log \sigma\big(s_y - \log(m\, q(y))\big)
      - \sum_{j=1}^{m} \log\Big(1 - \sigma\big(s_{k_j}
        - \log(m\, q(k_j))\big)\Big),

  with :math:`s_k = x^\top w_k + b_k`. As :math:`m` grows its minimizer
  approaches maximum likelihood with :math:`e^{s}` self-normalized
  (Gutmann & Hyvärinen 2010; Mnih & Teh 2012). The noise is drawn with
  replacement, as the derivation assumes. A label with :math:`q(y) = 0`
  cannot be noise, so its term is exactly 0. Accidental hits are kept by
  default (a noise draw equal to the label is still a noise draw).

  Args:
    key: a ``jax.random`` key for the noise.
    x: ``[batch, num_features]``.
    w: ``[num_features, num_classes]``, or a :class:`jaxsoftmax.sparse.Rows`
      view of the class-major table, as in :func:`sampled_softmax_loss`.
    b: ``[num_classes]``, or a view of it.
    labels: ``[batch]`` integer labels.
    sampler: the noise distribution :math:`q`, a static sampler when
      ``shared``.
    num_samples: :math:`m`, noise draws per row (or for the batch).
    remove_accidental_hits: drop noise draws equal to the row's label.
    shared: one noise set for the batch (default) or one per row.
    weights: optional ``[batch]`` non-negative per-row weights.
    ignore_index: label value whose rows contribute nothing.
    reduction: ``"mean"`` (weighted, default), ``"sum"`` or ``"none"``.

  Returns:
    A scalar, or ``[batch]`` for ``reduction="none"``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import samplers
    >>> from jaxsoftmax import nce_loss
    >>> x, w, b = jnp.ones((2, 3)), jnp.zeros((3, 10)), jnp.zeros(10)
    >>> loss = nce_loss(jax.random.key(0), x, w, b, jnp.array([1, 7]),
    ...                 sampler=samplers.uniform(10), num_samples=10)
    >>> print(f"{float(loss):.4f}")  # 11 log 2: every logit is 0
    7.6246

  References:
    M. Gutmann, A. Hyvärinen, "Noise-contrastive estimation: a new
    estimation principle for unnormalized statistical models", AISTATS
    (2010); A. Mnih, Y. W. Teh, "A fast and simple algorithm for training
    neural probabilistic language models", ICML (2012).
  """
  v.check_prng_key("key", key)
  x, w, b, labels, weights = _check_inputs(
      x, w, b, labels, sampler, num_samples, weights, ignore_index, reduction)
  _check_bool("remove_accidental_hits", remove_accidental_hits)
  _check_bool("shared", shared)
  acc = _gather.accumulation(x, w, b)
  batch, num_classes = x.shape[0], sampler.num_classes
  valid, in_range, safe = _rows(labels, num_classes, ignore_index)
  ids, log_count, keep = candidates(key, x, sampler, num_samples, shared,
                                     replace=True)
  keep = _broadcast_rows(keep, batch)
  if remove_accidental_hits:
    keep &= _broadcast_rows(ids, batch) != labels[:, None]
  if not shared:
    log_q_y = sampler.log_prob(jax.lax.stop_gradient(x), safe[:, None])[:, 0]
  elif sampler.query_dependent:
    log_q_y = _mixture_log_prob(sampler, jax.lax.stop_gradient(x), safe)
  else:
    log_q_y = sampler.log_prob(None, safe)
  log_count_y = jax.lax.stop_gradient(log_q_y) + math.log(num_samples)
  true_logit = (_gather.label_scores(x, w, b, safe, acc) - log_count_y.astype(acc)
                + _nan_if_out_of_range(in_range, valid, acc))
  cand = (_candidate_logits(x, w, b, ids, acc)
          - _broadcast_rows(log_count, batch).astype(acc))
  return _logistic_rows(true_logit, cand, log_count_y > -jnp.inf, keep, valid,
                        weights, reduction)


def negative_sampling_loss(
    key: jax.Array,
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike,
    labels: ArrayLike,
    *,
    sampler: _samplers.Sampler,
    num_samples: int,
    remove_accidental_hits: bool = False,
    shared: bool = True,
    replace: bool = True,
    max_draws: int | None = None,
    weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Negative sampling (word2vec): logistic loss on raw scores, no correction.

  .. math::
    \ell = -\log \sigma(s_y) - \sum_{j=1}^{m} \log \sigma(-s_{k_j}),
    \qquad k_j \sim q,

  with :math:`s_k = x^\top w_k + b_k`. Unlike :func:`nce_loss` the scores
  are not shifted by :math:`\log(m q)`, so the optimum is not the softmax
  model's: it learns :math:`s_k \approx \log(p(k \mid x) / (m\, q(k)))`, a
  fine embedding objective but not a likelihood (Mikolov et al. 2013 use
  :math:`q \propto \text{count}^{0.75}`, :func:`jaxsoftmax.samplers.unigram`).
  With ``replace=False`` the negatives are distinct; unfilled slots (see
  :meth:`jaxsoftmax.samplers.Sampler.sample`) are left out.

  Args:
    key: a ``jax.random`` key for the negatives.
    x: ``[batch, num_features]``.
    w: ``[num_features, num_classes]``, or a :class:`jaxsoftmax.sparse.Rows`
      view of the class-major table, as in :func:`sampled_softmax_loss`.
    b: ``[num_classes]``, or a view of it.
    labels: ``[batch]`` integer labels.
    sampler: the negatives' distribution.
    num_samples: :math:`m`, negatives per row (or for the batch).
    remove_accidental_hits: drop negatives equal to the row's label.
    shared: one negative set for the batch (default) or one per row.
    replace: i.i.d. negatives (default) or distinct ones.
    max_draws: the horizon of the without-replacement search, as in
      :func:`sampled_softmax_loss`.
    weights: optional ``[batch]`` non-negative per-row weights.
    ignore_index: label value whose rows contribute nothing.
    reduction: ``"mean"`` (weighted, default), ``"sum"`` or ``"none"``.

  Returns:
    A scalar, or ``[batch]`` for ``reduction="none"``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import samplers
    >>> from jaxsoftmax import negative_sampling_loss
    >>> x, w, b = jnp.ones((2, 3)), jnp.zeros((3, 10)), jnp.zeros(10)
    >>> loss = negative_sampling_loss(
    ...     jax.random.key(0), x, w, b, jnp.array([1, 7]),
    ...     sampler=samplers.unigram(jnp.ones(10)), num_samples=5)
    >>> print(f"{float(loss):.4f}")  # 6 log 2
    4.1589

  References:
    T. Mikolov, I. Sutskever, K. Chen, G. Corrado, J. Dean, "Distributed
    representations of words and phrases and their compositionality",
    NeurIPS (2013); O. Levy, Y. Goldberg, "Neural word embedding as implicit
    matrix factorization", NeurIPS (2014) (the optimum above).
  """
  v.check_prng_key("key", key)
  x, w, b, labels, weights = _check_inputs(
      x, w, b, labels, sampler, num_samples, weights, ignore_index, reduction)
  _check_bool("remove_accidental_hits", remove_accidental_hits)
  _check_bool("shared", shared)
  _check_bool("replace", replace)
  acc = _gather.accumulation(x, w, b)
  batch, num_classes = x.shape[0], sampler.num_classes
  valid, in_range, safe = _rows(labels, num_classes, ignore_index)
  ids, _, keep = candidates(key, x, sampler, num_samples, shared, replace,
                             max_draws)
  keep = _broadcast_rows(keep, batch)
  if remove_accidental_hits:
    keep &= _broadcast_rows(ids, batch) != labels[:, None]
  true_logit = (_gather.label_scores(x, w, b, safe, acc)
                + _nan_if_out_of_range(in_range, valid, acc))
  cand = _candidate_logits(x, w, b, ids, acc)
  return _logistic_rows(true_logit, cand, jnp.ones((batch,), bool), keep,
                        valid, weights, reduction)

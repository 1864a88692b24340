r"""The MIDX sampler: an inverted multi-index proposal close to the softmax.

Sampled softmax is unbiased only when its proposal :math:`q` is the model's
own softmax :math:`p(i \mid x) \propto e^{x^\top w_i + b_i}`. MIDX builds a
proposal that follows :math:`p` at a per-query cost set by the number of
codewords, not by :math:`K`.

**Index.** Split every class embedding :math:`w_i \in \mathbb R^d` (a column
of ``w``) into halves :math:`w_i = [w^1_i; w^2_i]` of :math:`\lceil d/2
\rceil` and :math:`\lfloor d/2 \rfloor` dimensions and quantize each half by
k-means (product quantization): codebooks :math:`C^1, C^2` of :math:`K_c`
codewords, codes :math:`(a_i, b_i)` and the residual :math:`r_i = w_i -
[C^1_{a_i}; C^2_{b_i}]`. The :math:`K_c^2` buckets :math:`(a, b)` hold the
classes with those codes, stored as a CSR list (``order``, ``offsets``).

**Proposal.** For a query :math:`x = [x^1; x^2]` the logit decomposes
exactly as :math:`s_i = x^{1\top} C^1_{a_i} + x^{2\top} C^2_{b_i} + (x^\top
r_i + b_i)`. The proposal keeps the codeword part and replaces the residual
part by a weight :math:`\rho_i`:

.. math::
  q(i \mid x) = \frac{e^{x^{1\top} C^1_{a_i} + x^{2\top} C^2_{b_i}}\,
    \rho_i}{\sum_{a, b} e^{x^{1\top} C^1_a + x^{2\top} C^2_b}\, N_{ab}},
  \qquad N_{ab} = \sum_{i \in (a, b)} \rho_i ,

drawn exactly in three stages: :math:`a` from :math:`P(a) \propto e^{x^{1
\top} C^1_a} \sum_b e^{x^{2\top} C^2_b} N_{ab}`, then :math:`b` given
:math:`a`, then a class of bucket :math:`(a, b)` with probability
:math:`\rho_i / N_{ab}`. The modes differ in :math:`\rho`:

- ``"uniform"``: :math:`\rho_i = 1` (MIDX-uniform); the last stage is a
  uniform slot of the bucket, O(1).
- ``"pop"``: :math:`\rho_i = c_i^{\alpha}` from class counts (MIDX-pop); the
  last stage is a binary search in the bucket's cumulative weights,
  O(log n_bucket).
- ``"exact"``: :math:`\rho_i = e^{x^\top r_i + b_i}`, query-dependent, so
  :math:`q = p` exactly and sampled softmax is unbiased. The bucket masses
  need every residual score, O(K d) per query like the full softmax: the
  reference that proves the staged sampler and its :math:`\log q` right,
  and the limit the cheap modes approximate.

Per query the codeword stages cost :math:`O(K_c d + K_c^2)`, plus
:math:`O(\log K_c)` per draw for the bucket and O(1) (uniform) or
:math:`O(\log K)` (pop, exact) for the class. ``log_prob`` returns the exact normalized
:math:`\log q`, so the log-q correction of the sampled losses is right.

References:
  "Adaptive sampled softmax with inverted multi-index: methods, theory and
  applications", arXiv preprint (January 2025); H. Jegou, M. Douze, C. Schmid, "Product
  quantization for nearest neighbor search", IEEE TPAMI 33(1) (2011);
  A. Babenko, V. Lempitsky, "The inverted multi-index", CVPR (2012);
  D. Arthur, S. Vassilvitskii, "k-means++: the advantages of careful
  seeding", SODA (2007).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from jaxsoftmax._core import validation as v
from jaxsoftmax.samplers import _base
from jaxsoftmax.samplers._base import _INDEX
from jaxsoftmax.samplers._kmeans import kmeans


MODES = ("uniform", "pop", "exact")


def _segmented_cumsum(values, starts):
  """Cumulative sums that restart where ``starts`` is True.

  A global cumsum followed by differences would lose the small buckets to
  the rounding of a running total of up to K.
  """
  def combine(left, right):
    v_l, s_l = left
    v_r, s_r = right
    return jnp.where(s_r, v_r, v_l + v_r), s_l | s_r

  return jax.lax.associative_scan(combine, (values, starts))[0]


def _bucket_tables(log_weight, bucket, starts, num_buckets):
  r"""Bucket log-masses and within-bucket CDFs of per-class log-weights.

  Args:
    log_weight: ``[K]`` :math:`\log \rho` in CSR order (-inf allowed).
    bucket: ``[K]`` bucket of each CSR slot (non-decreasing).
    starts: ``[K]`` whether a slot is the first of its bucket.
    num_buckets: :math:`K_c^2`.

  Returns:
    ``(log_mass [num_buckets], cdf [K])``: :math:`\log N_{ab}` (-inf for an
    empty or all-zero bucket) and, per slot, the share of its bucket's mass
    up to and including it (exactly 1 at a bucket's last slot).
  """
  top = jax.ops.segment_max(log_weight, bucket, num_buckets)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  rel = jnp.exp(log_weight - top[bucket])
  total = jax.ops.segment_sum(rel, bucket, num_buckets)
  log_mass = jnp.log(total) + top
  cdf = _segmented_cumsum(rel, starts) / jnp.where(
      total[bucket] > 0, total[bucket], 1.0)
  last = jnp.append(starts[1:], True)
  return log_mass, jnp.where(last, 1.0, cdf).astype(log_weight.dtype)


def _starts(sorted_bucket):
  """``[K]`` whether each CSR slot is the first of its bucket."""
  return jnp.append(True, sorted_bucket[1:] != sorted_bucket[:-1])


def _search(cdf, lo, count, u, steps):
  """First slot of ``[lo, lo + count)`` whose CDF exceeds ``u``."""
  hi = lo + count - 1

  def body(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    right = cdf[mid] <= u
    return jnp.where(right, mid + 1, lo), jnp.where(right, hi, mid)

  return jax.lax.fori_loop(0, steps, body, (lo, hi))[0]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["codebook1", "codebook2", "codes1", "codes2", "order",
                 "offsets", "log_rho", "log_mass", "cdf", "w", "b"],
    meta_fields=["num_classes", "num_codewords", "mode", "split",
                 "kmeans_iters", "nonzero", "with_bias"],
)
@dataclasses.dataclass(frozen=True)
class MidxSampler(_base.Sampler):
  r"""The MIDX proposal over ``num_classes`` classes; see :func:`midx`.

  A pytree: the index arrays are leaves, so the sampler passes through
  ``jit`` and ``vmap`` and :meth:`refresh` can run inside a jitted step.

  Attributes:
    codebook1: ``[K_c, split]`` codewords of the first half.
    codebook2: ``[K_c, d - split]`` codewords of the second half.
    codes1: ``[K]`` int32 code :math:`a_i` of each class.
    codes2: ``[K]`` int32 code :math:`b_i`.
    order: ``[K]`` int32 class ids in bucket order (the CSR list).
    offsets: ``[K_c^2 + 1]`` int32, bucket :math:`(a, b)` holds
      ``order[offsets[a K_c + b]:offsets[a K_c + b + 1]]``.
    log_rho: ``[K]`` :math:`\log \rho_i` of the static modes (0 for
      ``"uniform"``, :math:`\alpha \log c_i` for ``"pop"``, unused by
      ``"exact"``).
    log_mass: ``[K_c^2]`` :math:`\log N_{ab}` of the static modes.
    cdf: ``[K]`` within-bucket cumulative weights in CSR order
      (``"pop"``), else None.
    w: ``[d, K]`` the embeddings (``"exact"``, which scores residuals),
      else None.
    b: ``[K]`` the biases (``"exact"``), else None.
    num_classes: :math:`K`.
    num_codewords: :math:`K_c`.
    mode: ``"uniform"``, ``"pop"`` or ``"exact"``.
    split: dimensions of the first half, :math:`\lceil d/2 \rceil`.
    kmeans_iters: Lloyd iterations per (re)build.
    nonzero: classes with :math:`q > 0`.
    with_bias: whether the index quantizes :math:`[w_i; b_i]` (built with
      ``b``), scoring queries as :math:`[x; 1]`.
  """

  codebook1: jax.Array
  codebook2: jax.Array
  codes1: jax.Array
  codes2: jax.Array
  order: jax.Array
  offsets: jax.Array
  log_rho: jax.Array
  log_mass: jax.Array
  cdf: jax.Array | None
  w: jax.Array | None
  b: jax.Array | None
  num_classes: int
  num_codewords: int
  mode: str
  split: int
  kmeans_iters: int
  nonzero: int
  with_bias: bool

  query_dependent = True

  @property
  def support_size(self) -> int:
    return self.nonzero

  @property
  def num_features(self) -> int:
    """:math:`d`, the query and embedding dimension."""
    return self.codebook1.shape[1] + self.codebook2.shape[1] - self.with_bias

  def sample(self, key, queries, num_samples, *, replace=True,
             max_draws=None):
    self._check_query_dim(queries)
    return super().sample(key, queries, num_samples, replace=replace,
                          max_draws=max_draws)

  sample.__doc__ = _base.Sampler.sample.__doc__

  def log_prob(self, queries, ids):
    self._check_query_dim(queries)
    return super().log_prob(queries, ids)

  log_prob.__doc__ = _base.Sampler.log_prob.__doc__

  def _check_query_dim(self, queries):
    if queries is not None and jnp.shape(queries)[-1:] != (self.num_features,):
      raise ValueError(
          f"queries must have shape [..., {self.num_features}] (the"
          f" embedding dimension d of the index); got {jnp.shape(queries)}."
      )

  def refresh(self, w: ArrayLike, b: ArrayLike | None = None) -> MidxSampler:
    r"""The index rebuilt for new embeddings, warm-started from this one.

    Runs ``kmeans_iters`` Lloyd iterations from the current codebooks
    (k-means++ is only for the first build), then rebuilds the codes, the
    buckets and their masses. Pure and jit-safe: a trainer calls it every
    N steps inside its jitted step or between steps.

    Args:
      w: ``[d, K]`` the current class embeddings.
      b: ``[K]`` the current biases; required exactly when the index was
        built with ``b``.

    Returns:
      A new :class:`MidxSampler`; ``self`` is unchanged.
    """
    w = jnp.asarray(w)
    if w.shape != (self.num_features, self.num_classes):
      raise ValueError(
          f"w must have shape {(self.num_features, self.num_classes)} (the"
          f" index's [d, K]); got {w.shape}."
      )
    v.check_floating("w", w)
    b = _check_bias(b, self.num_classes)
    if (b is not None) != self.with_bias:
      raise ValueError(
          "b must be given exactly when the index was built with b (it"
          f" quantizes [w; b]); built with_bias={self.with_bias}, got"
          f" b={'None' if b is None else 'an array'}."
      )
    return _build(w, b, self.log_rho, None,
                  (self.codebook1, self.codebook2), self.num_codewords,
                  self.mode, self.kmeans_iters, self.nonzero)

  # ----- the two per-query hooks of Sampler -----

  def _codeword_scores(self, query):
    r"""``[K_c]`` and ``[K_c]``: :math:`x^{1\top} C^1_a`, :math:`x^{2\top} C^2_b`."""
    query = query.astype(self.codebook1.dtype)
    if self.with_bias:
      query = jnp.append(query, jnp.ones((1,), query.dtype))
    return (self.codebook1 @ query[:self.split],
            self.codebook2 @ query[self.split:])

  def _logits(self, query):
    """``[K]`` the model's logits :math:`x^\top w_i + b_i` (``"exact"``)."""
    return query.astype(self.w.dtype) @ self.w + self.b

  def _query_tables(self, query, s1, s2):
    r"""Bucket log-masses and within-bucket CDF for ``query``.

    ``s1``, ``s2`` are the query's codeword scores. Static modes return
    their stored tables; ``"exact"`` weighs each class
    by :math:`\rho_i = e^{x^\top r_i + b_i}`, computed over every class.
    """
    if self.mode != "exact":
      return self.log_mass, self.cdf
    residual = self._logits(query) - s1[self.codes1] - s2[self.codes2]
    bucket = self.codes1 * self.num_codewords + self.codes2
    sorted_bucket = bucket[self.order]
    return _bucket_tables(residual[self.order], sorted_bucket,
                          _starts(sorted_bucket), self.num_codewords ** 2)

  def _draw(self, key, query, n):
    s1, s2 = self._codeword_scores(query)
    log_mass, cdf = self._query_tables(query, s1, s2)
    joint = (s1[:, None] + s2[None, :]).reshape(-1) + log_mass
    # Stages one and two (a, then b given a) are drawn together by one
    # inverse-CDF search over the K_c^2 bucket masses: the same
    # distribution at O(log K_c) per draw, with no Gumbel noise per codeword.
    mass = jnp.exp(joint - jnp.max(joint))
    bucket_cdf = jnp.cumsum(mass)
    u = jax.random.uniform(key, (2, n), bucket_cdf.dtype)
    bucket = jnp.searchsorted(bucket_cdf, u[0] * bucket_cdf[-1], side="right")
    # Rounding may put u * total at the very top; the last bucket with mass
    # is the one the search would have found.
    last = mass.shape[0] - 1 - jnp.argmax(mass[::-1] > 0)
    bucket = jnp.minimum(bucket, last).astype(_INDEX)
    lo = self.offsets[bucket]
    count = self.offsets[bucket + 1] - lo
    if self.mode == "uniform":
      slot = lo + jnp.minimum((u[1] * count).astype(_INDEX), count - 1)
    else:
      steps = max(1, math.ceil(math.log2(self.num_classes + 1)))
      slot = _search(cdf, lo, count, u[1].astype(cdf.dtype), steps)
    return self.order[slot]

  def _log_prob(self, query, ids):
    in_range = (ids >= 0) & (ids < self.num_classes)
    safe = jnp.where(in_range, ids, 0)
    if self.mode == "exact":
      logits = self._logits(query)
      log_q = logits[safe] - jax.nn.logsumexp(logits)
    else:
      kc = self.num_codewords
      s1, s2 = self._codeword_scores(query)
      joint = s1[:, None] + s2[None, :] + self.log_mass.reshape(kc, kc)
      log_q = (s1[self.codes1[safe]] + s2[self.codes2[safe]]
               + self.log_rho[safe] - jax.nn.logsumexp(joint))
    return jnp.where(in_range, log_q, jnp.nan)


def _check_bias(b, num_classes):
  if b is None:
    return None
  b = jnp.asarray(b)
  v.check_floating("b", b)
  if b.shape != (num_classes,):
    raise ValueError(
        f"b must have shape ({num_classes},) (one bias per class of w); got"
        f" {b.shape}."
    )
  return b


def _build(w, b, log_rho, key, init, num_codewords, mode, kmeans_iters,
           nonzero):
  """The index of :func:`midx` / :meth:`MidxSampler.refresh`.

  Not jitted as a whole: its two jitted parts compile once per shape and
  are shared by every mode.
  """
  num_classes = w.shape[1]
  # With biases the logit is [x; 1] . [w_i; b_i]: quantizing the augmented
  # embedding lets the codeword stages see the bias too.
  emb = (w if b is None else jnp.concatenate([w, b[None, :].astype(w.dtype)])).T
  split = (emb.shape[1] + 1) // 2
  halves = (emb[:, :split], emb[:, split:])
  fits = [
      kmeans(None if key is None else jax.random.fold_in(key, j), half,
             num_codewords, iterations=kmeans_iters,
             init=None if init is None else init[j])
      for j, half in enumerate(halves)
  ]
  codes1, codes2 = fits[0].assignment, fits[1].assignment
  order, offsets, log_mass, cdf = _index(codes1, codes2, log_rho,
                                         num_codewords)
  exact = mode == "exact"
  return MidxSampler(
      codebook1=fits[0].centroids, codebook2=fits[1].centroids,
      codes1=codes1, codes2=codes2, order=order, offsets=offsets,
      log_rho=log_rho, log_mass=log_mass,
      cdf=cdf if mode == "pop" else None,
      w=w if exact else None,
      b=(jnp.zeros((num_classes,), w.dtype) if b is None else
         b.astype(w.dtype)) if exact else None,
      num_classes=num_classes, num_codewords=num_codewords, mode=mode,
      split=split, kmeans_iters=kmeans_iters, nonzero=nonzero,
      with_bias=b is not None,
  )


@functools.partial(jax.jit, static_argnames="num_codewords")
def _index(codes1, codes2, log_rho, num_codewords):
  """CSR list, bucket offsets, log-masses and CDFs of the given codes."""
  bucket = codes1 * num_codewords + codes2
  # Zero-weight classes first within a bucket, so a draw that lands on the
  # rounded top of the CDF still picks a class with weight > 0.
  order = jnp.lexsort((jnp.isfinite(log_rho), bucket)).astype(_INDEX)
  sorted_bucket = bucket[order]
  counts = jnp.bincount(bucket, length=num_codewords ** 2)
  offsets = jnp.append(0, jnp.cumsum(counts)).astype(_INDEX)
  log_mass, cdf = _bucket_tables(log_rho[order], sorted_bucket,
                                 _starts(sorted_bucket), num_codewords ** 2)
  return order, offsets, log_mass, cdf


def midx(
    w: ArrayLike,
    *,
    num_codewords: int = 32,
    mode: str = "uniform",
    counts: ArrayLike | None = None,
    power: float = 0.75,
    b: ArrayLike | None = None,
    key: jax.Array,
    kmeans_iters: int = 10,
) -> MidxSampler:
  r"""Builds the MIDX sampler for class embeddings ``w``.

  Product-quantizes the columns of ``w`` with :math:`K_c` codewords per
  half (jitted k-means, k-means++ seeding, empty clusters re-seeded) and
  builds the inverted multi-index of the :math:`K_c^2` buckets; see the
  module docstring for the proposal of each ``mode``. Build cost O(K K_c d)
  per k-means iteration.

  Args:
    w: ``[d, K]`` class embeddings (the output layer's weights), ``d >= 2``
      (an odd ``d`` splits into halves of :math:`\lceil d/2 \rceil` and
      :math:`\lfloor d/2 \rfloor`).
    num_codewords: :math:`K_c`, codewords per half, in ``[1, K]``.
    mode: ``"uniform"`` (MIDX-uniform), ``"pop"`` (MIDX-pop, needs
      ``counts``) or ``"exact"`` (the proposal equals the softmax of
      :math:`x^\top w + b`; O(K d) per query).
    counts: ``[K]`` non-negative class counts, ``"pop"`` only; classes with
      count 0 are never drawn.
    power: :math:`\alpha \ge 0` in :math:`\rho_i = c_i^{\alpha}` (``"pop"``).
    b: ``[K]`` biases, or None (zeros). Given, every mode proposes for the
      logits :math:`x^\top w_i + b_i`: the index quantizes the augmented
      :math:`[w_i; b_i]` and scores queries as :math:`[x; 1]` (a bias that
      learns log-frequencies is then seen by the codeword stages).
    key: a ``jax.random`` key for the k-means++ seeding.
    kmeans_iters: Lloyd iterations, ``>= 1``.

  Returns:
    A :class:`MidxSampler`.

  Raises:
    TypeError: non-floating ``w`` or ``b``, traced or non-numeric
      ``counts``.
    ValueError: bad shapes, ``d < 2``, ``num_codewords`` outside ``[1,
      K]``, an unknown ``mode``, ``counts`` missing for ``"pop"`` or given
      for another mode, negative or non-finite counts, a negative power.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import samplers
    >>> w = jax.random.normal(jax.random.key(0), (8, 100))
    >>> s = samplers.midx(w, num_codewords=4, key=jax.random.key(1))
    >>> q = jax.random.normal(jax.random.key(2), (3, 8))
    >>> ids, log_q = s.sample(jax.random.key(3), q, 5)
    >>> ids.shape
    (3, 5)
    >>> total = jnp.exp(s.log_prob(q, jnp.tile(jnp.arange(100), (3, 1))))
    >>> bool(jnp.allclose(total.sum(axis=1), 1.0, atol=1e-5))
    True

  References:
    "Adaptive sampled softmax with inverted multi-index: methods, theory
    and applications", arXiv preprint (January 2025).
  """
  w = jnp.asarray(w)
  v.check_floating("w", w)
  v.check_rank("w", w, 2, "[num_features, num_classes]")
  d, num_classes = w.shape
  if d < 2:
    raise ValueError(
        f"w must have at least 2 features to split into two halves; got"
        f" shape {w.shape}."
    )
  if num_classes < 1:
    raise ValueError(f"w must have at least one class; got shape {w.shape}.")
  v.check_finite("w", w)
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
  if (not isinstance(num_codewords, (int, np.integer))
      or isinstance(num_codewords, bool)
      or not 1 <= num_codewords <= num_classes):
    raise ValueError(
        f"num_codewords must be an int in [1, num_classes={num_classes}];"
        f" got {num_codewords!r}."
    )
  v.check_positive_int("kmeans_iters", kmeans_iters)
  v.check_prng_key("key", key)
  b = _check_bias(b, num_classes)
  if mode == "pop":
    if counts is None:
      raise ValueError("mode='pop' weights classes by popularity: pass"
                       " counts of shape [num_classes].")
    log_rho = _base.count_log_weights(counts, power, num_classes)
    nonzero = int(np.isfinite(log_rho).sum())
  else:
    if counts is not None:
      raise ValueError(
          f"counts are only used by mode='pop'; got counts with"
          f" mode={mode!r}."
      )
    log_rho = np.zeros(num_classes)
    nonzero = num_classes
    if mode == "exact" and b is not None and v.is_concrete(b):
      nonzero = int(v.on_host(lambda xp, a: xp.sum(a > -xp.inf), b))
  return _build(w, b, jnp.asarray(log_rho, w.dtype), key, None,
                int(num_codewords), mode, int(kmeans_iters), nonzero)

"""The sampler diagnostics that :mod:`jaxsoftmax.diagnostics` re-exports and
documents: proposal divergences, importance-sampling ESS and the bias of the
sampled-softmax gradient.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsoftmax.losses import _fused
from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax.losses import _sampled
from jaxsoftmax._core import validation as v
from jaxsoftmax import samplers as _samplers



class Divergence(NamedTuple):
  r"""Per-query KL divergences between a proposal and the softmax.

  See :func:`proposal_divergence`.

  Attributes:
    kl_qp: ``[num_queries]`` :math:`\mathrm{KL}(q \,\|\, p)`.
    kl_pq: ``[num_queries]`` :math:`\mathrm{KL}(p \,\|\, q)` (``+inf`` where
      :math:`q` misses a class that :math:`p` gives mass).
  """

  kl_qp: jax.Array
  kl_pq: jax.Array

  @property
  def mean_kl_qp(self) -> jax.Array:
    """:math:`\\mathrm{KL}(q \\| p)` averaged over the queries, a scalar."""
    return jnp.mean(self.kl_qp)

  @property
  def mean_kl_pq(self) -> jax.Array:
    """:math:`\\mathrm{KL}(p \\| q)` averaged over the queries, a scalar."""
    return jnp.mean(self.kl_pq)


class GradientBias(NamedTuple):
  r"""How the sampled-softmax gradient compares with the exact one.

  Norms are over the gradients of ``w`` and ``b`` flattened together; see
  :func:`gradient_bias` for the formulas.

  Attributes:
    relative_bias: :math:`\|\bar g - g\| / \|g\|`, a scalar.
    relative_variance: :math:`\frac{1}{R - 1} \sum_r \|g_r - \bar g\|^2 /
      \|g\|^2`, a scalar.
    bias_noise_floor: :math:`\sqrt{\text{relative\_variance} / R}`, the
      Monte Carlo error of ``relative_bias`` itself, a scalar.
    cosine: :math:`\langle \bar g, g \rangle / (\|\bar g\| \|g\|)`, a scalar.
  """

  relative_bias: jax.Array
  relative_variance: jax.Array
  bias_noise_floor: jax.Array
  cosine: jax.Array


def _check_model(name: str, layout: str, x, w, b, sampler):
  """Validates ``x`` (``[rows, d]``), ``w``, ``b`` and the sampler's size."""
  x, w, b = jnp.asarray(x), jnp.asarray(w), jnp.asarray(b)
  v.check_floating(name, x)
  v.check_rank(name, x, 2, layout)
  v.check_floating("w", w)
  v.check_rank("w", w, 2, "[num_features, num_classes]")
  v.check_floating("b", b)
  v.check_same_shape("b", b, w.shape[1:], "[num_classes], as w's columns")
  if x.shape[1] != w.shape[0]:
    raise ValueError(
        f"{name} must have {w.shape[0]} features to match w of shape"
        f" {w.shape}; got {name} of shape {x.shape}."
    )
  _sampled.check_sampler(sampler, w)
  return x, w, b


def _log_q_row(sampler, query, static_log_q):
  """``[K]`` :math:`\\log q(\\cdot \\mid \\text{query})`, one query."""
  if static_log_q is not None:
    return static_log_q
  k = sampler.num_classes
  return sampler.log_prob(query[None, :], jnp.arange(k)[None, :])[0]


def _row_stats(log_p: jax.Array, log_q: jax.Array):
  """``(kl_qp, kl_pq, ess)`` scalars from normalized ``[K]`` log-probs."""
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  p_zero, q_zero = jnp.isneginf(log_p), jnp.isneginf(log_q)
  # The where-chains give 0 log 0 = 0 and q log(q / 0) = +inf exactly, where
  # the products alone would give NaN (0 * inf) or miss an underflowed p.
  kl_qp = jnp.sum(jnp.where(
      q_zero, 0, jnp.where(p_zero, jnp.inf, q * (log_q - log_p))))
  kl_pq = jnp.sum(jnp.where(
      p_zero, 0, jnp.where(q_zero, jnp.inf, p * (log_p - log_q))))
  # sum p^2 / q in log space: p^2 / q spans far more than the float range.
  chi = _numerics.logsumexp(jnp.where(p_zero, -jnp.inf, 2 * log_p - log_q))
  # Each is >= 0 (resp. <= 1) in exact arithmetic; rounding can cross the
  # bound by an ulp when q == p.
  return jnp.maximum(kl_qp, 0), jnp.maximum(kl_pq, 0), jnp.minimum(
      jnp.exp(-chi), 1)


@functools.partial(jax.jit, static_argnames=("block_size",))
def _proposal_stats(sampler, queries, w, b, *, block_size):
  """``(kl_qp, kl_pq, ess)``, each ``[N]``, ``block_size`` rows at a time."""
  acc = _numerics.accumulation_dtype(jnp.result_type(queries, w, b))
  # A static proposal is the same [K] row for every query: look it up once.
  static_log_q = None
  if not sampler.query_dependent:
    static_log_q = sampler.log_prob(None, jnp.arange(sampler.num_classes))

  def one(query):
    s = jnp.matmul(query, w, preferred_element_type=acc) + b.astype(acc)
    log_q = _log_q_row(sampler, query, static_log_q)
    dtype = jnp.promote_types(acc, log_q.dtype)
    s = s.astype(dtype)
    log_q = log_q.astype(dtype)
    return _row_stats(s - _numerics.logsumexp(s),
                      log_q - _numerics.logsumexp(log_q))

  # lax.map vmaps `one` over block_size queries at a time (and the remainder
  # once): one [block_size, K] GEMM per block, never [N, K].
  return jax.lax.map(one, queries, batch_size=block_size)


def proposal_divergence(
    sampler: _samplers.Sampler,
    queries: ArrayLike,
    w: ArrayLike,
    b: ArrayLike,
    *,
    block_size: int = 256,
) -> Divergence:
  r"""Both Kullback-Leibler divergences between a proposal and the softmax.

  For each query :math:`x` with logits :math:`s = x^\top w + b`, softmax
  :math:`p = \operatorname{softmax}(s)` and proposal :math:`q = q(\cdot \mid
  x)`,

  .. math::
    \mathrm{KL}(q \,\|\, p) = \sum_k q_k \log \frac{q_k}{p_k}, \qquad
    \mathrm{KL}(p \,\|\, q) = \sum_k p_k \log \frac{p_k}{q_k},

  with :math:`0 \log 0 = 0`. :math:`\mathrm{KL}(p \,\|\, q)` is the one that
  matters for importance sampling: it is small only when :math:`q` covers
  the mass of :math:`p`, and it is ``+inf`` whenever :math:`q_k = 0` for a
  class with :math:`p_k > 0`. That is the right answer, not an overflow: such
  a class is never drawn, so no finite number of draws estimates the
  normalizer without bias (every class has :math:`p_k > 0` for finite
  logits). :math:`\mathrm{KL}(q \,\|\, p)` stays finite then; it grows when
  :math:`q` wastes draws on classes :math:`p` deems unlikely. Both are
  :math:`\ge 0`, and 0 exactly when :math:`q = p`.

  Cost: O(N K d) work for the logits, O(``block_size`` K) memory. A static
  sampler's :math:`\log q` is looked up once; a query-dependent one is asked
  for all :math:`K` classes of each query.

  Args:
    sampler: a :class:`jaxsoftmax.samplers.Sampler` over ``num_classes``.
    queries: ``[num_queries, num_features]`` floating features (the output
      layer's input).
    w: ``[num_features, num_classes]`` output weights.
    b: ``[num_classes]`` output biases.
    block_size: queries processed at a time, a positive int; the results do
      not depend on it.

  Returns:
    A :class:`Divergence` of two ``[num_queries]`` arrays (``mean_kl_qp`` and
    ``mean_kl_pq`` average them), in the promotion of the logits' and
    :math:`\log q`'s dtypes (float32 for half-precision inputs).

  Raises:
    TypeError: non-floating arrays, a ``sampler`` that is not a Sampler, or
      a non-int ``block_size``.
    ValueError: inconsistent shapes, a sampler over a different number of
      classes, or ``block_size < 1``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import diagnostics, samplers
    >>> q = samplers.unigram(jnp.array([1.0, 1.0, 1.0, 0.0]), power=1.0)
    >>> div = diagnostics.proposal_divergence(
    ...     q, jnp.ones((2, 3)), jnp.zeros((3, 4)), jnp.zeros(4))
    >>> print(div.kl_qp.shape, f"{float(div.mean_kl_qp):.4f}")  # log(4/3)
    (2,) 0.2877
    >>> print(div.kl_pq)  # p is uniform, q misses class 3
    [inf inf]

  References:
    S. Kullback, R. A. Leibler, "On information and sufficiency", Ann. Math.
    Statist. 22(1) (1951); Y. Bengio, J.-S. Senécal (2008), see the module.
  """
  queries, w, b = _check_model(
      "queries", "[num_queries, num_features]", queries, w, b, sampler)
  v.check_positive_int("block_size", block_size)
  kl_qp, kl_pq, _ = _proposal_stats(
      sampler, queries, w, b, block_size=int(block_size))
  return Divergence(kl_qp=kl_qp, kl_pq=kl_pq)


def importance_ess(
    sampler: _samplers.Sampler,
    queries: ArrayLike,
    w: ArrayLike,
    b: ArrayLike,
    *,
    block_size: int = 256,
) -> jax.Array:
  r"""Effective-sample-size fraction of importance sampling from the proposal.

  Drawing :math:`k_1, \dots, k_m \sim q` to estimate expectations under the
  softmax :math:`p` with self-normalized weights :math:`p_{k_j} / q_{k_j}`
  is, to first order, as accurate as :math:`m \cdot \mathrm{ESS}` draws from
  :math:`p` itself (Kong 1992), where

  .. math::
    \mathrm{ESS} = \frac{1}{\sum_k p_k^2 / q_k}
      = \frac{1}{1 + \chi^2(p \,\|\, q)}
      = \frac{\big(\mathbb{E}_q[p/q]\big)^2}{\mathbb{E}_q[(p/q)^2]},

  computed exactly over the :math:`K` classes (not from draws). It lies in
  :math:`(0, 1]`, equals 1 only when :math:`q = p`, and is 0 when :math:`q`
  misses a class with :math:`p_k > 0` (:math:`\chi^2 = \infty`). So with
  :math:`m` draws the effective sample size is about :math:`m` times this
  value; ``1 / ess`` is how many more draws the proposal needs than
  sampling from :math:`p` would.

  Cost and memory as :func:`proposal_divergence`.

  Args:
    sampler: a :class:`jaxsoftmax.samplers.Sampler` over ``num_classes``.
    queries: ``[num_queries, num_features]`` floating features.
    w: ``[num_features, num_classes]`` output weights.
    b: ``[num_classes]`` output biases.
    block_size: queries processed at a time, a positive int.

  Returns:
    ``[num_queries]`` fractions in :math:`[0, 1]`, in the dtype of
    :func:`proposal_divergence`.

  Raises:
    TypeError, ValueError: as :func:`proposal_divergence`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import diagnostics, samplers
    >>> q = samplers.unigram(jnp.array([3.0, 1.0]), power=1.0)
    >>> ess = diagnostics.importance_ess(
    ...     q, jnp.ones((1, 2)), jnp.zeros((2, 2)), jnp.zeros(2))
    >>> print(f"{float(ess[0]):.4f}")  # 1 / (0.25 / 0.75 + 0.25 / 0.25)
    0.7500

  References:
    A. Kong (1992), see the module; A. B. Owen, "Monte Carlo theory, methods
    and examples", sec. 9.3 (2013).
  """
  queries, w, b = _check_model(
      "queries", "[num_queries, num_features]", queries, w, b, sampler)
  v.check_positive_int("block_size", block_size)
  return _proposal_stats(sampler, queries, w, b, block_size=int(block_size))[2]


def _flat(gw: jax.Array, gb: jax.Array, dtype) -> jax.Array:
  """The gradients of ``w`` and ``b`` as one vector."""
  return jnp.concatenate([gw.reshape(-1), gb.reshape(-1)]).astype(dtype)


@functools.partial(
    jax.jit,
    static_argnames=("num_samples", "num_repeats", "replace",
                     "remove_accidental_hits"),
)
def _gradient_stats(key, sampler, x, w, b, labels, *, num_samples,
                    num_repeats, replace, remove_accidental_hits):
  acc = _numerics.accumulation_dtype(jnp.result_type(x, w, b))
  exact = _flat(*jax.grad(
      lambda w_, b_: _fused.fused_linear_cross_entropy(x, w_, b_, labels),
      argnums=(0, 1))(w, b), acc)

  def sampled(k):
    def loss(w_, b_):
      return _sampled.sampled_softmax_loss(
          k, x, w_, b_, labels, sampler=sampler, num_samples=num_samples,
          remove_accidental_hits=remove_accidental_hits,
          shared=not sampler.query_dependent, replace=replace)
    return _flat(*jax.grad(loss, argnums=(0, 1))(w, b), acc)

  # Welford's running mean and sum of squared deviations: memory stays one
  # gradient whatever num_repeats, and the variance does not come from the
  # cancelling difference E|g|^2 - |E g|^2.
  def step(carry, inputs):
    mean, m2 = carry
    k, count = inputs
    g = sampled(k)
    delta = g - mean
    mean = mean + delta / count
    return (mean, m2 + jnp.vdot(delta, g - mean)), None

  counts = jnp.arange(1, num_repeats + 1, dtype=acc)
  init = (jnp.zeros_like(exact), jnp.zeros((), acc))
  (mean, m2), _ = jax.lax.scan(
      step, init, (jax.random.split(key, num_repeats), counts))
  norm2 = jnp.vdot(exact, exact)
  norm = jnp.sqrt(norm2)
  relative_variance = m2 / (num_repeats - 1) / norm2
  return GradientBias(
      relative_bias=jnp.linalg.norm(mean - exact) / norm,
      relative_variance=relative_variance,
      bias_noise_floor=jnp.sqrt(relative_variance / num_repeats),
      cosine=jnp.vdot(mean, exact) / (jnp.linalg.norm(mean) * norm),
  )


def _check_bool(name: str, value) -> None:
  if not isinstance(value, bool):
    raise TypeError(f"{name} must be a bool; got {value!r}.")


def gradient_bias(
    key: jax.Array,
    sampler: _samplers.Sampler,
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike,
    labels: ArrayLike,
    *,
    num_samples: int,
    num_repeats: int,
    replace: bool = True,
    remove_accidental_hits: bool = True,
) -> GradientBias:
  r"""Bias and variance of the sampled-softmax gradient, over repeated keys.

  Let :math:`g` be the exact gradient, with respect to ``(w, b)``, of the
  mean full cross-entropy of the logits :math:`x w + b`, and :math:`g_r`,
  :math:`r = 1, \dots, R`, the gradients of
  :func:`jaxsoftmax.sampled_softmax_loss` (with the same options) for
  :math:`R` independent keys split from ``key``, :math:`\bar g = \frac{1}{R}
  \sum_r g_r`. With norms over ``w`` and ``b`` flattened together,

  .. math::
    \text{relative\_bias} = \frac{\|\bar g - g\|}{\|g\|}, \qquad
    \text{relative\_variance} = \frac{1}{R - 1} \sum_r
      \frac{\|g_r - \bar g\|^2}{\|g\|^2},

  .. math::
    \text{bias\_noise\_floor} = \sqrt{\text{relative\_variance} / R},
    \qquad
    \text{cosine} = \frac{\langle \bar g, g \rangle}{\|\bar g\|\, \|g\|}.

  The sampled loss is a consistent but biased estimate (the log of an
  unbiased estimate of the normalizer), so its gradient's bias is
  :math:`O(1/m)` for :math:`m` = ``num_samples`` draws and shrinks as the
  proposal approaches :math:`p`. ``relative_bias`` is itself a Monte Carlo
  estimate: even for an unbiased gradient it is about
  ``bias_noise_floor`` (the standard error of :math:`\bar g`, relative to
  :math:`\|g\|`), so only a ``relative_bias`` several times the floor shows
  a real bias; raise ``num_repeats`` to resolve a smaller one.
  ``relative_variance`` is the per-step gradient noise an optimizer sees.

  A static sampler draws one candidate set shared by the batch; a
  query-dependent one draws one set per row (``shared=False``). The repeats
  run in a ``lax.scan`` with a running mean, so memory is a few gradients
  (O(dK)) whatever ``num_repeats``; the exact gradient uses
  :func:`jaxsoftmax.fused_linear_cross_entropy`, never a ``[batch, K]``
  array. All quantities are NaN when :math:`g = 0`.

  Args:
    key: a ``jax.random`` key.
    sampler: a :class:`jaxsoftmax.samplers.Sampler` over ``num_classes``.
    x: ``[batch, num_features]`` floating features.
    w: ``[num_features, num_classes]`` output weights.
    b: ``[num_classes]`` output biases.
    labels: ``[batch]`` integer labels in ``[0, num_classes)``.
    num_samples: :math:`m`, candidates per draw, a positive int (at most
      the sampler's support size when ``replace=False``).
    num_repeats: :math:`R \ge 2`, the number of keys.
    replace: i.i.d. candidates (default) or distinct ones.
    remove_accidental_hits: as in :func:`jaxsoftmax.sampled_softmax_loss`.

  Returns:
    A :class:`GradientBias` of scalars in the accumulation dtype of ``x``,
    ``w``, ``b``.

  Raises:
    TypeError: non-floating features or weights, non-integer labels, a bad
      key, ``sampler`` or option type.
    ValueError: inconsistent shapes, labels out of range (outside ``jit``),
      a sampler over a different number of classes, ``num_samples < 1`` or
      ``num_repeats < 2``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import diagnostics, samplers
    >>> x = jnp.sin(jnp.arange(12.0)).reshape(4, 3)
    >>> w = jnp.cos(jnp.arange(18.0)).reshape(3, 6)
    >>> r = diagnostics.gradient_bias(
    ...     jax.random.key(2), samplers.uniform(6), x, w, jnp.zeros(6),
    ...     jnp.array([0, 1, 2, 3]), num_samples=6, num_repeats=2,
    ...     replace=False)
    >>> bool(r.relative_bias < 1e-5), bool(r.cosine > 0.9999)  # all drawn
    (True, True)

  References:
    Y. Bengio, J.-S. Senécal (2008), see the module; A. S. Rawat, J. Chen,
    F. X. Yu, A. T. Suresh, S. Kumar, "Sampled softmax with random Fourier
    features", NeurIPS (2019) (the bias of the sampled gradient).
  """
  v.check_prng_key("key", key)
  x, w, b = _check_model("x", "[batch, num_features]", x, w, b, sampler)
  labels = jnp.asarray(labels)
  v.check_integer("labels", labels)
  v.check_same_shape("labels", labels, x.shape[:1], "[batch], one per row of x")
  v.check_labels_in_range("labels", labels, w.shape[1])
  v.check_positive_int("num_samples", num_samples)
  v.check_positive_int("num_repeats", num_repeats)
  if num_repeats < 2:
    raise ValueError(
        "num_repeats must be >= 2 (the variance and the bias's noise floor"
        f" need two draws at least); got {num_repeats}."
    )
  _check_bool("replace", replace)
  _check_bool("remove_accidental_hits", remove_accidental_hits)
  return _gradient_stats(
      key, sampler, x, w, b, labels, num_samples=int(num_samples),
      num_repeats=int(num_repeats), replace=replace,
      remove_accidental_hits=remove_accidental_hits)

"""The sampler interface, the batching and without-replacement machinery
every sampler inherits, and Walker's alias tables (see
:mod:`jaxsoftmax.samplers`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from jaxsoftmax._core import validation as v


# Inclusion probabilities and per-draw log-probabilities are float32 whatever
# the x64 setting: they are Monte Carlo weights, and float32 keeps the tables
# half the size.
_FLOAT = jnp.float32


_INDEX = jnp.int32


def _check_num_classes(num_classes) -> int:
  if not isinstance(num_classes, (int, np.integer)) or isinstance(
      num_classes, bool
  ):
    raise TypeError(
        f"num_classes must be a Python int; got {num_classes!r}."
    )
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
  return int(num_classes)


def _max_horizon(num_classes: int) -> int:
  """The largest ``max_draws``: :math:`1024 K \\max(1, \\lceil \\ln K \\rceil)`.

  Peaked query-dependent proposals need horizons far beyond the ~K ln K of
  a uniform one, so the bound is generous; it stops requests (10^9, 10^12)
  whose per-round keys would not fit in memory.
  """
  return 1024 * num_classes * max(1, math.ceil(math.log(num_classes)))


def check_num_samples(num_samples) -> int:
  if not isinstance(num_samples, (int, np.integer)) or isinstance(
      num_samples, bool
  ):
    raise TypeError(
        "num_samples must be a Python int (it sets the output shape); got"
        f" {num_samples!r}."
    )
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1; got {num_samples}.")
  return int(num_samples)


def _check_queries(queries) -> jax.Array:
  queries = jnp.asarray(queries)
  v.check_floating("queries", queries)
  v.check_min_rank("queries", queries, 1, "[..., num_features]")
  return queries


def _flatten_queries(queries: jax.Array) -> jax.Array:
  """``[..., d]`` as ``[N, d]`` (explicit sizes: ``d`` may be 0)."""
  return queries.reshape(math.prod(queries.shape[:-1]), queries.shape[-1])


def _log1mexp(x: jax.Array) -> jax.Array:
  """``log(1 - exp(-x))`` for ``x >= 0``, accurate at both ends."""
  # expm1 for small x, where 1 - exp(-x) cancels; log1p for large x, where
  # the result is a tiny negative number.
  small = x < math.log(2.0)
  return jnp.where(
      small,
      jnp.log(-jnp.expm1(-jnp.where(small, x, 1.0))),
      jnp.log1p(-jnp.exp(-jnp.where(small, 1.0, x))),
  )


class Sampler(abc.ABC):
  r"""A proposal distribution :math:`q(k \mid x)` over ``num_classes`` classes.

  Subclasses are frozen dataclasses registered as pytrees; they set the
  static fields ``num_classes`` and ``support_size`` (the number of classes
  with :math:`q > 0`, which bounds ``num_samples`` without replacement) and
  implement two per-query hooks:

  - ``_draw(key, query, n) -> [n]`` int32: ``n`` i.i.d. draws from
    :math:`q(\cdot \mid \text{query})`, each in O(1) or O(log K), never O(K);
  - ``_log_prob(query, ids) -> ids.shape`` float32: :math:`\log q`, NaN for
    ids outside ``[0, num_classes)``.

  ``query`` is one ``[d]`` vector, or ``None`` for a shared candidate set;
  a subclass whose distribution depends on the query sets
  ``query_dependent = True`` and may assume ``query`` is not ``None``.
  """

  num_classes: int
  query_dependent: ClassVar[bool] = False

  @property
  @abc.abstractmethod
  def support_size(self) -> int:
    """How many classes have positive probability."""

  @abc.abstractmethod
  def _draw(self, key: jax.Array, query: jax.Array | None, n: int) -> jax.Array:
    """``n`` i.i.d. class ids ``[n]`` for one query."""

  @abc.abstractmethod
  def _log_prob(self, query: jax.Array | None, ids: jax.Array) -> jax.Array:
    """Per-draw log-probabilities of ``ids`` for one query."""

  def sample(
      self,
      key: jax.Array,
      queries: ArrayLike | None,
      num_samples: int,
      *,
      replace: bool = True,
      max_draws: int | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    r"""Draws a candidate set per query (or one shared set) and its log weights.

    With ``replace=True`` the ids are ``num_samples`` i.i.d. draws and
    ``log_q`` is :math:`\log q(k)`, at O(1) per draw.

    With ``replace=False`` the ids are distinct. They are found by drawing
    i.i.d. classes at the arrival times of a rate-1 Poisson process, so class
    :math:`k` first arrives at an independent time :math:`A_k \sim
    \operatorname{Exp}(q_k)`, and keeping the first ``num_samples`` distinct
    arrivals: the same set distribution as Gumbel-top-k or NumPy's
    ``choice(replace=False, p=q)`` (successive sampling), without touching all
    K classes. ``log_q`` is the log of the conditional inclusion probability

    .. math::
      \pi_k = 1 - e^{-q_k \kappa}, \qquad
      \kappa = \min(A_{(m+1)}, H),

    where :math:`A_{(m+1)}` is the arrival time of the :math:`(m+1)`-th
    distinct class (:math:`+\infty` when :math:`m` equals the support size)
    and :math:`H` = ``max_draws`` is the time horizon. Given the other
    classes, :math:`k` is in the set exactly when :math:`A_k < \kappa`, so
    :math:`\sum_{k \in S} f(k) / \pi_k` is an unbiased (Horvitz-Thompson)
    estimate of :math:`\sum_k f(k)` (Kool et al. 2019; Duffield et al. 2007).
    TensorFlow's ``unique=True`` samplers report the approximation
    :math:`1 - (1 - q_k)^T`, with :math:`T` the number of tries.
    A set that holds every class of the support has :math:`\pi_k = 1 -
    e^{-q_k H}`, which is 1 to float32 precision unless :math:`q_k H` is
    below ~17.

    Cost without replacement: the expected number of draws is the expected
    time until :math:`m + 1` distinct classes arrive, about :math:`m (1 +
    m / 2K)` for a uniform :math:`q` with :math:`m \ll K`, :math:`K \ln K` for
    :math:`m = K` (the coupon collector), and more when :math:`q` is skewed
    and :math:`m` approaches the support size (classes of small :math:`q`
    arrive late). Draws come in rounds of :math:`m + 1` per set, each
    deduplicated against the set so far with one sort, O(m log m) per round,
    inside one ``lax.while_loop`` for the whole batch of queries (a static
    sampler draws a round for every set with one call) that stops at the
    first round completing every set or when the horizon :math:`H` is
    passed. Classes that have not arrived by :math:`H` leave their slots
    unfilled: id 0 with ``log_q = +inf``.

    Args:
      key: a ``jax.random`` key.
      queries: ``[..., d]`` query vectors, one candidate set each, or
        ``None`` for one set shared by the batch (static samplers only).
      num_samples: :math:`m`, a Python int >= 1; at most the support size
        when ``replace=False``.
      replace: draw i.i.d. (default) or distinct ids.
      max_draws: the horizon :math:`H` of the without-replacement search, in
        expected draws; default ``32 * (num_samples + 1)``. Ignored with
        replacement.

    Returns:
      ``(ids, log_q)``, int32 and float32, each ``[..., num_samples]`` (or
      ``[num_samples]`` for ``queries=None``).

    Raises:
      ValueError: ``num_samples < 1``, ``num_samples`` above the support size
        without replacement, ``queries=None`` for a query-dependent sampler,
        ``max_draws < 1``, or ``max_draws`` above :math:`1024 K \lceil
        \ln K \rceil`.
      TypeError: ``key`` is not a ``jax.random`` key.

    Examples:
      >>> import jax
      >>> from jaxsoftmax import samplers
      >>> ids, log_q = samplers.uniform(4).sample(
      ...     jax.random.key(0), None, 4, replace=False)
      >>> sorted(ids.tolist()), bool((abs(log_q) < 1e-6).all())  # pi = 1
      ([0, 1, 2, 3], True)
    """
    v.check_prng_key("key", key)
    m = check_num_samples(num_samples)
    if not isinstance(replace, bool):
      raise TypeError(f"replace must be a bool; got {replace!r}.")
    if not replace and m > self.support_size:
      raise ValueError(
          f"num_samples={m} distinct ids requested without replacement, but"
          f" only {self.support_size} of the {self.num_classes} classes have"
          " positive probability; use replace=True or num_samples <="
          f" {self.support_size}."
      )
    if max_draws is None:
      horizon = 32 * (m + 1)
    elif (
        not isinstance(max_draws, (int, np.integer))
        or isinstance(max_draws, bool)
        or max_draws < 1
    ):
      raise ValueError(f"max_draws must be an int >= 1; got {max_draws!r}.")
    elif max_draws > _max_horizon(self.num_classes):
      raise ValueError(
          f"max_draws must be at most {_max_horizon(self.num_classes)}"
          f" (1024 K ceil(ln K) for K = {self.num_classes} classes: by then"
          " a class of probability >= 1/(1024 K) has arrived except with"
          " probability 1/K, and the search holds a key for every round of"
          f" draws); got {max_draws}."
      )
    else:
      horizon = int(max_draws)
    if queries is None:
      self._check_shared()
    else:
      queries = _check_queries(queries)
    return _sample(self, key, queries, num_samples=m, replace=replace,
                   horizon=horizon)

  def log_prob(self, queries: ArrayLike | None, ids: ArrayLike) -> jax.Array:
    r"""Per-draw log-probabilities :math:`\log q(k \mid x)` of given ids.

    This is the with-replacement ``log_q``, normalized over the classes:
    ``logsumexp(log_prob(queries, arange(K))) == 0``. Classes with zero
    probability give ``-inf``.

    Out-of-range ids: outside ``jit`` an id outside ``[0, num_classes)``
    raises ``ValueError``; under ``jit`` its log-probability is NaN.

    Args:
      queries: ``[..., d]``, or ``None`` for a static sampler.
      ids: integer class ids; ``[..., n]`` (one row per query) when
        ``queries`` is given, any shape otherwise.

    Returns:
      float32, shape of ``ids``.
    """
    ids = jnp.asarray(ids)
    v.check_integer("ids", ids)
    v.check_labels_in_range("ids", ids, self.num_classes)
    if queries is None:
      self._check_shared()
      return self._log_prob(None, ids)
    queries = _check_queries(queries)
    if ids.ndim < 1 or ids.shape[:-1] != queries.shape[:-1]:
      raise ValueError(
          f"ids must have shape {queries.shape[:-1]} + (n,) (one row of ids"
          f" per query, queries of shape {queries.shape}); got {ids.shape}."
      )
    flat_q = _flatten_queries(queries)
    flat_ids = ids.reshape(flat_q.shape[0], ids.shape[-1])
    return _jit_log_prob_rows(self, flat_q, flat_ids).reshape(ids.shape)

  def _check_shared(self) -> None:
    if self.query_dependent:
      raise ValueError(
          f"{type(self).__name__} is query-dependent: pass queries of shape"
          " [..., d] (one candidate set per query), not queries=None."
      )


def draw_rows(sampler, key, queries, n):
  """``[N, n]`` i.i.d. draws, one row per query (one row for ``None``)."""
  if queries is None:
    return sampler._draw(key, None, n)[None, :].astype(_INDEX)
  rows = queries.shape[0]
  if sampler.query_dependent:
    keys = jax.random.split(key, rows)
    ids = jax.vmap(lambda k, q: sampler._draw(k, q, n))(keys, queries)
  else:
    # One draw for the whole batch: a static sampler's rows are independent
    # slices of it, and a vmap over keys would compile the PRNG once per
    # batch dimension for nothing.
    ids = sampler._draw(key, None, rows * n).reshape(rows, n)
  return ids.astype(_INDEX)


def log_prob_rows(sampler, queries, ids):
  """``_log_prob`` for ``[N, n]`` ids, one row per query."""
  if queries is None:
    return sampler._log_prob(None, ids)
  if sampler.query_dependent:
    return jax.vmap(sampler._log_prob)(queries, ids)
  return sampler._log_prob(None, ids)


# An eager vmap of a query-dependent sampler dispatches op by op.
_jit_log_prob_rows = jax.jit(log_prob_rows)


# Jitted so that eager calls compile the sampling loop once per sampler type,
# size and option set instead of on every call; under an outer jit it inlines.
@functools.partial(
    jax.jit, static_argnames=("num_samples", "replace", "horizon")
)
def _sample(sampler, key, queries, *, num_samples, replace, horizon):
  """:meth:`Sampler.sample` after validation: one set, or one per query."""
  flat = None if queries is None else _flatten_queries(queries)
  if replace:
    ids = draw_rows(sampler, key, flat, num_samples)
    log_q = log_prob_rows(sampler, flat, ids)
  else:
    ids, log_q = _sample_distinct(sampler, key, flat, num_samples, horizon)
  shape = (num_samples,) if queries is None else (
      queries.shape[:-1] + (num_samples,))
  return ids.reshape(shape), log_q.astype(_FLOAT).reshape(shape)


def _first_new(ids, cand):
  """Which of ``cand`` are the first copy of their id in ``[ids, cand]``."""
  # A stable sort keeps, among equal ids, the order of the concatenation:
  # the set so far first, then this round's draws in arrival order.
  pool = jnp.concatenate([ids, cand])
  order = jnp.argsort(pool, stable=True)
  sorted_pool = pool[order]
  first_sorted = jnp.concatenate(
      [jnp.ones((1,), bool), sorted_pool[1:] != sorted_pool[:-1]]
  )
  first = jnp.zeros_like(first_sorted).at[order].set(first_sorted)
  return first[ids.shape[0]:]


def _sample_distinct(sampler, key, queries, num_samples, horizon):
  """The without-replacement path of :meth:`Sampler.sample`, ``[N, m]``."""
  m = num_samples
  rows = 1 if queries is None else queries.shape[0]
  # The (m+1)-th distinct arrival sets the threshold kappa; a set that must
  # hold the whole support has no such arrival.
  target = min(m + 1, sampler.support_size)
  block = target
  # Enough rounds that the draws outlast the horizon H except with
  # probability ~1e-23 (a Poisson(H) count beyond H + 10 sqrt(H)).
  max_rounds = math.ceil((horizon + 10 * math.sqrt(horizon) + 20) / block)
  horizon_f = jnp.asarray(horizon, _FLOAT)
  # Unfilled slots hold distinct out-of-range ids, so they never match a
  # drawn class during deduplication.
  ids0 = jnp.broadcast_to(
      sampler.num_classes + jnp.arange(target, dtype=_INDEX), (rows, target))
  times0 = jnp.full((rows, target), horizon_f)
  row = jnp.arange(rows)[:, None]

  def cond(state):
    _, _, n, t, rounds = state
    active = (n < target) & (t < horizon_f)
    return jnp.any(active) & (rounds < max_rounds)

  def body(state):
    ids, times, n, t, rounds = state
    cand = draw_rows(sampler, round_keys[2 * rounds], queries, block)
    # Drawn flat: partitionable threefry compiles 2-D shapes several times
    # slower than 1-D ones.
    gaps = jax.random.exponential(
        round_keys[2 * rounds + 1], (rows * block,), _FLOAT
    ).reshape(rows, block)
    arrival = t[:, None] + jnp.cumsum(gaps, axis=1)
    # Finished rows draw too (one call serves the batch); their new ids get
    # slots >= target and are dropped.
    new = jax.vmap(_first_new)(ids, cand) & (arrival < horizon_f)
    slot = jnp.where(new, n[:, None] + jnp.cumsum(new, axis=1) - 1, target)
    ids = ids.at[row, slot].set(cand, mode="drop")
    times = times.at[row, slot].set(arrival, mode="drop")
    n = jnp.minimum(n + jnp.sum(new, axis=1, dtype=_INDEX), target)
    return ids, times, n, arrival[:, -1], rounds + 1

  # One split outside the loop: every random call site costs compile time.
  round_keys = jax.random.split(key, 2 * max_rounds)
  state = (ids0, times0, jnp.zeros((rows,), _INDEX),
           jnp.zeros((rows,), _FLOAT), jnp.zeros((), _INDEX))
  ids, times, _, _, _ = jax.lax.while_loop(cond, body, state)
  kappa = times[:, m:m + 1] if target == m + 1 else horizon_f
  filled = times[:, :m] < horizon_f
  ids = jnp.where(filled, ids[:, :m], 0)
  log_q = log_prob_rows(sampler, queries, ids)
  log_pi = _log1mexp(jnp.exp(log_q) * kappa)
  return ids, jnp.where(filled, log_pi, jnp.inf)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["threshold", "alias", "log_p"],
    meta_fields=["num_classes", "nonzero"],
)
@dataclasses.dataclass(frozen=True)
class AliasSampler(Sampler):
  r"""A fixed categorical :math:`q`, drawn with Walker's alias method.

  One draw picks a bucket :math:`i` uniformly and keeps it when a uniform
  :math:`u < \text{threshold}_i`, else returns :math:`\text{alias}_i`: O(1)
  per draw at any K, and exact up to the float32 rounding of the
  thresholds, where inverting a float32 CDF cannot resolve classes rarer
  than ~1e-7. Built by :func:`log_uniform` and :func:`unigram`.

  Attributes:
    threshold: ``[K]`` float32 acceptance thresholds in [0, 1].
    alias: ``[K]`` int32 alias classes.
    log_p: ``[K]`` float32 :math:`\\log q(k)` (``-inf`` where q is 0).
    num_classes: :math:`K` (static).
    nonzero: number of classes with :math:`q > 0` (static).
  """

  threshold: jax.Array
  alias: jax.Array
  log_p: jax.Array
  num_classes: int
  nonzero: int

  @property
  def support_size(self) -> int:
    return self.nonzero

  def _draw(self, key, query, n):
    k_bucket, k_coin = jax.random.split(key)
    bucket = jax.random.randint(k_bucket, (n,), 0, self.num_classes, _INDEX)
    coin = jax.random.uniform(k_coin, (n,), _FLOAT)
    return jnp.where(coin < self.threshold[bucket], bucket, self.alias[bucket])

  def _log_prob(self, query, ids):
    in_range = (ids >= 0) & (ids < self.num_classes)
    safe = jnp.where(in_range, ids, 0)
    return jnp.where(in_range, self.log_p[safe], jnp.nan)


def _alias_tables(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Walker alias tables for a float64 distribution ``p`` (sums to 1).

  Vose's sweep, vectorized: classes with scaled mass ``K p < 1`` ("light")
  need ``1 - K p`` from an alias, classes with ``K p >= 1`` ("heavy") have
  ``K p - 1`` to give. Laying the deficits of the light classes end to end
  (cumulative ``D``) and the excesses of the heavy ones (cumulative ``S``), a
  light class is served by the heavy class whose excess interval contains
  the start of its deficit. A heavy class whose excess runs out in the middle
  of a light class's deficit gives it all the same, keeps ``1 - (D_i -
  S_j)`` of its own bucket and takes the rest from the next heavy class,
  exactly as the sequential sweep does. O(K log K) NumPy, no Python loop.
  """
  k = p.size
  scaled = p * k
  is_heavy = scaled >= 1
  # Rounding can leave every scaled mass a hair below 1; the largest class
  # always has mass to give.
  is_heavy[np.argmax(scaled)] = True
  light = np.flatnonzero(~is_heavy)
  heavy = np.flatnonzero(is_heavy)
  threshold = np.ones(k)
  alias = np.arange(k)
  deficit_end = np.cumsum(1 - scaled[light])
  deficit_start = np.concatenate([[0.0], deficit_end[:-1]])
  excess_end = np.cumsum(np.maximum(scaled[heavy] - 1, 0))
  server = np.minimum(
      np.searchsorted(excess_end, deficit_start, side="right"), heavy.size - 1
  )
  threshold[light] = scaled[light]
  alias[light] = heavy[server]
  # Heavy j runs out during the first light deficit that ends past S_j,
  # unless that deficit starts exactly at S_j (then j ended at exactly 1).
  # The last heavy class keeps threshold 1: the totals agree up to rounding.
  during = np.searchsorted(deficit_end, excess_end[:-1], side="right")
  runs_out = during < light.size
  during_c = np.minimum(during, max(light.size - 1, 0))
  if light.size:
    runs_out &= deficit_start[during_c] < excess_end[:-1]
  j = np.flatnonzero(runs_out)
  threshold[heavy[j]] = 1 - (deficit_end[during_c[j]] - excess_end[j])
  alias[heavy[j]] = heavy[j + 1]
  return threshold, alias


def _alias_sampler(log_p: np.ndarray) -> AliasSampler:
  """An :class:`AliasSampler` from float64 log-probabilities summing to 1."""
  p = np.exp(log_p)
  threshold, alias = _alias_tables(p / p.sum())
  return AliasSampler(
      threshold=jnp.asarray(threshold, _FLOAT),
      alias=jnp.asarray(alias, _INDEX),
      log_p=jnp.asarray(log_p, _FLOAT),
      num_classes=int(log_p.size),
      nonzero=int(np.count_nonzero(p > 0)),
  )


def count_log_weights(
    counts: ArrayLike, power: float, num_classes: int | None = None
) -> np.ndarray:
  r"""Validated, normalized :math:`\log (c_k^{\alpha} / \sum_j c_j^{\alpha})`.

  The weights of :func:`unigram` and of MIDX-pop; :math:`-\infty` where
  :math:`c_k = 0`, whatever the power.

  Args:
    counts: ``[K]`` non-negative finite counts, not all zero; concrete.
    power: :math:`\alpha \ge 0`, a Python float.
    num_classes: the required :math:`K`, or None for any.

  Returns:
    ``[K]`` float64 log-weights.
  """
  if not v.is_concrete(counts):
    raise TypeError(
        "counts must be concrete (a NumPy or JAX array outside jit): the"
        " weights are fixed once, on the host. Build the sampler outside"
        " the jitted function and pass it in as an argument."
    )
  c = np.asarray(counts)
  if c.dtype == np.bool_ or not (
      np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.floating)
  ):
    raise TypeError(
        f"counts must be integer or floating; got {c.dtype} with shape"
        f" {c.shape}."
    )
  if num_classes is not None and c.shape != (num_classes,):
    raise ValueError(
        f"counts must have shape ({num_classes},) (one per class); got"
        f" {c.shape}."
    )
  if c.ndim != 1 or c.size == 0:
    raise ValueError(
        f"counts must have shape [num_classes] with num_classes >= 1; got"
        f" shape {c.shape}."
    )
  if (
      not isinstance(power, (int, float))
      or isinstance(power, bool)
      or not math.isfinite(power)
      or power < 0
  ):
    raise ValueError(
        f"power must be a finite Python float >= 0; got {power!r}."
    )
  c = c.astype(np.float64)
  bad = ~np.isfinite(c)
  if bad.any():
    raise ValueError(
        f"counts must be finite; got {c[bad][:5].tolist()} at index"
        f" {np.flatnonzero(bad)[:5].tolist()}."
    )
  if (c < 0).any():
    neg = np.flatnonzero(c < 0)
    raise ValueError(
        f"counts must be >= 0; got {c[neg][:5].tolist()} at index"
        f" {neg[:5].tolist()} ({neg.size} negative of {c.size})."
    )
  if not (c > 0).any():
    raise ValueError(
        f"counts must have at least one positive entry; all {c.size} are 0."
    )
  # In log space relative to the largest count, so c ** power can neither
  # overflow nor underflow before normalization.
  with np.errstate(divide="ignore"):
    log_w = np.where(c > 0, power * (np.log(c) - np.log(c.max())), -np.inf)
  shift = np.log(np.sum(np.exp(log_w)))
  return log_w - shift

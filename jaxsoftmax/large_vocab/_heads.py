r"""The output heads over K classes, one small class per method behind
:class:`LargeSoftmaxHead` (see :mod:`jaxsoftmax.large_vocab`)."""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike
import numpy as np

from jaxsoftmax.losses import _fused
from jaxsoftmax._core import gather as _gather
from jaxsoftmax.losses import _class_based
from jaxsoftmax.losses import _hierarchical
from jaxsoftmax.models import _functional as _models
from jaxsoftmax._core import numerics as _numerics

from jaxsoftmax.losses import _sampled

from jaxsoftmax._core import validation as v

from jaxsoftmax import samplers as _samplers
from jaxsoftmax import sparse


METHODS = (
    "full",
    "sampled",
    "nce",
    "negative_sampling",
    "hierarchical_huffman",
    "hierarchical_balanced",
    "class_based",
)


SAMPLERS = ("uniform", "log_uniform", "unigram", "midx_uniform", "midx_pop",
            "midx_exact")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {value!r}.")


def _check_counts(counts: Any, num_classes: int,
                  needed_by: str | None) -> np.ndarray | None:
  """``counts`` as a NumPy array; ``needed_by`` names what requires them."""
  if counts is None:
    if needed_by is not None:
      raise ValueError(
          f"{needed_by} needs counts, the [num_classes] = [{num_classes}]"
          " training frequencies of the classes (TextCorpus.counts); got None."
      )
    return None
  if not v.is_concrete(counts):
    raise TypeError("counts must be concrete (a NumPy array), not a tracer.")
  counts = np.asarray(counts)
  v.check_same_shape("counts", counts, (num_classes,), "[num_classes]")
  return counts


def _make_sampler(name: str, counts: np.ndarray | None, *, power: float,
                  num_codewords: int, w: jax.Array, b: jax.Array,
                  key: jax.Array) -> _samplers.Sampler:
  """The proposal ``name``; ``w`` is feature-major ``[d, K]``, as MIDX's."""
  num_classes = w.shape[1]
  if name == "uniform":
    return _samplers.uniform(num_classes)
  if name == "log_uniform":
    return _samplers.log_uniform(num_classes)
  if name == "unigram":
    return _samplers.unigram(counts, power=power)
  mode = name.removeprefix("midx_")
  return _samplers.midx(
      w, num_codewords=min(num_codewords, num_classes), mode=mode,
      counts=counts if mode == "pop" else None, power=power, b=b, key=key)


class _HeadType(type(nnx.Module)):
  """Calling :class:`LargeSoftmaxHead` itself builds the subclass of ``method``.

  The dispatch sits in the metaclass, not in ``__new__``: nnx's metaclass
  runs ``__init__`` itself with the caller's arguments (``method`` and the
  options bag included) and the node table of the class that was called, so
  a ``__new__`` returning a subclass would get a half-built object. Here the
  subclass is constructed exactly as if it had been called directly.
  """

  def __call__(cls, *args: Any, **kwargs: Any) -> Any:
    if cls is LargeSoftmaxHead:
      return _build_head(*args, **kwargs)
    return super().__call__(*args, **kwargs)


def _option_names(head_type: type) -> list[str]:
  """The keyword options of a head class, beyond what every head takes."""
  common = ("counts", "rngs", "param_dtype")
  return [p.name for p in inspect.signature(head_type.__init__).parameters
          .values() if p.kind is p.KEYWORD_ONLY and p.name not in common]


def _build_head(
    num_features: int,
    num_classes: int,
    *,
    method: str,
    counts: ArrayLike | None = None,
    rngs: nnx.Rngs,
    param_dtype: DTypeLike = jnp.float32,
    **options: Any,
) -> LargeSoftmaxHead:
  """``LargeSoftmaxHead(..., method=..., **options)``: the method's subclass."""
  _check_choice("method", method, METHODS)
  head_type, fixed = _HEADS[method]
  allowed = sorted(set(_option_names(head_type)) - set(fixed))
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise TypeError(
        f"method={method!r} takes the options {allowed}; got unexpected"
        f" {unknown}."
    )
  return head_type(num_features, num_classes, counts=counts, rngs=rngs,
                   param_dtype=param_dtype, **fixed, **options)


class LargeSoftmaxHead(nnx.Module, metaclass=_HeadType):
  r"""The output layer over ``num_classes`` words, trained one of seven ways.

  The parameters depend on ``method``; the cheap heads store every
  per-class table class-major, one row per class, so that a step touching a
  few classes reads and writes contiguous rows (:mod:`jaxsoftmax.sparse`), as fastText,
  word2vec and TensorFlow's embedding tables do:

  - ``"sampled"``, ``"nce"``, ``"negative_sampling"``: ``w`` ``[K, d]``
    (LeCun normal) and ``b`` ``[K]`` (zeros), scores :math:`s_k = x^\top
    w_k + b_k`, plus the proposal ``sampler``; ``"full"`` the same scores
    with ``w`` ``[d, K]``, the fused kernel's layout (every step reads all
    of it);
  - ``"hierarchical_huffman"`` / ``"hierarchical_balanced"``: ``node_w``
    ``[K - 1, d]`` and ``node_b`` ``[K - 1]``, one logistic classifier per
    internal node of the ``tree`` (:func:`~jaxsoftmax.huffman_tree` of the
    counts, or :func:`~jaxsoftmax.balanced_tree`);
  - ``"class_based"``: ``cluster_w`` ``[d, C]``, ``cluster_b`` ``[C]``
    (updated densely: every step reads them all), ``w`` ``[K, d]``, ``b``
    ``[K]`` and the ``clusters`` (:func:`~jaxsoftmax.frequency_clusters` of
    the counts).

  The library's functional losses take ``w`` feature-major (``[d, K]``);
  the head passes its tables as :class:`jaxsoftmax.sparse.Rows` views,
  which those losses accept in its place.

  Trees, clusters and samplers are built once, on the host, and stored as
  non-trainable data (``nnx.data``), so they travel with the module through
  ``nnx.split`` / ``jit`` but the optimizer never touches them.

  Each method is a subclass of this one, and ``LargeSoftmaxHead(...,
  method=..., **options)`` constructs the subclass of ``method`` (so the
  result is an instance of :class:`LargeSoftmaxHead`); the subclass takes
  its options as explicit keyword arguments and defines the loss, the exact
  evaluation and the rows a step reads.

  Options (``**options``; any other name raises ``TypeError``):

  - ``chunk_size`` (w-based heads, default 4096): classes per block of the
    fused cross-entropy, for ``"full"`` training and every w-based head's
    evaluation;
  - ``sampler`` (``"uniform"``, ``"log_uniform"``, ``"unigram"``, or the
    adaptive ``"midx_uniform"``, ``"midx_pop"``, ``"midx_exact"`` of
    :func:`jaxsoftmax.samplers.midx`; default ``"log_uniform"`` for
    ``"sampled"``, ``"unigram"`` for ``"nce"`` and
    ``"negative_sampling"``), ``num_samples`` (:math:`m`, default 512),
    ``power`` (the unigram and MIDX-pop exponent, default 0.75), and
    ``shared`` (one candidate set for the batch, or one per row; default
    None: shared for the static samplers, per row for MIDX, whose shared
    set is drawn from the mixture of the rows' proposals, see
    :func:`~jaxsoftmax.sampled_softmax_loss`);
  - ``num_codewords`` (MIDX, default 32, capped at :math:`K`) and
    ``refresh_every`` (MIDX: :func:`train` rebuilds the index from the
    current ``w`` every so many steps; default None, once per epoch);
  - ``remove_accidental_hits`` (``"sampled"``, default True);
  - ``num_clusters`` (``"class_based"``, default :math:`\lceil\sqrt K\rceil`).

  ``log_uniform`` assumes ids sorted by decreasing frequency, as
  :class:`~jaxsoftmax.data.TextCorpus` numbers them.

  Args:
    num_features: :math:`d`.
    num_classes: :math:`K`.
    method: one of :data:`METHODS`.
    counts: ``[K]`` non-negative class frequencies; required by the Huffman
      tree, the clusters and the unigram sampler.
    rngs: ``flax.nnx.Rngs`` for the initialization.
    param_dtype: dtype of the parameters.
    **options: see above.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxsoftmax.large_vocab import LargeSoftmaxHead
    >>> head = LargeSoftmaxHead(8, 50, method="sampled", num_samples=16,
    ...                         rngs=nnx.Rngs(0))
    >>> head.w.shape, head.sampler.num_classes
    ((50, 8), 50)
    >>> lp = head.log_probs(jnp.ones((4, 8)))  # the full softmax of x w + b
    >>> lp.shape, bool(jnp.allclose(jnp.exp(lp).sum(axis=1), 1, rtol=1e-5))
    ((4, 50), True)

  References:
    F. Morin, Y. Bengio, "Hierarchical probabilistic neural network language
    model", AISTATS (2005); S. Jean, K. Cho, R. Memisevic, Y. Bengio, "On
    using very large target vocabulary for neural machine translation", ACL
    (2015); A. Mnih, Y. W. Teh, "A fast and simple algorithm for training
    neural probabilistic language models", ICML (2012); T. Mikolov et al.,
    "Distributed representations of words and phrases and their
    compositionality", NeurIPS (2013); J. Goodman, "Classes for fast maximum
    entropy training", ICASSP (2001).
  """

  _row_params: tuple[str, ...] = ()

  def __init__(self, num_features: int, num_classes: int, *, method: str,
               options: dict[str, Any]):
    """Shared by the subclasses: the sizes, the method and its options."""
    v.check_positive_int("num_features", num_features)
    v.check_positive_int("num_classes", num_classes)
    self.method = method
    self.num_features = int(num_features)
    self.num_classes = int(num_classes)
    # A tuple, not a dict: static attributes end up in the hashable graphdef.
    self._options = tuple(sorted(options.items()))

  @property
  def options(self) -> dict[str, Any]:
    """The method's options, defaults filled in."""
    return dict(self._options)

  @property
  def adaptive(self) -> bool:
    """Whether the proposal follows ``w`` (MIDX) and needs refreshing."""
    return False

  def refresh_sampler(self) -> None:
    """Rebuilds an adaptive (MIDX) proposal's index from the current ``w``.

    Warm-started k-means, see :meth:`jaxsoftmax.samplers.MidxSampler.refresh`;
    jit-safe. A no-op for the static samplers and the other methods.
    """

  def _check_features(self, features: ArrayLike) -> jax.Array:
    x = jnp.asarray(features)
    v.check_floating("features", x)
    v.check_rank("features", x, 2, "[batch, num_features]")
    if x.shape[1] != self.num_features:
      raise ValueError(
          f"features must have shape [batch, {self.num_features}] (the head's"
          f" num_features); got {x.shape}."
      )
    return x

  @property
  def row_params(self) -> tuple[str, ...]:
    """The class-major tables a training step reads only a few rows of.

    ``("w", "b")`` for the sampled heads and ``"class_based"``,
    ``("node_w", "node_b")`` for the trees, none for ``"full"``. A step
    gathers the rows :meth:`rows_used` names from each, as
    :class:`jaxsoftmax.sparse.Rows` views, and hands them to :meth:`loss`.
    """
    return self._row_params

  def _tables(self, tables: dict[str, Any] | None) -> dict[str, Any]:
    """Every table the loss reads: whole-table views, replaced by ``tables``."""
    own = {name: _gather.Rows(None, getattr(self, name)[...])
           for name in self.row_params}
    if tables is not None:
      unknown = sorted(set(tables) - set(own))
      if unknown:
        raise ValueError(
            f"tables may replace {sorted(own)} of method={self.method!r};"
            f" got {unknown}.")
      bad = [name for name, t in tables.items()
             if not isinstance(t, _gather.Rows)]
      if bad:
        raise TypeError(f"tables must map names to jaxsoftmax.sparse.Rows"
                        f" views; got other values for {bad}.")
      own.update(tables)
    return own

  def rows_used(
      self,
      features: ArrayLike,
      labels: ArrayLike,
      *,
      key: jax.Array | None = None,
  ) -> jax.Array | None:
    r"""The rows of :attr:`row_params` that :meth:`loss` reads, with repeats.

    The labels and the candidates that ``key`` draws (the same ones
    :meth:`loss` draws with that key) for the sampled heads, the path nodes
    of the labels for the trees, the members of the labels' clusters for
    ``"class_based"``; None for ``"full"``. Gather them with
    :func:`jaxsoftmax.sparse.gather` (the step cost is then independent of
    :math:`K`); the candidates depend on ``features`` only for a
    query-dependent (MIDX) proposal, and never through its gradient.

    Args:
      features: ``[batch, num_features]``.
      labels: ``[batch]`` integer classes.
      key: the key :meth:`loss` will get.

    Returns:
      An integer array of ids (any shape), or None.
    """
    x = jax.lax.stop_gradient(self._check_features(features))
    return self._rows_used(x, jnp.asarray(labels), key)

  def _rows_used(self, x: jax.Array, labels: jax.Array,
                 key: jax.Array | None) -> jax.Array | None:
    """:meth:`rows_used` of checked inputs; None: the loss reads every row."""
    return None

  def loss(
      self,
      features: ArrayLike,
      labels: ArrayLike,
      *,
      key: jax.Array | None = None,
      tables: dict[str, Any] | None = None,
  ) -> jax.Array:
    r"""The method's training loss, a mean over the batch.

    ``"full"``, ``"hierarchical_*"`` and ``"class_based"`` return the exact
    mean negative log-likelihood, :math:`-\frac{1}{B}\sum_i \log
    P(y_i \mid x_i)` with :math:`P` as in :meth:`log_probs`; ``"sampled"``
    its log-q-corrected estimate from ``num_samples`` candidates;
    ``"nce"`` and ``"negative_sampling"`` their logistic objectives (not
    likelihoods). The gradients are the hand-derived rules of the underlying
    losses.

    Args:
      features: ``[batch, num_features]``.
      labels: ``[batch]`` integer classes in ``[0, num_classes)``.
      key: a ``jax.random`` key for the candidates; required by
        ``"sampled"``, ``"nce"`` and ``"negative_sampling"``, ignored by the
        others.
      tables: optional :class:`jaxsoftmax.sparse.Rows` views replacing some
        of :attr:`row_params` (the rows :meth:`rows_used` names, gathered
        with :func:`jaxsoftmax.sparse.gather`); the gradient with respect to
        a view's values is then those rows of the dense gradient.

    Returns:
      A scalar (float32 for half-precision inputs).
    """
    x = self._check_features(features)
    return self._loss(x, labels, key, self._tables(tables))

  def _loss(self, x: jax.Array, labels: ArrayLike, key: jax.Array | None,
            tables: dict[str, Any]) -> jax.Array:
    """:meth:`loss` of checked inputs; the exact NLL unless overridden."""
    return jnp.mean(self._nll(x, labels, tables))

  @abc.abstractmethod
  def _nll(self, x: jax.Array, labels: ArrayLike,
           tables: dict[str, Any]) -> jax.Array:
    """:meth:`nll` of checked features, reading the per-class ``tables``."""

  def nll(self, features: ArrayLike, labels: ArrayLike) -> jax.Array:
    r"""Exact per-example negative log-likelihood :math:`-\log P(y_i \mid x_i)`.

    Computed without a ``[batch, K]`` array: the fused cross-entropy (blocks
    of ``chunk_size`` classes) for the w-based heads, the path of
    :math:`y_i` for the trees, its cluster for ``"class_based"``.

    Args:
      features: ``[batch, num_features]``.
      labels: ``[batch]`` integer classes.

    Returns:
      ``[batch]``, equal to ``-log_probs(features)[i, labels[i]]``.
    """
    return self._nll(self._check_features(features), labels,
                     self._tables(None))

  def log_probs(self, features: ArrayLike) -> jax.Array:
    r"""Normalized log-probabilities of all ``K`` classes, for evaluation.

    .. math::
      \log P(k \mid x) = s_k - \log \sum_j e^{s_j}, \qquad s = x^\top w + b

    for the w-based heads (max-shifted log-sum-exp; for ``"nce"`` and
    ``"negative_sampling"`` this *normalizes* scores the training did not
    normalize), the product of branch probabilities along the path of
    :math:`k` for the trees (:func:`~jaxsoftmax.hierarchical_log_probs`) and
    :math:`P(c(k) \mid x)\,P(k \mid c(k), x)` for ``"class_based"``
    (:func:`~jaxsoftmax.class_based_log_probs`). Every row logsumexps to 0.

    Args:
      features: ``[batch, num_features]``.

    Returns:
      ``[batch, num_classes]``, in the accumulation dtype.
    """
    return self._log_probs(self._check_features(features))

  @abc.abstractmethod
  def _log_probs(self, x: jax.Array) -> jax.Array:
    """:meth:`log_probs` of checked features."""

  def perplexity(
      self,
      features: ArrayLike,
      labels: ArrayLike,
      *,
      batch_size: int = 1024,
  ) -> jax.Array:
    r"""Held-out perplexity :math:`\exp(-\frac1N \sum_i \log P(y_i \mid x_i))`.

    Exact (normalized over all :math:`K` classes, as :meth:`log_probs`),
    computed by :meth:`nll` over blocks of ``batch_size`` rows in a
    ``lax.map``, so at most ``[batch_size, chunk]`` scores exist at a time
    whatever :math:`N`. Works under ``jit``; on eager calls the labels'
    range and the features' finiteness are checked first.

    Args:
      features: ``[N, num_features]``.
      labels: ``[N]`` integer classes.
      batch_size: rows per block, a positive int.

    Returns:
      A scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxsoftmax.large_vocab import LargeSoftmaxHead
      >>> head = LargeSoftmaxHead(4, 8, method="hierarchical_balanced",
      ...                         rngs=nnx.Rngs(0))
      >>> head.node_w[...] = jnp.zeros_like(head.node_w[...])  # uniform over 8
      >>> ppl = head.perplexity(jnp.ones((5, 4)), jnp.arange(5))
      >>> print(f"{float(ppl):.3f}")
      8.000
    """
    x = self._check_features(features)
    labels = jnp.asarray(labels)
    v.check_integer("labels", labels)
    v.check_same_shape("labels", labels, x.shape[:1], "[N], one per row")
    v.check_positive_int("batch_size", batch_size)
    n = x.shape[0]
    if n == 0:
      raise ValueError("features must hold at least one row; got shape"
                       f" {x.shape}.")
    v.check_labels_in_range("labels", labels, self.num_classes)
    v.check_finite("features", x)
    graphdef, state = nnx.split(self)
    return _perplexity(graphdef, state, x, labels, rows=min(batch_size, n))


# Jitted so that eager calls compile the blocked loop once per head structure
# and shape instead of on every call; under an outer jit it inlines.
@functools.partial(jax.jit, static_argnames=("graphdef", "rows"))
def _perplexity(graphdef, state, x, labels, *, rows):
  head = nnx.merge(graphdef, state)
  n = x.shape[0]
  pad = -n % rows
  keep = jnp.arange(n + pad) < n
  # Padded rows get label 0 and zero features: valid inputs whose NLL is
  # dropped by ``keep``.
  x = jnp.concatenate([x, jnp.zeros((pad, x.shape[1]), x.dtype)])
  labels = jnp.concatenate([labels, jnp.zeros((pad,), labels.dtype)])

  def block(args):
    xb, yb, kb = args
    return jnp.sum(jnp.where(kb, head.nll(xb, yb), 0))

  totals = jax.lax.map(block, (x.reshape(-1, rows, x.shape[1]),
                               labels.reshape(-1, rows),
                               keep.reshape(-1, rows)))
  return jnp.exp(jnp.sum(totals) / n)


class _ScoreHead(LargeSoftmaxHead):
  r"""A head that scores every class, :math:`s_k = x^\top w_k + b_k`.

  ``w`` (LeCun normal) is class-major ``[K, d]`` unless ``_class_major`` is
  False, ``b`` ``[K]`` (zeros). Evaluation is exact through the fused
  cross-entropy in blocks of ``chunk_size`` classes.
  """

  _row_params = ("w", "b")
  _class_major = True

  def __init__(self, num_features: int, num_classes: int, *, method: str,
               options: dict[str, Any], rngs: nnx.Rngs,
               param_dtype: DTypeLike):
    super().__init__(num_features, num_classes, method=method,
                     options=options)
    v.check_positive_int("chunk_size", options["chunk_size"])
    params = _models.linear_init(rngs.params(), num_features, num_classes,
                                 dtype=param_dtype)
    # Class-major tables ([K, d]): a step that touches a few classes reads
    # and writes contiguous rows (see jaxsoftmax.sparse).
    self.w = nnx.Param(params["w"].T if self._class_major else params["w"])
    self.b = nnx.Param(params["b"])

  def _w_columns(self) -> jax.Array:
    """``w`` feature-major, ``[d, K]``, as the fused kernel and MIDX take it."""
    return self.w[...].T if self._class_major else self.w[...]

  def _nll(self, x, labels, tables):
    return _fused.fused_linear_cross_entropy(
        x, self._w_columns(), self.b[...], labels,
        chunk_size=self.options["chunk_size"], reduction="none")

  def _log_probs(self, x):
    w, b = self._w_columns(), self.b[...]
    acc = _numerics.accumulation_dtype(jnp.result_type(x, w))
    s = jnp.matmul(x, w, preferred_element_type=acc)
    s = s + b.astype(acc)[None, :]
    return s - _numerics.logsumexp(s)[:, None]


class _FullSoftmaxHead(_ScoreHead):
  r"""``method="full"``: the exact softmax cross-entropy over all ``K``.

  :func:`~jaxsoftmax.fused_linear_cross_entropy`, :math:`O(Kd)` per example.
  ``w`` is feature-major ``[d, K]``, the fused kernel's layout: every step
  reads all of it anyway, and a transposed table would cost a copy per block.

  Args:
    num_features: :math:`d`.
    num_classes: :math:`K`.
    counts: ``[K]`` class frequencies; not used, checked for shape only.
    rngs: ``flax.nnx.Rngs`` for the initialization.
    param_dtype: dtype of the parameters.
    chunk_size: classes per block of the fused cross-entropy, a positive int.
  """

  _row_params = ()
  _class_major = False

  def __init__(self, num_features: int, num_classes: int, *,
               counts: ArrayLike | None = None, rngs: nnx.Rngs,
               param_dtype: DTypeLike = jnp.float32, chunk_size: int = 4096):
    super().__init__(num_features, num_classes, method="full",
                     options={"chunk_size": chunk_size}, rngs=rngs,
                     param_dtype=param_dtype)
    _check_counts(counts, num_classes, None)

  def _loss(self, x, labels, key, tables):
    return _fused.fused_linear_cross_entropy(
        x, self._w_columns(), self.b[...], labels,
        chunk_size=self.options["chunk_size"])


class _SamplingHead(_ScoreHead):
  r"""A head trained on :math:`m` candidates drawn from a proposal :math:`q`.

  Shared by ``"sampled"``, ``"nce"`` and ``"negative_sampling"``, which
  differ only in the objective they put on the candidates' scores
  (``_objective``). The proposal is built once, on the host, and stored as
  non-trainable data; an adaptive (MIDX) one is rebuilt from the current
  ``w`` by :meth:`refresh_sampler`.

  Args:
    num_features: :math:`d`.
    num_classes: :math:`K`.
    counts: ``[K]`` class frequencies; required by the ``"unigram"`` and
      ``"midx_pop"`` samplers.
    rngs: ``flax.nnx.Rngs`` for the initialization and the MIDX index.
    param_dtype: dtype of the parameters.
    sampler: the proposal, one of :data:`SAMPLERS`: ``"uniform"``,
      ``"log_uniform"`` (ids sorted by decreasing frequency), ``"unigram"``
      (:math:`q_k \propto c_k^{\text{power}}`) or the adaptive
      ``"midx_uniform"``, ``"midx_pop"``, ``"midx_exact"`` of
      :func:`jaxsoftmax.samplers.midx`; None: the head's default
      (``_default_sampler``).
    num_samples: :math:`m`, a positive int.
    power: the unigram and MIDX-pop exponent.
    shared: one candidate set for the batch (True) or one per row (False);
      None: shared for the static samplers, per row for MIDX.
    num_codewords: MIDX codewords per codebook, a positive int, capped at
      :math:`K`.
    refresh_every: MIDX: :func:`train` rebuilds the index every so many
      steps, a positive int; None: once per epoch.
    chunk_size: classes per block of the fused cross-entropy that evaluates
      the head, a positive int.
  """

  _method: str
  _default_sampler: str

  def __init__(self, num_features: int, num_classes: int, *,
               counts: ArrayLike | None = None, rngs: nnx.Rngs,
               param_dtype: DTypeLike = jnp.float32, sampler: str | None = None,
               num_samples: int = 512, power: float = 0.75,
               shared: bool | None = None, num_codewords: int = 32,
               refresh_every: int | None = None, chunk_size: int = 4096):
    sampler = self._default_sampler if sampler is None else sampler
    _check_choice("sampler", sampler, SAMPLERS)
    v.check_positive_int("num_samples", num_samples)
    v.check_positive_int("num_codewords", num_codewords)
    if refresh_every is not None:
      v.check_positive_int("refresh_every", refresh_every)
    if not isinstance(shared, (bool, type(None))):
      raise TypeError(
          f"shared must be None (the sampler's default), True or False; got"
          f" {shared!r}.")
    options = dict(sampler=sampler, num_samples=num_samples, power=power,
                   shared=shared, num_codewords=num_codewords,
                   refresh_every=refresh_every, chunk_size=chunk_size)
    super().__init__(num_features, num_classes, method=self._method,
                     options=options, rngs=rngs, param_dtype=param_dtype)
    needed_by = (f"sampler={sampler!r}" if sampler in ("unigram", "midx_pop")
                 else None)
    counts = _check_counts(counts, num_classes, needed_by)
    self.sampler = nnx.data(_make_sampler(
        sampler, counts, power=power, num_codewords=num_codewords,
        w=self._w_columns(), b=self.b[...], key=rngs.params()))

  @property
  def adaptive(self) -> bool:
    return self.sampler.query_dependent

  def refresh_sampler(self) -> None:
    if self.adaptive:
      self.sampler = nnx.data(self.sampler.refresh(self._w_columns(),
                                                   self.b[...]))

  def _check_key(self, key: jax.Array | None) -> None:
    if key is None:
      raise ValueError(
          f"method={self.method!r} draws candidates: pass"
          " key=jax.random.key(...) to loss(); got key=None.")
    v.check_prng_key("key", key)

  def _sampler_now(self) -> _samplers.Sampler:
    """The proposal of this step: MIDX-exact scores residuals with the
    current ``w``, which keeps q = p exactly between index refreshes."""
    sampler = self.sampler
    if self.adaptive and sampler.mode == "exact":
      sampler = dataclasses.replace(sampler, w=self._w_columns(),
                                    b=self.b[...])
    return sampler

  def _shared(self, sampler: _samplers.Sampler) -> bool:
    shared = self.options["shared"]
    return not sampler.query_dependent if shared is None else shared

  def _rows_used(self, x, labels, key):
    self._check_key(key)
    sampler = self._sampler_now()
    ids, _, _ = _sampled.candidates(
        key, x, sampler, self.options["num_samples"], self._shared(sampler),
        replace=True)
    return jnp.concatenate([labels.reshape(-1), ids.reshape(-1)])

  def _loss(self, x, labels, key, tables):
    self._check_key(key)
    sampler = self._sampler_now()
    return self._objective(
        key, x, tables["w"], tables["b"], labels, sampler=sampler,
        num_samples=self.options["num_samples"], shared=self._shared(sampler))

  @abc.abstractmethod
  def _objective(self, key: jax.Array, x: jax.Array, w: Any, b: Any,
                 labels: ArrayLike, **candidates: Any) -> jax.Array:
    """The training loss on the candidates; ``candidates`` are the sampler,
    ``num_samples`` and ``shared`` arguments of the losses in _sampled."""


class _SampledSoftmaxHead(_SamplingHead):
  r"""``method="sampled"``: the log-q-corrected sampled softmax.

  :func:`~jaxsoftmax.sampled_softmax_loss`, :math:`O(md)`; default sampler
  ``"log_uniform"``. Takes the options of the sampling heads plus:

  Args:
    remove_accidental_hits: whether a candidate equal to the row's label is
      masked out of the row's softmax (a bool, default True).
  """

  _method = "sampled"
  _default_sampler = "log_uniform"

  def __init__(self, num_features: int, num_classes: int, *,
               counts: ArrayLike | None = None, rngs: nnx.Rngs,
               param_dtype: DTypeLike = jnp.float32, sampler: str | None = None,
               num_samples: int = 512, power: float = 0.75,
               shared: bool | None = None, num_codewords: int = 32,
               refresh_every: int | None = None, chunk_size: int = 4096,
               remove_accidental_hits: bool = True):
    if not isinstance(remove_accidental_hits, bool):
      raise TypeError(f"remove_accidental_hits must be a bool; got"
                      f" {remove_accidental_hits!r}.")
    super().__init__(
        num_features, num_classes, counts=counts, rngs=rngs,
        param_dtype=param_dtype, sampler=sampler, num_samples=num_samples,
        power=power, shared=shared, num_codewords=num_codewords,
        refresh_every=refresh_every, chunk_size=chunk_size)
    self.remove_accidental_hits = remove_accidental_hits

  @property
  def options(self) -> dict[str, Any]:
    return dict(sorted({**super().options, "remove_accidental_hits":
                        self.remove_accidental_hits}.items()))

  def _objective(self, key, x, w, b, labels, **candidates):
    return _sampled.sampled_softmax_loss(
        key, x, w, b, labels,
        remove_accidental_hits=self.remove_accidental_hits, **candidates)


class _NCEHead(_SamplingHead):
  r"""``method="nce"``: noise-contrastive estimation, :math:`O(md)`.

  :func:`~jaxsoftmax.nce_loss`, with the options of the sampling heads and
  the ``"unigram"`` noise by default.
  """

  _method = "nce"
  _default_sampler = "unigram"

  def _objective(self, key, x, w, b, labels, **candidates):
    return _sampled.nce_loss(key, x, w, b, labels, **candidates)


class _NegativeSamplingHead(_SamplingHead):
  r"""``method="negative_sampling"``: word2vec's objective, :math:`O(md)`.

  :func:`~jaxsoftmax.negative_sampling_loss`, with the options of the
  sampling heads and the ``"unigram"`` noise by default.
  """

  _method = "negative_sampling"
  _default_sampler = "unigram"

  def _objective(self, key, x, w, b, labels, **candidates):
    return _sampled.negative_sampling_loss(key, x, w, b, labels,
                                           **candidates)


class _HierarchicalHead(LargeSoftmaxHead):
  r"""``method="hierarchical_<tree>"``: a binary tree of logistic classifiers.

  :func:`~jaxsoftmax.hierarchical_softmax_loss`: ``node_w`` ``[K - 1, d]``
  and ``node_b`` ``[K - 1]``, one classifier per internal node, and
  :math:`P(k \mid x)` the product of the branch probabilities on the path
  to :math:`k`; :math:`O(Hd)` per example on a Huffman tree (:math:`H` the
  entropy of the frequencies in bits), :math:`O(d \log_2 K)` on a balanced
  one.

  Args:
    num_features: :math:`d`.
    num_classes: :math:`K`.
    tree: ``"huffman"`` (:func:`~jaxsoftmax.huffman_tree` of the counts) or
      ``"balanced"`` (:func:`~jaxsoftmax.balanced_tree`).
    counts: ``[K]`` class frequencies; required by the Huffman tree.
    rngs: ``flax.nnx.Rngs`` for the initialization.
    param_dtype: dtype of the parameters.
  """

  _row_params = ("node_w", "node_b")

  def __init__(self, num_features: int, num_classes: int, *,
               tree: str = "huffman", counts: ArrayLike | None = None,
               rngs: nnx.Rngs, param_dtype: DTypeLike = jnp.float32):
    _check_choice("tree", tree, ("huffman", "balanced"))
    method = f"hierarchical_{tree}"
    super().__init__(num_features, num_classes, method=method, options={})
    huffman = tree == "huffman"
    counts = _check_counts(counts, num_classes,
                           f"method={method!r}" if huffman else None)
    tree = (_hierarchical.huffman_tree(counts) if huffman
            else _hierarchical.balanced_tree(num_classes))
    params = _hierarchical.hierarchical_init(rngs.params(), num_features,
                                             tree, dtype=param_dtype)
    self.tree = nnx.data(tree)
    self.node_w = nnx.Param(params["w"].T)
    self.node_b = nnx.Param(params["b"])

  def _rows_used(self, x, labels, key):
    return jnp.take(self.tree.nodes, labels, axis=0, mode="clip")

  def _nll(self, x, labels, tables):
    return _hierarchical.hierarchical_softmax_loss(
        x, tables["node_w"], labels, self.tree, node_b=tables["node_b"],
        reduction="none")

  def _log_probs(self, x):
    tables = self._tables(None)
    return _hierarchical.hierarchical_log_probs(
        x, tables["node_w"], self.tree, node_b=tables["node_b"])


class _ClassBasedHead(LargeSoftmaxHead):
  r"""``method="class_based"``: a softmax over clusters, then within one.

  :func:`~jaxsoftmax.class_based_softmax_loss`,
  :math:`P(k \mid x) = P(c(k) \mid x)\,P(k \mid c(k), x)`, :math:`O((C +
  S)d)` per example for :math:`C` clusters of at most :math:`S` words:
  ``cluster_w`` ``[d, C]`` and ``cluster_b`` ``[C]`` (updated densely: every
  step reads them all), ``w`` ``[K, d]`` and ``b`` ``[K]``, and the
  ``clusters`` (:func:`~jaxsoftmax.frequency_clusters` of the counts).

  Args:
    num_features: :math:`d`.
    num_classes: :math:`K`.
    counts: ``[K]`` class frequencies, required.
    rngs: ``flax.nnx.Rngs`` for the initialization.
    param_dtype: dtype of the parameters.
    num_clusters: :math:`C`, a positive int; None: :math:`\lceil\sqrt
      K\rceil`.
  """

  _row_params = ("w", "b")

  def __init__(self, num_features: int, num_classes: int, *,
               counts: ArrayLike | None = None, rngs: nnx.Rngs,
               param_dtype: DTypeLike = jnp.float32,
               num_clusters: int | None = None):
    super().__init__(num_features, num_classes, method="class_based",
                     options={"num_clusters": num_clusters})
    if num_clusters is not None:
      v.check_positive_int("num_clusters", num_clusters)
    counts = _check_counts(counts, num_classes, "method='class_based'")
    clusters = _class_based.frequency_clusters(counts, num_clusters)
    params = _class_based.class_based_init(rngs.params(), num_features,
                                            clusters, dtype=param_dtype)
    self.clusters = nnx.data(clusters)
    self.cluster_w = nnx.Param(params["cluster_w"])
    self.cluster_b = nnx.Param(params["cluster_b"])
    self.w = nnx.Param(params["w"].T)
    self.b = nnx.Param(params["b"])

  def _rows_used(self, x, labels, key):
    cluster = jnp.take(self.clusters.cluster, labels, mode="clip")
    return jnp.take(self.clusters.members, cluster, axis=0)

  def _params(self, tables: dict[str, Any]) -> dict[str, Any]:
    return {"cluster_w": self.cluster_w[...],
            "cluster_b": self.cluster_b[...], **tables}

  def _nll(self, x, labels, tables):
    return _class_based.class_based_softmax_loss(
        x, self._params(tables), labels, self.clusters, reduction="none")

  def _log_probs(self, x):
    return _class_based.class_based_log_probs(
        x, self._params(self._tables(None)), self.clusters)


# ``method -> (head class, the constructor arguments the method fixes)``.
_HEADS: dict[str, tuple[type[LargeSoftmaxHead], dict[str, Any]]] = {
    "full": (_FullSoftmaxHead, {}),
    "sampled": (_SampledSoftmaxHead, {}),
    "nce": (_NCEHead, {}),
    "negative_sampling": (_NegativeSamplingHead, {}),
    "hierarchical_huffman": (_HierarchicalHead, {"tree": "huffman"}),
    "hierarchical_balanced": (_HierarchicalHead, {"tree": "balanced"}),
    "class_based": (_ClassBasedHead, {}),
}

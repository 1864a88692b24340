r"""Next-word prediction at very large K: context model, output heads, training.

A small neural language model in the style of Bengio et al. (2003): a
:class:`ContextModel` embeds the ``context`` previous word ids and maps them
through one hidden layer to features :math:`x \in \mathbb{R}^d`; a
:class:`LargeSoftmaxHead` turns the features into a distribution over the
:math:`K` words of the vocabulary. The head is where the cost lies (the
logits alone are :math:`O(BKd)` per batch), so it comes in the seven
flavours of the library's very-large-K layer, all trained through the same
:meth:`LargeSoftmaxHead.loss` and all *evaluated exactly*:

- ``"full"``: :func:`~jaxsoftmax.fused_linear_cross_entropy`,
  :math:`O(Kd)` per example;
- ``"sampled"``: :func:`~jaxsoftmax.sampled_softmax_loss`, :math:`O(md)`;
- ``"nce"``: :func:`~jaxsoftmax.nce_loss`, :math:`O(md)`;
- ``"negative_sampling"``: :func:`~jaxsoftmax.negative_sampling_loss`,
  :math:`O(md)`;
- ``"hierarchical_huffman"`` / ``"hierarchical_balanced"``:
  :func:`~jaxsoftmax.hierarchical_softmax_loss` on a Huffman / balanced
  tree, :math:`O(Hd)` / :math:`O(d \log_2 K)`;
- ``"class_based"``: :func:`~jaxsoftmax.class_based_softmax_loss`,
  :math:`O((C + S)d)`

(:math:`m` candidates per batch, :math:`H` the entropy of the word
frequencies in bits, :math:`C` clusters of at most :math:`S` words.)
Whatever the training loss, :meth:`LargeSoftmaxHead.log_probs` and
:meth:`LargeSoftmaxHead.perplexity` use the model the head defines, normalized
over all :math:`K` words: the softmax of :math:`x^\top w + b` for the heads
with an output matrix, the product of branch probabilities for the trees, the
two-level softmax for the clusters. NCE and negative sampling train the same
scores but do not make them self-normalized (negative sampling does not even
aim at the likelihood: it learns :math:`s_k \approx \log(p_k / (m q_k))`), so
their perplexity is that of the full softmax of their scores, the only exact
number their parameters give; it is not the quantity they optimize.

:func:`train` runs the heads for a wall-clock budget: one jitted step that
draws its own mini-batch on the device, the optimizer from Optax through
``flax.nnx.Optimizer``, and held-out perplexity at checkpoints whose
evaluation time is kept out of the budget.

The optimizer update is dense: a sampled or tree head's gradient is zero
outside the gathered columns but is still a ``[d, K]`` array, and Adam moves
all of ``w`` through its moments, so every step costs at least
:math:`O(Kd)` memory traffic even when the loss costs :math:`O(md)`.

References:
  Y. Bengio, R. Ducharme, P. Vincent, C. Jauvin, "A neural probabilistic
  language model", JMLR 3 (2003); "Training multinomial logistic regression
  at scale", very large K (textbook chapter); J. Chen et al., "Adaptive sampled
  softmax with inverted multi-index" (2025).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike
import numpy as np
import optax

from jaxsoftmax import _fused
from jaxsoftmax import _gather
from jaxsoftmax import _hierarchical
from jaxsoftmax import _models
from jaxsoftmax import _numerics
from jaxsoftmax import _optim
from jaxsoftmax import _sampled
from jaxsoftmax import _step
from jaxsoftmax import _validation as v
from jaxsoftmax import reporting
from jaxsoftmax import samplers as _samplers
from jaxsoftmax import sparse

__all__ = [
    "METHODS",
    "SAMPLERS",
    "TRAIN_DEFAULTS",
    "ContextModel",
    "LargeSoftmaxHead",
    "TrainHistory",
    "train",
    "train_step",
]

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

#: ``method -> (batch size, Adam learning rate)``, :func:`train`'s defaults:
#: the fastest-learning settings measured at equal wall time (10 s, the full
#: GCIDE vocabulary, 2 CPU cores, row-sparse updates). Small batches, since
#: a row-sparse step costs a few milliseconds and more steps beat bigger
#: ones there; the trees take the smallest, as their per-row paths make
#: their step grow fastest with the batch.
TRAIN_DEFAULTS = {
    "full": (256, 2e-3),
    "sampled": (256, 5e-3),
    "nce": (256, 5e-3),
    "negative_sampling": (256, 5e-3),
    "hierarchical_huffman": (128, 5e-3),
    "hierarchical_balanced": (128, 5e-3),
    "class_based": (256, 5e-3),
}
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
}
_COMBINE = ("concat", "mean")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {value!r}.")


# ----------------------------------------------------------------------------
# The context encoder.
# ----------------------------------------------------------------------------


class ContextModel(nnx.Module):
  r"""Features of the next word from the ids of the ``context`` previous ones.

  .. math::
    x = \phi\big(W_h\, [e_{t-n}; \dots; e_{t-1}] + b_h\big)
    \quad\text{or}\quad
    x = \phi\Big(W_h\, \tfrac{1}{n} \textstyle\sum_{j=1}^{n} e_{t-j} + b_h\Big)

  for ``combine="concat"`` (word order kept, the default) or ``"mean"`` (a
  bag of words), where :math:`e_i` is the embedding of id :math:`i`,
  :math:`n` = ``context`` and :math:`\phi` is ``tanh`` or ``relu``. The
  padding / sentence-boundary id ``<s>`` of :class:`~jaxsoftmax.data.TextCorpus`
  is an ordinary id with its own embedding. Embeddings are
  :math:`\mathcal{N}(0, 1)`, the hidden layer LeCun normal (``flax.nnx``
  defaults).

  Out-of-range ids raise ``ValueError`` on eager calls; under ``jit`` their
  embedding, hence their row of features, is NaN.

  Args:
    vocab_size: number of input ids :math:`V` (the corpus's :math:`K`).
    context: :math:`n`, ids per example.
    embed_dim: embedding width.
    hidden_dim: :math:`d`, the width of the features.
    combine: ``"concat"`` or ``"mean"``.
    activation: ``"tanh"`` or ``"relu"``.
    param_dtype: dtype of the parameters.
    rngs: ``flax.nnx.Rngs`` for the initialization.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxsoftmax.large_vocab import ContextModel
    >>> model = ContextModel(100, 3, 8, 16, rngs=nnx.Rngs(0))
    >>> model(jnp.array([[1, 2, 3], [0, 0, 99]])).shape
    (2, 16)

  References:
    Y. Bengio, R. Ducharme, P. Vincent, C. Jauvin, "A neural probabilistic
    language model", JMLR 3 (2003).
  """

  def __init__(
      self,
      vocab_size: int,
      context: int,
      embed_dim: int,
      hidden_dim: int,
      *,
      combine: str = "concat",
      activation: str = "tanh",
      param_dtype: DTypeLike = jnp.float32,
      rngs: nnx.Rngs,
  ):
    for name, size in (("vocab_size", vocab_size), ("context", context),
                       ("embed_dim", embed_dim), ("hidden_dim", hidden_dim)):
      v.check_positive_int(name, size)
    _check_choice("combine", combine, _COMBINE)
    _check_choice("activation", activation, tuple(_ACTIVATIONS))
    self.vocab_size = int(vocab_size)
    self.context = int(context)
    self.hidden_dim = int(hidden_dim)
    self.combine = combine
    self.activation = activation
    self.embed = nnx.Embed(vocab_size, embed_dim, param_dtype=param_dtype,
                           rngs=rngs)
    width = context * embed_dim if combine == "concat" else embed_dim
    self.hidden = nnx.Linear(width, hidden_dim, param_dtype=param_dtype,
                             rngs=rngs)

  def __call__(self, ids: ArrayLike) -> jax.Array:
    """Features ``[batch, hidden_dim]`` of ids ``[batch, context]``."""
    ids = jnp.asarray(ids)
    v.check_integer("ids", ids)
    v.check_rank("ids", ids, 2, "[batch, context]")
    if ids.shape[1] != self.context:
      raise ValueError(
          f"ids must have shape [batch, {self.context}] (the model's"
          f" context); got {ids.shape}."
      )
    v.check_labels_in_range("ids", ids, self.vocab_size)
    return self.encode(self.embed(ids))

  def encode(self, embeddings: jax.Array) -> jax.Array:
    """Features ``[batch, hidden_dim]`` of the context's embedding rows.

    What calling the model computes after its lookup, for a step that
    gathers the rows itself (:func:`train_step`'s row-sparse updates).

    Args:
      embeddings: ``[batch, context, embed_dim]``.
    """
    e = embeddings
    if self.combine == "concat":
      e = e.reshape(e.shape[0], -1)
    else:
      e = jnp.mean(e, axis=1)
    return _ACTIVATIONS[self.activation](self.hidden(e))


# ----------------------------------------------------------------------------
# The output heads.
# ----------------------------------------------------------------------------


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
    ids, _, _ = _sampled._candidates(
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
    clusters = _hierarchical.frequency_clusters(counts, num_clusters)
    params = _hierarchical.class_based_init(rngs.params(), num_features,
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
    return _hierarchical.class_based_softmax_loss(
        x, self._params(tables), labels, self.clusters, reduction="none")

  def _log_probs(self, x):
    return _hierarchical.class_based_log_probs(
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


# ----------------------------------------------------------------------------
# Training under a wall-clock budget.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class TrainHistory:
  """What :func:`train` measured; plain lists, JSON-friendly.

  Entry ``i`` of ``seconds``, ``steps``, ``perplexity`` and ``train_loss``
  belongs to evaluation ``i``; evaluation 0 is the initial model.

  Attributes:
    seconds: training wall-clock seconds before each evaluation (the sum of
      the steps' times: compilation and evaluation excluded).
    steps: optimizer steps before each evaluation.
    perplexity: held-out exact perplexity at each evaluation.
    train_loss: mean mini-batch training loss since the previous evaluation
      (NaN at evaluation 0).
    step_seconds: wall-clock seconds of every step, in order.
    compile_seconds: time to compile the step and the evaluation, and to
      run one throwaway warm-up step.
    eval_seconds: total time spent evaluating.
    refreshes: how many times an adaptive (MIDX) proposal was rebuilt.
    refresh_seconds: the time those rebuilds took; counted in ``seconds``
      (and the budget), since they are part of the method's cost.
    memory: XLA's memory analysis of the compiled step, in bytes:
      ``{"argument", "output", "temp", "total"}`` as
      :func:`jaxsoftmax.reporting.compiled_memory` reports it (read from the
      executable the run used, so the step compiles once).
    batch_size: rows per step (the method's default unless one was given),
      for examples per second: ``steps[-1] * batch_size / seconds[-1]``.
  """

  seconds: list[float] = dataclasses.field(default_factory=list)
  steps: list[int] = dataclasses.field(default_factory=list)
  perplexity: list[float] = dataclasses.field(default_factory=list)
  train_loss: list[float] = dataclasses.field(default_factory=list)
  step_seconds: list[float] = dataclasses.field(default_factory=list)
  compile_seconds: float = 0.0
  eval_seconds: float = 0.0
  refreshes: int = 0
  refresh_seconds: float = 0.0
  memory: dict[str, int] = dataclasses.field(default_factory=dict)
  batch_size: int = 0

  @property
  def median_step_seconds(self) -> float:
    """Median step time; NaN if no step ran."""
    if not self.step_seconds:
      return math.nan
    return float(statistics.median(self.step_seconds))

  def to_dict(self) -> dict[str, Any]:
    """The fields as a dict (``json.dumps``-able), with the median step."""
    return {**dataclasses.asdict(self),
            "median_step_seconds": self.median_step_seconds}


def _check_pair(model_and_head: Any) -> tuple[ContextModel, LargeSoftmaxHead]:
  if (not isinstance(model_and_head, tuple) or len(model_and_head) != 2
      or not isinstance(model_and_head[0], ContextModel)
      or not isinstance(model_and_head[1], LargeSoftmaxHead)):
    raise TypeError(
        "model_and_head must be a tuple (ContextModel, LargeSoftmaxHead); got"
        f" {type(model_and_head).__name__}."
    )
  model, head = model_and_head
  if model.hidden_dim != head.num_features:
    raise ValueError(
        f"the ContextModel's hidden_dim ({model.hidden_dim}) must equal the"
        f" head's num_features ({head.num_features})."
    )
  return model, head


def train_step(
    model_and_head: tuple[ContextModel, LargeSoftmaxHead],
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    dense_updates: bool = False,
) -> tuple[Callable[..., tuple[Any, jax.Array]], Any, Any]:
  r"""A pure training step for ``(model, head)`` and its initial state.

  ``step(variables, data, x_train, y_train, key, index) -> (variables,
  loss)`` draws ``batch_size`` rows uniformly with replacement from the
  training arrays (on the device, with ``fold_in(key, index)``, which also
  seeds the head's candidates), takes the gradient of
  :meth:`LargeSoftmaxHead.loss` with respect to every ``nnx.Param`` of the
  model and the head, and applies ``optimizer``: one step of
  :func:`jaxsoftmax._step.make_train_step`.

  By default the update is **row-sparse**: the step gathers the rows of the
  context's input embeddings and of the head's tables
  (:attr:`LargeSoftmaxHead.row_params`) that the batch uses
  (:meth:`LargeSoftmaxHead.rows_used`),
  differentiates the loss with respect to those rows only, and applies
  ``optimizer`` to them and to the dense parameters (the hidden layer, the
  class-based cluster layer) through :func:`jaxsoftmax.sparse.apply_updates`,
  so its cost does not grow with :math:`K`. That is exact for SGD and
  Adagrad and makes Adam lazy (see :mod:`jaxsoftmax.sparse`).
  ``dense_updates=True`` takes the gradient of every parameter as a dense
  array and applies ``optimizer`` to all of them: the reference the sparse
  path is compared with, whose cost grows as :math:`O(Kd)`. Neither guards
  against non-finite values (that would read every row); :func:`train`
  checks each step's loss.

  ``variables`` is what a step changes (parameters and optimizer state), so
  it can be donated (``jax.jit(step, donate_argnums=0)``, as :func:`train`
  does); ``data`` is the head's tree, clusters or sampler tables, constant.
  The training arrays are arguments, never closed over, so they are not
  baked into the program. The step is also what to hand to
  :func:`jaxsoftmax.reporting.compiled_memory`.

  Args:
    model_and_head: ``(ContextModel, LargeSoftmaxHead)``.
    optimizer: an Optax transformation, e.g. from
      :func:`~jaxsoftmax.make_optimizer`; with row-sparse updates its state
      must hold per-parameter copies (every optimizer but the factored
      ones).
    batch_size: rows per step.
    dense_updates: use the dense gradients and update.

  Returns:
    ``(step, variables, data)``. ``variables[0]`` and ``variables[1]`` hold
    the model's and the head's parameters (``variables[2]`` the optimizer
    state): ``nnx.update(model, variables[0])`` writes trained ones back.

  Examples:
    >>> import optax
    >>> from flax import nnx
    >>> from jaxsoftmax.large_vocab import (ContextModel, LargeSoftmaxHead,
    ...                                     train_step)
    >>> pair = (ContextModel(20, 2, 4, 8, rngs=nnx.Rngs(0)),
    ...         LargeSoftmaxHead(8, 20, method="sampled", num_samples=4,
    ...                          rngs=nnx.Rngs(1)))
    >>> step, variables, data = train_step(pair, optax.adam(1e-2),
    ...                                    batch_size=4)
    >>> sorted(variables[1]), variables[2][0].mu[1]["w"].shape
    (['b', 'w'], (20, 8))
  """
  model, head = _check_pair(model_and_head)
  v.check_positive_int("batch_size", batch_size)
  if not isinstance(dense_updates, bool):
    raise TypeError(f"dense_updates must be a bool; got {dense_updates!r}.")
  step, variables, data, _ = _build_step(model, head, optimizer, batch_size,
                                         dense_updates)
  return step, variables, data


def _batch(x_train, y_train, key, index, batch_size):
  """The step's rows (with replacement) and the key of its candidates."""
  k_batch, k_loss = jax.random.split(jax.random.fold_in(key, index))
  rows = jax.random.randint(k_batch, (batch_size,), 0, y_train.shape[0])
  return x_train[rows], y_train[rows], k_loss


def _is_rows(a: Any) -> bool:
  return isinstance(a, _gather.Rows)


def _build_step(model, head, optimizer, batch_size, dense_updates):
  """``(step, variables, data, merge)`` of :func:`train_step`.

  ``merge(params, data) -> (model, head)`` reads the modules back from the
  parameters ``variables[:2]`` and ``data``.
  """
  graphdef, params, data = nnx.split((model, head), nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  params = (params[0], params[1])
  if not dense_updates:
    # Fail at build time, not inside the first traced step.
    sparse.check_optimizer(optimizer, params)
  row_params = head.row_params

  def merge(params, data):
    return nnx.merge(graphdef, {0: params[0], 1: params[1]}, data)

  def step(variables, data, x_train, y_train, key, index):
    params, opt_state = variables[:2], variables[2]
    ids, labels, k_loss = _batch(x_train, y_train, key, index, batch_size)

    def loss_fn(p, batch, key):
      ids, labels = batch
      if dense_updates:
        model, head = merge(p, data)
        return head.loss(model(ids), labels, key=key)
      # The modules keep the whole tables, which a proposal such as
      # MIDX-exact scores without a gradient; the views carry the gradient.
      model, head = merge(jax.tree.map(
          lambda a, whole: whole if _is_rows(a) else a, p, params,
          is_leaf=_is_rows), data)
      rows, _ = _gather.lookup(p[0]["embed"]["embedding"], ids)
      return head.loss(model.encode(rows), labels, key=key,
                       tables={n: p[1][n] for n in row_params})

    def rows_fn(p, batch, key):
      ids, labels = batch
      model, head = merge(p, data)
      # One ids array for all the head's tables: they share one sort.
      used = head.rows_used(model(ids), labels, key=key)
      return {(0, "embed", "embedding"): ids,
              **{(1, name): used for name in row_params}}

    train = _step.make_train_step(
        loss_fn, optimizer, rows_fn=None if dense_updates else rows_fn,
        guard=False)
    params, opt_state, metrics = train(params, opt_state, (ids, labels),
                                       k_loss)
    return (*params, opt_state), metrics["loss"]

  return step, (*params, optimizer.init(params)), data, merge


def _eval_subset(corpus: Any, eval_examples: int | None) -> tuple[Any, Any]:
  """A fixed, seeded subset of the test examples (all with ``None``)."""
  n = len(corpus.y_test)
  if eval_examples is None or eval_examples >= n:
    return corpus.x_test, corpus.y_test
  # The test side is ordered by document; a random subset keeps its mix of
  # entries. Seed 0 whatever the run, so every method sees the same rows.
  rows = np.sort(np.random.default_rng(0).choice(n, eval_examples,
                                                 replace=False))
  return corpus.x_test[rows], corpus.y_test[rows]


def train(
    model_and_head: tuple[ContextModel, LargeSoftmaxHead],
    corpus: Any,
    *,
    key: jax.Array,
    budget_seconds: float | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    num_checkpoints: int = 4,
    eval_examples: int | None = 4096,
    eval_batch_size: int = 1024,
    dense_updates: bool = False,
) -> TrainHistory:
  r"""Trains ``(model, head)`` on a text corpus for a wall-clock budget.

  The step of :func:`train_step` is compiled ahead of time and run once on
  a copy of the variables (neither is counted), then run until the summed
  step times reach ``budget_seconds`` or ``max_steps`` steps are done,
  whichever comes first. The held-out exact
  perplexity (:meth:`LargeSoftmaxHead.perplexity` on a fixed seeded subset
  of ``eval_examples`` test rows, the same for every run) is measured before
  the first step and at ``num_checkpoints`` evenly spaced points of the
  budget (of ``max_steps`` when there is no time budget); evaluation is not
  counted in the budget. An adaptive (MIDX) head rebuilds its proposal from
  the current ``w`` every ``refresh_every`` steps (its option; default once
  per epoch of the training rows), and that time is counted in the budget
  as part of the method's cost. Each step is blocked on, so ``step_seconds`` are
  true per-step times. The modules are updated in place with the trained
  parameters.

  Args:
    model_and_head: ``(ContextModel, LargeSoftmaxHead)``; the head's
      ``num_classes`` must match the corpus.
    corpus: a :class:`~jaxsoftmax.data.TextCorpus`.
    key: a ``jax.random`` key for the mini-batches and candidates.
    budget_seconds: training time budget in seconds (> 0), or None.
    max_steps: step limit, or None; at least one of the two limits is
      required.
    batch_size: rows per step; default :data:`TRAIN_DEFAULTS` of the
      method.
    optimizer: an Optax transformation; default Adam (lazy, with row-sparse
      updates) at the method's learning rate in :data:`TRAIN_DEFAULTS`.
    num_checkpoints: evaluations after the initial one.
    eval_examples: held-out rows to evaluate on, or None for all.
    eval_batch_size: rows per evaluation block.
    dense_updates: dense gradients and updates instead of the row-sparse
      ones (see :func:`train_step`), for comparison.

  Returns:
    A :class:`TrainHistory`.

  Raises:
    FloatingPointError: a step's loss was NaN or infinite (the modules keep
      the parameters of that step).

  Examples:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxsoftmax.data import build_text_corpus
    >>> from jaxsoftmax.large_vocab import ContextModel, LargeSoftmaxHead, train
    >>> corpus = build_text_corpus(["the cat sat. the dog sat."] * 4,
    ...                            context=2, block_size=1, test_fraction=0.3)
    >>> pair = (ContextModel(corpus.num_classes, 2, 4, 8, rngs=nnx.Rngs(0)),
    ...         LargeSoftmaxHead(8, corpus.num_classes,
    ...                          method="hierarchical_balanced",
    ...                          rngs=nnx.Rngs(1)))
    >>> history = train(pair, corpus, key=jax.random.key(0), max_steps=30,
    ...                 batch_size=8, num_checkpoints=1)
    >>> history.steps, history.perplexity[-1] < history.perplexity[0]
    ([0, 30], True)
  """
  model, head = _check_pair(model_and_head)
  _check_train(model, head, corpus, key, budget_seconds, max_steps,
               num_checkpoints, eval_examples)
  default_batch, default_lr = TRAIN_DEFAULTS[head.method]
  batch_size = default_batch if batch_size is None else batch_size
  if optimizer is None:
    optimizer = _optim.make_optimizer("adam", default_lr)
  v.check_positive_int("batch_size", batch_size)
  if not isinstance(dense_updates, bool):
    raise TypeError(f"dense_updates must be a bool; got {dense_updates!r}.")
  step, variables, data, merge = _build_step(model, head, optimizer,
                                             batch_size, dense_updates)
  # The non-trainable data must not share buffers with the parameters the
  # step donates (a MIDX-exact index holds w itself).
  data = jax.tree.map(jnp.copy, data)

  def evaluate(variables, data, ids, labels):
    model, head = merge(variables[:2], data)
    return head.perplexity(model(ids), labels, batch_size=eval_batch_size)

  def refresh(variables, data):
    model, head = merge(variables[:2], data)
    head.refresh_sampler()
    return nnx.split((model, head), nnx.Param, ...)[2]

  refresh_every = None
  if head.adaptive:
    refresh_every = (head.options["refresh_every"]
                     or math.ceil(len(corpus.y_train) / batch_size))
  arrays = (jnp.asarray(corpus.x_train), jnp.asarray(corpus.y_train), key)
  evals = tuple(jnp.asarray(a) for a in _eval_subset(corpus, eval_examples))
  index = jnp.zeros((), jnp.int32)
  t0 = time.perf_counter()
  run = jax.jit(step, donate_argnums=0).lower(
      variables, data, *arrays, index).compile()
  score = jax.jit(evaluate).lower(variables, data, *evals).compile()
  rebuild = (jax.jit(refresh).lower(variables, data).compile()
             if refresh_every else None)
  # The first execution of a CPU executable is several times slower than the
  # next ones (one-time set-up in the runtime); a throwaway step on a copy of
  # the variables keeps that out of the budget and the step times.
  warm, _ = run(jax.tree.map(jnp.copy, variables), data, *arrays, index)
  jax.block_until_ready(warm)
  del warm
  history = TrainHistory(compile_seconds=time.perf_counter() - t0,
                         memory=reporting.executable_memory(run),
                         batch_size=batch_size)
  state = {"variables": variables, "data": data}
  try:
    _train_loop(
        state, history, run=lambda s, i: run(*s, *arrays, index + i),
        score=lambda s: score(*s, *evals),
        rebuild=None if rebuild is None else (refresh_every, rebuild),
        limits=(budget_seconds, max_steps, num_checkpoints),
        method=head.method)
  finally:
    # Donation invalidated the parameter arrays the modules were split from.
    nnx.update(model, state["variables"][0])
    nnx.update(head, state["variables"][1])
    if rebuild is not None:
      head.sampler = merge(state["variables"][:2], state["data"])[1].sampler
  return history


def _check_train(model, head, corpus, key, budget_seconds, max_steps,
                 num_checkpoints, eval_examples) -> None:
  """:func:`train`'s checks of its limits and of the corpus."""
  v.check_prng_key("key", key)
  if budget_seconds is None and max_steps is None:
    raise ValueError("train needs a limit: pass budget_seconds, max_steps or"
                     " both; got neither.")
  if budget_seconds is not None:
    v.check_positive("budget_seconds", budget_seconds)
  if max_steps is not None:
    v.check_positive_int("max_steps", max_steps)
  v.check_positive_int("num_checkpoints", num_checkpoints)
  if eval_examples is not None:
    v.check_positive_int("eval_examples", eval_examples)
  if head.num_classes != corpus.num_classes:
    raise ValueError(
        f"the head has {head.num_classes} classes but the corpus has"
        f" {corpus.num_classes} (len(corpus.vocab)); build the head with"
        " num_classes=corpus.num_classes."
    )
  if corpus.x_train.shape[1] != model.context:
    raise ValueError(
        f"the ContextModel reads {model.context} ids but corpus.x_train has"
        f" shape {corpus.x_train.shape}; build it with"
        f" context={corpus.x_train.shape[1]}."
    )
  v.check_labels_in_range("corpus.x_train", corpus.x_train, model.vocab_size)


def _train_loop(state, history, *, run, score, rebuild, limits, method):
  """:func:`train`'s steps and evaluations, in place on ``state``.

  ``state`` holds ``"variables"`` and ``"data"`` (updated after every step,
  so the caller writes the latest back even when a step fails);
  ``run((variables, data), i)`` is step ``i``, ``score((variables, data))``
  the perplexity, ``rebuild`` None or ``(every, rebuild(variables, data))``
  and ``limits`` ``(budget_seconds, max_steps, num_checkpoints)``.
  """
  budget_seconds, max_steps, num_checkpoints = limits

  def checkpoint(train_seconds, steps, losses):
    t = time.perf_counter()
    ppl = float(score((state["variables"], state["data"])))
    history.eval_seconds += time.perf_counter() - t
    history.seconds.append(train_seconds)
    history.steps.append(steps)
    history.perplexity.append(ppl)
    history.train_loss.append(float(np.mean(losses)) if losses else math.nan)

  checkpoint(0.0, 0, [])
  train_seconds, steps = 0.0, 0
  for i in range(1, num_checkpoints + 1):
    losses = []
    while ((budget_seconds is None
            or train_seconds < budget_seconds * i / num_checkpoints)
           and (max_steps is None
                or steps < math.ceil(max_steps * i / num_checkpoints))):
      t = time.perf_counter()
      state["variables"], loss = run((state["variables"], state["data"]),
                                     steps)
      loss = float(loss)
      dt = time.perf_counter() - t
      if not math.isfinite(loss):
        raise FloatingPointError(
            f"method={method!r}: the training loss at step {steps + 1}"
            f" is {loss}; lower the learning rate."
        )
      train_seconds += dt
      steps += 1
      if rebuild is not None and steps % rebuild[0] == 0:
        t = time.perf_counter()
        # Copied: a rebuilt MIDX-exact index holds w itself, and the
        # next step donates the variables' buffers.
        state["data"] = jax.block_until_ready(jax.tree.map(
            jnp.copy, rebuild[1](state["variables"], state["data"])))
        history.refresh_seconds += time.perf_counter() - t
        history.refreshes += 1
        train_seconds += time.perf_counter() - t
      history.step_seconds.append(dt)
      losses.append(loss)
    checkpoint(train_seconds, steps, losses)
    if max_steps is not None and steps >= max_steps:
      break

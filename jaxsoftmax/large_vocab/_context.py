"""The context model: an embedding bag (or concatenation) of the previous
tokens and a hidden layer, the input of every head (see
:mod:`jaxsoftmax.large_vocab`)."""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from jaxsoftmax._core import validation as v
from jaxsoftmax.large_vocab._heads import _check_choice


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
}


_COMBINE = ("concat", "mean")


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

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

from jaxsoftmax.large_vocab._heads import LargeSoftmaxHead as LargeSoftmaxHead
from jaxsoftmax.large_vocab._heads import METHODS as METHODS
from jaxsoftmax.large_vocab._heads import SAMPLERS as SAMPLERS
from jaxsoftmax.large_vocab._context import ContextModel as ContextModel
from jaxsoftmax.large_vocab import _train
from jaxsoftmax.large_vocab._train import TrainHistory as TrainHistory
from jaxsoftmax.large_vocab._train import train as train
from jaxsoftmax.large_vocab._train import train_step as train_step

#: ``method -> (batch size, Adam learning rate)``, :func:`train`'s defaults:
#: the fastest-learning settings measured at equal wall time (10 s, the full
#: GCIDE vocabulary, 2 CPU cores, row-sparse updates). Small batches, since
#: a row-sparse step costs a few milliseconds and more steps beat bigger
#: ones there; the trees take the smallest, as their per-row paths make
#: their step grow fastest with the batch.
TRAIN_DEFAULTS = _train.TRAIN_DEFAULTS

__all__ = [
    "ContextModel",
    "LargeSoftmaxHead",
    "METHODS",
    "SAMPLERS",
    "TRAIN_DEFAULTS",
    "TrainHistory",
    "train",
    "train_step",
]

r"""Proposal distributions over classes for sampled softmax, NCE and negatives.

A sampler is a pytree (a frozen dataclass registered with
``jax.tree_util.register_dataclass``): its tables are array leaves and its
sizes are static, so it can be passed through ``jit``, closed over, or
``vmap``-ed over keys. Every sampler answers two questions, for one query
vector or for a batch of them:

- ``sample(key, queries, num_samples, *, replace=True) -> (ids, log_q)``
- ``log_prob(queries, ids) -> log_q``, the per-draw log-probability
  :math:`\log q(k \mid x)`.

``queries`` is ``[..., d]`` (one candidate set per query: ``ids`` is
``[..., num_samples]``) or ``None`` (one candidate set shared by the batch:
``ids`` is ``[num_samples]``). The samplers here are *static*: their
distribution ignores the query's values. A query-dependent sampler (such as
the MIDX sampler, whose proposal is built from the query's product-quantized
score) subclasses :class:`Sampler` with ``query_dependent = True`` and
implements the same two per-query hooks; it inherits the batching and the
without-replacement path unchanged.

What ``log_q`` means:

- ``replace=True``: the ``num_samples`` ids are i.i.d. draws from
  :math:`q`, and ``log_q`` is :math:`\log q(k)`, normalized over the
  ``num_classes`` classes. Each draw costs O(1).
- ``replace=False``: the ids are distinct and ``log_q`` is the log of the
  id's *inclusion probability* :math:`\pi_k` (see :meth:`Sampler.sample`), the
  quantity a Horvitz-Thompson estimator divides by. It is not normalized:
  :math:`\sum_k \pi_k \approx` ``num_samples``. Slots that could not be filled
  (see ``max_draws``) hold id 0 with ``log_q = +inf``, that is weight
  :math:`1 / \pi = 0`.

The losses in ``jaxsoftmax`` turn either into an expected count: :math:`m
q(k)` with replacement, :math:`\pi_k` without.

References:
  A. J. Walker, "An efficient method for generating discrete random variables
  with general distributions", ACM TOMS 3(3) (1977); M. D. Vose, "A linear
  algorithm for generating random numbers with a given distribution", IEEE
  TSE 17(9) (1991); W. Kool, H. van Hoof, M. Welling, "Stochastic beams and
  where to find them: the Gumbel-top-k trick for sampling sequences without
  replacement", ICML (2019); N. Duffield, C. Lund, M. Thorup, "Priority
  sampling for estimation of arbitrary subset sums", JACM 54(6) (2007);
  TensorFlow's ``log_uniform_candidate_sampler`` and
  ``fixed_unigram_candidate_sampler``.
"""

from jaxsoftmax.samplers._base import AliasSampler as AliasSampler
from jaxsoftmax.samplers._base import Sampler as Sampler
from jaxsoftmax.samplers._static import UniformSampler as UniformSampler
from jaxsoftmax.samplers._static import log_uniform as log_uniform
from jaxsoftmax.samplers._static import uniform as uniform
from jaxsoftmax.samplers._static import unigram as unigram
from jaxsoftmax.samplers._midx import MidxSampler as MidxSampler
from jaxsoftmax.samplers._midx import midx as midx

__all__ = [
    "AliasSampler",
    "MidxSampler",
    "Sampler",
    "UniformSampler",
    "log_uniform",
    "midx",
    "uniform",
    "unigram",
]

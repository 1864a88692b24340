"""Samplers whose proposal ignores the query: uniform, log-uniform (Zipf) and
unigram.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from jaxsoftmax.samplers._base import (
    AliasSampler,
    Sampler,
    _FLOAT,
    _INDEX,
    _alias_sampler,
    _check_num_classes,
    count_log_weights,
)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[],
    meta_fields=["num_classes"],
)
@dataclasses.dataclass(frozen=True)
class UniformSampler(Sampler):
  """:math:`q(k) = 1/K`; see :func:`uniform`."""

  num_classes: int

  @property
  def support_size(self) -> int:
    return self.num_classes

  def _draw(self, key, query, n):
    return jax.random.randint(key, (n,), 0, self.num_classes, dtype=_INDEX)

  def _log_prob(self, query, ids):
    in_range = (ids >= 0) & (ids < self.num_classes)
    return jnp.where(in_range, -math.log(self.num_classes), jnp.nan).astype(
        _FLOAT
    )


def uniform(num_classes: int) -> UniformSampler:
  r"""The uniform proposal, :math:`q(k) = 1/K`.

  Draws cost O(1) (one ``randint``); the sampler holds no arrays. With
  sampled softmax it needs many samples when the model's distribution is
  far from uniform (the correction :math:`-\log(m/K)` is the same for every
  class).

  Args:
    num_classes: :math:`K \ge 1`.

  Returns:
    A :class:`UniformSampler`.

  Examples:
    >>> import jax
    >>> from jaxsoftmax import samplers
    >>> ids, log_q = samplers.uniform(10).sample(jax.random.key(0), None, 3)
    >>> print(ids.shape, f"{float(log_q[0]):.4f}")  # log(1/10)
    (3,) -2.3026

  References:
    S. Jean, K. Cho, R. Memisevic, Y. Bengio, "On using very large target
    vocabulary for neural machine translation", ACL (2015).
  """
  return UniformSampler(_check_num_classes(num_classes))


def log_uniform(num_classes: int) -> AliasSampler:
  r"""The log-uniform (Zipfian) proposal of TensorFlow's candidate sampler.

  .. math::
    q(k) = \frac{\log(k + 2) - \log(k + 1)}{\log(K + 1)}, \qquad
    k = 0, \dots, K - 1,

  roughly :math:`1 / ((k + 1) \ln K)`: it suits classes sorted by decreasing
  frequency (word ids by rank), as in TensorFlow's
  ``log_uniform_candidate_sampler``. TensorFlow inverts the closed-form CDF
  in float64; in float32 that cannot resolve the tail classes (probability
  ~1e-7 at K = 1e6), so the distribution is tabulated once, O(K), and drawn
  with the alias method, O(1) per draw.

  Args:
    num_classes: :math:`K \ge 1`.

  Returns:
    An :class:`AliasSampler`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import samplers
    >>> s = samplers.log_uniform(3)
    >>> print(jnp.round(jnp.exp(s.log_prob(None, jnp.arange(3))), 4))
    [0.5    0.2925 0.2075]

  References:
    TensorFlow, ``tf.random.log_uniform_candidate_sampler``; T. Mikolov et
    al., "Distributed representations of words and phrases and their
    compositionality", NeurIPS (2013).
  """
  k = _check_num_classes(num_classes)
  ranks = np.arange(k, dtype=np.float64)
  log_p = np.log(np.log1p(1.0 / (ranks + 1.0))) - np.log(np.log(k + 1.0))
  return _alias_sampler(log_p)


def unigram(counts: ArrayLike, *, power: float = 0.75) -> AliasSampler:
  r"""The smoothed unigram proposal, :math:`q(k) \propto c_k^{\alpha}`.

  .. math::
    q(k) = \frac{c_k^{\alpha}}{\sum_j c_j^{\alpha}}

  with :math:`\alpha` = ``power``: 1 is the empirical class frequency, 0.75
  the word2vec choice (it flattens the head so rare classes are drawn more
  often), 0 uniform over the classes seen. Classes with :math:`c_k = 0`
  get :math:`q(k) = 0` for every power. The table is built once, on the host,
  O(K); draws are O(1) with the alias method.

  Args:
    counts: ``[K]`` non-negative finite counts (or weights), not all zero;
      concrete (build the sampler outside ``jit``).
    power: :math:`\alpha \ge 0`, a Python float.

  Returns:
    An :class:`AliasSampler`.

  Raises:
    TypeError: traced or non-numeric ``counts``.
    ValueError: wrong rank, empty, negative, non-finite or all-zero counts,
      or a negative power.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import samplers
    >>> s = samplers.unigram(jnp.array([3.0, 1.0, 0.0]), power=1.0)
    >>> print(jnp.exp(s.log_prob(None, jnp.arange(3))))
    [0.75 0.25 0.  ]

  References:
    T. Mikolov et al., "Distributed representations of words and phrases
    and their compositionality", NeurIPS (2013); TensorFlow,
    ``tf.random.fixed_unigram_candidate_sampler`` (``distortion``).
  """
  return _alias_sampler(count_log_weights(counts, power))

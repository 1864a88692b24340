r"""How good is a sampler's proposal? Divergences, ESS and gradient bias.

Sampled softmax replaces the :math:`K`-term normalizer of the softmax
:math:`p(k \mid x) = e^{s_k} / \sum_j e^{s_j}`, :math:`s = x^\top w + b`, by
an importance-sampling estimate over draws from a proposal :math:`q(k \mid
x)` (a :class:`jaxsoftmax.samplers.Sampler`). The closer :math:`q` is to
:math:`p`, the smaller the estimator's variance and the bias it leaves in the
gradient. This module measures that on a given model, the same way for every
sampler, static (uniform, log-uniform, unigram) or query-dependent (MIDX), so
that proposals can be compared side by side:

- :func:`proposal_divergence`: :math:`\mathrm{KL}(q \,\|\, p)` and
  :math:`\mathrm{KL}(p \,\|\, q)` per query;
- :func:`importance_ess`: the effective-sample-size fraction of importance
  sampling from :math:`q` for the target :math:`p`, per query;
- :func:`gradient_bias`: the bias, variance and direction of the
  sampled-softmax gradient against the exact one, over repeated keys.

The first two are exact (no sampling): they evaluate :math:`q` and
:math:`p` on all :math:`K` classes, in blocks of queries so memory is
O(``block_size`` K). They are computed in the promotion of the logits' and
:math:`\log q`'s dtypes (float64 for float64 inputs, even though the static
samplers store float32 tables), and :math:`q` is renormalized over the
:math:`K` classes in that dtype first, so the float32 rounding of a table does
not show up as a spurious divergence of ~1e-7.

References:
  A. Kong, "A note on importance sampling using standardized weights",
  Technical Report 348, Dept. of Statistics, University of Chicago (1992);
  A. B. Owen, "Monte Carlo theory, methods and examples", ch. 9 (2013);
  Y. Bengio, J.-S. Senécal, "Adaptive importance sampling to accelerate
  training of a neural probabilistic language model", IEEE TNN 19(4) (2008);
  J. Chen et al., "Adaptive sampled softmax with inverted multi-index:
  methods, theory and applications", (2025).
"""

from jaxsoftmax.evaluation._diagnostics import Divergence as Divergence
from jaxsoftmax.evaluation._diagnostics import GradientBias as GradientBias
from jaxsoftmax.evaluation._diagnostics import gradient_bias as gradient_bias
from jaxsoftmax.evaluation._diagnostics import importance_ess as importance_ess
from jaxsoftmax.evaluation._diagnostics import proposal_divergence as proposal_divergence

__all__ = [
    "Divergence",
    "GradientBias",
    "gradient_bias",
    "importance_ess",
    "proposal_divergence",
]

"""Stable softmax pieces and the dtype policy shared by every loss.

Dtype policy: inputs in float16 / bfloat16 are *computed* in their own dtype
where that is a memory win (matmuls, storage) but every reduction over classes
(max, sum of exponentials, log-sum-exp) and every loss value is *accumulated*
in float32. float32 and float64 inputs are accumulated in their own dtype.

Masking convention: a logit of ``-inf`` marks a class as impossible for that
row. Such a class gets probability exactly 0 and gradient exactly 0. A row
whose logits are all ``-inf`` has no valid class; it has log-sum-exp ``-inf``
and the losses treat it as an ignored row (loss 0, gradient 0) rather than
returning NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike


def accumulation_dtype(dtype: DTypeLike) -> jnp.dtype:
  """The dtype reductions over ``dtype`` inputs are carried out in.

  Args:
    dtype: a floating dtype.

  Returns:
    ``float32`` for float16 / bfloat16 (and anything narrower), else ``dtype``.
  """
  dtype = jnp.dtype(dtype)
  if jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype


def upcast(x: jax.Array) -> jax.Array:
  """``x`` cast to its accumulation dtype (a no-op for float32 / float64)."""
  return x.astype(accumulation_dtype(x.dtype))


def logsumexp(logits: jax.Array) -> jax.Array:
  r"""Log-sum-exp over the last axis, max-shifted, safe for masked rows.

  .. math::
    \operatorname{lse}(h) = m + \log \sum_j \exp(h_j - m),
    \quad m = \max_j h_j

  with :math:`m` replaced by 0 when it is not finite, so a row that is all
  ``-inf`` gives ``-inf`` (not NaN) and logits of magnitude 1e4 do not
  overflow.

  This is the forward-only building block of the custom VJPs (it is never
  differentiated by JAX), so it needs no ``stop_gradient`` on the shift.

  Args:
    logits: ``[..., num_classes]``, in the accumulation dtype.

  Returns:
    ``[...]``, same dtype.
  """
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  s = jnp.sum(jnp.exp(logits - m), axis=-1)
  return jnp.log(s) + m[..., 0]


def softmax_from_lse(logits: jax.Array, lse: jax.Array) -> jax.Array:
  """``exp(logits - lse)`` with rows of ``lse == -inf`` mapped to all zeros.

  Recomputing probabilities from the saved log-sum-exp (one ``[N]`` vector)
  is what lets the custom VJPs keep only the logits they were given as
  residuals instead of a second ``[N, K]`` array.

  Args:
    logits: ``[N, K]`` in the accumulation dtype.
    lse: ``[N]``, from :func:`logsumexp`.

  Returns:
    ``[N, K]`` probabilities; zero rows where the whole row was masked.
  """
  safe = jnp.where(jnp.isneginf(lse), jnp.inf, lse)
  return jnp.exp(logits - safe[:, None])

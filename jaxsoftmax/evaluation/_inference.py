r"""Inference: class predictions, probabilities, top-k, and temperature scaling.

``predict``, ``predict_proba`` and ``top_k`` apply a model's logits function
(``linear_logits`` by default, ``mlp_logits`` or any ``(params, x) -> [N, K]``)
and reduce its logits; with ``batch_size`` they evaluate ``x`` in chunks
(``jax.lax.map``), so only one ``[batch_size, K]`` block of logits exists at a
time. ``fit_temperature`` fits the single scalar of temperature scaling on
held-out logits.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import optax

from jaxsoftmax.losses import _dense as _losses
from jaxsoftmax.models import _functional as _models
from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax._core import validation as v

LogitsFn = Callable[[Any, jax.Array], jax.Array]


def _scaled(logits: jax.Array, temperature: jax.Array) -> jax.Array:
  """``logits / T`` in the accumulation dtype: half-precision rows sum to 1."""
  hf = _numerics.upcast(logits)
  return hf / temperature.astype(hf.dtype)


def _head(logits, temperature, head, k):
  """Reduces one block of ``[B, K]`` logits to the requested output."""
  if head == "argmax":
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  hf = _scaled(logits, temperature)
  lse = _numerics.logsumexp(hf)
  if head == "proba":
    # exp(h - lse) can round a dominant class to 1 + O(eps) (lse is a sum of
    # rounded terms); probabilities must stay in [0, 1] for the calibration
    # metrics that validate them.
    return jnp.minimum(_numerics.softmax_from_lse(hf, lse), 1)
  # Shapes are static while tracing, so this raises at the call, before
  # lax.top_k's own error would.
  if k > hf.shape[-1]:
    raise ValueError(
        f"k must lie in [1, num_classes={hf.shape[-1]}]; got k={k}."
    )
  # Dividing by T > 0 keeps the order, so the top classes of the raw logits
  # are the top classes of the probabilities; only k of them are exponentiated.
  top, ids = jax.lax.top_k(hf, k)
  return _numerics.softmax_from_lse(top, lse), ids.astype(jnp.int32)


def _checked_logits(logits_fn, params, x):
  logits = logits_fn(params, x)
  if not isinstance(logits, jax.Array) or logits.shape[:1] != x.shape[:1] or (
      logits.ndim != 2
  ):
    raise ValueError(
        f"logits_fn must return [num_examples, num_classes] logits for x of"
        f" shape {x.shape}; got {getattr(logits, 'shape', type(logits))}."
    )
  return logits


@functools.partial(
    jax.jit, static_argnames=("head", "k", "logits_fn", "batch_size")
)
def _evaluate(params, x, temperature, *, head, k, logits_fn, batch_size):
  def block(xb):
    return _head(_checked_logits(logits_fn, params, xb), temperature, head, k)

  if batch_size is None:
    return block(x)
  # lax.map vmaps `one` over batch_size examples at a time (and the remainder
  # once), so the logits of a chunk are one [batch_size, K] GEMM and never all
  # N rows at once.
  def one(xi):
    return jax.tree.map(lambda out: out[0], block(xi[None]))

  return jax.lax.map(one, x, batch_size=batch_size)


def _prepare(x, temperature, batch_size, logits_fn):
  x = jnp.asarray(x)
  v.check_min_rank("x", x, 1, "[num_examples, ...]")
  v.check_finite("x", x)
  if not callable(logits_fn):
    raise TypeError(
        "logits_fn must be a callable (params, x) -> logits; got"
        f" {logits_fn!r}."
    )
  if batch_size is not None:
    v.check_positive_int("batch_size", batch_size)
  if isinstance(temperature, int) and not isinstance(temperature, bool):
    temperature = float(temperature)
  temperature = jnp.asarray(temperature)
  v.check_floating("temperature", temperature)
  v.check_rank("temperature", temperature, 0, "a scalar")
  v.check_positive("temperature", temperature)
  return x, temperature


def predict(
    params: Any,
    x: ArrayLike,
    *,
    logits_fn: LogitsFn = _models.linear_logits,
    batch_size: int | None = None,
) -> jax.Array:
  r"""Predicted class of each example, :math:`\operatorname{argmax}_j h_j`.

  Ties go to the lowest class index. With ``batch_size`` the logits are
  computed ``batch_size`` rows at a time (the result is the same).

  Args:
    params: the model's parameters, e.g. from ``linear_init``.
    x: ``[num_examples, ...]`` inputs of ``logits_fn``.
    logits_fn: ``(params, x) -> [num_examples, num_classes]``; default
      ``linear_logits``, or e.g. ``mlp_logits``. Static: pass the same
      function object to reuse the compiled program.
    batch_size: static int; evaluate in chunks of this many examples.

  Returns:
    ``[num_examples]`` int32 class indices.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import predict
    >>> params = {"w": jnp.array([[1.0, -1.0]]), "b": jnp.zeros(2)}
    >>> predict(params, jnp.array([[2.0], [-3.0]])).tolist()
    [0, 1]

  References:
    "Training multinomial logistic regression at scale", production
    inference: batch prediction (textbook chapter).
  """
  x, temperature = _prepare(x, 1.0, batch_size, logits_fn)
  return _evaluate(
      params, x, temperature,
      head="argmax", k=None, logits_fn=logits_fn, batch_size=batch_size,
  )


def predict_proba(
    params: Any,
    x: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    logits_fn: LogitsFn = _models.linear_logits,
    batch_size: int | None = None,
) -> jax.Array:
  r"""Class probabilities at temperature T, :math:`\operatorname{softmax}(h/T)`.

  .. math::
    p_j = \frac{\exp(h_j / T)}{\sum_l \exp(h_l / T)}
        = \exp\big(h_j / T - \operatorname{lse}(h / T)\big)

  with a max-shifted log-sum-exp, so logits of magnitude 1e4 and small
  :math:`T` are safe. :math:`T = 1` is the model's softmax; :math:`T > 1`
  softens over-confident predictions (fit it with :func:`fit_temperature`);
  the argmax does not change. Half-precision logits are scaled and
  normalized in float32. A ``-inf`` logit gets probability 0; a row of only
  ``-inf`` gets all zeros.

  Args:
    params: the model's parameters.
    x: ``[num_examples, ...]`` inputs of ``logits_fn``.
    temperature: :math:`T > 0`, a scalar (may be traced, e.g. under ``vmap``).
    logits_fn: ``(params, x) -> [num_examples, num_classes]``; default
      ``linear_logits``.
    batch_size: static int; evaluate in chunks of this many examples.

  Returns:
    ``[num_examples, num_classes]`` probabilities, float32 for half-precision
    logits, else the logits' dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import predict_proba
    >>> params = {"w": jnp.array([[1.0, -1.0]]), "b": jnp.zeros(2)}
    >>> p = predict_proba(params, jnp.array([[1.0]]), temperature=2.0)
    >>> print(f"{float(p[0, 0]):.4f}")
    0.7311

  References:
    C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On calibration of modern
    neural networks", ICML (2017), temperature scaling.
  """
  x, temperature = _prepare(x, temperature, batch_size, logits_fn)
  return _evaluate(
      params, x, temperature,
      head="proba", k=None, logits_fn=logits_fn, batch_size=batch_size,
  )


def top_k(
    params: Any,
    x: ArrayLike,
    k: int,
    *,
    temperature: ArrayLike = 1.0,
    logits_fn: LogitsFn = _models.linear_logits,
    batch_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""The ``k`` most probable classes of each example and their probabilities.

  .. math::
    \operatorname{ids} = \operatorname{top}_k(h), \qquad
    \operatorname{probs}_j = \exp\big(h_{\operatorname{ids}_j} / T
      - \operatorname{lse}(h / T)\big)

  in decreasing order of probability, ties in the lower class index first
  (``jax.lax.top_k``). Only the ``k`` selected logits are exponentiated; the
  full softmax is never formed.

  Args:
    params: the model's parameters.
    x: ``[num_examples, ...]`` inputs of ``logits_fn``.
    k: static int in ``[1, num_classes]``.
    temperature: :math:`T > 0`, a scalar.
    logits_fn: ``(params, x) -> [num_examples, num_classes]``; default
      ``linear_logits``.
    batch_size: static int; evaluate in chunks of this many examples.

  Returns:
    ``(probs, ids)``: ``[num_examples, k]`` probabilities (dtype as in
    :func:`predict_proba`) and ``[num_examples, k]`` int32 class indices.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import top_k
    >>> params = {"w": jnp.array([[1.0, 3.0, 2.0]]), "b": jnp.zeros(3)}
    >>> probs, ids = top_k(params, jnp.array([[1.0]]), 2)
    >>> ids.tolist()
    [[1, 2]]

  References:
    "Training multinomial logistic regression at scale", production
    inference: top-k prediction (textbook chapter).
  """
  x, temperature = _prepare(x, temperature, batch_size, logits_fn)
  v.check_positive_int("k", k)
  return _evaluate(
      params, x, temperature,
      head="top_k", k=int(k), logits_fn=logits_fn, batch_size=batch_size,
  )


# ----------------------------------------------------------------------------
# Temperature scaling.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _fit_inverse_temperature(logits, labels, tol, *, max_iter):
  """L-BFGS on beta = 1/T, where the NLL is convex.

  Convexity keeps every curvature pair s * y positive, so Armijo
  backtracking suffices (the zoom line search, needed for that guarantee on
  non-convex problems, costs twice the compile time). Starts at T = 1 and
  stops at |dNLL/dbeta| < tol, after max_iter steps, or once a step no
  longer moves beta.
  """
  def nll(beta):
    return _losses.cross_entropy(logits * beta, labels)

  opt = optax.lbfgs(
      linesearch=optax.scale_by_backtracking_linesearch(
          max_backtracking_steps=30
      )
  )

  def step(carry):
    beta, state, _, _, i = carry
    value, grad = jax.value_and_grad(nll)(beta)
    updates, state = opt.update(
        grad, state, beta, value=value, grad=grad, value_fn=nll
    )
    return optax.apply_updates(beta, updates), state, grad, beta, i + 1

  def keep_going(carry):
    beta, _, grad, previous, i = carry
    moved = jnp.abs(beta - previous) > jnp.finfo(beta.dtype).eps * jnp.abs(beta)
    return (i == 0) | ((i < max_iter) & (jnp.abs(grad) >= tol) & moved)

  beta = jnp.ones((), logits.dtype)
  inf = jnp.full((), jnp.inf, logits.dtype)
  carry = (beta, opt.init(beta), inf, inf, 0)
  return jax.lax.while_loop(keep_going, step, carry)[0]


def _check_temperature_exists(logits: jax.Array, labels: jax.Array) -> None:
  """Raises when the NLL in T is monotone, so L-BFGS would only drift.

  With beta = 1/T the NLL is convex, with slope mean(mean_j h_ij - h_iy) at
  beta = 0 and infinite as beta -> infinity unless every label's logit is its
  row's maximum: a minimizer T* in (0, inf) exists iff neither case holds.
  """

  def slopes(xp, h, y):
    """Whether every label's logit tops its row, and the slope at beta = 0."""
    h = _numerics.upcast(h)
    target = xp.take_along_axis(h, y[:, None], axis=-1)[:, 0]
    # Masked (-inf) classes are left out of the mean, as in label smoothing.
    finite = xp.isfinite(h)
    mean = (xp.where(finite, h, 0).sum(-1)
            / xp.maximum(finite.sum(-1), 1))
    return xp.all(target >= h.max(axis=-1)), xp.mean(target - mean)

  always_top, slope = v.on_host(slopes, logits, labels)
  if always_top:
    raise ValueError(
        "fit_temperature: every example's label has its row's highest logit,"
        " so the NLL keeps falling as T -> 0 and has no minimizer; fit on a"
        " larger held-out set that the model gets partly wrong."
    )
  if slope <= 0:
    raise ValueError(
        "fit_temperature: the labels' logits are on average no higher than"
        " their rows' mean logit, so the NLL keeps falling as T -> infinity"
        " (the logits carry no information about the labels); check that"
        " logits and labels belong together."
    )


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> float:
  r"""Temperature :math:`T` minimizing the held-out negative log-likelihood.

  Temperature scaling calibrates a trained classifier with one parameter:

  .. math::
    T^\star = \operatorname*{argmin}_{T > 0}\ \frac{1}{N} \sum_{i=1}^{N}
      \Big(\operatorname{lse}(h_i / T) - h_{i y_i} / T\Big),

  the mean :func:`~jaxsoftmax.cross_entropy` of the scaled logits. As a
  function of :math:`\beta = 1/T` the NLL is convex (a log-sum-exp of
  :math:`\beta h_i` minus a linear term), with slope
  :math:`\frac1N\sum_i(\bar h_i - h_{iy_i})` at :math:`\beta = 0`
  (:math:`\bar h_i` the row mean); when that slope is negative and some
  label's logit is below its row's maximum, the minimizer is unique and
  positive (otherwise this raises). It is found over :math:`\beta` by
  Optax's L-BFGS with a backtracking (Armijo) line search, which convexity
  makes sufficient, starting from :math:`T = 1`, until
  :math:`|\partial \mathrm{NLL} / \partial \beta| <` ``tol``, ``max_iter``
  iterations, or a step too small to change :math:`\beta`. Fit on a
  validation split, never the training data, then pass :math:`T^\star` to
  :func:`predict_proba`; accuracy is unchanged.

  Not usable inside ``jit`` (it returns a Python float). Half-precision
  logits are fitted in float32.

  Args:
    logits: ``[num_examples, num_classes]`` held-out logits.
    labels: ``[num_examples]`` integer class indices.
    max_iter: static int, the most L-BFGS iterations.
    tol: stop once :math:`|\partial \mathrm{NLL} / \partial \beta|`, in
      units of the logits, falls below this.

  Returns:
    :math:`T^\star > 0` as a Python float.

  Raises:
    ValueError: on bad inputs, or when the NLL has no minimizer over
      :math:`T > 0`: every label's logit is its row's maximum (the NLL keeps
      falling as :math:`T \to 0`), or the labels' logits are on average no
      higher than their row's mean logit (it keeps falling as
      :math:`T \to \infty`); or when the fit does not give a finite
      positive :math:`T` (NaN logits).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import fit_temperature
    >>> logits = jnp.array([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    >>> print(f"{fit_temperature(logits, jnp.array([0, 1, 0, 1])):.2f}")
    3.64

  References:
    C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On calibration of modern
    neural networks", ICML (2017), section 4.2.
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  v.check_floating("logits", logits)
  v.check_rank("logits", logits, 2, "[num_examples, num_classes]")
  v.check_integer("labels", labels)
  v.check_same_shape("labels", labels, logits.shape[:1], "[num_examples]")
  if 0 in logits.shape:
    raise ValueError(
        "logits must hold at least one example and one class; got shape"
        f" {logits.shape}."
    )
  v.check_labels_in_range("labels", labels, logits.shape[1])
  v.check_positive_int("max_iter", max_iter)
  if isinstance(tol, bool) or not isinstance(tol, (int, float)):
    raise TypeError(f"tol must be a Python float; got {tol!r}.")
  v.check_positive("tol", tol)
  _check_temperature_exists(logits, labels)
  beta = float(
      _fit_inverse_temperature(
          _numerics.upcast(logits), labels, tol, max_iter=max_iter
      )
  )
  if not (math.isfinite(beta) and beta > 0):
    raise ValueError(
        f"fit_temperature found no finite positive temperature (1/T ="
        f" {beta}); the logits may hold NaN."
    )
  return 1.0 / beta

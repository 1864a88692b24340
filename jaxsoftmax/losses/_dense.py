"""Classification losses with hand-derived backward rules (``jax.custom_vjp``).

Every differentiable loss here computes its forward pass from a max-shifted
log-sum-exp in the accumulation dtype (see ``_numerics``) and installs the
closed-form gradient, ``softmax - target`` for the softmax family and
``sigmoid - target`` for the binary one, so JAX never differentiates through
``exp``/``log``. The residuals each rule saves are the inputs it was given
plus one ``[N]`` vector, never a second ``[N, K]`` array.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax._core import reduction as _reduction
from jaxsoftmax._core import validation as v


# ----------------------------------------------------------------------------
# Cross-entropy with integer labels.
# ----------------------------------------------------------------------------


def _check_logits_and_labels(logits, labels):
  """Arrays of ``[..., K]`` floating logits and ``[...]`` integer labels."""
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  v.check_floating("logits", logits)
  v.check_min_rank("logits", logits, 1, "[..., num_classes]")
  v.check_integer("labels", labels)
  v.check_same_shape(
      "labels", labels, logits.shape[:-1], "the logits' leading dimensions"
  )
  return logits, labels


def _ce_rows(h, y, label_smoothing, ignore_index):
  """Per-row smoothed NLL in the accumulation dtype, plus what bwd needs.

  Returns (loss [N], lse [N], valid [N] bool).
  """
  num_classes = h.shape[-1]
  hf = _numerics.upcast(h)
  lse = _numerics.logsumexp(hf)
  in_range = (y >= 0) & (y < num_classes)
  valid = ~jnp.isneginf(lse)
  if ignore_index is not None:
    valid &= y != ignore_index
  target = jnp.take_along_axis(
      hf, jnp.clip(y, 0, num_classes - 1)[:, None], axis=-1
  )[:, 0]
  loss = lse - target
  if label_smoothing:
    # Smoothing mass goes to the classes a row can take (finite logits), so a
    # masked class never receives target mass and the loss stays finite.
    finite = hf > -jnp.inf
    n_finite = jnp.maximum(jnp.sum(finite, axis=-1), 1)
    mean_logit = jnp.sum(jnp.where(finite, hf, 0), axis=-1) / n_finite
    smooth = lse - mean_logit
    # At eps = 1 the label carries no weight; 0 * inf would make it NaN.
    if label_smoothing == 1.0:
      loss = smooth
    else:
      loss = (1 - label_smoothing) * loss + label_smoothing * smooth
  # Under jit labels cannot be range-checked; an out-of-range label poisons
  # its row with NaN instead of silently reading a clipped logit.
  loss = jnp.where(in_range, loss, jnp.nan)
  loss = jnp.where(valid, loss, 0)
  return loss, lse, valid


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _cross_entropy(h, y, w, label_smoothing, ignore_index, reduction):
  return _cross_entropy_fwd(h, y, w, label_smoothing, ignore_index, reduction)[0]


def _cross_entropy_fwd(h, y, w, label_smoothing, ignore_index, reduction):
  loss, lse, valid = _ce_rows(h, y, label_smoothing, ignore_index)
  denom = jnp.sum(jnp.where(valid, w, 0))
  out = _reduction.reduce(w * loss, denom, reduction)
  return out, (h, y, w, lse, loss, valid, denom)


def _cross_entropy_bwd(label_smoothing, ignore_index, reduction, res, ct):
  h, y, w, lse, loss, valid, denom = res
  num_classes = h.shape[-1]
  hf = _numerics.upcast(h)
  scale = _reduction.row_scale(ct, denom, reduction)
  # Row-level cases live in the [N] coefficient, so the [N, K] pass below is
  # one multiply: 0 for ignored / fully masked rows, NaN for a valid row whose
  # label is out of range (the jit-time signal, as in the forward pass).
  in_range = (y >= 0) & (y < num_classes)
  coef = jnp.where(valid, jnp.where(in_range, scale * w, jnp.nan), 0)
  # d loss_i / d h_i = softmax(h_i) - q_i, q_i the (smoothed) target.
  p = _numerics.softmax_from_lse(hf, jnp.where(valid, lse, -jnp.inf))
  classes = jnp.arange(num_classes, dtype=y.dtype)
  q = jnp.where(classes[None, :] == y[:, None], 1 - label_smoothing, 0)
  if label_smoothing:
    finite = hf > -jnp.inf
    n_finite = jnp.maximum(jnp.sum(finite, axis=-1, keepdims=True), 1)
    q = q + jnp.where(finite, label_smoothing / n_finite, 0)
  # An ignored or fully masked row has coef 0 and finite p - q (p is 0 on a
  # masked row), so 0 * (p - q) is an exact 0, never NaN.
  g = coef[:, None] * (p - q)
  # d out / d w_i: loss_i for "none"/"sum"; (loss_i - mean) / denom for "mean".
  if reduction == "mean":
    mean = jnp.sum(w * loss) / jnp.where(denom > 0, denom, 1)
    dw = scale * jnp.where(valid, loss - mean, 0)
  else:
    dw = scale * loss
  return g.astype(h.dtype), None, dw.astype(w.dtype)


_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Softmax cross-entropy with integer labels and a hand-derived gradient.

  For one row with logits :math:`h \in \mathbb{R}^K`, label :math:`y` and
  smoothing :math:`\varepsilon`,

  .. math::
    \ell(h, y) = \operatorname{lse}(h) - \sum_j q_j h_j, \qquad
    q = (1 - \varepsilon)\, e_y + \frac{\varepsilon}{K'} \mathbf{1}_{V},
    \qquad
    \frac{\partial \ell}{\partial h} = \operatorname{softmax}(h) - q,

  where :math:`\operatorname{lse}(h) = \log \sum_j e^{h_j}`, :math:`V` is the
  set of classes with a finite logit (all of them unless some are masked with
  ``-inf``) and :math:`K' = |V|`. With :math:`\varepsilon = 0` this is
  :math:`-h_y + \operatorname{lse}(h)`, the lecture's softmax loss. The
  reduction over rows :math:`i` with per-row weights :math:`w_i` and validity
  :math:`v_i` (0 for ignored or fully masked rows) is

  .. math::
    \text{none: } w_i v_i \ell_i, \qquad
    \text{sum: } \sum_i w_i v_i \ell_i, \qquad
    \text{mean: } \frac{\sum_i w_i v_i \ell_i}{\sum_i w_i v_i}

  (the weighted mean, as in PyTorch's class-weighted loss; pass
  ``weights=class_weights[labels]`` for per-class weights). The backward rule
  is installed with ``jax.custom_vjp`` and differentiates with respect to
  ``logits`` and ``weights``.

  Weights with label smoothing differ from PyTorch's. Here the row's weight
  scales its whole smoothed loss; PyTorch's ``cross_entropy(weight=c,
  label_smoothing=eps)`` weights each class's term by its own class weight
  :math:`c`:

  .. math::
    \text{here: } c_y \Big[(1 - \varepsilon)(-\log p_y)
      + \frac{\varepsilon}{K} \sum_j -\log p_j\Big], \qquad
    \text{PyTorch: } (1 - \varepsilon)\, c_y (-\log p_y)
      + \frac{\varepsilon}{K} \sum_j c_j (-\log p_j)

  (both means divide by :math:`\sum_i c_{y_i}`). For :math:`h = (0, 1,
  2)`, :math:`y = 0`, :math:`c = (1, 2, 3)` and :math:`\varepsilon = 0.3`
  they give 2.1076 and 2.3299. The two agree when :math:`\varepsilon = 0`
  or the weights are equal. PyTorch's form is
  :func:`~jaxsoftmax.soft_cross_entropy`
  with the target :math:`(1 - \varepsilon) c_y e_y + \frac{\varepsilon}{K}
  c` summed and divided by :math:`\sum_i c_{y_i}` (see Examples).

  Numerics: reductions are done in float32 for float16 / bfloat16 logits (the
  returned loss is float32; the logits' cotangent has the logits' dtype).
  Logits of magnitude 1e4 are safe. Masked classes (``-inf``) get
  probability 0, no smoothing mass and gradient 0; a fully masked row is
  treated as ignored. A label pointing at a masked class has infinite loss
  (for any smoothing below 1).

  Out-of-range labels: outside ``jit`` a label outside ``[0, K)`` that is not
  ``ignore_index`` raises ``ValueError``. Under ``jit`` values cannot be
  checked, so such a row's loss and gradient are NaN (and so is the batch
  mean): the error is visible, never a silently wrong number. Likewise a
  NaN or ``+inf`` logit and a NaN or infinite weight raise outside ``jit``
  (checked on the device, one bool read back) and give NaN or inf under it.

  Args:
    logits: ``[..., num_classes]`` floating logits.
    labels: ``[...]`` integer class indices in ``[0, num_classes)``.
    weights: optional ``[...]`` non-negative per-example weights.
    label_smoothing: :math:`\varepsilon \in [0, 1]`, a static Python float.
    ignore_index: label value whose rows contribute nothing and are left out
      of the mean's denominator (e.g. ``-100`` for padding).
    reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

  Returns:
    A scalar, or ``[...]`` for ``reduction="none"``; float32 for half-precision
    logits, else the logits' dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import cross_entropy
    >>> logits = jnp.array([[1.0, -2.0, 3.0]])
    >>> print(f"{float(cross_entropy(logits, jnp.array([2]))):.4f}")
    0.1328

    Class weights with smoothing, here and as PyTorch weights them:

    >>> import jax
    >>> from jaxsoftmax import soft_cross_entropy
    >>> h, y = jnp.array([[0.0, 1.0, 2.0]]), jnp.array([0])
    >>> c, eps = jnp.array([1.0, 2.0, 3.0]), 0.3
    >>> print(f"{float(cross_entropy(h, y, weights=c[y], label_smoothing=eps)):.4f}")
    2.1076
    >>> q = (1 - eps) * c[y][:, None] * jax.nn.one_hot(y, 3) + eps / 3 * c[None]
    >>> print(f"{float(soft_cross_entropy(h, q, reduction='sum') / c[y].sum()):.4f}")
    2.3299

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026),
    the softmax-loss gradient ``z - e_y``; R. Müller, S. Kornblith, G. Hinton,
    "When does label smoothing help?" (2019); PyTorch,
    ``torch.nn.functional.cross_entropy`` (``weight``, ``label_smoothing``).
  """
  logits, labels = _check_logits_and_labels(logits, labels)
  v.check_reduction(reduction)
  v.check_label_smoothing(label_smoothing)
  v.check_ignore_index(ignore_index)
  num_classes = logits.shape[-1]
  if num_classes == 0:
    raise ValueError("logits must have at least one class; got shape"
                     f" {logits.shape}.")
  v.check_labels_in_range("labels", labels, num_classes, ignore_index)
  v.check_finite("logits", logits, allow="-inf")
  acc = _numerics.accumulation_dtype(logits.dtype)
  if weights is None:
    weights = jnp.ones(labels.shape, acc)
  else:
    weights = jnp.asarray(weights)
    v.check_floating("weights", weights)
    v.check_same_shape("weights", weights, labels.shape, "one per label")
    v.check_nonnegative("weights", weights)
    v.check_finite("weights", weights)
    weights = weights.astype(acc)
  # Compared against class indices up to K - 1, which a narrow label dtype
  # (int8 with K > 127) cannot hold.
  index_dtype = jnp.promote_types(labels.dtype, jnp.int32)
  out = _cross_entropy(
      logits.reshape(-1, num_classes),
      labels.reshape(-1).astype(index_dtype),
      weights.reshape(-1),
      float(label_smoothing),
      None if ignore_index is None else int(ignore_index),
      reduction,
  )
  if reduction == "none":
    out = out.reshape(labels.shape)
  return out


# ----------------------------------------------------------------------------
# Cross-entropy with a target distribution.
# ----------------------------------------------------------------------------


def _soft_ce_rows(h, t):
  hf = _numerics.upcast(h)
  tf = t.astype(hf.dtype)
  lse = _numerics.logsumexp(hf)
  valid = ~jnp.isneginf(lse)
  logp = hf - jnp.where(valid, lse, 0)[:, None]
  # 0 * log 0 = 0: a masked class with zero target mass costs nothing.
  loss = -jnp.sum(jnp.where(tf != 0, tf * logp, 0), axis=-1)
  return jnp.where(valid, loss, 0), lse, valid


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _soft_cross_entropy(h, t, reduction):
  return _soft_cross_entropy_fwd(h, t, reduction)[0]


def _soft_cross_entropy_fwd(h, t, reduction):
  loss, lse, valid = _soft_ce_rows(h, t)
  denom = jnp.sum(valid)
  return _reduction.reduce(loss, denom, reduction), (h, t, lse, valid, denom)


def _soft_cross_entropy_bwd(reduction, res, ct):
  h, t, lse, valid, denom = res
  hf = _numerics.upcast(h)
  tf = t.astype(hf.dtype)
  scale = _reduction.row_scale(ct, denom, reduction)
  coef = jnp.where(valid, scale, 0)[..., None]
  p = _numerics.softmax_from_lse(hf, jnp.where(valid, lse, -jnp.inf))
  # d/dh of -sum_j t_j log p_j = (sum_j t_j) p - t; d/dt_j = -log p_j.
  dh = coef * (jnp.sum(tf, axis=-1, keepdims=True) * p - tf)
  # Masked rows must give 0, not 0 * inf, for the targets' cotangent.
  dt = jnp.where(valid[:, None], -coef * (hf - lse[:, None]), 0)
  return dh.astype(h.dtype), dt.astype(t.dtype)


_soft_cross_entropy.defvjp(_soft_cross_entropy_fwd, _soft_cross_entropy_bwd)


def soft_cross_entropy(
    logits: ArrayLike,
    target_probs: ArrayLike,
    *,
    reduction: str = "mean",
) -> jax.Array:
  r"""Cross-entropy against a target distribution, with a hand-derived VJP.

  .. math::
    \ell(h, t) = -\sum_j t_j \log \operatorname{softmax}(h)_j, \qquad
    \frac{\partial \ell}{\partial h} = \Big(\sum_j t_j\Big)
      \operatorname{softmax}(h) - t, \qquad
    \frac{\partial \ell}{\partial t_j} = -\log \operatorname{softmax}(h)_j

  For one-hot :math:`t` this equals :func:`cross_entropy`; soft targets serve
  label smoothing, mixup and distillation (the gradient with respect to the
  targets is exact, so a teacher can be trained through it). Terms with
  :math:`t_j = 0` contribute 0 even where the logit is masked (``-inf``).
  Fully masked rows count as ignored: loss 0, left out of the mean.

  Args:
    logits: ``[..., num_classes]`` floating logits.
    target_probs: ``[..., num_classes]`` non-negative targets (usually rows
      summing to 1).
    reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

  Returns:
    A scalar, or ``[...]`` for ``reduction="none"``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import soft_cross_entropy
    >>> t = jnp.array([[0.0, 0.0, 1.0]])
    >>> print(f"{float(soft_cross_entropy(jnp.array([[1.0, -2.0, 3.0]]), t)):.4f}")
    0.1328

  References:
    G. Hinton, O. Vinyals, J. Dean, "Distilling the knowledge in a neural
    network" (2015); H. Zhang et al., "mixup" (2018).
  """
  logits = jnp.asarray(logits)
  target_probs = jnp.asarray(target_probs)
  v.check_floating("logits", logits)
  v.check_min_rank("logits", logits, 1, "[..., num_classes]")
  v.check_floating("target_probs", target_probs)
  v.check_same_shape("target_probs", target_probs, logits.shape, "like logits")
  v.check_reduction(reduction)
  v.check_nonnegative("target_probs", target_probs)
  v.check_finite("target_probs", target_probs)
  v.check_finite("logits", logits, allow="-inf")
  num_classes = logits.shape[-1]
  out = _soft_cross_entropy(
      logits.reshape(-1, num_classes),
      target_probs.reshape(-1, num_classes),
      reduction,
  )
  if reduction == "none":
    out = out.reshape(logits.shape[:-1])
  return out


# ----------------------------------------------------------------------------
# Binary cross-entropy.
# ----------------------------------------------------------------------------


def _bce_elems(h, y):
  hf = _numerics.upcast(h)
  yf = y.astype(hf.dtype)
  # softplus(h) - y h, written so neither exp overflows at |h| = 1e4.
  return jnp.maximum(hf, 0) - hf * yf + jnp.log1p(jnp.exp(-jnp.abs(hf)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _binary_cross_entropy(h, y, reduction):
  elems = _bce_elems(h, y)
  return _reduction.reduce(
      elems, jnp.asarray(elems.size, elems.dtype), reduction)


def _binary_cross_entropy_fwd(h, y, reduction):
  return _binary_cross_entropy(h, y, reduction), (h, y)


def _binary_cross_entropy_bwd(reduction, res, ct):
  h, y = res
  hf = _numerics.upcast(h)
  yf = y.astype(hf.dtype)
  scale = _reduction.row_scale(ct, jnp.asarray(h.size, hf.dtype), reduction)
  dh = scale * (jax.nn.sigmoid(hf) - yf)
  dy = -scale * hf
  return dh.astype(h.dtype), dy.astype(y.dtype)


_binary_cross_entropy.defvjp(
    _binary_cross_entropy_fwd, _binary_cross_entropy_bwd
)


def binary_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    reduction: str = "mean",
) -> jax.Array:
  r"""Sigmoid binary cross-entropy on logits, with a hand-derived VJP.

  .. math::
    \ell(h, y) = -y \log \sigma(h) - (1 - y) \log(1 - \sigma(h))
      = \operatorname{softplus}(h) - y h, \qquad
    \frac{\partial \ell}{\partial h} = \sigma(h) - y, \qquad
    \frac{\partial \ell}{\partial y} = -h

  evaluated as :math:`\max(h, 0) - y h + \log(1 + e^{-|h|})`, finite for any
  finite logit. For ``y = 1`` the gradient is :math:`-1 / (e^{h} + 1)`, the
  lecture's BCE gradient: large for confidently wrong predictions.

  Args:
    logits: ``[...]`` floating logits of the positive class.
    labels: ``[...]`` targets in ``[0, 1]`` (0/1 or soft); integer or bool
      labels are converted and get no gradient.
    reduction: ``"mean"`` over all elements (default), ``"sum"`` or
      ``"none"``.

  Returns:
    A scalar, or ``[...]`` for ``reduction="none"``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import binary_cross_entropy
    >>> print(f"{float(binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))):.4f}")
    0.6931

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026).
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  v.check_floating("logits", logits)
  v.check_same_shape("labels", labels, logits.shape, "like logits")
  v.check_reduction(reduction)
  found = v.is_concrete(labels) and v.find_bad(
      lambda xp, y: ~((y >= 0) & (y <= 1)), labels)
  if found:
    bad, y = found
    raise ValueError(
        "labels must lie in [0, 1] for binary_cross_entropy; got values"
        f" {y[bad].astype(np.float64)[:5].tolist()} ({int(bad.sum())} bad of"
        f" {y.size})."
    )
  v.check_finite("logits", logits, allow="inf")
  if not jnp.issubdtype(labels.dtype, jnp.floating):
    labels = labels.astype(_numerics.accumulation_dtype(logits.dtype))
  return _binary_cross_entropy(logits, labels, reduction)


# ----------------------------------------------------------------------------
# 0/1 loss.
# ----------------------------------------------------------------------------


def zero_one_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    reduction: str = "mean",
) -> jax.Array:
  r"""Classification error: 1 where ``argmax(logits) != label``, else 0.

  .. math::
    \ell_{err}(h, y) = \mathbf{1}\{\operatorname{argmax}_j h_j \ne y\}

  Piecewise constant, so its gradient is 0 wherever it is defined; JAX
  returns exactly 0 (the lecture's reason to optimize cross-entropy instead
  and keep this loss for evaluation). Ties go to the lowest class index.

  Args:
    logits: ``[..., num_classes]`` floating logits.
    labels: ``[...]`` integer class indices.
    reduction: ``"mean"`` (the error rate, default), ``"sum"`` or ``"none"``.

  Returns:
    A float32 scalar, or ``[...]`` for ``reduction="none"``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import zero_one_loss
    >>> print(float(zero_one_loss(jnp.array([[1.0, 3.0], [2.0, 0.0]]), jnp.array([1, 1]))))
    0.5

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026).
  """
  logits, labels = _check_logits_and_labels(logits, labels)
  v.check_reduction(reduction)
  v.check_labels_in_range("labels", labels, logits.shape[-1])
  wrong = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1) != labels
  wrong = wrong.astype(jnp.float32)
  if reduction == "none":
    return wrong
  if reduction == "sum":
    return jnp.sum(wrong)
  return jnp.mean(wrong)


# ----------------------------------------------------------------------------
# Elastic-net penalty.
# ----------------------------------------------------------------------------

BIAS_NAMES = ("b", "bias")


def _key_name(key) -> str | None:
  for attr in ("key", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return None


def is_penalized(path) -> bool:
  """Whether the leaf at ``path`` is a weight (penalized) rather than a bias.

  Biases are the leaves named ``b`` or ``bias``, or ending in ``_b`` /
  ``_bias`` (``cluster_b``, ``node_b``).
  """
  if not path:
    return True
  name = _key_name(path[-1])
  return name is None or not (
      name in BIAS_NAMES or name.endswith(tuple("_" + b for b in BIAS_NAMES))
  )


def _penalty_terms(params, l1, l2):
  weights = [
      _numerics.upcast(jnp.asarray(leaf))
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if is_penalized(path)
  ]
  dtype = jnp.result_type(jnp.float32, *(w.dtype for w in weights))
  l1_sum = sum((jnp.sum(jnp.abs(w)) for w in weights), jnp.zeros((), dtype))
  sq_sum = sum((jnp.sum(jnp.square(w)) for w in weights), jnp.zeros((), dtype))
  total = l1 * l1_sum + 0.5 * l2 * sq_sum
  return total, l1_sum, sq_sum


@jax.custom_vjp
def _penalty(params, l1, l2):
  return _penalty_terms(params, l1, l2)[0]


def _penalty_fwd(params, l1, l2):
  total, l1_sum, sq_sum = _penalty_terms(params, l1, l2)
  return total, (params, l1, l2, l1_sum, sq_sum)


def penalty_weight_grad(w, l1, l2):
  """d penalty / d w for one weight array: ``l1 * sign(w) + l2 * w``."""
  # sign(0) = 0: the minimum-norm subgradient of |w| at 0, so a weight that
  # L1 has driven to zero stays there instead of being pushed off.
  return l1 * jnp.sign(w) + l2 * w


def _penalty_bwd(res, ct):
  params, l1, l2, l1_sum, sq_sum = res

  def leaf_grad(path, leaf):
    if not is_penalized(path):
      return jnp.zeros_like(leaf)
    g = ct * penalty_weight_grad(leaf, l1, l2)
    return g.astype(leaf.dtype)

  grads = jax.tree_util.tree_map_with_path(leaf_grad, params)
  dl1 = (ct * l1_sum).astype(l1.dtype)
  dl2 = (ct * 0.5 * sq_sum).astype(l2.dtype)
  return grads, dl1, dl2


_penalty.defvjp(_penalty_fwd, _penalty_bwd)


def penalty(params, *, l1: ArrayLike = 0.0, l2: ArrayLike = 0.0) -> jax.Array:
  r"""Elastic-net penalty on the weights of a parameter pytree, biases excluded.

  .. math::
    R(\theta) = \lambda_1 \sum_{w} \|w\|_1 + \frac{\lambda_2}{2} \sum_w \|w\|_2^2,
    \qquad
    \frac{\partial R}{\partial w} = \lambda_1 \operatorname{sign}(w) + \lambda_2 w

  summed over every leaf except biases: leaves whose key or attribute is
  ``b`` or ``bias`` or ends in ``_b`` / ``_bias`` (``cluster_b``). At :math:`w = 0` the L1 term uses the subgradient 0
  (``jnp.sign(0) = 0``), where ``jax.grad`` of ``jnp.abs`` would return 1.
  The strengths may be traced (a ``vmap`` over ``l2`` sweeps the
  regularization path) and get exact gradients, :math:`\sum\|w\|_1` and
  :math:`\frac12 \sum \|w\|^2`.

  Args:
    params: a pytree of arrays, e.g. ``{"w": [d, K], "b": [K]}`` or a list of
      such dicts for an MLP.
    l1: :math:`\lambda_1 \ge 0`.
    l2: :math:`\lambda_2 \ge 0`.

  Returns:
    A scalar, float32 for half-precision parameters.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import penalty
    >>> params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([5.0, 5.0])}
    >>> print(f"{float(penalty(params, l1=0.1, l2=1.0)):.4f}")
    2.8000

  References:
    H. Zou, T. Hastie, "Regularization and variable selection via the elastic
    net", JRSS-B (2005).
  """
  v.check_nonnegative("l1", l1)
  v.check_nonnegative("l2", l2)
  return _penalty(params, jnp.asarray(l1), jnp.asarray(l2))

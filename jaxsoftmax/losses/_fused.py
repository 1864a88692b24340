"""Fused, chunked linear cross-entropy: the output layer and the loss in one op.

For a large number of classes K the logits ``x @ w + b`` of shape [B, K] are
the largest array of a training step (2 GB for B = 512, K = 10^6 in float32),
and a plain ``cross_entropy(x @ w + b, y)`` holds them, their softmax and
their cotangent. The fused op streams over blocks of C classes instead: the
forward pass keeps a running max and sum of exponentials per row (the online
log-sum-exp), so it holds one [B, C] block at a time; the hand-written
backward pass recomputes each block's logits from ``x`` and ``w`` and
accumulates ``dx``, ``dw`` and ``db`` block by block. Rows can be chunked too
(``row_chunk_size``) so a very large batch holds [R, C] at a time.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax._core import reduction as _reduction
from jaxsoftmax._core import validation as v


class FusedConfig(NamedTuple):
  """Static options of the fused op (hashable, passed as nondiff args)."""

  chunk: int
  rows: int
  label_smoothing: float
  ignore_index: int | None
  z_loss: float
  reduction: str


def _block_logits(x, w, b, c, cfg):
  """Logits of class block ``c`` for the rows ``x``, in the accumulation dtype.

  The block starts at ``c * C`` but is clamped to ``K - C`` so that every
  block has the static width C (``dynamic_slice`` reads w in place, no
  padded copy of w). In the last block the columns before ``c * C`` were
  already seen; they are reported as not ``fresh`` and masked to ``-inf``.

  Returns:
    (h [N, C], w block [d, C], start, class ids [C], fresh [C]).
  """
  num_classes = w.shape[1]
  start = jnp.minimum(c * cfg.chunk, num_classes - cfg.chunk)
  wc = lax.dynamic_slice_in_dim(w, start, cfg.chunk, axis=1)
  acc = _numerics.accumulation_dtype(jnp.result_type(x, w))
  h = jnp.matmul(x, wc, preferred_element_type=acc)
  if b is not None:
    h = h + lax.dynamic_slice_in_dim(b, start, cfg.chunk).astype(acc)[None, :]
  cols = start + jnp.arange(cfg.chunk)
  fresh = cols >= c * cfg.chunk
  h = jnp.where(fresh[None, :], h, -jnp.inf)
  return h, wc, start, cols, fresh


def _num_blocks(num_classes, cfg):
  return -(-num_classes // cfg.chunk)


def row_stats(x, w, b, y, cfg):
  """One streaming pass over the class blocks for the rows ``x`` [N, d].

  Returns:
    (lse [N], target logit [N], sum of the finite logits [N], number of
    finite logits [N]); the last two only with label smoothing (else zeros).
  """
  n = x.shape[0]
  acc = _numerics.accumulation_dtype(jnp.result_type(x, w))

  def body(c, carry):
    m, s, target, total, count = carry
    h, _, start, _, fresh = _block_logits(x, w, b, c, cfg)
    m_new = jnp.maximum(m, jnp.max(h, axis=1))
    # A row with no finite logit yet keeps a shift of 0, so exp(-inf - 0) = 0
    # instead of exp(-inf + inf) = NaN.
    shift = jnp.where(jnp.isfinite(m_new), m_new, 0)
    s = s * jnp.exp(m - shift) + jnp.sum(jnp.exp(h - shift[:, None]), axis=1)
    local = y - start
    mine = (y >= c * cfg.chunk) & (local < cfg.chunk)
    picked = jnp.take_along_axis(
        h, jnp.clip(local, 0, cfg.chunk - 1)[:, None], axis=1
    )[:, 0]
    target = jnp.where(mine, picked, target)
    if cfg.label_smoothing:
      finite = (h > -jnp.inf) & fresh[None, :]
      total = total + jnp.sum(jnp.where(finite, h, 0), axis=1)
      count = count + jnp.sum(finite, axis=1, dtype=jnp.int32)
    return m_new, s, target, total, count

  init = (
      jnp.full((n,), -jnp.inf, acc),
      jnp.zeros((n,), acc),
      jnp.zeros((n,), acc),
      jnp.zeros((n,), acc),
      jnp.zeros((n,), jnp.int32),
  )
  m, s, target, total, count = lax.fori_loop(
      0, _num_blocks(w.shape[1], cfg), body, init
  )
  shift = jnp.where(jnp.isfinite(m), m, 0)
  return jnp.log(s) + shift, target, total, count.astype(acc)


def _split_rows(a, cfg):
  """[N, ...] -> [N / R, R, ...]; N is a multiple of R (the caller pads)."""
  return a.reshape((a.shape[0] // cfg.rows, cfg.rows) + a.shape[1:])


def row_statistics(x, w, b, y, cfg):
  """:func:`row_stats` for all rows, ``cfg.rows`` rows at a time.

  Returns:
    (lse [N], target logit [N], sum of finite logits [N], their count [N]).
  """
  stats = lambda xy: row_stats(xy[0], w, b, xy[1], cfg)
  return tuple(
      a.reshape(-1)
      for a in lax.map(stats, (_split_rows(x, cfg), _split_rows(y, cfg)))
  )


def loss_from_statistics(lse, target, total, count, y, keep, num_classes, cfg):
  """Per-row loss and validity from the row statistics.

  ``keep`` [N] marks real rows (padding is False); ``num_classes`` is the
  true K, for the range check.

  Returns:
    (loss [N], valid [N] bool, count [N] clamped to >= 1).
  """
  count = jnp.maximum(count, 1)
  valid = ~jnp.isneginf(lse) & keep
  if cfg.ignore_index is not None:
    valid &= y != cfg.ignore_index
  eps = cfg.label_smoothing
  # At eps = 1 the label carries no weight; 0 * inf would make it NaN.
  loss = lse - target if eps < 1 else jnp.zeros_like(lse)
  if eps:
    loss = (1 - eps) * loss + eps * (lse - total / count)
  if cfg.z_loss:
    loss = loss + cfg.z_loss * jnp.where(valid, lse, 0) ** 2
  in_range = (y >= 0) & (y < num_classes)
  loss = jnp.where(in_range, loss, jnp.nan)
  loss = jnp.where(valid, loss, 0)
  return loss, valid, count


def backward_coefficients(cts, y, weights, lse, loss, valid, count, denom,
                          weighted_sum, num_classes, cfg):
  """The [N] coefficients of the backward pass and the weights' cotangent.

  All row-level cases live in [N] vectors, as in cross_entropy's rule:
  dl_i/dh_ik = a_i p_ik - coef_i (1 - eps) [k = y_i] - smooth_i [h_ik finite]
  with a_i = coef_i (1 + 2 z lse_i) + ct_lse_i (the z-loss and the lse
  output) and smooth_i = coef_i eps / K'_i. ``denom`` and ``weighted_sum``
  (sum of weights * loss) are over the whole batch, so a caller holding only
  part of the rows passes their all-reduced values.

  Returns:
    (a, coef, smooth, lse with 0 on invalid rows, d out / d weights), all [N].
  """
  ct, ct_lse = cts
  in_range = (y >= 0) & (y < num_classes)
  scale = _reduction.row_scale(ct, denom, cfg.reduction)
  coef = jnp.where(valid, jnp.where(in_range, scale * weights, jnp.nan), 0)
  safe_lse = jnp.where(valid, lse, 0)
  a = coef * (1 + 2 * cfg.z_loss * safe_lse) + jnp.where(valid, ct_lse, 0)
  smooth = coef * cfg.label_smoothing / count
  if cfg.reduction == "mean":
    mean = weighted_sum / jnp.where(denom > 0, denom, 1)
    dweights = scale * jnp.where(valid, loss - mean, 0)
  else:
    dweights = scale * loss
  return a, coef, smooth, safe_lse, dweights


def accumulate_grads(x, w, b, y, a, coef, smooth, lse, valid, cfg):
  """dx, dw, db of the loss, recomputing the logits block by block.

  ``y`` are the labels in ``w``'s column numbering (a shard passes labels
  minus its offset; labels outside [0, K) simply match no column). Results
  are in the accumulation dtype.

  Returns:
    (dx [N, d], dw [d, K], db [K]).
  """
  num_classes = w.shape[1]
  acc = lse.dtype
  eps = cfg.label_smoothing

  def row_block(r, carry):
    dx, dw, db = carry
    xr = lax.dynamic_slice_in_dim(x, r * cfg.rows, cfg.rows)
    yr, ar, cr, sr, lr, vr = (
        lax.dynamic_slice_in_dim(t, r * cfg.rows, cfg.rows)
        for t in (y, a, coef, smooth, lse, valid)
    )

    def class_block(c, carry):
      dxr, dw, db = carry
      h, wc, start, cols, fresh = _block_logits(xr, w, b, c, cfg)
      p = jnp.where(vr[:, None], jnp.exp(h - lr[:, None]), 0)
      g = ar[:, None] * p - jnp.where(
          cols[None, :] == yr[:, None], (1 - eps) * cr[:, None], 0
      )
      if eps:
        g = g - jnp.where(h > -jnp.inf, sr[:, None], 0)
      g = jnp.where(fresh[None, :], g, 0)
      gc = g.astype(wc.dtype)
      dxr = dxr + jnp.matmul(gc, wc.T, preferred_element_type=acc)
      dwc = jnp.matmul(xr.T, gc, preferred_element_type=acc)
      dw = lax.dynamic_update_slice_in_dim(
          dw, lax.dynamic_slice_in_dim(dw, start, cfg.chunk, 1) + dwc, start, 1
      )
      db = lax.dynamic_update_slice_in_dim(
          db, lax.dynamic_slice_in_dim(db, start, cfg.chunk) + g.sum(0), start, 0
      )
      return dxr, dw, db

    dxr = jnp.zeros(xr.shape, acc)
    dxr, dw, db = lax.fori_loop(
        0, _num_blocks(num_classes, cfg), class_block, (dxr, dw, db)
    )
    dx = lax.dynamic_update_slice_in_dim(dx, dxr, r * cfg.rows, 0)
    return dx, dw, db

  init = (
      jnp.zeros(x.shape, acc),
      jnp.zeros(w.shape, acc),
      jnp.zeros((num_classes,), acc),
  )
  return lax.fori_loop(0, x.shape[0] // cfg.rows, row_block, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _fused(x, w, b, y, weights, keep, cfg):
  return _fused_fwd(x, w, b, y, weights, keep, cfg)[0]


def _fused_fwd(x, w, b, y, weights, keep, cfg):
  num_classes = w.shape[1]
  lse, target, total, count = row_statistics(x, w, b, y, cfg)
  loss, valid, count = loss_from_statistics(
      lse, target, total, count, y, keep, num_classes, cfg
  )
  denom = jnp.sum(jnp.where(valid, weights, 0))
  out = _reduction.reduce(weights * loss, denom, cfg.reduction)
  lse_out = jnp.where(valid, lse, -jnp.inf)
  return (out, lse_out), (x, w, b, y, weights, lse, loss, valid, count, denom)


def _fused_bwd(cfg, res, cts):
  x, w, b, y, weights, lse, loss, valid, count, denom = res
  a, coef, smooth, safe_lse, dweights = backward_coefficients(
      cts, y, weights, lse, loss, valid, count, denom,
      jnp.sum(weights * loss), w.shape[1], cfg,
  )
  dx, dw, db = accumulate_grads(x, w, b, y, a, coef, smooth, safe_lse, valid,
                                cfg)
  return (
      dx.astype(x.dtype),
      dw.astype(w.dtype),
      None if b is None else db.astype(b.dtype),
      None,
      dweights.astype(weights.dtype),
      None,
  )


_fused.defvjp(_fused_fwd, _fused_bwd)


def _check_inputs(x, w, b, labels, *, chunk_size, row_chunk_size, reduction,
                  label_smoothing, ignore_index, z_loss):
  """The arguments of :func:`fused_linear_cross_entropy` as arrays, checked."""
  x = jnp.asarray(x)
  w = jnp.asarray(w)
  labels = jnp.asarray(labels)
  v.check_floating("x", x)
  v.check_floating("w", w)
  v.check_min_rank("x", x, 1, "[..., num_features]")
  v.check_rank("w", w, 2, "[num_features, num_classes]")
  num_features, num_classes = w.shape
  if x.shape[-1] != num_features:
    raise ValueError(
        f"x has {x.shape[-1]} features (shape {x.shape}) but w has"
        f" {num_features} rows (shape {w.shape}); expected x [..., d] and"
        " w [d, K] with the same d."
    )
  if num_classes == 0:
    raise ValueError(f"w must have at least one class; got shape {w.shape}.")
  if b is not None:
    b = jnp.asarray(b)
    v.check_floating("b", b)
    v.check_same_shape("b", b, (num_classes,), "[num_classes]")
  v.check_integer("labels", labels)
  v.check_same_shape("labels", labels, x.shape[:-1], "x's leading dimensions")
  v.check_positive_int("chunk_size", chunk_size)
  if row_chunk_size is not None:
    v.check_positive_int("row_chunk_size", row_chunk_size)
  v.check_reduction(reduction)
  v.check_label_smoothing(label_smoothing)
  v.check_ignore_index(ignore_index)
  v.check_nonnegative("z_loss", z_loss)
  v.check_labels_in_range("labels", labels, num_classes, ignore_index)
  v.check_finite("x", x)
  v.check_finite("w", w)
  if b is not None:
    v.check_finite("b", b, allow="-inf")
  return x, w, b, labels


def fused_linear_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None,
    labels: ArrayLike,
    *,
    chunk_size: int = 4096,
    row_chunk_size: int | None = None,
    weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    z_loss: float = 0.0,
    reduction: str = "mean",
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  r"""Cross-entropy of the linear layer ``x @ w + b``, never holding [B, K].

  Equal to ``cross_entropy(x @ w + b, labels, ...)`` (same loss, same
  gradients with respect to ``x``, ``w``, ``b`` and ``weights``), computed in
  blocks of ``chunk_size`` classes. For row :math:`i` with logits
  :math:`h_i = x_i w + b`, the forward pass keeps the online log-sum-exp

  .. math::
    m \leftarrow \max(m, \max_{k \in c} h_{ik}), \qquad
    s \leftarrow s\, e^{m_{old} - m} + \sum_{k \in c} e^{h_{ik} - m},
    \qquad \operatorname{lse}_i = m + \log s

  over the blocks :math:`c`, plus the target logit :math:`h_{iy_i}`. The
  loss is :math:`\ell_i = \operatorname{lse}_i - \sum_k q_{ik} h_{ik} +
  z\, \operatorname{lse}_i^2` with the (smoothed) target :math:`q` of
  :func:`cross_entropy`. The backward pass recomputes each block and
  accumulates, with :math:`G = \bar\ell \odot ((1 + 2 z\,\operatorname{lse})
  \odot \operatorname{softmax}(h) - q)`,

  .. math::
    dx = G w^\top, \qquad dw = x^\top G, \qquad db = \mathbf{1}^\top G,

  one [B, C] block at a time. Memory: O(B·C + d·K) (the [d, K] is ``dw``
  itself); work: 8·B·K·d flops for value and gradient (the forward block
  logits are recomputed once in the backward pass instead of being stored).

  Masking: a ``-inf`` entry of ``b`` masks its class, as a ``-inf`` logit
  does in :func:`cross_entropy`; fully masked rows count as ignored.
  Half-precision ``x``/``w`` run their matmuls with float32 accumulation and
  all reductions in float32.

  Args:
    x: ``[..., d]`` floating features.
    w: ``[d, K]`` output weights.
    b: ``[K]`` biases, or None.
    labels: ``[...]`` integer classes in ``[0, K)``.
    chunk_size: classes per block, a positive int (clamped to K). K need not
      be a multiple.
    row_chunk_size: rows per block, a positive int, or None for all rows at
      once. Rows are padded to a multiple with ignored rows.
    weights: optional ``[...]`` non-negative per-example weights.
    label_smoothing: :math:`\varepsilon \in [0, 1]`, spread over the classes
      with a finite logit.
    ignore_index: label value whose rows contribute nothing.
    z_loss: coefficient :math:`z \ge 0` of the auxiliary
      :math:`z\,\operatorname{lse}^2` term that keeps the normalizer near 0.
    reduction: ``"mean"`` (weighted), ``"sum"`` or ``"none"``.
    return_lse: also return the per-row log-sum-exp ``[...]`` (``-inf`` for
      ignored rows); it is differentiable too.

  Returns:
    The loss (a scalar, or ``[...]`` for ``reduction="none"``), and the
    log-sum-exp if ``return_lse``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import fused_linear_cross_entropy, cross_entropy
    >>> kx, kw = jax.random.split(jax.random.key(0))
    >>> x = jax.random.normal(kx, (8, 16))
    >>> w = jax.random.normal(kw, (16, 1000))
    >>> b = jnp.zeros(1000)
    >>> y = jnp.arange(8) * 100
    >>> fused = fused_linear_cross_entropy(x, w, b, y, chunk_size=384)
    >>> bool(jnp.allclose(fused, cross_entropy(x @ w + b[None], y), rtol=1e-5))
    True

  References:
    M. Milakov, N. Gimelshein, "Online normalizer calculation for softmax"
    (2018); E. Wijmans et al., "Cut your losses in large-vocabulary language
    models" (2024); P.-L. Hsu et al., "Liger kernel" (2024); M. Wortsman et
    al., "Small-scale proxies for large-scale Transformer training
    instabilities" (2023), the z-loss.
  """
  x, w, b, labels = _check_inputs(
      x, w, b, labels, chunk_size=chunk_size, row_chunk_size=row_chunk_size,
      reduction=reduction, label_smoothing=label_smoothing,
      ignore_index=ignore_index, z_loss=z_loss)
  num_features, num_classes = w.shape
  acc = _numerics.accumulation_dtype(jnp.result_type(x, w))
  n = labels.size
  if weights is None:
    weights = jnp.ones((n,), acc)
  else:
    weights = jnp.asarray(weights)
    v.check_floating("weights", weights)
    v.check_same_shape("weights", weights, labels.shape, "one per label")
    v.check_nonnegative("weights", weights)
    weights = weights.reshape(-1).astype(acc)
  rows = n if row_chunk_size is None else min(row_chunk_size, max(n, 1))
  cfg = FusedConfig(
      chunk=min(chunk_size, num_classes),
      rows=max(rows, 1),
      label_smoothing=float(label_smoothing),
      ignore_index=None if ignore_index is None else int(ignore_index),
      z_loss=float(z_loss),
      reduction=reduction,
  )
  index_dtype = jnp.promote_types(labels.dtype, jnp.int32)
  xf = x.reshape(n, num_features)
  yf = labels.reshape(n).astype(index_dtype)
  pad = -n % cfg.rows
  # Padded rows are marked invalid (like ignored rows), so they change neither
  # the loss, the mean's denominator nor any gradient, even when their dummy
  # label hits a masked class.
  keep = jnp.arange(n + pad) < n
  if pad:
    xf = jnp.concatenate([xf, jnp.zeros((pad, num_features), xf.dtype)])
    yf = jnp.concatenate([yf, jnp.zeros((pad,), yf.dtype)])
    weights = jnp.concatenate([weights, jnp.zeros((pad,), acc)])
  out, lse = _fused(xf, w, b, yf, weights, keep, cfg)
  if reduction == "none":
    out = out[:n].reshape(labels.shape)
  if return_lse:
    return out, lse[:n].reshape(labels.shape)
  return out

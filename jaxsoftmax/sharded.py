"""The output layer split across devices with ``jax.shard_map``.

Vocab (class) parallelism: device p of the mesh axis ``axis_name`` holds the
columns ``w[:, p K/P : (p+1) K/P]`` and the matching biases, computes its
block of logits, and the devices agree on the softmax normalizer with three
scalars per row: a ``pmax`` of the row maxima (here: of the local
log-sum-exps), a ``psum`` of the rescaled local sums of exponentials, and a
``psum`` of the target logit, which only the shard owning the label
contributes. Label smoothing uses the sum and count of the finite logits over
the **global** K (also ``psum``-ed), so the loss does not depend on P. The
backward pass needs no collective for ``dw`` and ``db`` (each shard owns its
columns) and one ``psum`` for ``dx``. With a second, data-parallel mesh axis
the rows are split too, and the reductions over rows (the mean's numerator
and denominator, ``dw``, ``db``) are ``psum``-ed over it.

Feature parallelism (the column split of the output layer) is offered for wide
inputs:
``w[d/P, :]`` per device, partial logits combined by one ``psum``.

The same functions run on one device, on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on GPUs/TPUs and on
several hosts after ``jax.distributed.initialize`` (a mesh over
``jax.devices()`` then spans the processes). They take any mesh
(``jax.make_mesh``'s Explicit axes, Auto axes, a ``jax.sharding.Mesh``) and
work eagerly, under ``jit`` and under ``grad``, with or without an enclosing
``jax.set_mesh``: outside a mesh context they run on Auto axes, inside one
they take the context's axis types (see ``_working_mesh``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxsoftmax.losses import _fused
from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax._core import reduction as _reduction
from jaxsoftmax._core import validation as v
from jaxsoftmax.losses._dense import cross_entropy


class _Axes(NamedTuple):
  model: str
  data: str | None
  num_classes: int  # the true K, before padding


def _check_mesh(mesh, axis_name, data_axis_name):
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh)}.")
  for arg, name in (("axis_name", axis_name), ("data_axis_name", data_axis_name)):
    if name is not None and name not in mesh.axis_names:
      raise ValueError(
          f"{arg}={name!r} is not an axis of the mesh; the mesh has axes"
          f" {mesh.axis_names} with shape {dict(mesh.shape)}."
      )
  if data_axis_name is not None and data_axis_name == axis_name:
    raise ValueError(
        f"data_axis_name and axis_name must differ; both are {axis_name!r}."
    )


def _working_mesh(mesh: Mesh) -> Mesh:
  """``mesh`` with the axis types of the enclosing mesh context, or Auto ones.

  Explicit axes put the mesh into every output's type, and JAX then runs
  operations on those outputs only inside ``jax.set_mesh`` (the
  ones-cotangent that ``jax.grad`` builds eagerly, for one). Outside a
  context, the same layout on Auto axes lets eager, jitted and differentiated
  calls all work. Inside one, ``shard_map`` needs the context's axis types,
  so a mesh that differs from the context only in them (``jax.make_mesh``
  against ``jax.sharding.Mesh``) takes the context's; another mesh is left
  for ``shard_map`` to reject.
  """
  context = jax.sharding.get_abstract_mesh()
  if context.empty:
    types = (AxisType.Auto,) * len(mesh.axis_names)
  elif (context.axis_names, context.axis_sizes) == (mesh.axis_names,
                                                    mesh.axis_sizes):
    types = context.axis_types
  else:
    return mesh
  return mesh if mesh.axis_types == types else mesh.update(axis_types=types)


def pad_classes(
    w: ArrayLike, b: ArrayLike | None, num_shards: int
) -> tuple[jax.Array, jax.Array]:
  """Pads the class dimension to a multiple of ``num_shards``.

  The padded columns of ``w`` are zeros and their biases ``-inf``: masked
  classes with probability 0, no smoothing mass and gradient 0, so the loss
  and the gradients of the real classes are unchanged. Pad once, outside the
  training step, to avoid a copy of ``w`` per call.

  Args:
    w: ``[d, K]``.
    b: ``[K]`` or None (zeros).
    num_shards: P, a positive int.

  Returns:
    ``(w [d, K'], b [K'])`` with ``K' = P * ceil(K / P)``.
  """
  v.check_positive_int("num_shards", num_shards)
  w = jnp.asarray(w)
  num_classes = w.shape[1]
  if b is None:
    b = jnp.zeros((num_classes,), w.dtype)
  b = jnp.asarray(b)
  pad = -num_classes % num_shards
  if not pad:
    return w, b
  return (
      jnp.pad(w, ((0, 0), (0, pad))),
      jnp.pad(b, (0, pad), constant_values=-jnp.inf),
  )


def _place(name, x, mesh, spec):
  """Puts ``x`` on ``mesh`` as ``spec``; checks an already sharded array.

  Unsharded or replicated arrays are placed; an array already split over
  devices of this mesh must match ``spec``. Both calls are
  traceable, so this also constrains values under ``jit`` and ``grad``.
  """
  if x is None:
    return x
  want = NamedSharding(mesh, spec)
  sharding = getattr(x, "sharding", None) if v.is_concrete(x) else None
  if (
      isinstance(sharding, NamedSharding)
      and sharding.mesh.shape_tuple == mesh.shape_tuple
      and not sharding.is_fully_replicated
      and not sharding.is_equivalent_to(want, x.ndim)
  ):
    raise ValueError(
        f"{name} is sharded as {sharding.spec} but must be sharded as {spec}"
        f" over mesh axes {mesh.axis_names}; pass it unsharded (it will be"
        f" placed) or jax.device_put it with NamedSharding(mesh, {spec})."
    )
  if mesh.are_all_axes_explicit:
    return jax.reshard(x, want)
  return jax.device_put(x, want)


def _local_statistics(x, w, b, y_local, cfg, axes):
  """Global row statistics from this shard's classes and three collectives."""
  lse_l, target_l, total, count = _fused.row_stats(x, w, b, y_local, cfg)
  own = (y_local >= 0) & (y_local < w.shape[1])
  top = lax.pmax(lse_l, axes.model)
  shift = jnp.where(jnp.isfinite(top), top, 0)
  lse = jnp.log(lax.psum(jnp.exp(lse_l - shift), axes.model)) + shift
  target = lax.psum(jnp.where(own, target_l, 0), axes.model)
  if cfg.label_smoothing:
    total = lax.psum(total, axes.model)
    count = lax.psum(count, axes.model)
  return lse, target, total, count


def _psum_rows(x, axes):
  return x if axes.data is None else lax.psum(x, axes.data)


def _forward_local(x, w, b, y, weights, cfg, axes):
  """One shard's forward pass; every output is replicated over the model axis."""
  y_local = y - lax.axis_index(axes.model) * w.shape[1]
  lse, target, total, count = _local_statistics(x, w, b, y_local, cfg, axes)
  keep = jnp.ones(y.shape, bool)
  loss, valid, count = _fused.loss_from_statistics(
      lse, target, total, count, y, keep, axes.num_classes, cfg
  )
  denom = _psum_rows(jnp.sum(jnp.where(valid, weights, 0)), axes)
  weighted_sum = _psum_rows(jnp.sum(weights * loss), axes)
  if cfg.reduction == "none":
    out = weights * loss
  else:
    out = _reduction.reduce(weighted_sum, denom, cfg.reduction)
  return out, (lse, loss, valid, count, denom, weighted_sum)


def _backward_local(x, w, b, y, weights, stats, ct, cfg, axes):
  """One shard's backward pass, with the collectives it needs."""
  lse, loss, valid, count, denom, weighted_sum = stats
  a, coef, smooth, safe_lse, dweights = _fused.backward_coefficients(
      (ct, jnp.zeros_like(lse)), y, weights, lse, loss, valid, count, denom,
      weighted_sum, axes.num_classes, cfg,
  )
  y_local = y - lax.axis_index(axes.model) * w.shape[1]
  dx, dw, db = _fused.accumulate_grads(
      x, w, b, y_local, a, coef, smooth, safe_lse, valid, cfg
  )
  # Each shard owns its columns, so dw and db need no collective over the
  # model axis (only a sum over the row shards); x is replicated over the
  # model axis, so its cotangent is the sum of the shards' partial products.
  dx = lax.psum(dx, axes.model)
  dw, db = _psum_rows(dw, axes), _psum_rows(db, axes)
  return (
      dx.astype(x.dtype),
      dw.astype(w.dtype),
      db.astype(b.dtype),
      dweights.astype(weights.dtype),
  )


def _specs(axes):
  rows = P(axes.data)
  return rows, (P(axes.data, None), P(None, axes.model), P(axes.model), rows,
                rows)


def _shard(fn, mesh, in_specs, out_specs):
  # Collectives are explicit in both passes and JAX never transposes these
  # shard_maps (the custom_vjp below owns differentiation), so the
  # replication checker has nothing to add.
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=False)


# The custom_vjp sits outside the shard_maps: its forward and backward rules
# are each one shard_map with explicit collectives, so the gradients do not
# depend on how JAX would transpose a shard_map.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _vp_ce(x, w, b, y, weights, cfg, axes, mesh):
  return _vp_ce_fwd(x, w, b, y, weights, cfg, axes, mesh)[0]


def _vp_ce_fwd(x, w, b, y, weights, cfg, axes, mesh):
  rows, in_specs = _specs(axes)
  out_spec = rows if cfg.reduction == "none" else P()
  stat_specs = (rows, rows, rows, rows, P(), P())
  out, stats = _shard(
      functools.partial(_forward_local, cfg=cfg, axes=axes), mesh, in_specs,
      (out_spec, stat_specs),
  )(x, w, b, y, weights)
  return out, (x, w, b, y, weights, stats)


def _vp_ce_bwd(cfg, axes, mesh, res, ct):
  x, w, b, y, weights, stats = res
  rows, in_specs = _specs(axes)
  ct_spec = rows if cfg.reduction == "none" else P()
  stat_specs = (rows, rows, rows, rows, P(), P())
  dx, dw, db, dweights = _shard(
      functools.partial(_backward_local, cfg=cfg, axes=axes), mesh,
      in_specs + (stat_specs, ct_spec),
      (in_specs[0], in_specs[1], in_specs[2], rows),
  )(x, w, b, y, weights, stats, ct)
  return dx, dw, db, None, dweights


_vp_ce.defvjp(_vp_ce_fwd, _vp_ce_bwd)
# Called eagerly, the shard_maps would be dispatched op by op and recompiled
# on every call (their bodies are fresh partials); one jit keyed on the
# static options compiles each configuration once. Under an outer jit or
# grad it is inlined.
_vp_ce_jit = jax.jit(_vp_ce, static_argnums=(5, 6, 7))


def _check_operands(x, w, b, labels, weights):
  x, w = jnp.asarray(x), jnp.asarray(w)
  v.check_floating("x", x)
  v.check_floating("w", w)
  v.check_rank("x", x, 2, "[batch, num_features]")
  v.check_rank("w", w, 2, "[num_features, num_classes]")
  if x.shape[1] != w.shape[0]:
    raise ValueError(
        f"x has {x.shape[1]} features (shape {x.shape}) but w has"
        f" {w.shape[0]} rows (shape {w.shape}); expected the same d."
    )
  if b is not None:
    b = jnp.asarray(b)
    v.check_floating("b", b)
    v.check_same_shape("b", b, (w.shape[1],), "[num_classes]")
  if labels is not None:
    labels = jnp.asarray(labels)
    v.check_integer("labels", labels)
    v.check_same_shape("labels", labels, x.shape[:1], "[batch]")
  if weights is not None:
    weights = jnp.asarray(weights)
    v.check_floating("weights", weights)
    v.check_same_shape("weights", weights, x.shape[:1], "one per label")
    v.check_nonnegative("weights", weights)
  return x, w, b, labels, weights


def _check_divisible(name, size, mesh, axis):
  if axis is not None and size % mesh.shape[axis]:
    raise ValueError(
        f"{name} ({size}) must be divisible by the size of mesh axis"
        f" {axis!r} ({mesh.shape[axis]})."
    )


def vocab_parallel_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    axis_name: str = "model",
    data_axis_name: str | None = None,
    chunk_size: int | None = None,
    label_smoothing: float = 0.0,
    weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> jax.Array:
  r"""Cross-entropy of ``x @ w + b`` with the classes split over a mesh axis.

  Equal to :func:`jaxsoftmax.fused_linear_cross_entropy` (and to
  ``cross_entropy(x @ w + b, labels)``) for any number of devices P. Shard
  :math:`p` holds classes :math:`C_p` and computes

  .. math::
    \operatorname{lse}_p = \log \sum_{k \in C_p} e^{h_k}, \quad
    M = \max_p \operatorname{lse}_p, \quad
    \operatorname{lse} = M + \log \sum_p e^{\operatorname{lse}_p - M},
    \quad h_y = \sum_p [y \in C_p]\, h_y

  (one ``pmax`` and two ``psum`` of [B] vectors), then
  :math:`\ell = \operatorname{lse} - h_y` (plus smoothing over the global
  finite classes and the z-loss). The hand-written backward pass computes
  :math:`G_p = \bar\ell(\operatorname{softmax}(h)_{C_p} - q_{C_p})` locally,
  :math:`dw_p = x^\top G_p`, :math:`db_p = \mathbf{1}^\top G_p` with no
  collective, and :math:`dx = \sum_p G_p w_p^\top` with one ``psum``.
  Communication per step: 3 scalars per row forward (5 with smoothing: the
  finite classes' logit sum and count too), B·d for ``dx``, against B·K for
  an all-gather of the logits.

  With ``chunk_size`` each shard streams over its classes in blocks, so no
  device holds its [B, K/P] block of logits. ``K`` not divisible by P is
  padded with masked classes (see :func:`pad_classes`; pre-pad to avoid a
  copy per call). With ``data_axis_name`` rows are split over that axis
  (data parallelism), the batch size must be divisible by its size, and the
  loss and the gradients of ``w``, ``b`` are reduced over it.

  Args:
    x: ``[B, d]`` features, replicated over ``axis_name`` (sharded over
      ``data_axis_name`` if given).
    w: ``[d, K]`` weights; plain, or already sharded ``P(None, axis_name)``.
    b: ``[K]`` biases (``P(axis_name)``), or None.
    labels: ``[B]`` integer classes in ``[0, K)``.
    mesh: a ``jax.sharding.Mesh`` with an axis ``axis_name``.
    axis_name: the mesh axis the classes are split over.
    data_axis_name: optional mesh axis the rows are split over.
    chunk_size: classes per block on each shard, or None for one block.
    label_smoothing: :math:`\varepsilon \in [0, 1]`, over the global classes.
    weights: optional ``[B]`` non-negative per-example weights.
    ignore_index: label value whose rows contribute nothing.
    z_loss: coefficient of :math:`z\,\operatorname{lse}^2`.
    reduction: ``"mean"`` (weighted), ``"sum"`` or ``"none"``.

  Returns:
    The loss: a scalar, or ``[B]`` for ``reduction="none"``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import cross_entropy
    >>> from jaxsoftmax.sharded import vocab_parallel_cross_entropy
    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> x, w = jnp.ones((2, 3)), jnp.arange(12.0).reshape(3, 4) / 10
    >>> y = jnp.array([0, 3])
    >>> loss = vocab_parallel_cross_entropy(x, w, None, y, mesh=mesh)
    >>> bool(jnp.allclose(loss, cross_entropy(x @ w, y)))
    True

  References:
    M. Shoeybi et al., "Megatron-LM: training multi-billion parameter
    language models using model parallelism" (2019), the vocab-parallel
    cross-entropy; "Multilayer perceptron (MLP)" (blog post, 2024), the row
    split of the output layer.
  """
  _check_mesh(mesh, axis_name, data_axis_name)
  mesh = _working_mesh(mesh)
  x, w, b, labels, weights = _check_operands(x, w, b, labels, weights)
  if chunk_size is not None:
    v.check_positive_int("chunk_size", chunk_size)
  v.check_reduction(reduction)
  v.check_label_smoothing(label_smoothing)
  v.check_ignore_index(ignore_index)
  v.check_nonnegative("z_loss", z_loss)
  num_classes = w.shape[1]
  v.check_labels_in_range("labels", labels, num_classes, ignore_index)
  v.check_finite("x", x)
  _check_divisible("the batch size", x.shape[0], mesh, data_axis_name)

  shards = mesh.shape[axis_name]
  w, b = pad_classes(w, b, shards)
  local = w.shape[1] // shards
  acc = _numerics.accumulation_dtype(jnp.result_type(x, w))
  weights = jnp.ones(labels.shape, acc) if weights is None else weights
  cfg = _fused.FusedConfig(
      chunk=local if chunk_size is None else min(chunk_size, local),
      rows=x.shape[0] // (1 if data_axis_name is None else
                          mesh.shape[data_axis_name]),
      label_smoothing=float(label_smoothing),
      ignore_index=None if ignore_index is None else int(ignore_index),
      z_loss=float(z_loss),
      reduction=reduction,
  )
  axes = _Axes(axis_name, data_axis_name, num_classes)
  _, specs = _specs(axes)
  index_dtype = jnp.promote_types(labels.dtype, jnp.int32)
  args = (x, w, b, labels.astype(index_dtype), weights.astype(acc))
  args = tuple(_place(n, a, mesh, s) for n, a, s in
               zip(("x", "w", "b", "labels", "weights"), args, specs))
  return _vp_ce_jit(*args, cfg, axes, mesh)


def feature_parallel_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    axis_name: str = "model",
    **loss_kwargs,
) -> jax.Array:
  r"""Cross-entropy with the *feature* dimension split over a mesh axis.

  Device :math:`p` holds ``x[:, d_p]`` and ``w[d_p, :]``; the logits are
  :math:`h = \sum_p x_{d_p} w_{d_p} + b`, one ``psum`` of [B, K]. This suits
  wide inputs with a moderate K (every device then holds the full [B, K]
  logits); for large K use :func:`vocab_parallel_cross_entropy`. The loss is
  :func:`jaxsoftmax.cross_entropy` (its hand-written backward) on the summed
  logits; JAX transposes the ``psum``, so ``dx_p = G w_{d_p}^\top`` and
  ``dw_p = x_{d_p}^\top G`` stay local.

  Args:
    x: ``[B, d]``; d divisible by the axis size.
    w: ``[d, K]``.
    b: ``[K]`` or None (replicated).
    labels: ``[B]`` integer classes.
    mesh: a mesh with axis ``axis_name``.
    axis_name: the mesh axis the features are split over.
    **loss_kwargs: passed to :func:`jaxsoftmax.cross_entropy`
      (``weights``, ``label_smoothing``, ``ignore_index``, ``reduction``).

  Returns:
    The loss, as :func:`jaxsoftmax.cross_entropy` returns it.

  References:
    Seed 003 of this project (the column split of a linear layer).
  """
  _check_mesh(mesh, axis_name, None)
  mesh = _working_mesh(mesh)
  x, w, b, labels, _ = _check_operands(x, w, b, labels, None)
  _check_divisible("the number of features", w.shape[0], mesh, axis_name)
  v.check_finite("x", x)
  if b is None:
    b = jnp.zeros((w.shape[1],), w.dtype)
  weights = loss_kwargs.pop("weights", None)
  specs = (P(None, axis_name), P(axis_name, None), P(), P(), P())
  args = (x, w, b, labels,
          jnp.ones(labels.shape, x.dtype) if weights is None else weights)
  args = tuple(_place(n, a, mesh, s) for n, a, s in
               zip(("x", "w", "b", "labels", "weights"), args, specs))
  return _feature_parallel(*args, tuple(sorted(loss_kwargs.items())), mesh,
                           axis_name, specs)


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8))
def _feature_parallel(x, w, b, y, weights, loss_kwargs, mesh, axis_name,
                      specs):
  """The shard-mapped loss; jitted so that eager calls compile once."""

  def local(x, w, b, y, wt):
    acc = _numerics.accumulation_dtype(jnp.result_type(x, w))
    h = lax.psum(jnp.matmul(x, w, preferred_element_type=acc), axis_name)
    return cross_entropy(h + b.astype(acc)[None, :], y, weights=wt,
                         **dict(loss_kwargs))

  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())(
      x, w, b, y, weights
  )


def vocab_parallel_top_k(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None,
    k: int,
    *,
    mesh: Mesh,
    axis_name: str = "model",
) -> tuple[jax.Array, jax.Array]:
  """The k largest logits of ``x @ w + b`` with the classes split over a mesh.

  Each shard takes its local top k (ids offset to global class numbers),
  the P·k candidates are ``all_gather``-ed (P·k per row, not K), and a
  second top k merges them. Ties go to the lower class id, as in
  ``lax.top_k`` on the full logits.

  Args:
    x: ``[B, d]``.
    w: ``[d, K]``.
    b: ``[K]`` or None.
    k: a positive int ≤ K.
    mesh: a mesh with axis ``axis_name``.
    axis_name: the mesh axis the classes are split over.

  Returns:
    ``(values [B, k], ids [B, k])``, values in the accumulation dtype, in
    decreasing order.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax.sharded import vocab_parallel_top_k
    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> _, ids = vocab_parallel_top_k(jnp.ones((1, 2)), jnp.eye(2, 5), None,
    ...                               2, mesh=mesh)
    >>> ids.tolist()
    [[0, 1]]
  """
  _check_mesh(mesh, axis_name, None)
  mesh = _working_mesh(mesh)
  x, w, b, _, _ = _check_operands(x, w, b, None, None)
  v.check_positive_int("k", k)
  if k > w.shape[1]:
    raise ValueError(f"k must be <= the number of classes {w.shape[1]};"
                     f" got {k}.")
  shards = mesh.shape[axis_name]
  w, b = pad_classes(w, b, shards)
  local_k = min(k, w.shape[1] // shards)
  specs = (P(), P(None, axis_name), P(axis_name))
  args = tuple(_place(n, a, mesh, s) for n, a, s in
               zip(("x", "w", "b"), (x, w, b), specs))
  return _top_k(*args, k, local_k, mesh, axis_name, specs)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _top_k(x, w, b, k, local_k, mesh, axis_name, specs):
  """The shard-mapped top k; jitted so that eager calls compile once."""

  def local(x, w, b):
    acc = _numerics.accumulation_dtype(jnp.result_type(x, w))
    h = jnp.matmul(x, w, preferred_element_type=acc) + b.astype(acc)[None, :]
    vals, ids = lax.top_k(h, local_k)
    ids = ids + lax.axis_index(axis_name) * w.shape[1]
    vals = lax.all_gather(vals, axis_name, axis=1, tiled=True)
    ids = lax.all_gather(ids, axis_name, axis=1, tiled=True)
    # Candidates arrive in shard order, so among equal values the lower id
    # comes first and top_k (stable) keeps it.
    top, pos = lax.top_k(vals, k)
    return top, jnp.take_along_axis(ids, pos, axis=1)

  return jax.shard_map(
      local, mesh=mesh, in_specs=specs, out_specs=(P(), P()), check_vma=False
  )(x, w, b)


def vocab_parallel_predict(
    x: ArrayLike, w: ArrayLike, b: ArrayLike | None, *, mesh: Mesh,
    axis_name: str = "model",
) -> jax.Array:
  """``argmax(x @ w + b)`` with the classes split over a mesh: [B] int32."""
  return vocab_parallel_top_k(x, w, b, 1, mesh=mesh, axis_name=axis_name)[1][
      :, 0
  ]


def _spec_axes(spec: P) -> list[str]:
  """The mesh axis names a ``PartitionSpec`` uses, in order."""
  names = []
  for entry in spec:
    if entry is None:
      continue
    names.extend(entry if isinstance(entry, tuple) else (entry,))
  return names


def _check_spec(where: str, leaf: Any, spec: Any, mesh: Mesh) -> None:
  if not isinstance(spec, P):
    raise TypeError(
        f"the spec of {where} must be a jax.sharding.PartitionSpec; got"
        f" {spec!r}."
    )
  shape = jnp.shape(leaf)
  if len(spec) > len(shape):
    raise ValueError(
        f"{where} has shape {shape} but its spec {spec} names"
        f" {len(spec)} dimensions; expected at most {len(shape)}."
    )
  for dim, entry in enumerate(spec):
    names = _spec_axes(P(entry))
    unknown = [n for n in names if n not in mesh.axis_names]
    if unknown:
      raise ValueError(
          f"the spec {spec} of {where} names {unknown}, not an axis of the"
          f" mesh; the mesh has axes {mesh.axis_names} with shape"
          f" {dict(mesh.shape)}."
      )
    parts = 1
    for n in names:
      parts *= mesh.shape[n]
    if shape[dim] % parts:
      raise ValueError(
          f"{where} has shape {shape}; its dimension {dim} ({shape[dim]}) must"
          f" be divisible by {parts}, the size of mesh axes {names} in its"
          f" spec {spec}. Pad it first (for classes: pad_classes)."
      )


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
  """``x`` laid out as ``sharding``: a transfer, or under ``jit`` a constraint."""
  if v.is_concrete(x):
    # device_put accepts host values on a mesh spanning several processes:
    # each process keeps the shards of its own devices.
    return jax.device_put(x, sharding)
  mesh = _working_mesh(sharding.mesh)
  sharding = NamedSharding(mesh, sharding.spec)
  if mesh.are_all_axes_explicit:
    return jax.reshard(x, sharding)
  return lax.with_sharding_constraint(x, sharding)


def shard_params(params: Any, mesh: Mesh, specs: Any = None) -> Any:
  """Places a pytree of arrays on ``mesh``, each leaf split as its spec says.

  ``specs`` is one ``PartitionSpec`` for every leaf, or a pytree of them
  shaped like a prefix of ``params``. For a linear output layer,
  ``{"w": P(None, "model"), "b": P("model")}`` splits the classes over the
  ``"model"`` axis, the layout :func:`vocab_parallel_cross_entropy` works in;
  ``P()`` (and ``specs=None``) replicates. Any pytree works, so the same call
  replicates a dataset or splits a batch's rows (``P("data")``).

  On concrete arrays this is a ``jax.device_put``: on a mesh spanning several
  processes (after ``jax.distributed.initialize``) every process passes the
  same values and keeps the shards of its own devices. Under ``jit`` it
  constrains the layout instead. Optimizer state built by
  ``jax.jit(optimizer.init)`` on the placed params inside
  ``jax.set_mesh(mesh)`` follows their layout (Adam's moments are split like
  ``w``); :func:`jaxsoftmax.fit` does that when given a ``mesh``.

  Args:
    params: a pytree of arrays (NumPy or JAX), e.g. ``{"w": [d, K], "b":
      [K]}``.
    mesh: a ``jax.sharding.Mesh``.
    specs: a ``PartitionSpec``, a pytree of them matching a prefix of
      ``params``, or None (replicate everything). Each split dimension must
      be divisible by the size of its mesh axes.

  Returns:
    ``params`` with every leaf a ``jax.Array`` of sharding
    ``NamedSharding(mesh, spec)``.

  Examples:
    >>> import jax
    >>> from jax.sharding import PartitionSpec as P
    >>> from jaxsoftmax import linear_init
    >>> from jaxsoftmax.sharded import shard_params
    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> params = shard_params(linear_init(jax.random.key(0), 3, 4), mesh,
    ...                       {"w": P(None, "model"), "b": P("model")})
    >>> params["w"].sharding.spec
    P(None, 'model')
  """
  _check_mesh(mesh, None, None)
  specs = P() if specs is None else specs
  is_spec = lambda s: isinstance(s, P)
  try:
    full = jax.tree.map(
        lambda spec, sub: jax.tree.map(lambda _: spec, sub), specs, params,
        is_leaf=is_spec,
    )
  except ValueError as e:
    raise ValueError(
        "specs must be a PartitionSpec or a pytree of them matching a prefix"
        f" of params; got specs {jax.tree.structure(specs, is_leaf=is_spec)}"
        f" for params {jax.tree.structure(params)}."
    ) from e

  def place(path, leaf, spec):
    where = "params" + jax.tree_util.keystr(path)
    _check_spec(where, leaf, spec, mesh)
    return _put(leaf, NamedSharding(mesh, spec))

  return jax.tree_util.tree_map_with_path(place, params, full)

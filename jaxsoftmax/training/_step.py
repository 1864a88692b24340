r"""One pure optimizer step, shared by every trainer.

:func:`make_train_step` builds ``step(params, opt_state, batch, key) ->
(params, opt_state, metrics)`` from a loss and an Optax transformation:
dense (autodiff or a hand-derived gradient, optional mixed precision) or
row-sparse (gradients and updates of only the rows of class-major tables a
step reads, :mod:`jaxsoftmax.sparse`), with an optional guard that refuses
a non-finite step. :func:`jaxsoftmax.fit` scans it over an epoch,
:func:`jaxsoftmax.model_selection.train_softmax_regression` vmaps it over
penalty strengths, and :func:`jaxsoftmax.large_vocab.train` runs it under a
wall-clock budget.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
import optax

from jaxsoftmax._core import gather as _gather
from jaxsoftmax import sparse

Step = Callable[[Any, Any, Any, Any], tuple[Any, Any, dict[str, jax.Array]]]


def cast_floats(tree: Any, dtype: jnp.dtype | None) -> Any:
  """``tree`` with its floating leaves cast to ``dtype`` (None: unchanged)."""
  if dtype is None:
    return tree
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
      tree,
  )


def leaves_finite(tree: Any, before: Any = None) -> jax.Array:
  """``[num_leaves]`` bool: whether each leaf is entirely finite.

  With ``before`` (the same tree one step earlier), an entry that is
  non-finite but unchanged also counts as fine: a ``-inf`` bias that masks a
  padded class (``sharded.pad_classes``) stays ``-inf`` and is not a
  divergence; NaN never equals itself, so it is always caught.
  """
  leaves = jax.tree.leaves(tree)
  olds = [None] * len(leaves) if before is None else jax.tree.leaves(before)
  flags = [
      jnp.all(jnp.isfinite(leaf) if old is None
              else jnp.isfinite(leaf) | (leaf == old))
      for leaf, old in zip(leaves, olds)
  ]
  return jnp.stack(flags) if flags else jnp.zeros((0,), bool)


def _path_key(entry: Any) -> Hashable:
  """A tree path entry as the key or index a user writes for it."""
  for attr in ("key", "idx", "name"):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return str(entry)


def _row_leaves(rows: Mapping[Any, Any], params: Any) -> dict[int, Any]:
  """Flat leaf index -> ids, from ``rows_fn``'s ``{path: ids}``."""
  if not isinstance(rows, Mapping):
    raise TypeError(f"rows_fn must return a dict {{leaf path: ids}}; got"
                    f" {type(rows).__name__}.")
  paths = [tuple(_path_key(e) for e in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  index = {path: i for i, path in enumerate(paths)}
  out = {}
  for name, ids in rows.items():
    path = name if isinstance(name, tuple) else (name,)
    if path not in index:
      raise ValueError(f"rows_fn names {name!r}, which is no leaf of params;"
                       f" the leaves are {paths}.")
    out[index[path]] = ids
  return out


def _gathered(leaves: list[Any], rows: dict[int, Any]
              ) -> dict[int, _gather.Rows]:
  """Views of the named rows; tables named with the same ids share one sort."""
  views, by_ids = {}, {}
  for i, ids in rows.items():
    if id(ids) in by_ids:
      uids = by_ids[id(ids)]
      views[i] = _gather.Rows(
          uids, jnp.take(leaves[i], uids, axis=0, mode="fill", fill_value=0))
    else:
      views[i] = sparse.gather(leaves[i], ids)
      by_ids[id(ids)] = views[i].ids
  return views


def _with_params_dtype(grads: Any, params: Any) -> Any:
  # The optimizer state and the update stay in the params' dtype.
  return jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)


def _dense_update(loss_fn, value_and_grad_fn, optimizer, compute_dtype):
  """``(params, opt_state, batch, key) -> (loss, grads, params, opt_state)``."""

  def update(params, opt_state, batch, key):
    batch = cast_floats(batch, compute_dtype)
    loss, grads = value_and_grad_fn(
        cast_floats(params, compute_dtype), batch, key)
    grads = _with_params_dtype(grads, params)
    updates, opt_state = optimizer.update(
        grads, opt_state, params, value=loss, grad=grads,
        value_fn=lambda p: loss_fn(cast_floats(p, compute_dtype), batch, key))
    return loss, grads, optax.apply_updates(params, updates), opt_state

  return update


def _row_update(loss_fn, rows_fn, optimizer, compute_dtype):
  """The same as :func:`_dense_update`, by rows of the tables ``rows_fn`` names.

  The grads it returns hold the rows' gradients (``Rows.values``) at the
  tables.
  """

  def update(params, opt_state, batch, key):
    leaves, treedef = jax.tree.flatten(params)
    views = _gathered(leaves, _row_leaves(rows_fn(params, batch, key), params))
    batch = cast_floats(batch, compute_dtype)

    def objective(values, dense):
      merged = [_gather.Rows(views[i].ids, values[i]) if i in views
                else dense[i] for i in range(len(leaves))]
      p = treedef.unflatten(merged)
      return loss_fn(cast_floats(p, compute_dtype), batch, key)

    dense = {i: a for i, a in enumerate(leaves) if i not in views}
    loss, (g_rows, g_dense) = jax.value_and_grad(objective, argnums=(0, 1))(
        {i: r.values for i, r in views.items()}, dense)
    g_leaves = [g_rows[i] if i in views else g_dense[i]
                for i in range(len(leaves))]
    g_leaves = [g.astype(a.dtype) for g, a in zip(g_leaves, leaves)]
    grads = treedef.unflatten(
        [_gather.Rows(views[i].ids, g) if i in views else g
         for i, g in enumerate(g_leaves)])
    params, opt_state = sparse.apply_updates(
        optimizer, grads, opt_state, params)
    return loss, treedef.unflatten(g_leaves), params, opt_state

  return update


def make_train_step(
    loss_fn: Callable[[Any, Any, Any], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    value_and_grad_fn: Callable[[Any, Any, Any], tuple[jax.Array, Any]]
    | None = None,
    rows_fn: Callable[[Any, Any, Any], Mapping[Any, Any]] | None = None,
    compute_dtype: DTypeLike | None = None,
    guard: bool = True,
) -> Step:
  r"""A pure optimizer step: ``step(params, opt_state, batch, key)``.

  With :math:`L(\theta; b, k)` = ``loss_fn(params, batch, key)`` (a scalar)
  and :math:`s_t` the state of the Optax transformation,

  .. math::
    \ell_t, g_t = L(\theta_t; b_t, k_t),\ \nabla_\theta L(\theta_t; b_t, k_t),
    \qquad (u_t, s_{t+1}) = \operatorname{update}(g_t, s_t, \theta_t),
    \qquad \theta_{t+1} = \theta_t + u_t.

  **Dense** (no ``rows_fn``): :math:`g_t` from ``value_and_grad_fn(params,
  batch, key)`` when given (a hand-derived rule), else
  ``jax.value_and_grad(loss_fn)``. ``optimizer.update`` also receives
  ``value``, ``grad`` and ``value_fn`` (through
  ``optax.with_extra_args_support``; the others ignore them), so
  line-search optimizers such as ``optax.lbfgs`` work. With ``compute_dtype`` (e.g.
  ``jnp.bfloat16``) the params and the batch's floating leaves are cast to
  it for the loss and the gradient, and the gradient is cast back to each
  param's dtype: the params and the optimizer state stay in full precision.

  **Row-sparse** (``rows_fn``): ``rows_fn(params, batch, key)`` returns a
  dict ``{path: ids}`` naming, for some class-major tables ``[K, ...]`` among
  the params' leaves, the rows the step reads (integer ids of any shape,
  repeats fine). A path is the tuple of dict keys and sequence indices that
  leads to the leaf, e.g. ``(1, "w")`` in ``(model, {"w": ..., "b":
  ...})``, or a bare key for a leaf of a top-level dict (``"w"``). Each
  table is gathered as a :class:`jaxsoftmax.sparse.Rows` view (tables named
  with the *same* ids array share one deduplication), ``loss_fn`` gets params
  whose table leaves are those views (the losses accept them; an embedding
  lookup uses ``jaxsoftmax._core.gather.lookup``), the gradient is taken with
  respect to the views' values and the other leaves, and
  :func:`jaxsoftmax.sparse.apply_updates` updates only those rows of the
  tables and of their optimizer state: :math:`O(nd)` for :math:`n` rows,
  whatever :math:`K` (exact for SGD and Adagrad, lazy Adam; see
  :mod:`jaxsoftmax.sparse`). ``value_and_grad_fn`` does not apply.

  **Guard** (``guard=True``): when the loss, a gradient or an updated param
  is NaN or infinite (a param that was already non-finite and did not change,
  such as a ``-inf`` bias masking a padded class, is fine), the step returns
  ``params`` and ``opt_state`` unchanged; ``metrics["good"]`` says whether it
  updated. The check and the select read every param, :math:`O(Kd)` for a
  table, so a row-sparse step meant to stay independent of :math:`K` passes
  ``guard=False`` and checks the loss itself.

  The step is pure: jit it, scan it, or vmap it (e.g. over learning rates
  inside ``optimizer``'s hyperparameters, or over params).

  Args:
    loss_fn: ``loss_fn(params, batch, key) -> scalar``, the minibatch's loss.
    optimizer: an Optax transformation (per-parameter state for row-sparse
      steps).
    value_and_grad_fn: ``(params, batch, key) -> (loss, grads)``; None is
      autodiff of ``loss_fn``.
    rows_fn: ``(params, batch, key) -> {path: ids}`` for row-sparse steps.
    compute_dtype: a floating dtype for the loss and gradient, or None.
    guard: refuse non-finite steps and report finiteness.

  Returns:
    ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``
    with ``metrics["loss"]`` the loss at the params before the update and,
    with the guard, ``loss_finite`` (scalar bool), ``grads_finite`` and
    ``params_finite`` (``[num_leaves]`` bools in ``jax.tree.leaves`` order;
    a table's gradient is its rows' gradient) and ``good``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxsoftmax import make_train_step
    >>> def loss_fn(params, batch, key):
    ...   return jnp.mean((batch[0] @ params["w"] - batch[1]) ** 2)
    >>> opt = optax.sgd(0.5)
    >>> step = jax.jit(make_train_step(loss_fn, opt))
    >>> params = {"w": jnp.zeros(2)}
    >>> batch = (jnp.eye(2), jnp.ones(2))
    >>> params, state, metrics = step(params, opt.init(params), batch, None)
    >>> params["w"].tolist(), bool(metrics["good"])
    ([0.5, 0.5], True)

  References:
    The Optax documentation, "Optax: gradient transformations"
    (optax.readthedocs.io), for ``update`` and ``apply_updates``; the row
    updates as in the :mod:`jaxsoftmax.sparse` module docstring (T. Mikolov
    et al., "Distributed representations of words and phrases and their
    compositionality", NeurIPS 2013).
  """
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}.")
  if rows_fn is not None and value_and_grad_fn is not None:
    raise ValueError("value_and_grad_fn applies to dense steps only; pass"
                     " rows_fn or value_and_grad_fn, not both.")
  if compute_dtype is not None:
    compute_dtype = jnp.dtype(compute_dtype)
  if rows_fn is not None:
    update = _row_update(loss_fn, rows_fn, optimizer, compute_dtype)
  else:
    update = _dense_update(
        loss_fn, value_and_grad_fn or jax.value_and_grad(loss_fn),
        optax.with_extra_args_support(optimizer), compute_dtype)

  def step(params, opt_state, batch, key):
    loss, grads, new_params, new_state = update(params, opt_state, batch, key)
    if not guard:
      return new_params, new_state, {"loss": loss}
    metrics = {
        "loss": loss,
        "loss_finite": jnp.isfinite(loss),
        "grads_finite": leaves_finite(grads),
        "params_finite": leaves_finite(new_params, params),
    }
    metrics["good"] = (metrics["loss_finite"]
                       & jnp.all(metrics["grads_finite"])
                       & jnp.all(metrics["params_finite"]))
    params, opt_state = keep_if(metrics["good"], (new_params, new_state),
                                (params, opt_state))
    return params, opt_state, metrics

  return step


def keep_if(good: jax.Array, new: Any, old: Any) -> Any:
  """``new`` where ``good``, else ``old`` (trees of the same structure)."""
  return jax.tree.map(lambda a, b: jnp.where(good, a, b), new, old)

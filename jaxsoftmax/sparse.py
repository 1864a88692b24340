r"""Row-sparse gradients and Optax updates that touch only those rows.

A sampled, NCE, negative-sampling, hierarchical or class-based step reads a
few rows of a class-major table ``[K, d]`` (the labels' and candidates'
output vectors, the path nodes, the cluster members, the context's input
embeddings) and its gradient is zero everywhere else. Taking it with respect
to the dense table costs :math:`O(Kd)` (a ``[K, d]`` zero buffer, and an
optimizer that reads and writes every row and both moments), which is what
made those steps grow with :math:`K`. This module keeps the whole step in
the rows it uses:

1. :func:`gather` takes the rows ``ids`` name, each once, as a :class:`Rows`
   view (sorted ids, ``[n, d]`` values);
2. the losses accept the view in place of the table
   (:func:`~jaxsoftmax.sampled_softmax_loss`, :func:`~jaxsoftmax.nce_loss`,
   :func:`~jaxsoftmax.negative_sampling_loss`,
   :func:`~jaxsoftmax.hierarchical_softmax_loss`,
   :func:`~jaxsoftmax.class_based_softmax_loss`), so ``jax.grad`` with
   respect to ``view.values`` is the ``[n, d]`` gradient of those rows: row
   :math:`j` equals row ``ids[j]`` of the dense gradient, duplicates summed;
3. :func:`apply_updates` runs any per-parameter Optax transformation on the
   gathered rows of the parameter and of its state and scatters them back in
   place (donate the buffers under ``jit``), next to ordinary dense updates
   of the other parameters in the same call.

Every step then costs :math:`O(nd)` whatever :math:`K`, as in word2vec and
fastText (Hogwild SGD on the rows) or TensorFlow's ``IndexedSlices`` with
``LazyAdam``.

**What the row update means for each optimizer.** Rows a step does not name
keep their parameters *and* their optimizer state.

- SGD (``optax.sgd`` without momentum): a zero gradient changes nothing, so
  the row update *equals* the dense one, bit for bit.
- Adagrad (``optax.adagrad``, the optimizer of word2vec and fastText's
  successors): a zero gradient adds nothing to the accumulator and moves
  nothing, so it equals the dense update too.
- Adam (``optax.adam``) becomes **lazy Adam**: dense Adam keeps moving every
  row with its decaying first moment and decays every second moment even
  when the row's gradient is zero; the row update moves and decays only the
  rows the step names, as TensorFlow's ``LazyAdam`` does. The step count is
  shared, so the bias correction uses the global step. Lazy Adam is what
  makes Adam's step independent of :math:`K`; on rare classes it takes
  larger steps than dense Adam would, since their moments did not decay
  in between.
- Momentum, RMSProp, AdamW, schedules and chains behave lazily the same way.
  Transformations whose state is not a per-parameter copy (Adafactor's
  factored moments, L-BFGS's memory) cannot be gathered by rows and raise
  ``TypeError``.

References:
  T. Mikolov, I. Sutskever, K. Chen, G. Corrado, J. Dean, "Distributed
  representations of words and phrases and their compositionality", NeurIPS
  (2013); A. Joulin, E. Grave, P. Bojanowski, T. Mikolov, "Bag of tricks for
  efficient text classification", EACL (2017); B. Recht, C. Re, S. Wright,
  F. Niu, "Hogwild!: a lock-free approach to parallelizing stochastic
  gradient descent", NeurIPS (2011); D. P. Kingma, J. Ba, "Adam: a method for
  stochastic optimization", ICLR (2015).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import optax

from jaxsoftmax._core import gather as _gather
from jaxsoftmax._core import validation as v

__all__ = ["PAD", "Rows", "apply_updates", "check_optimizer", "gather"]

PAD = int(_gather.PAD)
Rows = _gather.Rows


def _is_rows(tree: Any) -> bool:
  return isinstance(tree, Rows)


def gather(table: ArrayLike, ids: ArrayLike, *, size: int | None = None) -> Rows:
  r"""The rows of a class-major ``table`` that ``ids`` name, each once.

  Sorts and deduplicates ``ids`` into ``size`` slots (default
  :math:`\min(\text{ids.size}, K)`, enough for any ids; trailing slots are
  :data:`PAD`, with zero values) and gathers those rows:
  :math:`O(n \log n + n d)` for :math:`n` = ``size``, whatever :math:`K`.
  Pass the view to a loss in place of the table; the gradient with respect
  to ``view.values`` is the rows' gradient, for :func:`apply_updates`.

  Args:
    table: ``[K, ...]``, one row per class.
    ids: integer row ids of any shape, in ``[0, K)``; repeats are fine.
      Checked on eager calls; under ``jit`` an out-of-range id is left out
      of the view, so a loss that looks it up gets NaN, never another row.
    size: the number of slots, a Python int >= the number of distinct ids.

  Returns:
    ``Rows(ids=[size] int32, values=[size, ...])``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import sparse
    >>> view = sparse.gather(jnp.arange(12.0).reshape(6, 2), jnp.array([4, 1, 4]))
    >>> view.ids.tolist()  # sorted, each once, then a PAD slot
    [1, 4, 2147483647]
    >>> view.values.tolist()
    [[2.0, 3.0], [8.0, 9.0], [0.0, 0.0]]
  """
  table = jnp.asarray(table)
  ids = jnp.asarray(ids)
  v.check_min_rank("table", table, 1, "[num_rows, ...]")
  v.check_integer("ids", ids)
  num_rows = table.shape[0]
  v.check_labels_in_range("ids", ids, num_rows)
  if size is None:
    size = max(1, min(ids.size, num_rows))
  v.check_positive_int("size", size)
  flat = ids.reshape(-1).astype(jnp.int32)
  flat = jnp.where((flat >= 0) & (flat < num_rows), flat, PAD)
  if v.is_concrete(flat):
    distinct = int(v.on_host(_num_distinct, flat))
    if distinct > size:
      raise ValueError(f"size must be at least the number of distinct ids"
                       f" ({distinct}); got {size}.")
  uids = _unique(flat, size)
  values = jnp.take(table, uids, axis=0, mode="fill", fill_value=0)
  return Rows(uids, values)


def _num_distinct(xp: Any, ids: Any) -> Any:
  """How many distinct values the vector ``ids`` holds (``xp``: NumPy or jnp)."""
  s = xp.sort(ids)
  return xp.sum(s[1:] != s[:-1]) + (s.size > 0)


def _unique(ids: jax.Array, size: int) -> jax.Array:
  """``[size]``: the distinct ``ids`` in increasing order, then PAD.

  One sort, a mask of first occurrences and a scatter to their ranks: five
  times faster on CPU than ``jnp.unique(size=...)``, whose stable argsort
  dominates a row-sparse step.
  """
  s = jnp.sort(ids)
  first = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
  rank = jnp.where(first & (s != PAD), jnp.cumsum(first) - 1, size)
  return jnp.full((size,), PAD, jnp.int32).at[rank].set(s, mode="drop")


class _Slot:
  """Stands for the parameters when a transformation's state is initialized.

  It has no leaves, so ``jax.tree.map`` over it (what ``init`` functions do
  to build their per-parameter moments) returns another ``_Slot``: every
  copy of the parameter tree in the state shows up as one. The same trick
  as ``optax.tree_map_params``.
  """


jax.tree_util.register_pytree_node(_Slot, lambda _: ((), None),
                                   lambda *_: _Slot())


def _map_state(optimizer, on_params, on_other, grads, params, *states):
  """Maps over ``states`` (same structure), copy by copy of the parameters.

  ``on_params(leaves..., grad, param)`` sees the leaves of each
  per-parameter copy with the matching gradient and parameter;
  ``on_other(leaves...)`` every other leaf (step counts, hyperparameters).
  """
  try:
    layout = optimizer.init(_Slot())
  except Exception as e:  # pylint: disable=broad-except
    raise TypeError(_NOT_ROWWISE.format(why=f"its init failed on a stand-in"
                                        f" for the parameters ({e})")) from e

  def visit(slot, *leaves):
    if isinstance(slot, _Slot):
      return jax.tree.map(on_params, *leaves, grads, params)
    return on_other(*leaves)

  try:
    return jax.tree.map(visit, layout, *states,
                        is_leaf=lambda t: isinstance(t, _Slot))
  except (ValueError, TypeError) as e:
    if isinstance(e, TypeError) and str(e).startswith("optimizer"):
      raise
    raise TypeError(_NOT_ROWWISE.format(
        why=f"its state does not hold per-parameter copies ({e})")) from e


_NOT_ROWWISE = (
    "optimizer must be an Optax transformation whose state holds one copy"
    " per parameter (sgd, momentum, adagrad, rmsprop, adam, adamw, ...), so"
    " that it can be gathered by rows; {why}.")


def check_optimizer(optimizer: optax.GradientTransformation, params: Any
                    ) -> None:
  """Raises ``TypeError`` unless ``optimizer`` can be applied by rows.

  That is, unless every entry of ``optimizer.init(params)`` is a copy of a
  parameter (same shape) or a scalar shared by all of them, as
  :func:`apply_updates` needs. Cheap: it only traces ``init``.

  Args:
    optimizer: an Optax transformation.
    params: the parameter pytree it will update.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from jaxsoftmax import sparse
    >>> sparse.check_optimizer(optax.adam(1e-3), {"w": jnp.zeros((4, 2))})
    >>> sparse.check_optimizer(optax.adafactor(1e-3), {"w": jnp.zeros((4, 2))})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: optimizer must be an Optax transformation whose state holds one copy per parameter ...
  """
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError("optimizer must be an optax.GradientTransformation (e.g."
                    f" optax.adagrad(0.1)); got {type(optimizer).__name__}.")
  state = jax.eval_shape(optimizer.init, params)

  def same_shape(a, g, p):
    del g
    if a.shape != jnp.shape(p):
      raise TypeError(_NOT_ROWWISE.format(
          why=f"a state entry of shape {a.shape} stands for a parameter of"
          f" shape {jnp.shape(p)}"))
    return a

  def scalar(a):
    if a.ndim != 0:
      raise TypeError(_NOT_ROWWISE.format(
          why=f"it keeps a state entry of shape {a.shape} that is no copy"
          " of a parameter"))
    return a

  _map_state(optimizer, same_shape, scalar, params, params, state)


def _check_rows_grad(path, g, p):
  name = f"grads{jax.tree_util.keystr(path)}"
  p_shape = tuple(jnp.shape(p))
  values = jnp.asarray(g.values)
  if values.shape[1:] != p_shape[1:] or (
      g.ids is None and values.shape != p_shape):
    rows = "[n" if g.ids is not None else f"[{p_shape[0] if p_shape else ''}"
    raise ValueError(
        f"{name} is a Rows update of values {values.shape}, but the"
        f" parameter has shape {p_shape}: expected values"
        f" {rows}, {', '.join(map(str, p_shape[1:]))}], one row per id.")
  if g.ids is None:
    return
  ids = jnp.asarray(g.ids)
  if not jnp.issubdtype(ids.dtype, jnp.integer) or ids.shape != values.shape[:1]:
    raise ValueError(
        f"{name}.ids must be [{values.shape[0]}] integers, one per row of"
        f" values; got {ids.dtype} with shape {ids.shape}.")
  if v.is_concrete(ids):
    def widened(xp, a):
      # Compared in a narrow dtype, PAD (the int32 maximum) would wrap.
      return a.astype(xp.int32) if a.dtype.itemsize < 4 else a

    def out_of_range(xp, a):
      a = widened(xp, a)
      return ((a < 0) | (a >= p_shape[0])) & (a != PAD)

    found = v.find_bad(out_of_range, ids)
    if found:
      bad, a = found
      raise ValueError(
          f"{name}.ids must lie in [0, {p_shape[0]}) (or be sparse.PAD"
          f" padding); got {a[bad][:5].tolist()} ({int(bad.sum())} bad).")

    def repeats(xp, a):
      s = xp.sort(widened(xp, a))
      return xp.any((s[1:] == s[:-1]) & (s[1:] != PAD))

    if v.on_host(repeats, ids):
      raise ValueError(
          f"{name}.ids must name each row at most once (sparse.gather"
          " deduplicates them); got repeats.")


def apply_updates(
    optimizer: optax.GradientTransformation,
    grads: Any,
    opt_state: Any,
    params: Any,
) -> tuple[Any, Any]:
  r"""One Optax step that reads and writes only the rows the gradient names.

  For each parameter whose gradient is a :class:`Rows`
  ``(ids, values)``, gathers rows ``ids`` of the parameter and of every
  per-parameter copy in ``opt_state`` (moments, accumulators), runs
  ``optimizer.update`` on those rows together with the dense gradients of
  the other parameters, and scatters the new rows back:

  .. math::
    (u, s'_{\text{ids}}) = \text{update}(g, s_{\text{ids}}, p_{\text{ids}}),
    \qquad p_{\text{ids}} \leftarrow p_{\text{ids}} + u.

  Padding slots (:data:`PAD`) are skipped. Under ``jax.jit`` with
  ``params`` and ``opt_state`` donated, the scatters happen in place, so the
  step costs :math:`O(nd)` for ``n`` rows whatever the table's size. Shared
  state (the step count) advances once per call. See the module docstring
  for how this differs from a dense update: equal for SGD and Adagrad, lazy
  for Adam and momentum.

  Args:
    optimizer: an Optax transformation whose state holds per-parameter
      copies (``optax.sgd``, ``adagrad``, ``adam``, ...).
    grads: a pytree like ``params`` whose leaves are dense arrays (the
      ordinary gradient) or :class:`Rows` (``ids`` ``[n]`` distinct row ids,
      ``values`` ``[n, ...]`` their gradient rows; ``ids=None`` is dense).
    opt_state: ``optimizer.init(params)``.
    params: the parameters, e.g. ``{"w": [K, d], "hidden": ...}``.

  Returns:
    ``(params, opt_state)``, updated.

  Raises:
    ValueError: a gradient's rows do not fit its parameter's shape, or (on
      eager calls) its ids are out of range or repeated.
    TypeError: ``optimizer``'s state cannot be gathered by rows.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxsoftmax import sparse
    >>> params = {"w": jnp.ones((5, 2))}
    >>> opt = optax.sgd(0.5)
    >>> state = opt.init(params)
    >>> view = sparse.gather(params["w"], jnp.array([3, 3]))
    >>> grad = jax.grad(lambda r: r.sum())(view.values)
    >>> params, state = sparse.apply_updates(
    ...     opt, {"w": view._replace(values=grad)}, state, params)
    >>> params["w"][:, 0].tolist()  # only row 3 moved
    [1.0, 1.0, 1.0, 0.5, 1.0]
  """
  check_optimizer(optimizer, params)
  if jax.tree.structure(grads, is_leaf=_is_rows) != jax.tree.structure(params):
    raise ValueError(
        "grads must have the structure of params, with Rows or dense arrays"
        f" as leaves; got {jax.tree.structure(grads, is_leaf=_is_rows)} for"
        f" params {jax.tree.structure(params)}.")
  jax.tree_util.tree_map_with_path(
      lambda path, g, p: _check_rows_grad(path, g, p) if _is_rows(g) else None,
      grads, params, is_leaf=_is_rows)

  def sparse_leaf(g):
    return _is_rows(g) and g.ids is not None

  def take(a, g, *_):
    if not sparse_leaf(g):
      return a
    return jnp.take(a, g.ids, axis=0, mode="fill", fill_value=0)

  def put(a, new, g, *_):
    if not sparse_leaf(g):
      return new
    return a.at[g.ids].set(new.astype(a.dtype), mode="drop",
                           indices_are_sorted=True)

  values = jax.tree.map(lambda g: g.values if _is_rows(g) else g, grads,
                        is_leaf=_is_rows)
  rows = jax.tree.map(take, params, grads)
  state_rows = _map_state(optimizer, take, lambda a: a, grads, params,
                          opt_state)
  updates, new_state_rows = optimizer.update(values, state_rows, rows)
  params = jax.tree.map(put, params, optax.apply_updates(rows, updates),
                        grads)
  opt_state = _map_state(optimizer, put, lambda _, new: new, grads, params,
                         opt_state, new_state_rows)
  return params, opt_state

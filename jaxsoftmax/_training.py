"""Minibatch training: jitted ``lax.scan`` epochs, evaluation, early stopping.

:func:`fit` keeps each epoch on device: a jitted shuffle into minibatch
indices, then the optimizer steps as one jitted ``lax.scan``, with the
results read back once per epoch. Around it: per-epoch evaluation, early
stopping on a held-out split, a NaN/inf guard that stops at the first bad
step, mixed precision, a progress bar, and Orbax checkpoints that resume bit
for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike, DTypeLike
import numpy as np
import optax
from tqdm import tqdm

from jaxsoftmax import _checkpoint
from jaxsoftmax import _gradients
from jaxsoftmax import _numerics
from jaxsoftmax import _validation as v
from jaxsoftmax import sharded

# Default evaluation chunk: bounds the [chunk, K] logits held at once.
EVAL_CHUNK_SIZE = 4096

# Loss functions whose hand-derived value-and-gradient fit uses by default.
_MANUAL_GRADIENTS = {
    _gradients.softmax_regression_loss: (
        _gradients.softmax_regression_value_and_grad
    ),
    _gradients.mlp_loss: _gradients.mlp_value_and_grad,
}


class TrainingDiverged(FloatingPointError):
  """A loss, gradient or parameter became NaN or infinite during :func:`fit`.

  Attributes:
    epoch: the epoch (from 1) of the first non-finite step.
    step: that step's index within the epoch (from 1).
    global_step: that step's index over the whole run (from 1).
    tensor: what went non-finite first, ``"loss"``, or a leaf such as
      ``"grads['w']"`` or ``"params[0]['b']"`` (the params after the update).
    params: the last finite params, from just before that step.
    history: the :class:`History` of the epochs completed before.
  """

  def __init__(
      self,
      message: str,
      *,
      epoch: int,
      step: int,
      global_step: int,
      tensor: str,
      params: Any,
      history: History,
  ):
    super().__init__(message)
    self.epoch = epoch
    self.step = step
    self.global_step = global_step
    self.tensor = tensor
    self.params = params
    self.history = history


@dataclasses.dataclass
class History:
  """Per-epoch records of a :func:`fit` run; plain lists, JSON-friendly.

  Entry ``i`` of every list belongs to ``epoch[i]``. A metric that was not
  computed (no ``logits_fn``, no validation split, no ``eval_data``) stays an
  empty list.

  Attributes:
    epoch: epoch numbers, from 1.
    loss: mean minibatch training loss over the epoch (each minibatch's loss
      at the params before its update).
    train_accuracy: accuracy on the training examples after the epoch.
    val_loss: loss on the held-out validation split.
    val_accuracy: accuracy on the validation split.
    test_loss: loss on ``eval_data``.
    test_accuracy: accuracy on ``eval_data``.
    seconds: wall-clock seconds of the epoch, evaluation included (the first
      includes compilation).
    best_epoch: epoch of the lowest validation loss, or None without
      validation.
    stopped_early: whether early stopping ended the run.
  """

  epoch: list[int] = dataclasses.field(default_factory=list)
  loss: list[float] = dataclasses.field(default_factory=list)
  train_accuracy: list[float] = dataclasses.field(default_factory=list)
  val_loss: list[float] = dataclasses.field(default_factory=list)
  val_accuracy: list[float] = dataclasses.field(default_factory=list)
  test_loss: list[float] = dataclasses.field(default_factory=list)
  test_accuracy: list[float] = dataclasses.field(default_factory=list)
  seconds: list[float] = dataclasses.field(default_factory=list)
  best_epoch: int | None = None
  stopped_early: bool = False

  def to_dict(self) -> dict[str, Any]:
    """The fields as a dict of lists and scalars (``json.dumps``-able)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> History:
    """Inverse of :meth:`to_dict`."""
    return cls(**d)


# ----------------------------------------------------------------------------
# The jitted pieces. Module-level with static options, so repeated fit calls
# with the same functions and optimizer reuse the compiled epoch.
# ----------------------------------------------------------------------------


def _split_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict, tuple]:
  """Array-valued kwargs (traced) and the rest (static, so hashable)."""
  dynamic, static = {}, []
  for name, value in sorted(kwargs.items()):
    if isinstance(value, (jax.Array, np.ndarray)):
      dynamic[name] = value
    else:
      try:
        hash(value)
      except TypeError:
        raise TypeError(
            f"loss_kwargs[{name!r}] must be an array or hashable (it becomes a"
            f" static option of the jitted epoch); got {type(value).__name__}."
        ) from None
      static.append((name, value))
  return dynamic, tuple(static)


def _cast_floats(tree: Any, dtype: jnp.dtype | None) -> Any:
  if dtype is None:
    return tree
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
      tree,
  )


def _leaves_finite(tree: Any, before: Any = None) -> jax.Array:
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


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size"))
def _minibatches(key, epoch, *, num_examples, batch_size):
  """``[steps, batch_size]`` row indices of the epoch's minibatches.

  Compiled apart from the epoch's steps so that every configuration training
  on the same number of examples shares this one program.
  """
  steps = num_examples // batch_size
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  return perm[: steps * batch_size].reshape(steps, batch_size)


@functools.partial(
    jax.jit,
    static_argnames=(
        "value_and_grad_fn",
        "loss_fn",
        "optimizer",
        "compute_dtype",
        "static_kwargs",
        "batch_sharding",
    ),
)
def _train_epoch(
    params,
    opt_state,
    x,
    y,
    batches,
    dynamic_kwargs,
    step_key,
    first_step,
    *,
    value_and_grad_fn,
    loss_fn,
    optimizer,
    compute_dtype,
    static_kwargs,
    batch_sharding=None,
):
  """The optimizer steps over ``batches`` (row indices), scanned.

  Each step gathers its own rows, so the epoch never holds a second, shuffled
  copy of the dataset. With ``batch_sharding`` (a ``NamedSharding``) the
  minibatch is laid out as it says, e.g. rows split over a data axis. With a
  ``step_key``, step ``t`` (``first_step`` + its index in the epoch) passes
  ``key=fold_in(step_key, t)`` to the loss.
  """
  static = dict(static_kwargs)
  if value_and_grad_fn is None:
    value_and_grad_fn = jax.value_and_grad(loss_fn)

  def step(carry, scanned):
    t, idx = scanned
    params, opt_state, good = carry
    kwargs = {**dynamic_kwargs, **static}
    if step_key is not None:
      kwargs["key"] = jax.random.fold_in(step_key, t)
    xb = _cast_floats(x[idx], compute_dtype)
    yb = y[idx]
    if batch_sharding is not None:
      xb, yb = sharded.shard_params(
          (xb, yb), batch_sharding.mesh, batch_sharding.spec
      )
    loss, grads = value_and_grad_fn(
        _cast_floats(params, compute_dtype), xb, yb, **kwargs
    )
    # The optimizer state and the update stay in the params' dtype.
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, new_opt_state = optimizer.update(
        grads,
        opt_state,
        params,
        value=loss,
        grad=grads,
        value_fn=lambda p: loss_fn(
            _cast_floats(p, compute_dtype), xb, yb, **kwargs
        ),
    )
    new_params = optax.apply_updates(params, updates)
    loss_ok = jnp.isfinite(loss)
    grads_ok = _leaves_finite(grads)
    params_ok = _leaves_finite(new_params, params)
    # Once a step goes bad, no later step may update: the carry then ends
    # at the last finite params, which fit hands back.
    good = good & loss_ok & jnp.all(grads_ok) & jnp.all(params_ok)
    params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(good, new, old),
        (new_params, new_opt_state),
        (params, opt_state),
    )
    return (params, opt_state, good), (loss, loss_ok, grads_ok, params_ok)

  steps = jnp.arange(batches.shape[0]) + first_step
  (params, opt_state, _), stats = jax.lax.scan(
      step, (params, opt_state, jnp.asarray(True)), (steps, batches)
  )
  return params, opt_state, stats


@functools.partial(
    jax.jit,
    static_argnames=(
        "loss_fn", "logits_fn", "chunk_size", "static_kwargs", "accuracy_only"
    ),
)
def _evaluate(
    params,
    sets,
    dynamic_kwargs,
    *,
    loss_fn,
    logits_fn,
    chunk_size,
    static_kwargs,
    accuracy_only,
):
  """Mean loss and accuracy of each named ``(x, y)`` set, in row chunks.

  One call covers all sets, so evaluation compiles once per configuration.
  The loss is skipped for the sets named in ``accuracy_only`` and the
  accuracy without ``logits_fn``. Chunk losses are averaged with chunk-size
  weights, which reproduces the loss of the whole set for any batch-mean loss
  (plus batch-independent terms such as a penalty).

  Returns:
    set name -> {"loss": scalar, "accuracy": scalar} (as computed).
  """
  kwargs = {**dynamic_kwargs, **dict(static_kwargs)}

  def chunk_sums(xs, ys, with_loss):
    out = {}
    if with_loss:
      loss = loss_fn(params, xs, ys, **kwargs)
      out["loss"] = _numerics.upcast(loss) * xs.shape[0]
    if logits_fn is not None:
      pred = jnp.argmax(logits_fn(params, xs), axis=-1)
      out["accuracy"] = jnp.sum(pred == ys)
    return out

  def one_set(x, y, with_loss):
    n = x.shape[0]
    chunk = min(chunk_size, n)
    full = n // chunk

    def by_index(i):
      xs = jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk)
      ys = jax.lax.dynamic_slice_in_dim(y, i * chunk, chunk)
      return chunk_sums(xs, ys, with_loss)

    sums = jax.tree.map(
        lambda s: jnp.sum(s, axis=0), jax.lax.map(by_index, jnp.arange(full))
    )
    if full * chunk < n:
      rest = chunk_sums(x[full * chunk :], y[full * chunk :], with_loss)
      sums = jax.tree.map(jnp.add, sums, rest)
    return {k: s / n for k, s in sums.items()}

  return {
      name: one_set(x, y, name not in accuracy_only)
      for name, (x, y) in sets.items()
  }


@functools.partial(jax.jit, static_argnames="num_val")
def _split(x, y, key, num_val):
  """``((x, y) train, (x, y) validation)``: a fixed random split of the rows."""
  # Epoch numbers start at 1, so fold_in(key, 0) is a stream of its own.
  perm = jax.random.permutation(jax.random.fold_in(key, 0), x.shape[0])
  val, train = perm[:num_val], perm[num_val:]
  return (x[train], y[train]), (x[val], y[val])


# ----------------------------------------------------------------------------
# fit.
# ----------------------------------------------------------------------------


def _check_data(
    name: str, data: Any, *, labels: bool
) -> tuple[jax.Array, jax.Array]:
  """``(x, y)`` as arrays with matching leading dimensions."""
  if not isinstance(data, (tuple, list)) or len(data) != 2:
    raise TypeError(f"{name} must be a pair (x, y); got {type(data).__name__}.")
  x, y = jnp.asarray(data[0]), jnp.asarray(data[1])
  v.check_floating(f"{name}[0] (x)", x)
  v.check_min_rank(f"{name}[0] (x)", x, 1, "[num_examples, ...]")
  v.check_min_rank(f"{name}[1] (y)", y, 1, "[num_examples, ...]")
  if y.shape[0] != x.shape[0]:
    raise ValueError(
        f"{name}[1] (y) must have one entry per example of {name}[0] (x),"
        f" {x.shape[0]}; got x of shape {x.shape} and y of shape {y.shape}."
    )
  if labels:
    v.check_integer(f"{name}[1] (y)", y)
    v.check_rank(f"{name}[1] (y)", y, 1, "[num_examples] class indices")
  v.check_finite(f"{name}[0] (x)", x)
  return x, y


def _resolve_value_and_grad(loss_fn, value_and_grad_fn):
  """The gradient function to train with; None means autodiff of ``loss_fn``.

  Autodiff is set up inside the jitted epoch rather than here, so the static
  argument stays ``loss_fn`` itself and repeated fits reuse the compilation.
  """
  if value_and_grad_fn is not None:
    return value_and_grad_fn
  return _MANUAL_GRADIENTS.get(loss_fn)


def _invalid_input(loss_fn, params, xb, yb, kwargs) -> str | None:
  """Why ``loss_fn`` rejects a minibatch when called eagerly, or None.

  Under ``jit`` the losses turn an out-of-range label into NaN; outside it
  they raise a ValueError saying which label is wrong, which beats advice
  about the learning rate.
  """
  try:
    loss_fn(params, xb, yb, **kwargs)
  except (ValueError, TypeError) as error:
    return str(error)
  return None


def _check_scalar_loss(loss_fn, params, x, y, batch_size, kwargs) -> None:
  """Raises unless ``loss_fn`` returns a scalar for one minibatch.

  Autodiff needs a scalar; jax's own error ("Gradient only defined for
  scalar-output functions") does not name the function at fault.
  """
  def spec(a):
    return jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype)

  try:
    out = jax.eval_shape(
        functools.partial(loss_fn, **kwargs), params, spec(x), spec(y))
  # Anything else the loss dislikes, the first training step reports.
  except Exception:  # noqa: BLE001
    return
  shape = getattr(out, "shape", None)
  if shape != ():
    raise ValueError(
        f"loss_fn must return a scalar (the minibatch's mean loss, e.g. with"
        f" reduction='mean'); {getattr(loss_fn, '__name__', loss_fn)} returns"
        f" shape {shape} for a minibatch of {batch_size} rows."
    )


def _first_bad(stats, names_grads, names_params):
  """(step index, tensor name) of the first non-finite step, or None."""
  _, loss_ok, grads_ok, params_ok = stats
  ok = loss_ok & grads_ok.all(axis=1) & params_ok.all(axis=1)
  if ok.all():
    return None
  s = int(np.argmin(ok))
  if not loss_ok[s]:
    return s, "loss"
  if not grads_ok[s].all():
    return s, names_grads[int(np.argmin(grads_ok[s]))]
  return s, names_params[int(np.argmin(params_ok[s]))]


def _restore(
    checkpoints: _checkpoint.Checkpoints,
    epoch: int,
    state_like: dict[str, Any],
    key: jax.Array,
) -> tuple[dict[str, Any], History]:
  """The state saved at ``epoch`` (pytrees like ``state_like``) and history.

  Raises:
    ValueError: the checkpoint cannot be read, or its arrays, history or key
      do not belong to this run at ``epoch``.
  """
  stored, meta = checkpoints.restore(
      epoch,
      like={k: jax.tree.leaves(t) for k, t in state_like.items()},
      names={k: _checkpoint.leaf_names(t, k) for k, t in state_like.items()},
  )
  if not isinstance(meta, Mapping) or set(meta) != {"epoch", "history", "key"}:
    got = sorted(meta) if isinstance(meta, Mapping) else type(meta).__name__
    raise ValueError(
        f"the meta of the checkpoint of epoch {epoch} holds {got}; expected"
        " ['epoch', 'history', 'key']."
    )
  if meta["key"] != _key_data(key):
    raise ValueError(
        f"the checkpoint in {checkpoints.directory} was written with key data"
        f" {meta['key']}; got {_key_data(key)}. Pass the same key to resume"
        " (it fixes the shuffles and the validation split)."
    )
  history = _checked_history(meta, epoch, "best_params" in state_like)
  restored = {
      k: jax.tree.unflatten(jax.tree.structure(state_like[k]), leaves)
      for k, leaves in stored.items()
  }
  return restored, history


def _checked_history(
    meta: Mapping[str, Any], epoch: int, validation: bool
) -> History:
  """The history stored at ``epoch``, after checking it could be written then.

  A run saves after appending one entry per epoch to each list it tracks, so
  every list holds ``epoch`` entries or none (``loss`` and ``seconds``
  always, ``val_loss`` exactly when there is a validation split), and the
  best epoch is one of them.
  """
  where = f"the history of the checkpoint of epoch {epoch}"
  record = meta["history"]
  fields = {f.name for f in dataclasses.fields(History)}
  if not isinstance(record, Mapping) or set(record) != fields:
    got = sorted(record) if isinstance(record, Mapping) else type(record)
    raise ValueError(f"{where} holds {got}; expected {sorted(fields)}.")
  if meta["epoch"] != epoch or record["epoch"] != list(range(1, epoch + 1)):
    raise ValueError(
        f"{where} says epoch {meta['epoch']} and lists epochs"
        f" {record['epoch']}; expected 1..{epoch}."
    )
  required = {"loss", "seconds"} | ({"val_loss"} if validation else set())
  for name in sorted(fields - {"epoch", "best_epoch", "stopped_early"}):
    entries = record[name]
    sizes = (epoch,) if name in required else (0, epoch)
    if (not isinstance(entries, list) or len(entries) not in sizes
        or not all(isinstance(e, (int, float)) and not isinstance(e, bool)
                   for e in entries)):
      raise ValueError(
          f"{where} has {name} = {str(entries)[:80]}; expected a list of"
          f" {' or '.join(map(str, sizes))} numbers (one per epoch)."
      )
  best = record["best_epoch"]
  best_ok = best is None if not validation else (
      isinstance(best, int) and not isinstance(best, bool) and 1 <= best <= epoch)
  if not best_ok or not isinstance(record["stopped_early"], bool):
    raise ValueError(
        f"{where} has best_epoch = {best!r} and stopped_early ="
        f" {record['stopped_early']!r}; expected "
        + (f"an epoch in 1..{epoch}" if validation else "None")
        + " and a bool."
    )
  return History.from_dict(record)


def _restore_newest_intact(
    checkpoints: _checkpoint.Checkpoints,
    state_like: dict[str, Any],
    key: jax.Array,
) -> tuple[dict[str, Any], History, int] | None:
  """The newest checkpoint that restores and validates, and its epoch.

  Each newer one that fails is skipped with a warning naming its epoch and
  why. None when the directory holds no checkpoint.

  Raises:
    ValueError: every checkpoint was rejected; the message lists each one
      and why.
  """
  rejected = []
  for epoch in checkpoints.steps():
    try:
      restored, history = _restore(checkpoints, epoch, state_like, key)
    except ValueError as error:
      rejected.append((epoch, error))
      continue
    for bad, error in rejected:
      warnings.warn(
          f"fit skips the checkpoint of epoch {bad} and resumes from the one"
          f" of epoch {epoch}: {error}",
          stacklevel=3,
      )
    return restored, history, epoch
  if rejected:
    raise ValueError(
        f"no checkpoint in {checkpoints.directory} can be resumed; each was"
        " rejected:\n" + "\n".join(f"  epoch {e}: {why}" for e, why in rejected)
    )
  return None


def _layout_on(mesh: Mesh, params: Any) -> Any:
  """Each leaf's ``PartitionSpec`` if it already lives on ``mesh``, else P()."""

  def spec(leaf):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
      return sharding.spec
    return P()

  return jax.tree.map(spec, params)


def _key_data(key: jax.Array) -> list[int]:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key).ravel().tolist()


def fit(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    data: tuple[ArrayLike, ArrayLike],
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    eval_data: tuple[ArrayLike, ArrayLike] | None = None,
    logits_fn: Callable[[Any, jax.Array], jax.Array] | None = None,
    value_and_grad_fn: Callable[..., tuple[jax.Array, Any]] | None = None,
    validation_fraction: float = 0.0,
    patience: int | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 1,
    keep_checkpoints: int = 3,
    resume: bool = False,
    progress: bool | None = None,
    compute_dtype: DTypeLike | None = None,
    loss_kwargs: Mapping[str, Any] | None = None,
    eval_chunk_size: int = EVAL_CHUNK_SIZE,
    mesh: Mesh | None = None,
    param_specs: Any = None,
    data_axis_name: str | None = "data",
) -> tuple[Any, History]:
  r"""Trains ``params`` by minibatch optimization of ``loss_fn`` over ``data``.

  Each epoch :math:`e = 1, 2, \dots` draws the permutation
  ``jax.random.permutation(jax.random.fold_in(key, e), n)`` of the training
  examples, cuts it into :math:`\lfloor n / B \rfloor` minibatches of
  ``batch_size`` :math:`B` (the :math:`n \bmod B` examples left over are
  skipped that epoch; the shuffle changes which) and takes one optimizer
  step on each,

  .. math::
    g_t = \nabla_\theta L(\theta_t; X_{\pi_t}, y_{\pi_t}), \qquad
    \theta_{t+1} = \theta_t + \operatorname{update}(g_t, s_t, \theta_t)

  with :math:`\pi_t` the rows of minibatch :math:`t`, :math:`s_t` the
  optimizer state and ``update`` the Optax ``optimizer``. An epoch stays on
  device: one jitted call draws the minibatch indices, another runs the
  steps as a ``lax.scan`` (the data is passed as an argument, never baked
  into the program), and the results come back to the host once per epoch.

  Gradients: ``value_and_grad_fn(params, x, y, **loss_kwargs)`` when given;
  otherwise the hand-derived :func:`softmax_regression_value_and_grad` or
  :func:`mlp_value_and_grad` when ``loss_fn`` is
  :func:`softmax_regression_loss` or :func:`mlp_loss`; otherwise
  ``jax.value_and_grad(loss_fn)``, which runs through the losses' custom VJP
  rules. Pass ``value_and_grad_fn=jax.value_and_grad(loss_fn)`` for plain
  autodiff. Optimizers that need the loss (``optax.lbfgs``) get the
  minibatch's ``value``, ``grad`` and ``value_fn``. The compiled epoch is
  cached on ``loss_fn``, ``value_and_grad_fn``, ``optimizer``,
  ``compute_dtype`` and the non-array ``loss_kwargs``: pass the same objects
  again (not fresh lambdas) to reuse it.

  After each epoch: the epoch's mean training loss, and, with ``logits_fn``,
  the accuracy on the training and validation examples and on
  ``eval_data``; the validation and ``eval_data`` losses. Evaluation runs in
  jitted chunks of ``eval_chunk_size`` rows, in the params' own precision.

  Early stopping: ``validation_fraction`` :math:`> 0` holds out that share of
  ``data`` (a fixed split drawn from ``key``) from training. With
  ``patience``, training stops once the validation loss has not improved for
  ``patience`` epochs, and the params of the best epoch are returned.

  NaN/inf guard: every step records whether its loss, gradients and updated
  params are finite. From the first step where one is not, the rest of the
  epoch leaves the params unchanged, and after the epoch
  :class:`TrainingDiverged` is raised naming the epoch, the step and the
  first non-finite tensor; it carries the last finite params. Training never
  continues on NaNs. ``x`` must be finite (checked up front); labels outside
  the model's classes are rejected when ``logits_fn`` is given, and otherwise
  surface as a non-finite loss.

  Mixed precision: with ``compute_dtype`` (e.g. ``jnp.bfloat16``) each step
  casts the params and the minibatch to it, the losses accumulate in float32,
  and the gradients are cast back to the params' dtype before the optimizer
  update, so params and optimizer state stay in full precision. There is no
  loss scaling, so prefer bfloat16 over float16.

  Checkpoints: with ``checkpoint_dir``, the params, optimizer state, history
  and key are saved with Orbax every ``checkpoint_every`` epochs and at the
  last epoch (the newest ``keep_checkpoints`` are kept; a save interrupted
  midway is never picked up). ``resume=True`` restores the newest checkpoint
  and trains the remaining epochs up to ``epochs`` (the total, not a count of
  new ones), with the same result, bit for bit, as an uninterrupted run: the
  shuffles depend only on ``key`` and the epoch number (so resuming needs
  the same ``key``). A run that stopped early stays stopped. With no
  checkpoint in ``checkpoint_dir`` it starts fresh. A checkpoint that cannot
  be read (a truncated, garbled or missing file), whose arrays differ from
  ``params`` and the optimizer state in tree, shape or dtype, whose history
  does not hold one entry per epoch, or that was written with another
  ``key`` is skipped with a warning naming its epoch and the reason, and the
  newest intact one is resumed; when none is intact a ``ValueError`` lists
  each and why. Training never continues from part of a checkpoint.
  ``resume=False`` refuses a directory that already holds checkpoints,
  rather than mixing two runs.

  Sharding: with ``mesh`` the params are placed on it by
  :func:`jaxsoftmax.sharded.shard_params` with ``param_specs`` (e.g.
  ``{"w": P(None, "model"), "b": P("model")}`` for a class-split output
  layer; None keeps the layout of leaves already on ``mesh`` and replicates
  the others), the optimizer state is created under ``jit`` so it follows
  the params' layout (Adam's moments are split like ``w``), the training and
  evaluation data are replicated on every device, and, when the mesh has an
  axis ``data_axis_name``, each minibatch's rows are split over it (the
  batch size must be divisible by its size). The steps run inside
  ``jax.set_mesh(mesh)``; the loss decides how the work is split, e.g.
  ``lambda p, x, y: vocab_parallel_cross_entropy(x, p["w"], p["b"], y,
  mesh=mesh, data_axis_name="data")``. The returned params keep the layout.
  On a mesh spanning several processes (after ``jax.distributed.initialize``)
  every process calls ``fit`` with the same arguments and gets the same
  history.

  Args:
    loss_fn: ``loss_fn(params, x, y, **loss_kwargs) -> scalar``, the mean
      loss of a minibatch (plus terms that do not depend on the batch).
    params: the initial parameter pytree.
    data: ``(x, y)``: ``x`` of shape ``[n, ...]`` (e.g. ``[n, d]``), ``y`` of
      shape ``[n, ...]`` (``[n]`` integer labels when ``logits_fn`` is
      given); NumPy or JAX arrays.
    optimizer: an Optax gradient transformation.
    epochs: total number of epochs, ``>= 1``.
    batch_size: minibatch size, between 1 and the number of training
      examples.
    key: a ``jax.random`` key; fixes the shuffles and the validation split.
    eval_data: optional held-out ``(x, y)``, evaluated after every epoch
      (test loss, and test accuracy with ``logits_fn``).
    logits_fn: ``logits_fn(params, x) -> [batch, num_classes]`` for
      accuracies; None skips them.
    value_and_grad_fn: ``(params, x, y, **loss_kwargs) -> (loss, grads)``;
      None picks as described above.
    validation_fraction: share of ``data`` held out for validation, in
      ``[0, 1)``.
    patience: epochs without validation-loss improvement before stopping;
      needs ``validation_fraction > 0``.
    checkpoint_dir: directory for Orbax checkpoints; None disables them.
    checkpoint_every: save every this many epochs.
    keep_checkpoints: how many recent checkpoints to keep.
    resume: continue from the newest checkpoint in ``checkpoint_dir``.
    progress: show a tqdm bar over epochs; None shows it only when stderr is
      a terminal.
    compute_dtype: dtype of the forward and backward pass (params and ``x``
      are cast per step); None computes in the params' and data's dtypes.
    loss_kwargs: extra keyword arguments of ``loss_fn`` (e.g.
      ``{"l2": 1e-3}``). Arrays are traced; other values are static options
      of the compiled epoch (a new value recompiles). A ``jax.random`` key
      under ``"key"`` (``mlp_loss``'s dropout masks) seeds every step
      afresh: step :math:`t` (1, 2, ... over the whole run, so a resumed run
      repeats them) gets ``jax.random.fold_in(key, t)``, and evaluations
      call ``loss_fn`` without it (no dropout).
    eval_chunk_size: rows per evaluation chunk.
    mesh: a ``jax.sharding.Mesh`` to train on; None trains on the default
      device.
    param_specs: a ``PartitionSpec`` or a pytree of them matching a prefix
      of ``params``; needs ``mesh``.
    data_axis_name: the mesh axis minibatch rows are split over, if the mesh
      has an axis of that name.

  Returns:
    ``(params, history)``: the trained params (the best epoch's with
    ``patience``) and a :class:`History`.

  Raises:
    TrainingDiverged: a loss, gradient or param became NaN or infinite.
    ValueError: ``resume=True`` and no checkpoint in ``checkpoint_dir`` is
      intact (the message lists each and why), among bad arguments.

  Examples:
    >>> import jax, optax
    >>> import jaxsoftmax as js
    >>> x = jax.random.normal(jax.random.key(1), (64, 3))
    >>> y = (x[:, 0] > 0).astype(int)
    >>> params, history = js.fit(
    ...     js.softmax_regression_loss, js.linear_init(jax.random.key(0), 3, 2),
    ...     (x, y), optimizer=optax.sgd(0.5), epochs=3, batch_size=16,
    ...     key=jax.random.key(2), logits_fn=js.linear_logits)
    >>> history.epoch, history.loss[-1] < history.loss[0]
    ([1, 2, 3], True)

  References:
    "Training multinomial logistic regression at scale" (textbook chapter):
    mini-batch SGD, early stopping, mixed precision. L. Prechelt, "Early
    stopping - but when?", Neural Networks: Tricks of the Trade (1998).
  """
  # --- Boundary checks. ---
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}.")
  if not all(callable(getattr(optimizer, a, None)) for a in ("init", "update")):
    raise TypeError(
        "optimizer must be an optax.GradientTransformation (e.g."
        f" optax.sgd(0.1)); got {type(optimizer).__name__}."
    )
  v.check_positive_int("epochs", epochs)
  v.check_positive_int("batch_size", batch_size)
  v.check_positive_int("checkpoint_every", checkpoint_every)
  v.check_positive_int("keep_checkpoints", keep_checkpoints)
  v.check_positive_int("eval_chunk_size", eval_chunk_size)
  v.check_prng_key("key", key)
  if not isinstance(validation_fraction, (int, float)) or not (
      0.0 <= validation_fraction < 1.0
  ):
    raise ValueError(
        f"validation_fraction must lie in [0, 1); got {validation_fraction!r}."
    )
  if patience is not None:
    v.check_positive_int("patience", patience)
    if validation_fraction == 0:
      raise ValueError(
          f"patience={patience} needs a validation split to watch; set"
          " validation_fraction > 0 (e.g. 0.1)."
      )
  if resume and checkpoint_dir is None:
    raise ValueError("resume=True needs checkpoint_dir.")
  if compute_dtype is not None:
    compute_dtype = jnp.dtype(compute_dtype)
    if not jnp.issubdtype(compute_dtype, jnp.floating):
      raise TypeError(
          "compute_dtype must be None or a floating dtype; got"
          f" {compute_dtype}."
      )
  if mesh is None and param_specs is not None:
    raise ValueError(
        "param_specs needs a mesh to place the params on; pass mesh= too."
    )
  if mesh is not None and not isinstance(mesh, Mesh):
    raise TypeError(
        f"mesh must be None or a jax.sharding.Mesh; got {type(mesh).__name__}."
    )
  batch_sharding = None
  if mesh is not None and data_axis_name in mesh.axis_names:
    if batch_size % mesh.shape[data_axis_name]:
      raise ValueError(
          f"batch_size ({batch_size}) must be divisible by the size of mesh"
          f" axis {data_axis_name!r} ({mesh.shape[data_axis_name]}), which"
          f" splits each minibatch's rows; the mesh has shape"
          f" {dict(mesh.shape)}."
      )
    batch_sharding = NamedSharding(mesh, P(data_axis_name))
  dynamic_kwargs, static_kwargs = _split_kwargs(dict(loss_kwargs or {}))
  step_key = dynamic_kwargs.pop("key", None)
  if step_key is not None:
    v.check_prng_key("loss_kwargs['key']", step_key)
  params = jax.tree.map(jnp.asarray, params)
  x, y = _check_data("data", data, labels=logits_fn is not None)
  if eval_data is not None:
    x_test, y_test = _check_data(
        "eval_data", eval_data, labels=logits_fn is not None
    )
  if logits_fn is not None:
    num_classes = jax.eval_shape(logits_fn, params, x[:1]).shape[-1]
    v.check_labels_in_range("data[1] (y)", y, num_classes)
    if eval_data is not None:
      v.check_labels_in_range("eval_data[1] (y)", y_test, num_classes)

  n = x.shape[0]
  num_val = int(round(validation_fraction * n))
  if validation_fraction > 0 and num_val == 0:
    raise ValueError(
        f"validation_fraction={validation_fraction} of {n} examples holds out"
        " none; raise it or pass more data."
    )
  num_train = n - num_val
  if batch_size > num_train:
    held = f" ({num_val} of {n} held out for validation)" if num_val else ""
    raise ValueError(
        f"batch_size must be at most the number of training examples,"
        f" {num_train}{held}; got {batch_size}."
    )
  if num_val:
    (x, y), (x_val, y_val) = _split(x, y, key, num_val)
  if mesh is not None:
    params = sharded.shard_params(
        params, mesh,
        _layout_on(mesh, params) if param_specs is None else param_specs,
    )
    # Every device keeps all the data: minibatches draw random rows, which a
    # dataset split over devices would have to gather across them each step.
    x, y, dynamic_kwargs = sharded.shard_params((x, y, dynamic_kwargs), mesh)

  value_and_grad_fn = _resolve_value_and_grad(loss_fn, value_and_grad_fn)
  if value_and_grad_fn is None and mesh is None:
    kwargs = {**dynamic_kwargs, **dict(static_kwargs)}
    if step_key is not None:
      kwargs["key"] = step_key
    _check_scalar_loss(loss_fn, params, x, y, batch_size, kwargs)
  optimizer = optax.with_extra_args_support(optimizer)
  train_epoch = functools.partial(
      _train_epoch,
      value_and_grad_fn=value_and_grad_fn,
      loss_fn=loss_fn,
      optimizer=optimizer,
      compute_dtype=compute_dtype,
      static_kwargs=static_kwargs,
      batch_sharding=batch_sharding,
  )
  eval_sets = {}
  if logits_fn is not None:
    eval_sets["train"] = (x, y)
  if num_val:
    eval_sets["val"] = (x_val, y_val)
  if eval_data is not None:
    eval_sets["test"] = (x_test, y_test)
  if mesh is not None:
    eval_sets = sharded.shard_params(eval_sets, mesh)
  steps = num_train // batch_size
  names_grads = _checkpoint.leaf_names(params, "grads")
  names_params = _checkpoint.leaf_names(params, "params")

  # --- Start, or resume from a checkpoint. ---
  # Inside the mesh scope, the optimizer state is created under jit so it
  # inherits the params' layout, and losses may name mesh axes in specs.
  scope = contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)
  with scope:
    if mesh is None:
      opt_state = optimizer.init(params)
    else:
      opt_state = jax.jit(optimizer.init)(params)
    history = History()
    best_params, best_loss = params, np.inf
    done = 0
    checkpoints = None
    if checkpoint_dir is not None:
      checkpoints = _checkpoint.Checkpoints(
          checkpoint_dir, keep=keep_checkpoints
      )
    try:
      state_like = {"params": params, "opt_state": opt_state}
      if num_val:
        state_like["best_params"] = params
      if checkpoints is not None:
        latest = checkpoints.latest()
        if latest is not None and not resume:
          raise ValueError(
              f"checkpoint_dir {checkpoints.directory} already holds"
              f" checkpoints (newest: epoch {latest}); pass resume=True to"
              " continue that run, or use an empty directory."
          )
        found = _restore_newest_intact(checkpoints, state_like, key)
        # Nothing below runs unless one checkpoint restored and validated
        # whole: a run never continues from part of one.
        if found is not None:
          restored, history, done = found
          if mesh is not None:
            restored = jax.device_put(
                restored, jax.tree.map(lambda a: a.sharding, state_like)
            )
          params, opt_state = restored["params"], restored["opt_state"]
          best_params = restored.get("best_params", params)
          if history.best_epoch is not None:
            best_loss = history.val_loss[history.best_epoch - 1]

      show = sys.stderr.isatty() if progress is None else bool(progress)
      bar = tqdm(
          total=epochs, initial=min(done, epochs), disable=not show,
          desc="fit", unit="epoch", file=sys.stderr,
      )
      with bar:
        for epoch in range(done + 1, epochs + 1):
          if history.stopped_early:
            break
          t0 = time.perf_counter()
          batches = _minibatches(
              key, epoch, num_examples=num_train, batch_size=batch_size
          )
          new_params, new_opt_state, stats = train_epoch(
              params, opt_state, x, y, batches, dynamic_kwargs, step_key,
              (epoch - 1) * steps + 1,
          )
          evals = {}
          if eval_sets:
            evals = _evaluate(
                new_params, eval_sets, dynamic_kwargs,
                loss_fn=loss_fn, logits_fn=logits_fn,
                chunk_size=eval_chunk_size, static_kwargs=static_kwargs,
                accuracy_only=("train",),
            )
          stats, evals = jax.device_get((stats, evals))

          bad = _first_bad(stats, names_grads, names_params)
          if bad is not None:
            s, tensor = bad
            global_step = (epoch - 1) * steps + s + 1
            cause = None
            if tensor == "loss" and mesh is None:
              kwargs = {**dynamic_kwargs, **dict(static_kwargs)}
              if step_key is not None:
                kwargs["key"] = jax.random.fold_in(step_key, global_step)
              cause = _invalid_input(
                  loss_fn, new_params, x[batches[s]], y[batches[s]], kwargs)
            advice = (
                f" because the minibatch is invalid for loss_fn: {cause}"
                if cause else
                " (NaN or inf). Lower the learning rate, clip the gradients"
                " (optax.clip_by_global_norm) or compute in float32."
            )
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}, step {s + 1} of {steps}"
                f" (global step {global_step}): {tensor} became non-finite"
                f"{advice} TrainingDiverged.params holds the last finite"
                " params, from before that step.",
                epoch=epoch, step=s + 1, global_step=global_step, tensor=tensor,
                params=new_params, history=history,
            )
          params, opt_state = new_params, new_opt_state

          history.epoch.append(epoch)
          history.loss.append(float(np.mean(stats[0])))
          for split_name, metrics in evals.items():
            for metric, value in metrics.items():
              getattr(history, f"{split_name}_{metric}").append(float(value))
          if num_val:
            val_loss = history.val_loss[-1]
            if val_loss < best_loss:
              best_loss, best_params = val_loss, params
              history.best_epoch = epoch
            elif (
                patience is not None
                and epoch - (history.best_epoch or 0) >= patience
            ):
              history.stopped_early = True
          history.seconds.append(time.perf_counter() - t0)

          bar.set_postfix(_postfix(history), refresh=False)
          bar.update()
          last = epoch == epochs or history.stopped_early
          if checkpoints is not None and (
              epoch % checkpoint_every == 0 or last
          ):
            state = {"params": params, "opt_state": opt_state}
            if num_val:
              state["best_params"] = best_params
            meta = {
                "epoch": epoch,
                "history": history.to_dict(),
                "key": _key_data(key),
            }
            checkpoints.save(
                epoch, {k: jax.tree.leaves(t) for k, t in state.items()}, meta
            )
    finally:
      if checkpoints is not None:
        checkpoints.close()
  return (best_params if patience is not None else params), history


def _postfix(history: History) -> dict[str, str]:
  """The latest epoch's figures for the progress bar."""
  latest = {
      "loss": history.loss,
      "train_acc": history.train_accuracy,
      "val_loss": history.val_loss,
      "val_acc": history.val_accuracy,
      "test_acc": history.test_accuracy,
  }
  return {name: f"{vals[-1]:.4g}" for name, vals in latest.items() if vals}

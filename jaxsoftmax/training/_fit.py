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

from jaxsoftmax.training import _callbacks
from jaxsoftmax.training import _checkpoint
from jaxsoftmax.models import _gradients
from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax.training import _step
from jaxsoftmax._core import validation as v
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

  Each step (:func:`jaxsoftmax.make_train_step`, guarded) gathers its
  own rows, so the epoch never holds a second, shuffled copy of the dataset.
  With ``batch_sharding`` (a ``NamedSharding``) the minibatch is laid out as
  it says, e.g. rows split over a data axis. With a ``step_key``, step ``t``
  (``first_step`` + its index in the epoch) passes ``key=fold_in(step_key,
  t)`` to the loss.

  Returns:
    ``(params, opt_state, (loss, loss_finite, grads_finite,
    params_finite))``, the last two ``[steps, num_leaves]``.
  """

  def kwargs(key):
    extra = {} if key is None else {"key": key}
    return {**dynamic_kwargs, **dict(static_kwargs), **extra}

  def loss(p, batch, key):
    return loss_fn(p, *batch, **kwargs(key))

  def value_and_grad(p, batch, key):
    return value_and_grad_fn(p, *batch, **kwargs(key))

  train_step = _step.make_train_step(
      loss, optimizer, compute_dtype=compute_dtype,
      value_and_grad_fn=value_and_grad if value_and_grad_fn else None)

  def step(carry, scanned):
    t, idx = scanned
    params, opt_state, good = carry
    key = None if step_key is None else jax.random.fold_in(step_key, t)
    batch = (x[idx], y[idx])
    if batch_sharding is not None:
      batch = sharded.shard_params(
          batch, batch_sharding.mesh, batch_sharding.spec)
    new = train_step(params, opt_state, batch, key)
    # Once a step goes bad, no later step may update: the carry then ends
    # at the last finite params, which fit hands back.
    good = good & new[2]["good"]
    params, opt_state = _step.keep_if(good, new[:2], (params, opt_state))
    stats = tuple(new[2][k] for k in
                  ("loss", "loss_finite", "grads_finite", "params_finite"))
    return (params, opt_state, good), stats

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
          stacklevel=4,
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


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """How :func:`fit` takes each step (its arguments of the same names).

  Attributes:
    value_and_grad_fn: ``(params, x, y, **loss_kwargs) -> (loss, grads)``,
      or None.
    compute_dtype: a floating dtype of the forward and backward pass, or
      None.
    loss_kwargs: extra keyword arguments of ``loss_fn``.
    dynamic_kwargs: the array-valued ``loss_kwargs`` but ``"key"`` (traced).
    static_kwargs: the others, as sorted ``(name, value)`` pairs (static).
    step_key: ``loss_kwargs["key"]``, folded with each step's number, or
      None.
  """

  value_and_grad_fn: Callable[..., tuple[jax.Array, Any]] | None = None
  compute_dtype: DTypeLike | None = None
  loss_kwargs: Mapping[str, Any] | None = None
  dynamic_kwargs: dict[str, Any] = dataclasses.field(init=False)
  static_kwargs: tuple[tuple[str, Any], ...] = dataclasses.field(init=False)
  step_key: jax.Array | None = dataclasses.field(init=False)

  def __post_init__(self):
    if self.compute_dtype is not None:
      dtype = jnp.dtype(self.compute_dtype)
      if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"compute_dtype must be None or a floating dtype; got {dtype}.")
      object.__setattr__(self, "compute_dtype", dtype)
    dynamic, static = _split_kwargs(dict(self.loss_kwargs or {}))
    step_key = dynamic.pop("key", None)
    if step_key is not None:
      v.check_prng_key("loss_kwargs['key']", step_key)
    object.__setattr__(self, "dynamic_kwargs", dynamic)
    object.__setattr__(self, "static_kwargs", static)
    object.__setattr__(self, "step_key", step_key)

  def kwargs(self, dynamic: Mapping[str, Any], key: jax.Array | None = None
              ) -> dict[str, Any]:
    """``loss_fn``'s keyword arguments with ``dynamic`` arrays and ``key``."""
    extra = {} if key is None else {"key": key}
    return {**dynamic, **dict(self.static_kwargs), **extra}


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """What :func:`fit` evaluates after each epoch, and when it stops early.

  Attributes:
    logits_fn: ``logits_fn(params, x) -> [batch, num_classes]`` for
      accuracies, or None.
    validation_fraction: share of the data held out, in ``[0, 1)``.
    patience: epochs without validation-loss improvement before stopping,
      or None.
    chunk_size: rows per evaluation chunk.
  """

  logits_fn: Callable[[Any, jax.Array], jax.Array] | None = None
  validation_fraction: float = 0.0
  patience: int | None = None
  chunk_size: int = EVAL_CHUNK_SIZE

  def __post_init__(self):
    v.check_positive_int("eval_chunk_size", self.chunk_size)
    fraction = self.validation_fraction
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
      raise ValueError(
          f"validation_fraction must lie in [0, 1); got {fraction!r}.")
    if self.patience is not None:
      v.check_positive_int("patience", self.patience)
      if fraction == 0:
        raise ValueError(
            f"patience={self.patience} needs a validation split to watch;"
            " set validation_fraction > 0 (e.g. 0.1).")


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
  """Where and how often :func:`fit` saves, and whether it resumes.

  Attributes:
    directory: the Orbax checkpoint directory, or None for no checkpoints.
    every: save every this many epochs.
    keep: how many recent checkpoints to keep.
    resume: continue from the newest intact checkpoint in ``directory``.
  """

  directory: str | None = None
  every: int = 1
  keep: int = 3
  resume: bool = False

  def __post_init__(self):
    v.check_positive_int("checkpoint_every", self.every)
    v.check_positive_int("keep_checkpoints", self.keep)
    if self.resume and self.directory is None:
      raise ValueError("resume=True needs checkpoint_dir.")


@dataclasses.dataclass(frozen=True)
class ShardingOptions:
  """The mesh :func:`fit` trains on and how params and minibatches lie on it.

  Attributes:
    mesh: a ``jax.sharding.Mesh``, or None for the default device.
    param_specs: a ``PartitionSpec`` or a pytree of them matching a prefix
      of the params, or None (keep the layout of leaves already on ``mesh``,
      replicate the others).
    data_axis_name: the mesh axis minibatch rows are split over, if the mesh
      has one of that name.
  """

  mesh: Mesh | None = None
  param_specs: Any = None
  data_axis_name: str | None = "data"

  def __post_init__(self):
    if self.mesh is None and self.param_specs is not None:
      raise ValueError(
          "param_specs needs a mesh to place the params on; pass mesh= too.")
    if self.mesh is not None and not isinstance(self.mesh, Mesh):
      raise TypeError(
          "mesh must be None or a jax.sharding.Mesh; got"
          f" {type(self.mesh).__name__}.")

  def batch_sharding(self, batch_size: int) -> NamedSharding | None:
    """How a minibatch's rows are split over the data axis, if there is one."""
    mesh, axis = self.mesh, self.data_axis_name
    if mesh is None or axis not in mesh.axis_names:
      return None
    if batch_size % mesh.shape[axis]:
      raise ValueError(
          f"batch_size ({batch_size}) must be divisible by the size of mesh"
          f" axis {axis!r} ({mesh.shape[axis]}), which splits each"
          f" minibatch's rows; the mesh has shape {dict(mesh.shape)}.")
    return NamedSharding(mesh, P(axis))

  def place(self, params: Any, data: Any) -> tuple[Any, Any]:
    """``params`` laid out by ``param_specs`` and ``data`` replicated."""
    if self.mesh is None:
      return params, data
    specs = self.param_specs
    params = sharded.shard_params(
        params, self.mesh,
        _layout_on(self.mesh, params) if specs is None else specs)
    # Every device keeps all the data: minibatches draw random rows, which a
    # dataset split over devices would have to gather across them each step.
    return params, sharded.shard_params(data, self.mesh)


def _check_fit(loss_fn, optimizer, epochs, batch_size, key) -> None:
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}.")
  if not all(callable(getattr(optimizer, a, None)) for a in ("init", "update")):
    raise TypeError(
        "optimizer must be an optax.GradientTransformation (e.g."
        f" optax.sgd(0.1)); got {type(optimizer).__name__}."
    )
  v.check_positive_int("epochs", epochs)
  v.check_positive_int("batch_size", batch_size)
  v.check_prng_key("key", key)


def _load_data(data, eval_data, params, key, batch_size, ev: EvalOptions):
  """``(x, y, eval_sets)``: the checked training rows and the named sets.

  ``eval_sets`` holds ``"train"`` (with ``logits_fn``), ``"val"`` (the
  held-out split) and ``"test"`` (``eval_data``) as they apply.
  """
  labels = ev.logits_fn is not None
  x, y = _check_data("data", data, labels=labels)
  sets = {}
  if eval_data is not None:
    sets["test"] = _check_data("eval_data", eval_data, labels=labels)
  if labels:
    num_classes = jax.eval_shape(ev.logits_fn, params, x[:1]).shape[-1]
    v.check_labels_in_range("data[1] (y)", y, num_classes)
    if eval_data is not None:
      v.check_labels_in_range("eval_data[1] (y)", sets["test"][1], num_classes)
  n = x.shape[0]
  num_val = int(round(ev.validation_fraction * n))
  if ev.validation_fraction > 0 and num_val == 0:
    raise ValueError(
        f"validation_fraction={ev.validation_fraction} of {n} examples holds"
        " out none; raise it or pass more data."
    )
  if batch_size > n - num_val:
    held = f" ({num_val} of {n} held out for validation)" if num_val else ""
    raise ValueError(
        f"batch_size must be at most the number of training examples,"
        f" {n - num_val}{held}; got {batch_size}."
    )
  if num_val:
    (x, y), sets["val"] = _split(x, y, key, num_val)
  if labels:
    sets["train"] = (x, y)
  return x, y, sets


def _resume(checkpoints, resume, state, key, mesh):
  """``(state, history, epochs done)``: ``state`` or the newest checkpoint's.

  Raises ValueError when the directory holds checkpoints without
  ``resume=True``.
  """
  if checkpoints is None:
    return state, History(), 0
  latest = checkpoints.latest()
  if latest is not None and not resume:
    raise ValueError(
        f"checkpoint_dir {checkpoints.directory} already holds"
        f" checkpoints (newest: epoch {latest}); pass resume=True to"
        " continue that run, or use an empty directory."
    )
  found = _restore_newest_intact(checkpoints, state, key)
  # Nothing below runs unless one checkpoint restored and validated whole:
  # a run never continues from part of one.
  if found is None:
    return state, History(), 0
  restored, history, done = found
  if mesh is not None:
    restored = jax.device_put(
        restored, jax.tree.map(lambda a: a.sharding, state))
  return restored, history, done


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

  Each step is :func:`jaxsoftmax.make_train_step`'s (guarded); between
  epochs, small callbacks check for NaNs, track the best epoch, draw the
  progress bar and save checkpoints. The keyword options are grouped and
  validated as frozen dataclasses (step, evaluation, checkpoint and sharding
  options) before anything runs.

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
  _check_fit(loss_fn, optimizer, epochs, batch_size, key)
  ev = EvalOptions(logits_fn, validation_fraction, patience, eval_chunk_size)
  ck = CheckpointOptions(checkpoint_dir, checkpoint_every, keep_checkpoints,
                         resume)
  opts = StepOptions(value_and_grad_fn, compute_dtype, loss_kwargs)
  sh = ShardingOptions(mesh, param_specs, data_axis_name)
  batch_sharding = sh.batch_sharding(batch_size)
  params = jax.tree.map(jnp.asarray, params)
  x, y, eval_sets = _load_data(data, eval_data, params, key, batch_size, ev)
  params, (x, y, dynamic_kwargs, eval_sets) = sh.place(
      params, (x, y, opts.dynamic_kwargs, eval_sets))
  value_and_grad_fn = _resolve_value_and_grad(loss_fn, value_and_grad_fn)
  if value_and_grad_fn is None and mesh is None:
    _check_scalar_loss(loss_fn, params, x, y, batch_size,
                       opts.kwargs(dynamic_kwargs, opts.step_key))
  train_epoch = functools.partial(
      _train_epoch, value_and_grad_fn=value_and_grad_fn, loss_fn=loss_fn,
      optimizer=optimizer, compute_dtype=opts.compute_dtype,
      static_kwargs=opts.static_kwargs, batch_sharding=batch_sharding)
  steps = x.shape[0] // batch_size

  def run_epoch(epoch, params, opt_state):
    batches = _minibatches(key, epoch, num_examples=x.shape[0],
                           batch_size=batch_size)
    params, opt_state, stats = train_epoch(
        params, opt_state, x, y, batches, dynamic_kwargs, opts.step_key,
        (epoch - 1) * steps + 1)
    evals = {} if not eval_sets else _evaluate(
        params, eval_sets, dynamic_kwargs, loss_fn=loss_fn,
        logits_fn=logits_fn, chunk_size=eval_chunk_size,
        static_kwargs=opts.static_kwargs, accuracy_only=("train",))
    stats, evals = jax.device_get((stats, evals))
    return params, opt_state, stats, evals

  def explain(epoch, s, global_step):
    if mesh is not None:
      return None
    rows = _minibatches(key, epoch.number, num_examples=x.shape[0],
                        batch_size=batch_size)[s]
    kwargs = opts.kwargs(dynamic_kwargs, None if opts.step_key is None else
                         jax.random.fold_in(opts.step_key, global_step))
    return _invalid_input(loss_fn, epoch.params, x[rows], y[rows], kwargs)

  # Inside the mesh scope, the optimizer state is created under jit so it
  # inherits the params' layout, and losses may name mesh axes in specs.
  with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
    opt_state = (optimizer.init if mesh is None else
                 jax.jit(optimizer.init))(params)
    state = {"params": params, "opt_state": opt_state}
    if "val" in eval_sets:
      state["best_params"] = params
    checkpoints = None if ck.directory is None else _checkpoint.Checkpoints(
        ck.directory, keep=ck.keep)
    try:
      state, history, done = _resume(checkpoints, ck.resume, state, key, mesh)
      early = None if "val" not in eval_sets else _callbacks.EarlyStopping(
          state["best_params"], patience, history)
      guard = _callbacks.NanGuard(
          steps, (_checkpoint.leaf_names(params, "grads"),
                  _checkpoint.leaf_names(params, "params")),
          explain, TrainingDiverged)
      with _callbacks.Progress(epochs, done, progress) as bar:
        callbacks = [c for c in (early, bar) if c is not None]
        if checkpoints is not None:
          callbacks.append(_callbacks.Checkpointer(
              checkpoints, ck.every, epochs, _key_data(key), early))
        params = _run_epochs(run_epoch, guard, callbacks, state, history,
                             range(done + 1, epochs + 1))
    finally:
      if checkpoints is not None:
        checkpoints.close()
  return (early.best_params if patience is not None else params), history


def _run_epochs(run_epoch, guard, callbacks, state, history, epochs):
  """The epochs' loop: train, check, record, call back; the last params."""
  params, opt_state = state["params"], state["opt_state"]
  for number in epochs:
    if history.stopped_early:
      break
    t0 = time.perf_counter()
    params, opt_state, stats, evals = run_epoch(number, params, opt_state)
    epoch = _callbacks.Epoch(number, params, opt_state, stats, history)
    guard.after_epoch(epoch)
    history.epoch.append(number)
    history.loss.append(float(np.mean(stats[0])))
    for split_name, metrics in evals.items():
      for metric, value in metrics.items():
        getattr(history, f"{split_name}_{metric}").append(float(value))
    history.seconds.append(time.perf_counter() - t0)
    for callback in callbacks:
      callback.after_epoch(epoch)
  return params


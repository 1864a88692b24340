"""Boundary checks shared by the public functions.

Static properties (rank, shape, dtype, option values) are always checked. Value
checks (label range, finiteness, signs) need concrete arrays, so they run only
when the argument is not a tracer, that is, on eager calls; under ``jit`` the
functions document what happens to bad values instead (NaN, never a silent
wrong number).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

REDUCTIONS = ("none", "sum", "mean")


def is_concrete(x: Any) -> bool:
  """True when ``x`` holds values we can read on the host (not a tracer)."""
  return not isinstance(x, jax.core.Tracer)


def check_floating(name: str, x: jax.Array) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{name} must have a floating dtype (float16, bfloat16, float32 or"
        f" float64); got {x.dtype} with shape {x.shape}."
    )


def check_integer(name: str, x: jax.Array) -> None:
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(
        f"{name} must have an integer dtype (class indices); got {x.dtype}"
        f" with shape {x.shape}."
    )


def check_rank(name: str, x: jax.Array, rank: int, layout: str) -> None:
  if x.ndim != rank:
    raise ValueError(
        f"{name} must have rank {rank} ({layout}); got shape {x.shape}."
    )


def check_min_rank(name: str, x: jax.Array, rank: int, layout: str) -> None:
  if x.ndim < rank:
    raise ValueError(
        f"{name} must have rank >= {rank} ({layout}); got shape {x.shape}."
    )


def check_same_shape(
    name: str, x: jax.Array, expected: tuple[int, ...], what: str
) -> None:
  if tuple(x.shape) != tuple(expected):
    raise ValueError(
        f"{name} must have shape {tuple(expected)} ({what}); got {x.shape}."
    )


def check_reduction(reduction: str) -> None:
  if reduction not in REDUCTIONS:
    raise ValueError(
        f"reduction must be one of {REDUCTIONS}; got {reduction!r}."
    )


def check_label_smoothing(label_smoothing: float) -> None:
  if not isinstance(label_smoothing, (int, float)) or isinstance(
      label_smoothing, bool
  ):
    raise TypeError(
        "label_smoothing must be a Python float in [0, 1] (it is a static"
        f" option); got {type(label_smoothing).__name__}."
    )
  if not 0.0 <= label_smoothing <= 1.0:
    raise ValueError(
        f"label_smoothing must lie in [0, 1]; got {label_smoothing}."
    )


def check_rate(name: str, value: Any) -> None:
  """Raises unless ``value`` is a static Python float in ``[0, 1)``.

  For drop probabilities: a rate of 1 would scale the kept units by 1/0.
  """
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    raise TypeError(
        f"{name} must be a Python float in [0, 1) (it is a static option);"
        f" got {type(value).__name__}."
    )
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must lie in [0, 1); got {value}.")


def check_ignore_index(ignore_index: int | None) -> None:
  if ignore_index is not None and (
      not isinstance(ignore_index, (int, np.integer))
      or isinstance(ignore_index, bool)
  ):
    raise TypeError(
        f"ignore_index must be None or a Python int; got {ignore_index!r}."
    )


def check_labels_in_range(
    name: str,
    labels: jax.Array,
    num_classes: int,
    ignore_index: int | None = None,
) -> None:
  """Raises if a concrete label lies outside ``[0, num_classes)``."""
  if not is_concrete(labels):
    return
  y = np.asarray(labels)
  bad = (y < 0) | (y >= num_classes)
  if ignore_index is not None:
    bad &= y != ignore_index
  if bad.any():
    where = np.argwhere(bad)[:5]
    values = y[bad][:5]
    hint = "" if ignore_index is None else f" or equal ignore_index={ignore_index}"
    raise ValueError(
        f"{name} must lie in [0, {num_classes}){hint}; got {values.tolist()}"
        f" at index {[tuple(int(i) for i in w) for w in where]}"
        f" ({int(bad.sum())} bad of {y.size})."
    )


def check_finite(name: str, x: ArrayLike, *, allow: str | None = None) -> None:
  """Raises if a concrete floating array holds NaN or an infinity.

  The test is reduced on the device, so one bool reaches the host; the
  array is copied only to describe a failure.

  Args:
    name: the argument, for the message.
    x: the array; tracers are not checked.
    allow: ``"-inf"`` accepts ``-inf`` (masked classes in logits),
      ``"inf"`` both infinities (only NaN is refused); ``None`` neither.
  """
  if not is_concrete(x):
    return
  # A concrete array seen while tracing (a closed-over constant) would be
  # staged into the traced program; this evaluates the check now instead.
  with jax.ensure_compile_time_eval():
    x = jnp.asarray(x)
    if allow == "inf":
      ok = ~jnp.isnan(x)
    elif allow == "-inf":
      ok = jnp.isfinite(x) | (x == -jnp.inf)
    else:
      ok = jnp.isfinite(x)
    if bool(jnp.all(ok)):
      return
  bad = ~np.asarray(ok)
  where = np.argwhere(bad)[:5]
  values = np.asarray(x.astype(jnp.float32))[bad][:5].tolist()
  accepted = {None: "finite", "-inf": "finite or -inf (a masked class)",
              "inf": "a number (not NaN)"}[allow]
  raise ValueError(
      f"{name} must be {accepted}; got {values} at index"
      f" {[tuple(int(i) for i in w) for w in where]} ({int(bad.sum())} bad of"
      f" {bad.size})."
  )


def _check_number(name: str, value: Any) -> np.ndarray:
  """``value`` as an array; TypeError unless it is numeric (not a str)."""
  a = np.asarray(value)
  if not (jnp.issubdtype(a.dtype, jnp.number) or a.dtype == np.bool_):
    raise TypeError(
        f"{name} must be a number; got {type(value).__name__} {value!r}."
    )
  return a


def check_nonnegative(name: str, value: Any) -> None:
  """Raises if a concrete hyperparameter (penalty strength, weight) is < 0."""
  if not is_concrete(value):
    return
  a = _check_number(name, value)
  if np.any(a < 0) or np.any(np.isnan(a)):
    raise ValueError(f"{name} must be >= 0; got {a if a.ndim else a.item()}.")


def check_positive_int(name: str, value: Any) -> None:
  """Raises unless ``value`` is a Python/NumPy int >= 1 (sizes, counts)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be a positive int; got {value!r}.")
  if value < 1:
    raise ValueError(f"{name} must be a positive int (>= 1); got {value}.")


def check_prng_key(name: str, key: Any) -> None:
  """Raises unless ``key`` is one ``jax.random`` key, typed or raw uint32."""
  if not isinstance(key, jax.Array):
    raise TypeError(
        f"{name} must be a jax.random key (jax.random.key(seed)); got"
        f" {type(key).__name__}."
    )
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(
          f"{name} must be a single key of shape (); got a key array of shape"
          f" {key.shape}."
      )
    return
  if key.dtype != jnp.uint32 or key.ndim != 1:
    raise TypeError(
        f"{name} must be a jax.random key (jax.random.key(seed), or a raw"
        f" uint32 jax.random.PRNGKey); got {key.dtype} with shape {key.shape}."
    )


def check_positive(name: str, value: Any) -> None:
  """Raises if a concrete hyperparameter (learning rate, norm bound) is <= 0."""
  if not is_concrete(value):
    return
  a = _check_number(name, value)
  if a.ndim != 0:
    raise ValueError(f"{name} must be a scalar; got shape {a.shape}.")
  if not a > 0:
    raise ValueError(f"{name} must be > 0; got {a.item()}.")


def check_probabilities(name: str, x: jax.Array) -> None:
  """Raises if a concrete floating array has entries outside [0, 1] or NaN.

  Catches logits passed where probabilities are expected, which a metric
  would otherwise turn into a plausible-looking wrong number.
  """
  if not is_concrete(x):
    return
  a = np.asarray(x)
  a = a.astype(np.float32) if a.dtype.itemsize < 4 else a
  bad = ~((a >= 0) & (a <= 1))
  if bad.any():
    where = np.argwhere(bad)[:5]
    raise ValueError(
        f"{name} must hold probabilities in [0, 1] (e.g."
        f" jax.nn.softmax(logits)); got {a[bad][:5].tolist()} at index"
        f" {[tuple(int(i) for i in w) for w in where]} ({int(bad.sum())} bad"
        f" of {a.size})."
    )

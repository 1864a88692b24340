"""Boundary checks shared by the public functions.

Static properties (rank, shape, dtype, option values) are always checked. Value
checks (label range, finiteness, signs) need concrete arrays, so they run only
when the argument is not a tracer, that is, on eager calls; under ``jit`` the
functions document what happens to bad values instead (NaN, never a silent
wrong number). A value check is reduced where its array lives (:func:`on_host`):
a passing check brings one bool to the host, never the array.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

REDUCTIONS = ("none", "sum", "mean")


def is_concrete(x: Any) -> bool:
  """True when ``x`` holds values we can read on the host (not a tracer)."""
  return not isinstance(x, jax.core.Tracer)


def on_host(f: Callable[..., Any], *arrays: Any) -> Any:
  """``f(xp, *arrays)`` computed where the arrays live; its value on the host.

  Any JAX array among ``arrays`` puts the computation on the device with
  ``xp = jax.numpy``, and only the result is copied back: ``f`` reduces, to one
  bool in the success path of a check, and returns whole arrays only to
  describe a failure. Host values (NumPy arrays, Python numbers, lists) stay
  on the host with ``xp = numpy``; moving them to the device just to check
  them would cost a transfer for nothing.

  Args:
    f: ``f(xp, *arrays)``, written against the array API both namespaces
      share; a pytree of arrays out.
    *arrays: concrete values (callers test :func:`is_concrete` first).

  Returns:
    ``f``'s result as NumPy values.

  Example:
    >>> import jax.numpy as jnp
    >>> bool(on_host(lambda xp, x: xp.all(x > 0), jnp.arange(1.0, 1e4)))
    True
  """
  if not any(isinstance(a, jax.Array) for a in arrays):
    return jax.tree.map(np.asarray, f(np, *(np.asarray(a) for a in arrays)))
  # A concrete array seen while tracing (a closed-over constant) would be
  # staged into the traced program; this evaluates the check now instead.
  with jax.ensure_compile_time_eval():
    out = f(jnp, *(jnp.asarray(a) for a in arrays))
  # What comes back is what the caller chose to fetch (a flag, or a failure
  # to report), so a transfer guard set around the call does not refuse it.
  with jax.transfer_guard_device_to_host("allow"):
    return jax.device_get(out)


def find_bad(
    bad: Callable[[Any, Any], Any], x: Any
) -> tuple[np.ndarray, np.ndarray] | None:
  """None when ``bad(xp, x)`` is False everywhere, else its mask and ``x``.

  One bool crosses to the host when ``x`` passes (see :func:`on_host`); the
  mask and the values come back only to describe a failure.
  """
  if not on_host(lambda xp, a: xp.any(bad(xp, a)), x):
    return None
  return on_host(lambda xp, a: (bad(xp, a), a), x)


def _describe(mask: np.ndarray, values: np.ndarray) -> str:
  """The first bad values, their indices and how many there are."""
  where = np.argwhere(mask)[:5]
  return (
      f"got {values[mask][:5].tolist()} at index"
      f" {[tuple(int(i) for i in w) for w in where]} ({int(mask.sum())} bad of"
      f" {mask.size})."
  )


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

  def out_of_range(xp, y):
    # Compared in int8, K = 200 would wrap to -56 and refuse every label.
    y = y.astype(xp.int32) if y.dtype.itemsize < 4 else y
    bad = (y < 0) | (y >= num_classes)
    return bad if ignore_index is None else bad & (y != ignore_index)

  found = find_bad(out_of_range, labels)
  if found is None:
    return
  hint = "" if ignore_index is None else f" or equal ignore_index={ignore_index}"
  raise ValueError(
      f"{name} must lie in [0, {num_classes}){hint}; {_describe(*found)}"
  )


def check_finite(name: str, x: ArrayLike, *, allow: str | None = None) -> None:
  """Raises if a concrete floating array holds NaN or an infinity.

  The test is reduced where ``x`` lives (see :func:`on_host`), so one bool
  reaches the host; the array is copied only to describe a failure.

  Args:
    name: the argument, for the message.
    x: the array; tracers are not checked.
    allow: ``"-inf"`` accepts ``-inf`` (masked classes in logits),
      ``"inf"`` both infinities (only NaN is refused); ``None`` neither.
  """
  if not is_concrete(x):
    return

  def refused(xp, a):
    if allow == "inf":
      return xp.isnan(a)
    if allow == "-inf":
      return ~(xp.isfinite(a) | (a == -xp.inf))
    return ~xp.isfinite(a)

  found = find_bad(refused, x)
  if found is None:
    return
  mask, values = found
  accepted = {None: "finite", "-inf": "finite or -inf (a masked class)",
              "inf": "a number (not NaN)"}[allow]
  raise ValueError(
      f"{name} must be {accepted};"
      f" {_describe(mask, values.astype(np.float32))}"
  )


def _check_number(name: str, value: Any) -> None:
  """TypeError unless ``value`` is numeric (not a str); reads no values."""
  dtype = value.dtype if isinstance(value, jax.Array) else np.asarray(value).dtype
  if not (jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_):
    raise TypeError(
        f"{name} must be a number; got {type(value).__name__} {value!r}."
    )


def check_nonnegative(name: str, value: Any) -> None:
  """Raises if a concrete hyperparameter (penalty strength, weight) is < 0.

  NaN is refused too; the values are read only to describe a failure.
  """
  if not is_concrete(value):
    return
  _check_number(name, value)
  if on_host(lambda xp, a: xp.all(a >= 0), value):
    return
  a = on_host(lambda xp, a: a, value)
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
  _check_number(name, value)
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar; got shape {np.shape(value)}.")
  a = on_host(lambda xp, a: a, value)
  if not a > 0:
    raise ValueError(f"{name} must be > 0; got {a.item()}.")


def check_probabilities(name: str, x: jax.Array) -> None:
  """Raises if a concrete floating array has entries outside [0, 1] or NaN.

  Catches logits passed where probabilities are expected, which a metric
  would otherwise turn into a plausible-looking wrong number.
  """
  if not is_concrete(x):
    return

  found = find_bad(lambda xp, a: ~((a >= 0) & (a <= 1)), x)
  if found is None:
    return
  mask, values = found
  # Half-precision scalars print with their own repr; float32 reads plainly.
  values = values.astype(np.float32) if values.dtype.itemsize < 4 else values
  raise ValueError(
      f"{name} must hold probabilities in [0, 1] (e.g."
      f" jax.nn.softmax(logits)); {_describe(mask, values)}"
  )

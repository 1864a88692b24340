"""Measurement and reporting helpers shared by experiments/ and benchmarks/.

Timings follow one protocol everywhere: compile and warm up first, block on
the result, alternate the compared functions inside one process run so drift
and thermal state hit both sides alike, and report medians. Results go to
``results/<name>.json`` through an atomic rename, so an interrupted run never
leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsoftmax._core import io as _io

RESULTS_DIR = Path(os.environ.get("JAXSOFTMAX_RESULTS", "results"))


def block(tree: Any) -> Any:
  """Waits for every array in ``tree``; returns it."""
  return jax.block_until_ready(tree)


def alternate(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 7,
    warmup: int = 1,
) -> dict[str, list[float]]:
  """Times zero-argument callables in alternation; seconds per call.

  Each callable is run ``warmup`` times first (compilation happens there),
  then the callables take turns, ``repeats`` rounds, each call blocked on.

  Args:
    fns: name -> callable returning JAX arrays.
    repeats: timed rounds.
    warmup: untimed calls per callable before timing.

  Returns:
    name -> list of ``repeats`` wall-clock durations in seconds.
  """
  if repeats < 1 or warmup < 0:
    raise ValueError(
        f"repeats must be >= 1 and warmup >= 0; got {repeats}, {warmup}."
    )
  for fn in fns.values():
    for _ in range(warmup):
      block(fn())
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      block(fn())
      times[name].append(time.perf_counter() - t0)
  return times


def median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs))


def gemm_gflops(
    n: int = 2048, *, dtype=jnp.float32, repeats: int = 7
) -> float:
  """The machine's matmul throughput under ``jax.jit``: the roofline.

  Times an ``n x n @ n x n`` product (``2 n^3`` FLOPs) on the default device.

  Returns:
    Median GFLOP/s.
  """
  key = jax.random.key(0)
  a = jax.random.normal(key, (n, n), dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  t = median(alternate({"gemm": lambda: matmul(a, b)}, repeats=repeats)["gemm"])
  return 2 * n**3 / t / 1e9


def compiled_memory(fn: Callable[..., Any], *args: Any) -> dict[str, int]:
  """XLA's memory analysis of ``jax.jit(fn)(*args)``, compiled, not run.

  Works on shapes alone: pass ``jax.ShapeDtypeStruct`` to size programs that
  would not fit in memory.

  Returns:
    ``{"argument", "output", "temp", "total"}`` in bytes (``total`` is their
    sum, an upper bound on the peak of one call).
  """
  return executable_memory(jax.jit(fn).lower(*args).compile())


def executable_memory(compiled: Any) -> dict[str, int]:
  """:func:`compiled_memory` of an already compiled executable."""
  stats = compiled.memory_analysis()
  out = {
      "argument": int(stats.argument_size_in_bytes),
      "output": int(stats.output_size_in_bytes),
      "temp": int(stats.temp_size_in_bytes),
  }
  out["total"] = sum(out.values())
  return out


def format_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  raise AssertionError("unreachable")


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """A plain-text table; floats in general format with 4 significant digits."""

  def cell(x: Any) -> str:
    if isinstance(x, (float, np.floating)):
      return f"{x:.4g}"
    return str(x)

  body = [[cell(r.get(c, "")) for c in columns] for r in rows]
  widths = [max([len(c), *(len(b[i]) for b in body)]) for i, c in enumerate(columns)]
  line = lambda cells: "  ".join(s.rjust(w) for s, w in zip(cells, widths))
  return "\n".join(
      [line(columns), line(["-" * w for w in widths])] + [line(b) for b in body]
  )


def machine() -> dict[str, Any]:
  """What the figures were measured on."""
  device = jax.devices()[0]
  return {
      "platform": device.platform,
      "device": device.device_kind,
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      # Timings on a shared machine mean little without it.
      "load_average": list(os.getloadavg()),
  }


def save_results(name: str, payload: Mapping[str, Any]) -> Path:
  """Writes ``payload`` (plus machine facts) to ``results/<name>.json`` atomically.

  Written to a temporary file in the same directory, flushed, fsynced and
  renamed over the target, so readers see the old file or the new one, never
  a truncated one.

  Returns:
    The path written.
  """
  path = RESULTS_DIR / f"{name}.json"
  data = {"name": name, "machine": machine(), **payload}
  with _io.atomic_open(path, "w") as f:
    json.dump(data, f, indent=2, default=_to_json)
  return path


def _to_json(x: Any) -> Any:
  if isinstance(x, (np.generic, jax.Array)):
    return np.asarray(x).tolist()
  raise TypeError(f"cannot write {type(x).__name__} to JSON")

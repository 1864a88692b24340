r"""Checks the hand-derived gradients and the lecture's k-fold saving claim.

Command::

  python experiments/gradient_check.py          # or: make gradient-check
  python experiments/gradient_check.py --quick  # small sizes (the smoke test)

Expected result (2 CPU cores, float64 enabled):

* Table 1, correctness. In float64 every manual gradient
  (``softmax_regression_grad`` with and without the elastic-net penalty,
  ``mlp_grad`` with one hidden layer, the custom VJP of ``cross_entropy`` with
  label smoothing and weights, ``naive_jacobian_grad``) matches ``jax.grad``
  of a plain reference written here to float64 round-off: ~1e-16..1e-15
  relative, as do the loss values. Central differences of the library's own
  loss along 16 random unit directions agree to ~1e-11..1e-7 relative (median
  ~1e-10..1e-8): that is the finite-difference formula's own error, at or
  below its rounding scale eps |f| / (h |<g, v>|), which grows with the
  parameter count because a random direction has |<g, v>| ~ |g| / sqrt(N).
  In float32 the manual gradients are as accurate as float32 ``jax.grad``
  (~1e-7 relative to the float64 gradient, both).
* Table 2, the lecture's "Time, memory complexity" claim at batch size 1 and
  K = d in float32. XLA's compiled memory of the naive Jacobian gradient grows
  as K^2 d (3.7 GiB at K = d = 1000: the lecture's 4 GB), the structured one
  as d K (7.6 MiB, parameters plus gradient; the lecture's 4 MB counts one of
  them), so the ratio is K / 2 at every size: the k-fold saving. Time follows
  once the structured call is more than per-call overhead: ~150-300x at
  K = 256, ~600x at 512, ~1500-3000x at 1000 (naive 3-5 s, mostly faulting in
  4 GB; structured ~2 ms), i.e. time ratio / K ~0.6..3 from K = 256 on,
  noisy on a shared machine. K = 2048 would need 32 GiB and is compiled, not
  run.

The script exits with status 1 if a float64 gradient or loss value differs
from the reference by more than 1e-10 relative.

Expected runtime: ~2 min (``--quick``: ~20 s) on 2 CPU cores.

Error measures: "rel" is max |g - g_ref| / max |g_ref| over all entries of the
gradient pytree. The finite-difference error of direction ``v`` is
|(f(p + h v) - f(p - h v)) / 2h - <g, v>| / |<g, v>|.

References:
  E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026),
  slides "Time, memory complexity" and "Data point: ResNet-50, ImageNet-1k".
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoftmax as js
from jaxsoftmax import reporting

import _cli

# Before any array exists: float64 references and finite differences.
jax.config.update("jax_enable_x64", True)

TOLERANCE = 1e-10  # float64 relative error vs jax.grad that fails the run.
# ~eps^(1/3): balances central differences' truncation (h^2) and rounding.
FD_STEP = 1e-5
NUM_DIRECTIONS = 16
L1, L2 = 1e-3, 1e-2
HIDDEN = 32
LABEL_SMOOTHING = 0.1
NAIVE_MAX_ELEMENTS = 2e7  # Table 1 runs the naive one up to B K d K this big.
FITS_BYTES = 6 * 2**30  # Table 2 runs (and times) the naive one below this.
SLOW_CALL_S = 10.0  # stop timing the naive one past this per call.



# ----------------------------------------------------------------------------
# Plain references, differentiated by jax.grad (not the library's losses).
# ----------------------------------------------------------------------------


def ref_nll(logits, labels):
  """Per-row -log softmax(logits)[label], via one-hot and jax.nn.log_softmax."""
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)


def ref_penalty(weights, l1, l2):
  """l1 * sum |w| + l2 / 2 * sum w^2 over a list of weight matrices."""
  return sum(l1 * jnp.sum(jnp.abs(w)) + 0.5 * l2 * jnp.sum(w * w)
             for w in weights)


def ref_softmax_regression(params, x, labels, l1=0.0, l2=0.0):
  """Mean cross-entropy of x @ w + b plus the elastic net on w."""
  logits = x @ params["w"] + params["b"][None, :]
  return jnp.mean(ref_nll(logits, labels)) + ref_penalty([params["w"]], l1, l2)


def ref_mlp(params, x, labels, l1=0.0, l2=0.0):
  """Mean cross-entropy of a ReLU MLP plus the elastic net on its weights."""
  h = x
  for i, layer in enumerate(params):
    h = h @ layer["w"] + layer["b"][None, :]
    if i < len(params) - 1:
      h = jnp.maximum(h, 0)
  weights = [layer["w"] for layer in params]
  return jnp.mean(ref_nll(h, labels)) + ref_penalty(weights, l1, l2)


def ref_cross_entropy(logits, weights, labels, eps):
  """Weighted mean of -sum_j q_j log softmax(logits)_j, q smoothed by eps."""
  num_classes = logits.shape[-1]
  q = (1 - eps) * jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  q = q + eps / num_classes
  rows = -jnp.sum(q * jax.nn.log_softmax(logits), axis=-1)
  return jnp.sum(weights * rows) / jnp.sum(weights)


# ----------------------------------------------------------------------------
# Table 1: correctness.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
  """One gradient under test, as functions of (theta, data).

  ``theta`` is the differentiable pytree, ``data`` the rest (features,
  labels). ``grad`` is the library's manual gradient, ``loss`` the library's
  loss it claims to differentiate (finite differences use it) and ``ref`` the
  plain reference that ``jax.grad`` differentiates.
  """

  name: str
  size: tuple[int, int | None, int]
  theta: Any
  data: tuple[Any, ...]
  grad: Callable[..., Any]
  loss: Callable[..., Any]
  ref: Callable[..., Any]


def _layer(rng, fan_in, fan_out, scale):
  z = rng.standard_normal((fan_in, fan_out))
  # Weights at least 0.01 * scale away from 0, so finite differences never
  # straddle the L1 kink; a nonzero bias, so its gradient is checked away
  # from the initial point.
  return {"w": scale * (z + 0.01 * np.sign(z)),
          "b": 0.1 * rng.standard_normal(fan_out)}


def make_cases(rng, size):
  """The Table 1 cases for one ``(B, d, K)``, on float64 NumPy data.

  Data come from NumPy, not ``jax.random``: every eager JAX op on a new shape
  compiles, and the compiles, not the checks, would dominate the runtime.
  """
  batch, dim, num_classes = size
  x = rng.standard_normal((batch, dim))
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  linear = _layer(rng, dim, num_classes, dim**-0.5)
  mlp = [_layer(rng, dim, HIDDEN, (2 / dim) ** 0.5),
         _layer(rng, HIDDEN, num_classes, (2 / (HIDDEN + num_classes)) ** 0.5)]
  logits = 2 * rng.standard_normal((batch, num_classes))
  weights = rng.uniform(0.5, 2.0, batch)

  def bind(fn, **kw):
    return lambda theta, data: fn(theta, *data, **kw)

  cases = [
      Case("softmax_regression_grad", size, linear, (x, labels),
           bind(js.softmax_regression_grad),
           bind(js.softmax_regression_loss),
           bind(ref_softmax_regression)),
      Case("softmax_regression_grad l1,l2", size, linear, (x, labels),
           bind(js.softmax_regression_grad, l1=L1, l2=L2),
           bind(js.softmax_regression_loss, l1=L1, l2=L2),
           bind(ref_softmax_regression, l1=L1, l2=L2)),
      Case(f"mlp_grad (hidden {HIDDEN}) l1,l2", size, mlp, (x, labels),
           bind(js.mlp_grad, l1=L1, l2=L2),
           bind(js.mlp_loss, l1=L1, l2=L2),
           bind(ref_mlp, l1=L1, l2=L2)),
  ]

  def ce(theta, data):
    return js.cross_entropy(theta[0], data[0], weights=theta[1],
                            label_smoothing=LABEL_SMOOTHING)

  cases.append(Case(
      f"cross_entropy VJP (ls={LABEL_SMOOTHING}, weights)",
      (batch, None, num_classes), (logits, weights), (labels,), jax.grad(ce),
      ce, lambda theta, data: ref_cross_entropy(*theta, data[0],
                                                LABEL_SMOOTHING)))
  if batch * num_classes * dim * num_classes <= NAIVE_MAX_ELEMENTS:
    cases.append(Case("naive_jacobian_grad", size, linear, (x, labels),
                      bind(js.naive_jacobian_grad),
                      bind(js.softmax_regression_loss),
                      bind(ref_softmax_regression)))
  return cases


def _leaves64(tree):
  return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)]


def rel_error(got, want):
  """max |got - want| / max |want| over a pytree, compared in float64."""
  got, want = _leaves64(got), _leaves64(want)
  diff = max(np.max(np.abs(g - w)) for g, w in zip(got, want))
  return float(diff / max(np.max(np.abs(w)) for w in want))


def abs_error(got, want):
  return float(max(np.max(np.abs(g - w))
                   for g, w in zip(_leaves64(got), _leaves64(want))))


def fd_points(theta, rng):
  """Points ``theta +- h v`` for random unit directions ``v``, and theta itself.

  Returns:
    ``(points, directions)``: ``points`` stacks ``NUM_DIRECTIONS`` plus
    points, as many minus points and ``theta`` along a new leading axis;
    ``directions`` are the effective ``(theta_plus - theta_minus) / 2h``, so
    the rounding of ``theta +- h v`` to float64 does not count as gradient
    error.
  """
  n = NUM_DIRECTIONS
  leaves, treedef = jax.tree.flatten(theta)
  dirs = [rng.standard_normal((n, *np.shape(x))) for x in leaves]
  norm = np.sqrt(sum(np.sum(d.reshape(n, -1) ** 2, axis=1) for d in dirs))
  dirs = [d / norm.reshape(-1, *[1] * (d.ndim - 1)) for d in dirs]
  plus = [x + FD_STEP * d for x, d in zip(leaves, dirs)]
  minus = [x - FD_STEP * d for x, d in zip(leaves, dirs)]
  points = jax.tree.unflatten(treedef, [
      np.concatenate([p, m, np.asarray(x)[None]])
      for p, m, x in zip(plus, minus, leaves)])
  return points, [(p - m) / (2 * FD_STEP) for p, m in zip(plus, minus)]


def fd_errors(values, directions, grad):
  """Relative FD errors per direction, and the rounding floor of each.

  Returns:
    ``(errors, floors)``: ``|fd - <grad, v>| / |<grad, v>|`` and
    ``eps |f| / (h |<grad, v>|)``, the relative error that rounding the loss
    alone causes. For a random unit ``v`` in ``N`` dimensions ``<grad, v>`` is
    about ``|grad| / sqrt(N)``, so the floor grows with the parameter count.
  """
  n = NUM_DIRECTIONS
  fd = (values[:n] - values[n:2 * n]) / (2 * FD_STEP)
  exact = sum(v.reshape(n, -1) @ g.ravel()
              for v, g in zip(directions, _leaves64(grad)))
  floor = np.finfo(np.float64).eps * abs(values[-1]) / FD_STEP
  return np.abs(fd - exact) / np.abs(exact), floor / np.abs(exact)


def to_float32(tree):
  return jax.tree.map(
      lambda x: np.asarray(x, np.float32)
      if np.issubdtype(np.asarray(x).dtype, np.floating) else x, tree)


def check_case(case, rng):
  """One Table 1 row: the case's errors against jax.grad and against FD."""

  # One compiled program per dtype (compiles dominate the runtime): the
  # library gradient, jax.grad of the reference, and the library loss at each
  # finite-difference point (the last point is theta itself).
  @jax.jit
  def evaluate(theta, data, points):
    ref_loss, ref_grad = jax.value_and_grad(case.ref)(theta, data)
    losses = jax.vmap(case.loss, in_axes=(0, None))(points, data)
    return case.grad(theta, data), ref_grad, ref_loss, losses

  points, directions = fd_points(case.theta, rng)
  got, want, ref_loss, values = evaluate(case.theta, case.data, points)
  values = np.asarray(values)
  fd, fd_floor = fd_errors(values, directions, got)
  # float32: no finite differences (an empty batch of points).
  no_points = jax.tree.map(lambda x: np.zeros((0, *np.shape(x)), np.float32),
                           case.theta)
  got32, want32, _, _ = evaluate(
      to_float32(case.theta), to_float32(case.data), no_points)
  return {
      "case": case.name,
      "B,d,K": ",".join("-" if n is None else str(n) for n in case.size),
      "loss rel": abs(values[-1] - float(ref_loss)) / abs(float(ref_loss)),
      "f64 abs": abs_error(got, want),
      "f64 rel": rel_error(got, want),
      "FD rel (max)": float(fd.max()),
      "FD rel (median)": float(np.median(fd)),
      "eps|f|/(h|g.v|)": float(np.median(fd_floor)),
      "f32 rel vs grad32": rel_error(got32, want32),
      "f32 rel vs f64": rel_error(got32, want),
      "grad32 rel vs f64": rel_error(want32, want),
  }


# ----------------------------------------------------------------------------
# Table 2: the lecture's time and memory claim.
# ----------------------------------------------------------------------------


def _linear_shapes(size):
  """Shapes of (params, x, labels) at batch size 1 and d = K = ``size``."""
  f32 = jnp.float32
  return (
      {"w": jax.ShapeDtypeStruct((size, size), f32),
       "b": jax.ShapeDtypeStruct((size,), f32)},
      jax.ShapeDtypeStruct((1, size), f32),
      jax.ShapeDtypeStruct((1,), jnp.int32),
  )


def _random_arrays(shapes, rng):
  """Device arrays for ``shapes``: uniform(-1, 1) floats, integer zeros."""

  def make(s):
    if jnp.issubdtype(s.dtype, jnp.floating):
      return jnp.asarray(rng.uniform(-1, 1, s.shape).astype(s.dtype))
    return jnp.zeros(s.shape, s.dtype)

  return jax.tree.map(make, shapes)


def _repeat(fn, args, calls):
  """A zero-argument callable making ``calls`` calls of fn(*args), each blocked.

  Blocking each call keeps one output alive at a time; queuing them all
  would hold ``calls`` outputs and time the allocator instead.
  """

  def run():
    for _ in range(calls):
      out = reporting.block(fn(*args))
    return out

  return run


def _seconds_per_call(fn, args, budget_s=0.2):
  """Compiles ``fn``, then the fastest of a few calls (at least one)."""
  reporting.block(fn(*args))
  times = []
  while not times or (sum(times) < budget_s and len(times) < 10):
    t0 = time.perf_counter()
    reporting.block(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def time_pair(naive, structured, args, *, sample_s=0.05):
  """Median seconds per call of both, alternated; None for a too slow naive.

  A timed sample of each side holds enough back-to-back calls to last about
  ``sample_s``, so a sub-millisecond call is not all dispatch jitter and the
  first call after the naive one (which has just freed gigabytes) does not
  dominate. Rounds are fewer when the naive call is slow.
  """
  fns = {"naive": naive, "structured": structured}
  single = {k: _seconds_per_call(fn, args) for k, fn in fns.items()}
  if single["naive"] > SLOW_CALL_S:
    return {"naive": None, "structured": None}
  calls = {k: max(1, math.ceil(sample_s / t)) for k, t in single.items()}
  repeats = int(np.clip(4.0 / single["naive"], 3, 9))
  times = reporting.alternate(
      {k: _repeat(fn, args, calls[k]) for k, fn in fns.items()},
      repeats=repeats, warmup=0)
  return {k: reporting.median(times[k]) / calls[k] for k in fns}


def complexity_row(size):
  """One Table 2 row at batch size 1 and d = K = ``size``, in float32."""
  shapes = _linear_shapes(size)
  naive_mem = reporting.compiled_memory(js.naive_jacobian_grad, *shapes)
  struct_mem = reporting.compiled_memory(js.softmax_regression_grad, *shapes)
  row = {
      "K=d": size,
      "lecture naive (K^2 d 4B)": size**3 * 4,
      "lecture struct (d K 4B)": size**2 * 4,
      "naive memory": naive_mem,
      "structured memory": struct_mem,
      "memory ratio": naive_mem["total"] / struct_mem["total"],
  }
  row["memory ratio / K"] = row["memory ratio"] / size
  row["fits"] = naive_mem["total"] < FITS_BYTES
  if row["fits"]:
    args = _random_arrays(shapes, np.random.default_rng(size))
    t = time_pair(jax.jit(js.naive_jacobian_grad),
                  jax.jit(js.softmax_regression_grad), args)
    row["naive s"], row["structured s"] = t["naive"], t["structured"]
    if t["naive"] is not None:
      row["time ratio"] = t["naive"] / t["structured"]
      row["time ratio / K"] = row["time ratio"] / size
    del args
  return row


def complexity_display(row):
  """Table 2 row with bytes and times formatted for reading."""
  ms = lambda s: f"{1e3 * s:.4g}"
  out = {
      "K=d": row["K=d"],
      "lecture naive": reporting.format_bytes(row["lecture naive (K^2 d 4B)"]),
      "lecture struct": reporting.format_bytes(row["lecture struct (d K 4B)"]),
      "XLA naive": reporting.format_bytes(row["naive memory"]["total"]),
      "XLA struct": reporting.format_bytes(row["structured memory"]["total"]),
      "mem ratio": row["memory ratio"],
      "ratio/K": row["memory ratio / K"],
  }
  if not row["fits"]:
    out["naive ms"] = "does not fit"
  elif row["naive s"] is None:
    out["naive ms"] = f"skipped (> {SLOW_CALL_S:g} s)"
  else:
    out["naive ms"] = ms(row["naive s"])
    out["struct ms"] = ms(row["structured s"])
    out["time ratio"] = row["time ratio"]
    out["t ratio/K"] = row["time ratio / K"]
  return out


# ----------------------------------------------------------------------------
# Main.
# ----------------------------------------------------------------------------

TABLE1_COLUMNS = ["case", "B,d,K", "loss rel", "f64 abs", "f64 rel",
                  "FD rel (max)", "FD rel (median)", "eps|f|/(h|g.v|)"]
TABLE1_F32_COLUMNS = ["case", "B,d,K", "f32 rel vs grad32", "f32 rel vs f64",
                      "grad32 rel vs f64"]
TABLE2_COLUMNS = ["K=d", "lecture naive", "lecture struct", "XLA naive",
                  "XLA struct", "mem ratio", "ratio/K", "naive ms",
                  "struct ms", "time ratio", "t ratio/K"]


@dataclasses.dataclass(frozen=True)
class Config:
  """Table 1's problem sizes (B, d, K) and Table 2's K = d ladder."""

  sizes: tuple[tuple[int, int, int], ...] = (
      (1, 5, 3), (32, 64, 10), (128, 784, 10), (64, 256, 1000))
  ladder: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1000, 2048)
  quick_mode: bool = False

  def __post_init__(self):
    if not self.sizes or any(len(s) != 3 or min(s) < 1 for s in self.sizes):
      raise ValueError("sizes must be a non-empty list of positive (B, d, K)"
                       f" triples, got {self.sizes}")
    if any(k < 2 for k in self.ladder):
      raise ValueError(f"ladder must hold sizes K = d >= 2, got {self.ladder}")

  def quick(self) -> Config:
    """One small size and two rungs: the smoke test."""
    return dataclasses.replace(self, sizes=((8, 16, 5),), ladder=(16, 64),
                               quick_mode=True)


def run(config: Config) -> dict[str, Any]:
  """Both tables' rows, and whether every float64 row is within TOLERANCE."""
  start = time.perf_counter()
  rng = np.random.default_rng(0)
  correctness = [check_case(case, rng)
                 for size in config.sizes for case in make_cases(rng, size)]
  complexity = [complexity_row(size) for size in config.ladder]
  failures = [r for r in correctness
              if not (r["f64 rel"] <= TOLERANCE and r["loss rel"] <= TOLERANCE)]
  return {
      "quick": config.quick_mode,
      "config": dataclasses.asdict(config),
      "tolerance": TOLERANCE,
      "fd_step": FD_STEP,
      "num_directions": NUM_DIRECTIONS,
      "passed": not failures,
      "runtime_s": time.perf_counter() - start,
      "correctness": correctness,
      "complexity": complexity,
  }


def report(results: dict[str, Any]) -> None:
  """Prints both tables, and the failed rows to stderr."""
  correctness = results["correctness"]
  print("Table 1: gradient correctness in float64, against jax.grad of a plain"
        " reference\n(rel = max|g - g_ref| / max|g_ref|) and against central"
        " differences of the library's loss")
  print(reporting.format_table(correctness, TABLE1_COLUMNS))
  print(f"FD: step {FD_STEP:g}, {NUM_DIRECTIONS} random unit directions v,"
        " error relative to |<g, v>|. Its size is the FD\nformula's"
        " (truncation ~h^2, rounding ~eps|f|/h: the last column, median over"
        " v), not the gradient's.")
  print()
  print("Table 1b: the same gradients in float32, against float32 jax.grad and"
        " the float64 reference")
  print(reporting.format_table(correctness, TABLE1_F32_COLUMNS))
  print()
  print("Table 2: naive Jacobian vs structured gradient, batch size 1, d = K,"
        " float32")
  print(reporting.format_table(
      [complexity_display(r) for r in results["complexity"]], TABLE2_COLUMNS))
  print("Memory: XLA's argument + output + temp bytes of the compiled call."
        " The structured total is parameters\n+ gradient (2 d K floats), so"
        " the ratio is ~K / 2; the lecture counts one d K array: 4 GB vs 4 MB"
        "\nat K = d = 1000. Time: medians of alternated runs; up to K ~ 64 both"
        " are mostly per-call overhead.")
  for r in correctness:
    if not (r["f64 rel"] <= TOLERANCE and r["loss rel"] <= TOLERANCE):
      print(f"FAILED: {r['case']} at B,d,K = {r['B,d,K']}: float64 rel error"
            f" {r['f64 rel']:.3g} (loss {r['loss rel']:.3g}) > {TOLERANCE:g}",
            file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
  config = _cli.parse(Config, argv, description=__doc__.split("\n")[0])
  results = run(config)
  report(results)
  path = reporting.save_results("gradient_check", results)
  print(f"\nWrote {path} in {results['runtime_s']:.0f} s.")
  return 0 if results["passed"] else 1


if __name__ == "__main__":
  sys.exit(main())

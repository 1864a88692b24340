"""Cross-entropy forward + backward: the hand-written VJP against optax.

Command: ``python benchmarks/bench_loss.py`` (or ``make bench``). A smoke test
on tiny sizes: ``python benchmarks/bench_loss.py --quick`` (seconds).

For each size (B, d, K) the step is one softmax-regression value-and-grad,

  ``jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(w, b, x, labels)``

with w [d, K], b [K], x [B, d], ``loss = mean CE(x @ w + b, labels)``, float32
and fixed seeds, written three ways:

  manual VJP            ``jaxsoftmax.cross_entropy`` (its ``jax.custom_vjp``)
  optax + jax.grad      ``optax.softmax_cross_entropy_with_integer_labels``,
                        ``.mean()``, differentiated by JAX (the anchor)
  autodiff (plain jnp)  max-shifted log-sum-exp minus the gathered logit,
                        differentiated by JAX: no custom rule anywhere

The script first checks that the three agree (loss and all three gradients,
to 1e-4 of each array's largest entry) and stops if they do not. It then times
them in alternation in one process run, together with a fourth row,
"GEMM only": the step's three matmuls alone (x @ w, x^T @ g, g @ w^T), the
floor for these shapes, which can sit below the square-GEMM roofline when K is
wide or d is small. Each size runs at least 5 rounds and at least 2 s per row
(``--min-time``; at most 10,000 rounds), or exactly ``--repeats`` rounds.

It prints, per size and row: the median time of a step, its GFLOP/s counting
6·B·K·d FLOPs (the forward logits matmul and the two backward matmuls), that
as a percentage of the machine's fp32 GEMM roofline (a 2048^3 matmul timed in
the same run, before and after, best of the two), the time ratio to the optax
row, and XLA's temporary memory for the compiled step with its ratio to
optax's. Two targets are reported, never asserted: the manual VJP is never
slower than optax (median ratio <= 1.0 at every size) and reaches >= 80% of
the GEMM roofline at K = 32768.

Default sizes: (256, 784, 10) (MNIST softmax regression), (512, 512, 32768)
and (256, 256, 262144). Expected runtime on 2 idle CPU cores: about 4 minutes
(peak memory about 2 GiB, at K = 262144); ``--quick`` takes about 5 s.

Figures go to ``results/bench_loss.json`` (``--quick``:
``results/bench_loss_quick.json``, so a smoke test never overwrites a real
run); ``JAXSOFTMAX_RESULTS`` moves the folder.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsoftmax
from jaxsoftmax import reporting

DEFAULT_SIZES = ((256, 784, 10), (512, 512, 32768), (256, 256, 262144))
QUICK_SIZES = ((64, 32, 10), (128, 64, 2048))

# Targets from the issue; reported, not asserted.
TARGET_RATIO = 1.0
TARGET_ROOFLINE = 0.8
TARGET_ROOFLINE_K = 32768

# Largest disagreement between rows, relative to each array's largest entry:
# float32 sums over K classes and B rows in different orders.
RTOL = 1e-4

MIN_REPEATS = 5
MAX_REPEATS = 10_000
SEED = 0


# ----------------------------------------------------------------------------
# The compared losses. Each takes (w, b, x, labels) and returns a scalar.
# ----------------------------------------------------------------------------


def _logits(w, b, x):
  return jaxsoftmax.linear_logits({"w": w, "b": b}, x)


def manual_loss(w, b, x, labels):
  return jaxsoftmax.cross_entropy(_logits(w, b, x), labels)


def optax_loss(w, b, x, labels):
  logits = _logits(w, b, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def plain_loss(w, b, x, labels):
  h = _logits(w, b, x)
  m = jax.lax.stop_gradient(jnp.max(h, axis=-1, keepdims=True))
  lse = jnp.log(jnp.sum(jnp.exp(h - m), axis=-1)) + m[:, 0]
  target = jnp.take_along_axis(h, labels[:, None], axis=-1)[:, 0]
  return jnp.mean(lse - target)


# (key in the JSON, label in the table, loss). "optax" is the reference.
SIDES = (
    ("manual_vjp", "manual VJP", manual_loss),
    ("optax", "optax + jax.grad", optax_loss),
    ("plain_autodiff", "autodiff (plain jnp)", plain_loss),
)
GEMM_KEY, GEMM_LABEL = "gemm_only", "GEMM only (3 matmuls)"
REFERENCE = "optax"


def gemm_only(w, x, g):
  """The step's three matmuls and nothing else: h, dL/dw, dL/dx shapes."""
  dot = jax.lax.dot_general
  h = dot(x, w, (((1,), (0,)), ((), ())))  # [B, d] x [d, K]
  dw = dot(x, g, (((0,), (0,)), ((), ())))  # [B, d]^T x [B, K]
  dx = dot(g, w, (((1,), (1,)), ((), ())))  # [B, K] x [d, K]^T
  return h, dw, dx


# ----------------------------------------------------------------------------
# Measurement.
# ----------------------------------------------------------------------------


def make_inputs(seed, batch, features, classes):
  """float32 inputs from NumPy (no JAX op, so nothing to compile)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)
  w = normal(features, classes) / np.float32(math.sqrt(features))  # N(0, 1/d)
  b = np.float32(0.1) * normal(classes)
  x = normal(batch, features)
  labels = rng.integers(0, classes, size=batch, dtype=np.int32)
  # Stands in for softmax - one-hot in the GEMM-only row.
  g = normal(batch, classes) / np.float32(batch)
  return tuple(jnp.asarray(a) for a in (w, b, x, labels, g))


def max_relative_error(out, ref) -> dict[str, float]:
  """max |out - ref| / max |ref| for the loss and each gradient (on host)."""
  (loss, grads), (ref_loss, ref_grads) = out, ref
  names = ("loss", "dw", "db", "dx")
  errors = {}
  for name, a, r in zip(names, (loss, *grads), (ref_loss, *ref_grads)):
    a, r = np.asarray(a), np.asarray(r)
    scale = max(float(np.max(np.abs(r))), float(np.finfo(r.dtype).tiny))
    errors[name] = float(np.max(np.abs(a - r))) / scale
  return errors


def choose_repeats(
    calls: dict[str, Callable[[], Any]], min_time: float
) -> int:
  """Rounds so the fastest row gets ``min_time`` seconds; compiles too."""
  probe = reporting.alternate(calls, repeats=1, warmup=1)
  fastest = max(min(t[0] for t in probe.values()), 1e-7)
  return int(np.clip(math.ceil(min_time / fastest), MIN_REPEATS, MAX_REPEATS))


def bench_size(
    seed: int,
    batch: int,
    features: int,
    classes: int,
    *,
    roofline: float,
    repeats: int | None,
    min_time: float,
) -> dict[str, Any]:
  w, b, x, labels, g = make_inputs(seed, batch, features, classes)
  flops = 6 * batch * classes * features

  steps = {
      name: jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
      for name, _, fn in SIDES
  }
  # A benchmark of wrong code is worthless: every row must match the anchor.
  outs = {name: step(w, b, x, labels) for name, step in steps.items()}
  errors = {
      name: max_relative_error(outs[name], outs[REFERENCE])
      for name in steps
      if name != REFERENCE
  }
  del outs
  for name, errs in errors.items():
    worst = max(errs, key=errs.get)
    if not errs[worst] <= RTOL:  # also catches NaN
      raise AssertionError(
          f"{name} disagrees with {REFERENCE} at (B, d, K) ="
          f" {(batch, features, classes)}: {worst} off by {errs[worst]:.3g}"
          f" of its largest entry (allowed {RTOL:g}); all: {errs}"
      )

  gemm = jax.jit(gemm_only)
  calls = {
      name: (lambda step=step: step(w, b, x, labels))
      for name, step in steps.items()
  }
  calls[GEMM_KEY] = lambda: gemm(w, x, g)
  if repeats is None:
    rounds, warmup = choose_repeats(calls, min_time), 0
  else:
    rounds, warmup = repeats, 1
  times = reporting.alternate(calls, repeats=rounds, warmup=warmup)

  memory = {
      name: reporting.compiled_memory(step, w, b, x, labels)
      for name, step in steps.items()
  }
  memory[GEMM_KEY] = reporting.compiled_memory(gemm_only, w, x, g)

  ref_time = reporting.median(times[REFERENCE])
  ref_temp = memory[REFERENCE]["temp"]
  rows = {}
  for name, ts in times.items():
    t = reporting.median(ts)
    gflops = flops / t / 1e9
    rows[name] = {
        "median_ms": 1e3 * t,
        "p25_ms": 1e3 * float(np.percentile(ts, 25)),
        "p75_ms": 1e3 * float(np.percentile(ts, 75)),
        "min_ms": 1e3 * min(ts),
        "gflops": gflops,
        "roofline_fraction": gflops / roofline,
        "time_ratio_to_optax": t / ref_time,
        "memory": memory[name],
        "temp_ratio_to_optax": (
            memory[name]["temp"] / ref_temp if ref_temp else None
        ),
    }
  return {
      "batch": batch,
      "features": features,
      "classes": classes,
      "flops_per_step": flops,
      "repeats": rounds,
      "max_relative_error_vs_optax": errors,
      "rows": rows,
  }


# ----------------------------------------------------------------------------
# Reporting.
# ----------------------------------------------------------------------------

COLUMNS = (
    "B", "d", "K", "step", "median ms", "GFLOP/s", "% roofline",
    "t/optax", "XLA temp", "temp/optax",
)
LABELS = {name: label for name, label, _ in SIDES} | {GEMM_KEY: GEMM_LABEL}


def table_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  out = []
  for res in results:
    for name, row in res["rows"].items():
      temp_ratio = row["temp_ratio_to_optax"]
      out.append({
          "B": res["batch"],
          "d": res["features"],
          "K": res["classes"],
          "step": LABELS[name],
          "median ms": row["median_ms"],
          "GFLOP/s": row["gflops"],
          "% roofline": f"{100 * row['roofline_fraction']:.1f}%",
          "t/optax": f"{row['time_ratio_to_optax']:.3f}",
          "XLA temp": reporting.format_bytes(row["memory"]["temp"]),
          "temp/optax": "-" if temp_ratio is None else f"{temp_ratio:.3f}",
      })
  return out


def evaluate_targets(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
  ratios = {
      f"{r['batch']}x{r['features']}x{r['classes']}":
          r["rows"]["manual_vjp"]["time_ratio_to_optax"]
      for r in results
  }
  at_k = [r for r in results if r["classes"] == TARGET_ROOFLINE_K]
  fractions = [r["rows"]["manual_vjp"]["roofline_fraction"] for r in at_k]
  return {
      "manual_not_slower_than_optax": {
          "target_max_ratio": TARGET_RATIO,
          "ratios": ratios,
          "met": all(v <= TARGET_RATIO for v in ratios.values()),
      },
      "roofline_at_k": {
          "classes": TARGET_ROOFLINE_K,
          "target_min_fraction": TARGET_ROOFLINE,
          "fractions": fractions,
          # None: no size with this K was run (e.g. --quick).
          "met": (
              all(f >= TARGET_ROOFLINE for f in fractions) if fractions else None
          ),
      },
  }


def describe_targets(targets: dict[str, Any]) -> list[str]:
  speed, roof = targets["manual_not_slower_than_optax"], targets["roofline_at_k"]
  verdict = lambda met: {True: "met", False: "NOT met", None: "not measured"}[met]
  worst = max(speed["ratios"].items(), key=lambda kv: kv[1])
  lines = [
      f"target: manual VJP / optax <= {TARGET_RATIO:g} at every size:"
      f" {verdict(speed['met'])} (worst {worst[1]:.3f} at {worst[0]})"
  ]
  fractions = ", ".join(f"{100 * f:.1f}%" for f in roof["fractions"]) or "-"
  lines.append(
      f"target: manual VJP >= {100 * TARGET_ROOFLINE:.0f}% of the GEMM roofline"
      f" at K = {TARGET_ROOFLINE_K}: {verdict(roof['met'])} ({fractions})"
  )
  return lines


# ----------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int, int]:
  try:
    size = tuple(int(s) for s in text.replace("x", ",").split(","))
  except ValueError:
    size = ()
  if len(size) != 3 or min(size) < 1:
    raise argparse.ArgumentTypeError(
        f"a size is B,d,K (three positive ints, e.g. 512,512,32768); got {text!r}"
    )
  return size


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
      "--quick", action="store_true",
      help=f"tiny sizes {QUICK_SIZES} and short timings: a smoke test",
  )
  parser.add_argument(
      "--sizes", type=parse_size, nargs="+", metavar="B,d,K",
      help=f"sizes to run (default {DEFAULT_SIZES})",
  )
  parser.add_argument(
      "--repeats", type=int,
      help="timed rounds per size (default: adaptive, see --min-time)",
  )
  parser.add_argument(
      "--min-time", type=float,
      help="adaptive rounds: seconds the fastest row gets at least"
           " (default 2, --quick 0.05)",
  )
  args = parser.parse_args(argv)
  if args.repeats is not None and args.repeats < 1:
    parser.error(f"--repeats must be >= 1; got {args.repeats}")
  sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
  min_time = args.min_time or (0.05 if args.quick else 2.0)
  gemm_n = 512 if args.quick else 2048

  machine = reporting.machine()
  print(
      f"{machine['device']} ({machine['platform']}), {machine['cpu_count']}"
      f" CPUs, jax {machine['jax']}, optax {optax.__version__};"
      f" load average {os.getloadavg()[0]:.2f}"
  )
  roofline_before = reporting.gemm_gflops(gemm_n)
  results = []
  for i, (batch, features, classes) in enumerate(sizes):
    results.append(bench_size(
        SEED + i, batch, features, classes,
        roofline=roofline_before, repeats=args.repeats, min_time=min_time,
    ))
  roofline_after = reporting.gemm_gflops(gemm_n)
  # The machine's roofline is the best it showed; re-derive the fractions.
  roofline = max(roofline_before, roofline_after)
  for res in results:
    for row in res["rows"].values():
      row["roofline_fraction"] = row["gflops"] / roofline

  print(
      f"fp32 GEMM roofline ({gemm_n}^3 matmul under jax.jit): {roofline:.1f}"
      f" GFLOP/s (before {roofline_before:.1f}, after {roofline_after:.1f});"
      " a step is 6*B*K*d FLOPs"
  )
  print()
  print(reporting.format_table(table_rows(results), COLUMNS))
  print()
  targets = evaluate_targets(results)
  for line in describe_targets(targets):
    print(line)
  path = reporting.save_results(
      "bench_loss_quick" if args.quick else "bench_loss",
      {
          "config": {
              "quick": args.quick,
              "sizes": [list(s) for s in sizes],
              "repeats": args.repeats,
              "min_time_s": min_time,
              "seed": SEED,
              "dtype": "float32",
              "rtol": RTOL,
              "load_average_1min": os.getloadavg()[0],
              "optax": optax.__version__,
          },
          "gemm_roofline": {
              "n": gemm_n,
              "gflops": roofline,
              "gflops_before": roofline_before,
              "gflops_after": roofline_after,
          },
          "results": results,
          "targets": targets,
      },
  )
  print(f"wrote {path}")


if __name__ == "__main__":
  main()

r"""Bytes sent by vocab-parallel cross-entropy vs all-gathering the logits.

Command: ``python benchmarks/bench_sharded.py`` (8 simulated CPU devices).
Smoke test: ``python benchmarks/bench_sharded.py --quick`` (seconds).

Both sides compute the value and the gradients (x, w, b) of the mean
cross-entropy of ``x @ w + b`` with w [d, K] split over P devices on a
"model" mesh axis, float32:

  vocab-parallel   :func:`jaxsoftmax.sharded.vocab_parallel_cross_entropy`:
                   a pmax and psums of per-row scalars forward, one psum
                   of dx [B, d] backward
  all-gather       each device computes its [B, K/P] logits, they are
                   ``all_gather``-ed into [B, K] on every device, and
                   ``jaxsoftmax.cross_entropy`` runs on them (JAX
                   differentiates; dx is psum-ed as above)

Communication per step, in elements of the collectives' full messages
(all-reduce: its operand; all-gather: its gathered result), analytically:

  vocab-parallel   3·B forward (lse pmax, sum-exp psum, target psum; 5·B
                   with label smoothing: the finite logits' sum and count)
                   + B·d backward
  all-gather       B·K forward (the logits) + B·d backward; the gathered
                   logits' cotangent is the same on every device, so each
                   keeps its slice and nothing more is sent

and measured: the all-reduce / all-gather / reduce-scatter / all-to-all /
collective-permute instructions of the compiled, SPMD-partitioned HLO
(``jit(...).lower(...).compile().as_text()``), each with its result shape.
A ring implementation moves about 2(P-1)/P of an all-reduce message and
(P-1)/P of an all-gather message per device. The ratio all-gather /
vocab-parallel is about K / (d + 3) when d is large against 3.

Both sides are also checked to agree (loss and gradients to 1e-4 of their
largest entry), timed in alternation where the all-gather side fits in
memory (P·B·K·4 bytes on the host; else compile-only, "-" in the table),
and sized by XLA's memory analysis (per device: the all-gather side holds
[B, K], vocab-parallel [B, K/P]). On simulated devices the collectives are
memory copies between threads of one process, so the times show compute
and overhead, not network cost.

Default sizes (B, d, K, P): (128, 64, 32768, 8), (256, 128, 131072, 2),
(256, 128, 131072, 8), (128, 64, 1000000, 8). Expected: measured bytes
equal the analytic ones at every size; the all-gather side sends 490x
(K = 32768, d = 64), 1,002x (K = 131072, d = 128) and 14,900x (K = 10^6,
d = 64) more, holds 8x (P = 8) more temporaries, and is 1.7x (P = 2) to 13x
(P = 8) slower here, since every device then computes the whole [B, K]
softmax. About 2.5 minutes of CPU time (157 s measured; 6 minutes wall on 2
cores shared with other jobs, load average 8 to 15).

Figures go to ``results/bench_sharded.json`` (``--quick``:
``results/bench_sharded_quick.json``).
"""

from __future__ import annotations

import os

# Simulated CPU devices must be requested before jax is imported.
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" {_DEVICE_FLAG}=8"
  ).strip()

import argparse  # noqa: E402
from collections.abc import Sequence  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

from jaxsoftmax import cross_entropy  # noqa: E402
from jaxsoftmax import reporting  # noqa: E402
from jaxsoftmax import sharded  # noqa: E402

DEFAULT_SIZES = ((128, 64, 32768, 8), (256, 128, 131072, 2),
                 (256, 128, 131072, 8), (128, 64, 1_000_000, 8))
QUICK_SIZES = ((32, 16, 1024, 4), (32, 16, 4096, 8))
SPECS = (P(), P(None, "model"), P("model"), P())  # x, w, b, labels
RTOL = 1e-4
# The all-gather side holds P copies of [B, K] on the host; larger sizes are
# compiled and counted but not run.
RUN_LIMIT_BYTES = 1.5 * 2**30
SMOOTHING = 0.1

_COLLECTIVE = re.compile(
    r"=\s*(?P<type>.+?)\s+(?P<op>all-reduce|all-gather|reduce-scatter|"
    r"all-to-all|collective-permute)(?:-start)?\("
)
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
              "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
              "f64": 8}
_GROUP = re.compile(r"replica_groups=\{\{([\d,]+)\}")


def collectives(hlo: str) -> list[dict[str, Any]]:
  """The collective instructions of compiled HLO text and their message sizes.

  Message bytes: an all-reduce's result (its operands; a combined one lists
  several), an all-gather's gathered result, a reduce-scatter's operand
  (result times the group size). ``-done`` halves of async pairs are skipped.
  """
  found = []
  for line in hlo.splitlines():
    m = _COLLECTIVE.search(line)
    if m is None:
      continue
    sizes = [
        math.prod(int(n) for n in dims.split(",") if n)
        * _HLO_BYTES[dtype]
        for dtype, dims in _SHAPE.findall(m["type"])
    ]
    op = m["op"]
    if op == "all-gather":
      message = max(sizes)
    elif op == "reduce-scatter":
      group = _GROUP.search(line)
      message = sum(sizes) * (len(group[1].split(",")) if group else 1)
    else:
      message = sum(sizes)
    found.append({"op": op, "type": m["type"], "bytes": message})
  return found


def all_gather_loss(x, w, b, labels, *, mesh):
  """Mean CE after all-gathering the [B, K/P] logit blocks into [B, K]."""

  def local(x, w, b):
    h = x @ w + b[None, :]
    return jax.lax.all_gather(h, "model", axis=1, tiled=True, to="invarying")

  logits = jax.shard_map(local, mesh=mesh, in_specs=SPECS[:3],
                         out_specs=P())(x, w, b)
  return cross_entropy(logits, labels)


def analytic_elements(batch, features, classes, method) -> int:
  if method == "all_gather":
    return batch * classes + batch * features
  rows = 5 if method == "vocab_parallel_smoothing" else 3
  return rows * batch + batch * features


def _max_relative_error(out, ref) -> float:
  errs = []
  for a, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    a, r = np.asarray(a), np.asarray(r)
    errs.append(float(np.max(np.abs(a - r)) / max(np.max(np.abs(r)), 1e-30)))
  return max(errs)


def bench_size(batch, features, classes, devices, repeats) -> dict[str, Any]:
  mesh = jax.make_mesh((devices,), ("model",),
                       devices=jax.devices()[:devices])
  losses = {
      "vocab_parallel": lambda x, w, b, y: sharded.vocab_parallel_cross_entropy(
          x, w, b, y, mesh=mesh),
      "vocab_parallel_smoothing":
          lambda x, w, b, y: sharded.vocab_parallel_cross_entropy(
              x, w, b, y, mesh=mesh, label_smoothing=SMOOTHING),
      "all_gather": lambda x, w, b, y: all_gather_loss(x, w, b, y, mesh=mesh),
  }
  steps = {name: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
           for name, f in losses.items()}
  shapes = ((batch, features), (features, classes), (classes,), (batch,))
  dtypes = (jnp.float32, jnp.float32, jnp.float32, jnp.int32)
  abstract = [
      jax.ShapeDtypeStruct(s, t, sharding=jax.NamedSharding(mesh, spec))
      for s, t, spec in zip(shapes, dtypes, SPECS)
  ]
  out = {"batch": batch, "features": features, "classes": classes,
         "devices": devices, "methods": {}}
  with jax.set_mesh(mesh):
    for name, step in steps.items():
      compiled = step.lower(*abstract).compile()
      found = collectives(compiled.as_text())
      memory = compiled.memory_analysis()
      out["methods"][name] = {
          "collectives": found,
          "measured_bytes": sum(c["bytes"] for c in found),
          "analytic_bytes": 4 * analytic_elements(batch, features, classes,
                                                  name),
          "temp_bytes_per_device": int(memory.temp_size_in_bytes),
      }
  for row in out["methods"].values():
    row["bytes_ratio_to_vocab_parallel"] = (
        row["measured_bytes"]
        / out["methods"]["vocab_parallel"]["measured_bytes"])

  out["timed"] = devices * batch * classes * 4 <= RUN_LIMIT_BYTES
  if out["timed"]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, features), dtype=np.float32)
    w = rng.standard_normal((features, classes), dtype=np.float32)
    w /= np.float32(math.sqrt(features))
    b = np.zeros(classes, np.float32)
    y = rng.integers(0, classes, size=batch).astype(np.int32)
    args = sharded.shard_params((x, w, b, y), mesh, SPECS)
    timed = ("vocab_parallel", "all_gather")
    with jax.set_mesh(mesh):
      results = {name: steps[name](*args) for name in timed}
      error = _max_relative_error(results["vocab_parallel"],
                                  results["all_gather"])
      del results
      if not error <= RTOL:  # also catches NaN
        raise AssertionError(
            f"vocab-parallel and all-gather disagree at (B, d, K, P) ="
            f" {(batch, features, classes, devices)}: {error:.3g} of the"
            f" largest entry (allowed {RTOL:g})")
      times = reporting.alternate(
          {name: (lambda s=steps[name]: s(*args)) for name in timed},
          repeats=repeats)
    out["max_relative_error"] = error
    for name in timed:
      out["methods"][name]["median_ms"] = 1e3 * reporting.median(times[name])
    out["time_ratio_all_gather_to_vocab_parallel"] = (
        out["methods"]["all_gather"]["median_ms"]
        / out["methods"]["vocab_parallel"]["median_ms"])
  return out


LABELS = {"vocab_parallel": "vocab-parallel",
          "vocab_parallel_smoothing": f"vocab-parallel, eps={SMOOTHING}",
          "all_gather": "all-gather logits"}


def table_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  rows = []
  for res in results:
    for name, m in res["methods"].items():
      ops = {}
      for c in m["collectives"]:
        ops[c["op"]] = ops.get(c["op"], 0) + 1
      rows.append({
          "B": res["batch"], "d": res["features"], "K": res["classes"],
          "P": res["devices"], "method": LABELS[name],
          "collectives": " ".join(f"{n}x{op}" for op, n in sorted(ops.items())),
          "measured": reporting.format_bytes(m["measured_bytes"]),
          "analytic": reporting.format_bytes(m["analytic_bytes"]),
          "bytes / vocab-par": m["bytes_ratio_to_vocab_parallel"],
          "temp/dev": reporting.format_bytes(m["temp_bytes_per_device"]),
          "median ms": m.get("median_ms", "-"),
          "t / vocab-par": (
              m["median_ms"] / res["methods"]["vocab_parallel"]["median_ms"]
              if "median_ms" in m else "-"),
      })
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny sizes, for the smoke test")
  parser.add_argument("--repeats", type=int,
                      help="timed rounds per size (default 7, --quick 2)")
  args = parser.parse_args(argv)
  sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
  repeats = args.repeats or (2 if args.quick else 7)
  available = jax.device_count()
  results = []
  for batch, features, classes, devices in sizes:
    if devices > available:
      print(f"skipping P = {devices}: {available} devices")
      continue
    results.append(bench_size(batch, features, classes, devices, repeats))
  rows = table_rows(results)
  print(reporting.format_table(rows, list(rows[0])))
  exact = all(m["measured_bytes"] == m["analytic_bytes"]
              for r in results for m in r["methods"].values())
  print(f"measured bytes equal the analytic count for every size: {exact}")
  path = reporting.save_results(
      "bench_sharded_quick" if args.quick else "bench_sharded",
      {"config": {"quick": args.quick, "sizes": sizes, "repeats": repeats},
       "load_average": os.getloadavg(), "results": results,
       "measured_equals_analytic": exact},
  )
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

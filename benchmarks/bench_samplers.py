"""Sampling cost per query against K: static samplers vs MIDX.

Command: ``python benchmarks/bench_samplers.py`` (``--quick``: K up to 10^4,
seconds; a smoke test).

Synthetic clustered class embeddings (K points around 256 Gaussian centres
in d = 64, the structure product quantization exploits) and B = 256
standard-normal queries. For each K in {10^4, 10^5, 10^6} the MIDX index
is built (``samplers.midx``, 32 codewords per half, 10 k-means iterations:
build time measured apart, compilation excluded by a first build on the
same shapes) and each sampler draws m = 512 classes per query (with
replacement, one jitted call for the batch, median of alternated rounds):

  uniform, unigram   static proposals (O(1) per draw; unigram on Zipf counts)
  MIDX-uniform       codeword stages O(K_c d + K_c^2) per query, O(1) per draw
  MIDX-pop           the same, then an O(log K) search per draw
  MIDX-exact         O(K d) per query (scores every residual); only up to
                     ``--exact-max-k`` (default 10^5)

Target (issue 5), printed, never asserted: MIDX-uniform and MIDX-pop time
per query at K = 10^6 at most 3x the time at K = 10^4 (sub-linear in K).
Figures go to ``results/bench_samplers.json`` (``--quick``:
``bench_samplers_quick.json``).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsoftmax import reporting
from jaxsoftmax import samplers

FEATURES, BATCH, NUM_SAMPLES, CODEWORDS, CENTRES = 64, 256, 512, 32, 256
DEFAULT_KS = (10_000, 100_000, 1_000_000)
QUICK_KS = (2_000, 10_000)
TARGET_RATIO = 3.0


def clustered_embeddings(key, num_classes, features):
  """``[d, K]``: K points around ``CENTRES`` Gaussian centres."""
  k_c, k_a, k_n = jax.random.split(key, 3)
  centres = jax.random.normal(k_c, (CENTRES, features))
  which = jax.random.randint(k_a, (num_classes,), 0, CENTRES)
  noise = 0.3 * jax.random.normal(k_n, (num_classes, features))
  return (centres[which] + noise).T


def build_seconds(w, mode, counts):
  """(sampler, build seconds excluding compilation)."""
  kwargs = dict(num_codewords=CODEWORDS, mode=mode, key=jax.random.key(1),
                counts=counts if mode == "pop" else None)
  reporting.block(samplers.midx(w, **kwargs).order)  # compiles
  t0 = time.perf_counter()
  sampler = samplers.midx(w, **kwargs)
  reporting.block((sampler.order, sampler.log_mass))
  return sampler, time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--exact-max-k", type=int, default=100_000)
  args = parser.parse_args()
  ks = QUICK_KS if args.quick else DEFAULT_KS
  load_before = os.getloadavg()
  queries = jax.random.normal(jax.random.key(2), (BATCH, FEATURES))
  draw = jax.jit(lambda s, key: s.sample(key, queries, NUM_SAMPLES))
  print(f"d = {FEATURES}, B = {BATCH} queries, m = {NUM_SAMPLES} draws each,"
        f" K_c = {CODEWORDS}; load average {load_before[0]:.2f}")

  rows, per_query = [], {}
  for k in ks:
    w = clustered_embeddings(jax.random.key(k), k, FEATURES)
    counts = np.floor(1e6 / np.arange(1, k + 1)).astype(np.int64) + 1
    candidates = {"uniform": (samplers.uniform(k), 0.0),
                  "unigram": (samplers.unigram(counts), 0.0)}
    for mode in ("uniform", "pop", "exact"):
      if mode == "exact" and k > args.exact_max_k:
        continue
      candidates[f"midx_{mode}"] = build_seconds(w, mode, counts)
    times = reporting.alternate(
        {name: (lambda s=s: draw(s, jax.random.key(3)))
         for name, (s, _) in candidates.items()},
        repeats=args.repeats)
    for name, (_, build) in candidates.items():
      seconds = reporting.median(times[name])
      per_query.setdefault(name, {})[k] = seconds / BATCH
      rows.append({"K": k, "sampler": name,
                   "us per query": 1e6 * seconds / BATCH,
                   "us per draw": 1e6 * seconds / (BATCH * NUM_SAMPLES),
                   "build s": build if build else "-"})
    print(f"  K = {k}: done", flush=True)

  print()
  print(reporting.format_table(
      rows, ["K", "sampler", "us per query", "us per draw", "build s"]))
  lo, hi = ks[0], ks[-1]
  targets = {}
  for name in ("midx_uniform", "midx_pop"):
    ratio = per_query[name][hi] / per_query[name][lo]
    targets[name] = {"ratio": ratio, "target": TARGET_RATIO,
                     "met": ratio <= TARGET_RATIO}
    print(f"target: {name} time per query at K = {hi} / K = {lo} ="
          f" {ratio:.2f} (<= {TARGET_RATIO:g}): "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}")
  load_after = os.getloadavg()
  print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
  path = reporting.save_results(
      "bench_samplers_quick" if args.quick else "bench_samplers", {
          "config": {"quick": args.quick, "ks": list(ks),
                     "features": FEATURES, "batch": BATCH,
                     "num_samples": NUM_SAMPLES, "num_codewords": CODEWORDS,
                     "load_average_before": load_before,
                     "load_average_after": load_after},
          "rows": rows, "targets": targets,
      })
  print(f"wrote {path}")


if __name__ == "__main__":
  main()

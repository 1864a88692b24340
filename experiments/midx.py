r"""MIDX vs static proposals for sampled softmax on the real large vocabulary.

Command: ``python experiments/midx.py`` (``--quick``: a tiny vocabulary and
budget, a smoke test; the corpus must be fetched once with ``make
data-text``).

Next-word prediction on GCIDE (:func:`jaxsoftmax.data.load_text_corpus`) at
K = 50,000 and the full vocabulary, the context model of
``experiments/large_vocab.py``, trained with sampled softmax (log-q
corrected, accidental hits removed) and five proposals at the same
``--num-samples`` m and the same training-time budget:

  uniform, unigram   static; one candidate set shared by the batch
  MIDX-uniform       ``samplers.midx(mode="uniform")``, one set per row
  MIDX-pop           ``mode="pop"`` (unigram counts^0.75 inside a bucket)
  MIDX-exact         ``mode="exact"``: q = p, O(K d) per query
  ..._shared         (opt-in) MIDX-uniform / MIDX-pop with one set shared
                     by the batch, drawn from the mixture of the rows'
                     proposals (``shared=True``): the static samplers' cheap
                     gather

The MIDX indexes (32 codewords per half) are rebuilt from the current
output embeddings every ``--refresh-every`` steps, inside the budget.

Reported per sampler: held-out **exact** perplexity after the budget (and
before training); on the run's own model, KL(q || p) and KL(p || q)
between its proposal and the model's softmax, at the start and at the end
of training (mean over ``--probe`` held-out contexts), the effective sample
size fraction 1 / sum_k p_k^2 / q_k, and the relative bias and variance of
the sampled-softmax gradient of (w, b) against the exact one
(``jaxsoftmax.diagnostics``, 16 keys); the sampling time per query (m draws,
jitted, median) and the index build time. A second table compares every
proposal **on the same trained model** (the run with the lowest
perplexity), MIDX at each ``--same-model-codewords`` K_c, where the
issue's target lives: MIDX-uniform and MIDX-pop KL(q || p) at least 2x
below uniform's and unigram's. Results go to ``results/midx.json``
(``--quick``: ``results/midx_quick.json``).

Measured on the 2-core CPU machine (load ~2; the README's commands):

  K = 50k, 120 s   uniform 68,570, unigram 462, MIDX-uniform 501, MIDX-pop
                   410 held-out perplexity (3669 / 3758 / 1444 / 1694 steps)
  full K, 60 s     unigram 972, MIDX-uniform 1,124, MIDX-pop 817
  same model KL    uniform 3.17, unigram 1.77, MIDX-uniform 1.76 (K_c 64:
  (q || p), 50k    1.61), MIDX-pop 1.25 (1.17), MIDX-exact 1e-7

MIDX-pop beats both static proposals at equal wall time although a per-row
step costs 2x a shared one (64 vs 32 ms); its KL is 1.41x below unigram's,
short of the 2x target, and stays ~1.5x at K_c = 256 on a model trained
for 60 s: two-level product quantization leaves most of the residual
score x . r_i, and these models' softmax is still close to the unigram.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from jaxsoftmax import diagnostics
from jaxsoftmax import large_vocab as lv
from jaxsoftmax import reporting
from jaxsoftmax import samplers
from jaxsoftmax._optim import make_optimizer
from jaxsoftmax.data import load_text_corpus

SAMPLERS = ("uniform", "unigram", "midx_uniform", "midx_pop", "midx_exact")
# Not run by default: on CPU the cheaper step does not make up for the
# broader mixture proposal (60 s at K = 50k: perplexity 657 and 527 against
# 539 and 481 per row).
SHARED = ("midx_uniform_shared", "midx_pop_shared")
CODEWORDS = 32
GRADIENT_REPEATS = 16


def parse_ks(text: str) -> list[int | None]:
  """``"50000,full"`` -> ``[50000, None]``."""
  return [None if k == "full" else int(k) for k in text.split(",")]


def probe_rows(corpus, n: int):
  """A fixed, seeded set of held-out (context, next word) pairs."""
  rows = np.random.default_rng(1).choice(len(corpus.y_test), n, replace=False)
  return jnp.asarray(corpus.x_test[rows]), jnp.asarray(corpus.y_test[rows])


def proposal(head: lv.LargeSoftmaxHead, name: str, counts, key,
             codewords: int = CODEWORDS):
  """The sampler ``name`` as it stands for ``head``'s current w and b.

  For a ``_shared`` run this is each row's own proposal; the set it trains
  with is drawn from their mixture over the batch.
  """
  w, b = head.w[...].T, head.b[...]  # the head is class-major
  name = name.removesuffix("_shared")
  if name == "uniform":
    return samplers.uniform(w.shape[1])
  if name == "unigram":
    return samplers.unigram(counts)
  mode = name.removeprefix("midx_")
  return samplers.midx(w, num_codewords=min(codewords, w.shape[1]), mode=mode,
                       counts=counts if mode == "pop" else None,
                       b=b, key=key)


def measure(model, head, name, corpus, args, key,
            codewords: int = CODEWORDS) -> dict[str, Any]:
  """KL both ways, ESS and gradient bias of ``name``'s proposal on a model."""
  ids, labels = probe_rows(corpus, args.probe)
  x = model(ids)
  sampler = proposal(head, name, corpus.counts, key, codewords)
  w, b = head.w[...].T, head.b[...]  # the head is class-major
  div = diagnostics.proposal_divergence(sampler, x, w, b)
  ess = diagnostics.importance_ess(sampler, x, w, b)
  rows = slice(0, args.gradient_rows)
  bias = diagnostics.gradient_bias(
      key, sampler, x[rows], w, b, labels[rows],
      num_samples=args.num_samples, num_repeats=GRADIENT_REPEATS)
  return {
      "kl_qp": float(jnp.mean(div.kl_qp)),
      "kl_pq": float(jnp.mean(div.kl_pq)),
      "ess_fraction": float(jnp.mean(ess)),
      "grad_bias": float(bias.relative_bias),
      "grad_bias_noise": float(bias.bias_noise_floor),
      "grad_variance": float(bias.relative_variance),
  }


def same_model_proposals(codewords: str) -> list[tuple[str, int | None]]:
  """Every static proposal, and each MIDX mode at each codebook size."""
  sizes = [int(c) for c in codewords.split(",")]
  return ([("uniform", None), ("unigram", None)]
          + [(f"midx_{mode}", c) for mode in ("uniform", "pop") for c in sizes]
          + [("midx_exact", CODEWORDS)])


def sampling_seconds(sampler, x, num_samples, repeats=5) -> float:
  """Median seconds per query to draw its m candidates, jitted.

  A query-dependent sampler draws a set per row of ``x``; a static one
  draws the batch's one shared set.
  """
  queries = x if sampler.query_dependent else None
  draw = jax.jit(lambda s, key: s.sample(key, queries, num_samples))
  times = reporting.alternate({"draw": lambda: draw(sampler,
                                                    jax.random.key(0))},
                              repeats=repeats)
  return reporting.median(times["draw"]) / x.shape[0]


def run_one(corpus, name: str, args) -> tuple[dict[str, Any], Any, Any]:
  k = corpus.num_classes
  model = lv.ContextModel(k, corpus.x_train.shape[1], args.embed_dim,
                          args.hidden_dim, rngs=nnx.Rngs(args.seed))
  t0 = time.perf_counter()
  head = lv.LargeSoftmaxHead(
      args.hidden_dim, k, method="sampled",
      sampler=name.removesuffix("_shared"),
      shared=True if name.endswith("_shared") else None,
      num_samples=args.num_samples, counts=corpus.counts,
      num_codewords=min(CODEWORDS, k), refresh_every=args.refresh_every,
      rngs=nnx.Rngs(args.seed + 1))
  build = time.perf_counter() - t0
  key = jax.random.key(args.seed + 2)
  start = measure(model, head, name, corpus, args, key)
  history = lv.train(
      (model, head), corpus, key=jax.random.key(args.seed),
      budget_seconds=args.budget_seconds, batch_size=args.batch_size,
      optimizer=make_optimizer("adam", args.learning_rate),
      num_checkpoints=args.checkpoints, eval_examples=args.eval_examples)
  end = measure(model, head, name, corpus, args, key)
  x = model(probe_rows(corpus, args.batch_size)[0])
  per_query = sampling_seconds(head.sampler, x, args.num_samples)
  row = {
      "K": k, "sampler": name, "steps": history.steps[-1],
      "step ms": 1e3 * history.median_step_seconds,
      "ppl start": history.perplexity[0], "ppl": history.perplexity[-1],
      "KL(q||p) start": start["kl_qp"], "KL(q||p)": end["kl_qp"],
      "KL(p||q)": end["kl_pq"], "ESS frac": end["ess_fraction"],
      "grad bias": end["grad_bias"], "bias noise": end["grad_bias_noise"],
      "grad var": end["grad_variance"],
      "us/query": 1e6 * per_query,
      "build s": (history.refresh_seconds / history.refreshes
                  if history.refreshes else build if head.adaptive else 0.0),
      "refreshes": history.refreshes,
      "start": start, "end": end, "history": history.to_dict(),
  }
  return row, model, head


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ks", default="50000,full")
  parser.add_argument("--samplers", default=",".join(SAMPLERS))
  parser.add_argument("--num-samples", type=int, default=128)
  parser.add_argument("--budget-seconds", type=float, default=30.0)
  parser.add_argument("--refresh-every", type=int, default=50)
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--context", type=int, default=4)
  parser.add_argument("--embed-dim", type=int, default=64)
  parser.add_argument("--hidden-dim", type=int, default=128)
  parser.add_argument("--learning-rate", type=float, default=5e-3)
  parser.add_argument("--eval-examples", type=int, default=2048)
  parser.add_argument("--checkpoints", type=int, default=3)
  parser.add_argument("--probe", type=int, default=256,
                      help="held-out contexts for the KL and ESS")
  parser.add_argument("--gradient-rows", type=int, default=64)
  parser.add_argument("--same-model-codewords", default="32,64",
                      help="MIDX codebook sizes K_c compared on the best"
                      " model")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  max_tokens = None
  if args.quick:
    args.ks, args.budget_seconds, args.refresh_every = "300", 0.5, 5
    args.eval_examples, args.checkpoints, args.batch_size = 256, 1, 64
    args.num_samples, args.probe, args.gradient_rows = 32, 64, 16
    args.same_model_codewords = str(CODEWORDS)
    max_tokens = 100_000
  names = args.samplers.split(",")
  unknown = sorted(set(names) - set(SAMPLERS + SHARED))
  if unknown:
    raise SystemExit(f"--samplers: unknown {unknown}; choose from"
                     f" {SAMPLERS + SHARED}.")

  load_before = os.getloadavg()
  t0 = time.perf_counter()
  rows, same_model = [], []
  for vocab_size in parse_ks(args.ks):
    try:
      corpus = load_text_corpus(vocab_size=vocab_size, context=args.context,
                                max_tokens=max_tokens)
    except FileNotFoundError as e:
      raise SystemExit(f"error: {e}") from None
    reference = None
    for name in names:
      row, model, head = run_one(corpus, name, args)
      rows.append(row)
      # The best-trained model: a barely trained one is near uniform, where
      # every proposal looks good.
      if reference is None or row["ppl"] < reference[0]:
        reference = (row["ppl"], name, model, head)
      print(f"K={row['K']:>7,}  {name:13s} steps {row['steps']:5d}"
            f"  ppl {row['ppl']:9.1f}  KL(q||p) {row['KL(q||p)']:.3f}"
            f"  {row['us/query']:8.1f} us/query", flush=True)
    _, reference_name, model, head = reference
    for name, codewords in same_model_proposals(args.same_model_codewords):
      same_model.append({
          "K": corpus.num_classes, "sampler": name, "codewords": codewords,
          "model": reference_name, **measure(
              model, head, name, corpus, args,
              jax.random.key(args.seed + 3), codewords)})
      print(f"  same model: {name:13s} K_c {codewords or '-':>3}  KL(q||p)"
            f" {same_model[-1]['kl_qp']:.3f}", flush=True)
  runtime = time.perf_counter() - t0

  print(f"\nAfter {args.budget_seconds:g} s of training (m = "
        f"{args.num_samples}, batch {args.batch_size}, Adam"
        f" {args.learning_rate:g}); KL, ESS and gradient bias on each run's"
        f" own model at the end ({args.probe} held-out contexts):")
  print(reporting.format_table(rows, [
      "K", "sampler", "steps", "step ms", "ppl start", "ppl",
      "KL(q||p) start", "KL(q||p)", "KL(p||q)", "ESS frac", "grad bias",
      "bias noise", "us/query", "build s", "refreshes"]))
  print("\nEvery proposal on the same trained model (the run with the lowest"
        " perplexity at that K):")
  print(reporting.format_table(same_model, [
      "K", "model", "sampler", "codewords", "kl_qp", "kl_pq", "ess_fraction", "grad_bias",
      "grad_bias_noise"]))
  targets = []
  for k in sorted({r["K"] for r in same_model}):
    # The KL target at the trained K_c (the proposal the runs used).
    kl = {r["sampler"]: r["kl_qp"] for r in same_model
          if r["K"] == k and r["codewords"] in (None, CODEWORDS)}
    ppl = {r["sampler"]: r["ppl"] for r in rows if r["K"] == k}
    for name in ("midx_uniform", "midx_pop") + tuple(
        n for n in SHARED if n in ppl):
      for static in ("uniform", "unigram"):
        target = {"K": k, "sampler": name, "vs": static}
        base = name.removesuffix("_shared")
        if base in kl and static in kl:
          ratio = kl[static] / kl[base]
          target.update({"KL ratio": ratio, "KL met (>= 2)": ratio >= 2})
        if name in ppl and static in ppl:
          target.update({"ppl": ppl[name], "ppl vs": ppl[static],
                         "ppl met": ppl[name] < ppl[static]})
        if len(target) > 3:
          targets.append(target)
  if targets:
    print("\nTargets:")
    print(reporting.format_table(targets, [
        "K", "sampler", "vs", "KL ratio", "KL met (>= 2)", "ppl", "ppl vs",
        "ppl met"]))
  load_after = os.getloadavg()
  print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after;"
        f" {runtime:.0f} s")
  path = reporting.save_results("midx_quick" if args.quick else "midx", {
      "config": {**vars(args), "load_average_before": load_before,
                 "load_average_after": load_after},
      "runtime_seconds": runtime, "rows": rows, "same_model": same_model,
      "targets": targets,
  })
  print(f"wrote {path}")


if __name__ == "__main__":
  main()

r"""Very large K: seven output layers, one wall-clock budget, exact perplexity.

Command: ``python experiments/large_vocab.py`` (``--quick``: a smoke run on a
tiny vocabulary, about 35 s; the corpus must be fetched once with ``make
data-text``; every ``Config`` field is a flag).
Expected: within the budget the hierarchical softmax on a Huffman tree has
the lowest held-out perplexity at every K, then the balanced tree, sampled
softmax with a unigram or log-uniform proposal, and the class-based softmax;
the full softmax gets only a handful of steps; NCE and negative sampling,
scored as a full softmax, end above the uniform K. Measured with
``--budget-seconds 8 --eval-examples 2048 --checkpoints 3`` on 2 cores
shared with other jobs (load average about 9), at K = 10,000 / 50,000 /
109,594: Huffman 220 / 639 / 919, balanced 232 / 746 / 1046, best sampled
254 / 1603 / 4613 (unigram m=512, unigram m=64, unigram m=512), class-based
329 / 1434 / 2447, full 945 / 29,609 / 93,266 after 19 / 6 / 3 steps of
436 / 1499 / 3244 ms; NCE and negative sampling 3e6 to 2.4e7. The Huffman
tree starts near the unigram perplexity (368 / 822 / 1107 before any step:
random node classifiers give class k about 2^-depth(k), its frequency), the
other heads near K, which weighs heavily at this budget. The sampled and
tree heads' step grows linearly with K (Huffman: 24 / 124 / 180 ms): the
dense [d, K] gradient and Adam update, not the loss, dominate their step.
Runtime: that run took 23.6 min; the defaults (10 s budget, 4096 evaluation
rows, 4 checkpoints, 45 runs) should take about 15 min on 2 idle cores
(estimated, not measured: 7.5 min of training plus compilation and
evaluation).

Next-word prediction on the GCIDE dictionary's definitions
(:func:`jaxsoftmax.data.load_text_corpus`, 3.7M training examples, 4 words
of context) at three vocabulary sizes :math:`K`: 10k, 50k and every training
word. The issue asked for 200k; after cleaning, the corpus has 109,594
distinct training words (``<unk>`` and ``<s>`` included), so "full" is
:math:`K` = 109,594. The same context model (embeddings of the 4 previous
words, concatenated, one tanh layer of width 128) is trained with each
output layer of :class:`jaxsoftmax.large_vocab.LargeSoftmaxHead`: the fused
full softmax; sampled softmax with uniform, log-uniform and unigram
proposals at :math:`m` = 64, 512 and 2048 shared candidates; NCE and
negative sampling (unigram\ :sup:`0.75` noise); hierarchical softmax on a
Huffman and on a balanced tree; and the class-based softmax. Every run gets
the same Adam optimizer, batch size, initialization and training-time budget
(``--budget-seconds``; compilation and evaluation are not counted).

Reported per run: the held-out **exact** perplexity (normalized over all
:math:`K` words, on a fixed random subset of ``--eval-examples`` test rows:
for NCE and negative sampling that is the full softmax of their scores,
which they do not train to be normalized), the number of steps and the
median step time, and XLA's temporary memory for the compiled step. The
perplexity-vs-time curves go to ``results/large_vocab.png``, the numbers to
``results/large_vocab.json``. Perplexities at different :math:`K` are not
comparable with each other: a smaller vocabulary folds more words into
``<unk>``.

The class-based head's clusters are frequency bins
(:func:`jaxsoftmax.frequency_clusters`). Its loss gathers, for every row,
the columns of its cluster's members, a ``[d, B, S]`` array for clusters of
at most :math:`S` words; with the default :math:`C = \lceil\sqrt K\rceil`
the rare-word tail cluster has :math:`S` = 11,134 words at the full
:math:`K` (2.8 GiB of XLA temporaries per step, about 5 s a step).
``--num-clusters auto`` (the default) picks :math:`C` from
:math:`\lceil\sqrt K\rceil 2^i` to minimize :math:`C + 8S`, the cost of
the cluster softmax plus the gather, which costs about 8 times as much per
column on this CPU: :math:`C` = 800, 3584 and 5312 at the three K.

References:
  F. Morin, Y. Bengio, "Hierarchical probabilistic neural network language
  model", AISTATS (2005); T. Mikolov et al., "Distributed representations of
  words and phrases and their compositionality", NeurIPS (2013), the Huffman
  tree and negative sampling; S. Jean, K. Cho, R. Memisevic, Y. Bengio, "On
  using very large target vocabulary for neural machine translation", ACL
  (2015), sampled softmax; M. Gutmann, A. Hyvarinen, "Noise-contrastive
  estimation", AISTATS (2010); J. Goodman, "Classes for fast maximum entropy
  training", ICASSP (2001).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import math
from pathlib import Path
import time
from typing import Any

from flax import nnx
import jax
import numpy as np

from jaxsoftmax import large_vocab as lv
from jaxsoftmax import reporting
from jaxsoftmax.losses._class_based import frequency_clusters
from jaxsoftmax.training._optim import make_optimizer
from jaxsoftmax.data import load_text_corpus

import _cli

# The member gather of the class-based loss against one column of the
# cluster softmax, per example (measured at K = 109,594 on a loaded machine:
# C = 2000, S = 1849 takes 1.0 s a step, C = 8000, S = 463 takes 0.42 s).
GATHER_COST = 8


@dataclasses.dataclass(frozen=True)
class Config:
  """The vocabularies, the heads to compare and their shared budget."""

  ks: tuple[str, ...] = dataclasses.field(
      default=("10000", "50000", "full"),
      metadata={"help": "vocabulary sizes; 'full' = every training word"})
  methods: tuple[str, ...] = lv.METHODS
  samplers: tuple[str, ...] = lv.SAMPLERS
  num_samples: tuple[int, ...] = dataclasses.field(
      default=(64, 512, 2048),
      metadata={"help": "sampled-softmax candidate counts m"})
  contrastive_samples: int = dataclasses.field(
      default=512,
      metadata={"help": "noise samples for NCE and negative sampling"})
  budget_seconds: float = dataclasses.field(
      default=10.0,
      metadata={"help": "training time per run (compile and eval excluded)"})
  batch_size: int | None = dataclasses.field(
      default=None, metadata={"help": "rows per step (None: each method's,"
                              " see large_vocab.TRAIN_DEFAULTS)"})
  context: int = 4
  embed_dim: int = 64
  hidden_dim: int = 128
  learning_rate: float | None = dataclasses.field(
      default=None, metadata={"help": "Adam's (None: each method's)"})
  num_clusters: str = dataclasses.field(
      default="auto", metadata={"help": "class-based clusters C, or 'auto'"})
  eval_examples: int = 4096
  checkpoints: int = 4
  max_tokens: int | None = dataclasses.field(
      default=None, metadata={"help": "corpus tokens read (None: all)"})
  seed: int = 0
  quick_mode: bool = False

  def __post_init__(self):
    for name, allowed in (("methods", lv.METHODS), ("samplers", lv.SAMPLERS)):
      unknown = set(getattr(self, name)) - set(allowed)
      if unknown:
        raise ValueError(f"{name}: unknown {sorted(unknown)}; choose from"
                         f" {allowed}")
    if any(k != "full" and not (k.isdigit() and int(k) > 1) for k in self.ks):
      raise ValueError(f"ks must be vocabulary sizes > 1 or 'full', got"
                       f" {self.ks}")
    if not (self.num_clusters == "auto" or self.num_clusters.isdigit()):
      raise ValueError("num_clusters must be a positive integer or 'auto',"
                       f" got {self.num_clusters!r}")
    if not self.budget_seconds > 0:
      raise ValueError(
          f"budget_seconds must be positive, got {self.budget_seconds}")
    _cli.check_positive(self, ("num_samples", "contrastive_samples",
                              "batch_size", "context", "embed_dim",
                              "hidden_dim", "eval_examples", "checkpoints",
                              "max_tokens"))

  def quick(self) -> Config:
    """Tiny K and budget, one sampled configuration."""
    return dataclasses.replace(
        self, ks=("300",), samplers=("log_uniform",), num_samples=(64,),
        contrastive_samples=64, budget_seconds=0.3, eval_examples=256,
        checkpoints=2, batch_size=64, max_tokens=100_000, quick_mode=True)


def auto_num_clusters(counts: np.ndarray) -> int:
  """The ``ceil(sqrt(K)) 2^i`` minimizing ``C + GATHER_COST * S``."""
  k = counts.size
  best = None
  c = math.isqrt(k - 1) + 1
  while c <= k // 2:
    cost = c + GATHER_COST * frequency_clusters(counts, c).max_size
    if best is None or cost < best[0]:
      best = (cost, c)
    c *= 2
  return best[1] if best else max(1, k // 2)


def configurations(config: Config) -> list[tuple[str, str, dict]]:
  """(label, method, head options) for every run at one K."""
  runs = []
  for method in config.methods:
    if method == "sampled":
      for sampler in config.samplers:
        for m in config.num_samples:
          runs.append((f"sampled {sampler} m={m}", method,
                       dict(sampler=sampler, num_samples=m)))
    elif method in ("nce", "negative_sampling"):
      runs.append((f"{method} m={config.contrastive_samples}", method,
                   dict(num_samples=config.contrastive_samples)))
    else:
      runs.append((method, method, {}))
  return runs


def run_one(corpus, label: str, method: str, options: dict,
            config: Config) -> dict[str, Any]:
  k = corpus.num_classes
  if method == "class_based":
    options = dict(options, num_clusters=(
        auto_num_clusters(corpus.counts) if config.num_clusters == "auto"
        else int(config.num_clusters)))
  # The same seeds for every run: identical context models and data order.
  model = lv.ContextModel(k, corpus.x_train.shape[1], config.embed_dim,
                          config.hidden_dim, rngs=nnx.Rngs(config.seed))
  head = lv.LargeSoftmaxHead(config.hidden_dim, k, method=method,
                             counts=corpus.counts,
                             rngs=nnx.Rngs(config.seed + 1), **options)
  history = lv.train(
      (model, head), corpus, key=jax.random.key(config.seed),
      budget_seconds=config.budget_seconds, batch_size=config.batch_size,
      optimizer=(None if config.learning_rate is None
                 else make_optimizer("adam", config.learning_rate)),
      num_checkpoints=config.checkpoints, eval_examples=config.eval_examples)
  return {
      "K": k,
      "method": label,
      "steps": history.steps[-1],
      "step ms": 1e3 * history.median_step_seconds,
      "ppl start": history.perplexity[0],
      "ppl": history.perplexity[-1],
      "temp MiB": history.memory["temp"] / 2**20,
      "options": {key: value for key, value in head.options.items()},
      "history": {key: value for key, value in history.to_dict().items()
                  if key != "step_seconds"},
  }


def plot(rows: list[dict], path) -> None:
  """Perplexity vs training time, one panel per K, clipped at 10 K."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ks = sorted({r["K"] for r in rows})
  fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks) + 3, 4.5),
                           squeeze=False)
  colors = plt.get_cmap("tab20").colors
  for ax, k in zip(axes[0], ks):
    runs = [r for r in rows if r["K"] == k]
    for i, r in enumerate(runs):
      h = r["history"]
      # Dashed: the sampled-softmax grid, so the other six stand out.
      style = "--" if r["method"].startswith("sampled") else "-"
      ax.plot(h["seconds"], h["perplexity"], style, marker="o", markersize=3,
              color=colors[i % len(colors)],
              label=f"{r['method']} ({r['ppl']:.3g})")
    # Above 10 K (ten times worse than uniform) only NCE and negative
    # sampling go; their final values are in the legend.
    ax.axhline(k, color="black", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylim(top=10 * k)
    ax.set_xlabel("training wall time (s, evaluation excluded)")
    ax.set_ylabel("held-out exact perplexity (dotted: uniform = K)")
    ax.set_title(f"K = {k:,}")
    ax.grid(True, which="both", alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1),
                     title=f"method (final perplexity at K = {ks[-1]:,})",
                     title_fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config: Config, workdir: Path | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None
        ) -> dict[str, Any]:
  """One row per (K, head): steps, step time, perplexity, memory, curve.

  ``progress`` sees each row as it is measured; the figure goes to
  ``workdir``.

  Raises:
    FileNotFoundError: the corpus is not cached (``make data-text``).
  """
  t0 = time.perf_counter()
  rows = []
  for k in config.ks:
    corpus = load_text_corpus(vocab_size=None if k == "full" else int(k),
                              context=config.context,
                              max_tokens=config.max_tokens)
    for label, method, options in configurations(config):
      rows.append(run_one(corpus, label, method, options, config))
      if progress is not None:
        progress(rows[-1])
  results = {
      "quick": config.quick_mode,
      "config": dataclasses.asdict(config),
      "runtime_seconds": time.perf_counter() - t0,
      "rows": rows,
  }
  if workdir is not None:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    results["figure"] = str(Path(workdir) / "large_vocab.png")
    plot(rows, results["figure"])
  return results


def print_row(row: dict[str, Any]) -> None:
  print(f"K={row['K']:>7,}  {row['method']:28s} steps {row['steps']:5d}"
        f"  {row['step ms']:8.1f} ms/step  ppl {row['ppl']:10.1f}"
        f"  temp {row['temp MiB']:8.1f} MiB", flush=True)


def report(results: dict[str, Any]) -> None:
  """Prints the perplexity table."""
  config = results["config"]
  print()
  print(f"Held-out exact perplexity after {config['budget_seconds']:g} s of"
        f" training (batch {config['batch_size'] or 'per method'}, Adam"
        f" {config['learning_rate'] or 'per method'},"
        f" {config['eval_examples']} test rows):")
  print(reporting.format_table(results["rows"], [
      "K", "method", "steps", "step ms", "ppl start", "ppl", "temp MiB"]))


def main(argv: list[str] | None = None) -> None:
  config = _cli.parse(Config, argv, description=__doc__.splitlines()[0])
  try:
    results = run(config, reporting.RESULTS_DIR, progress=print_row)
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  report(results)
  path = reporting.save_results("large_vocab", results)
  print(f"\nwrote {path} and {results['figure']} in"
        f" {results['runtime_seconds']:.0f} s")


if __name__ == "__main__":
  main()

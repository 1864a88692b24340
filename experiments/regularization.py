r"""L2, L1 and elastic-net strengths chosen by 5-fold CV; L1 sparsity.

Command: ``python experiments/regularization.py`` (``--quick``: scikit-learn's
digits, a 4-point grid, 5 epochs; seconds; a smoke test; every ``Config``
field is a flag).
Expected: on a 10000-image MNIST training subset the CV loss is flat for
weak penalties and rises past an optimum: cross-validation picks L2 alpha =
1e-2, L1 alpha = 3.2e-4 and elastic-net alpha = 1e-3 (CV loss 0.338-0.339,
CV accuracy 0.904), each with test accuracy 0.910-0.911 on the full
10000-image test set. The share of near-zero weights (``|w| < 1e-3``) climbs
with the L1 strength: 0.016 (no penalty; the init's own small weights),
0.21 at the chosen L1 strength, 0.55 at 1e-3, 0.99 at 0.1 (where the test
accuracy has fallen to 0.33); exact zeros stay at 0 (see below). Measured
runtime: 137 s on 2 CPU cores shared with other jobs (load average 10-12).

For each penalty (L2: ``l1_ratio`` 0; L1: 1; elastic net: 0.5) and each
strength alpha of a log grid, ``l1 = r alpha`` and ``l2 = (1 - r) alpha``
(``model_selection.elastic_net_grid``). ``model_selection.cross_validate``
trains all strengths x folds in one vmapped program (SGD with momentum 0.9,
cosine decay from 0.01, minibatches of 128, the same minibatches for every
strength) and scores the held-out fold by its cross-entropy; the strength
with the lowest mean held-out cross-entropy is chosen. Then every strength
is refitted on the whole subset (``regularization_path``) and scored on the
test set, and its weights are counted:

  exact zeros      the share of weights equal to 0.0;
  |w| < 1e-3       the share below 1e-3 in magnitude: the sparsity reported.

Why both: the L1 gradient here is the subgradient ``l1 * sign(w)`` with
sign(0) = 0, so SGD makes a suppressed weight hover around 0 at a distance of
order ``lr * l1`` instead of landing on it (the cosine decay shrinks that
distance; it does not reach 0). Exact zeros need a proximal
(soft-thresholding) step, which Optax does not provide, and the house does
not hand-write optimizer steps; the thresholded count is what subgradient
training can honestly claim. The standardized constant pixels (exactly 0 in
every image) give their weights no data gradient, so they show the penalty
alone.

Results go to ``results/regularization.json`` and the figure (CV loss, test
accuracy and sparsity against the strength) to ``results/regularization.png``.

References:
  R. Tibshirani, "Regression shrinkage and selection via the lasso", JRSS B
  58 (1996); H. Zou, T. Hastie, "Regularization and variable selection via
  the elastic net", JRSS B 67 (2005); T. Hastie, R. Tibshirani, J. Friedman,
  "The Elements of Statistical Learning", 2nd ed., Springer (2009), section
  7.10 (cross-validation).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoftmax as js
from jaxsoftmax import model_selection as ms
from jaxsoftmax import reporting

import _cli

PENALTIES = {"L2": 0.0, "L1": 1.0, "elastic net (r = 0.5)": 0.5}
SPARSITY_TOL = 1e-3
SEED = 0
DATASETS = ("mnist", "digits")


@dataclasses.dataclass(frozen=True)
class Config:
  """The data subset, the strengths alpha and the CV and training budget."""

  dataset: str = "mnist"
  subset: int = 10_000
  epochs: int = 15
  num_folds: int = 5
  grid: tuple[float, ...] = tuple(np.logspace(-6, -1, 11).tolist())
  quick_mode: bool = False

  def __post_init__(self):
    if self.dataset not in DATASETS:
      raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
    for name in ("subset", "epochs"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
    if self.num_folds < 2:
      raise ValueError(f"num_folds must be at least 2, got {self.num_folds}")
    if not self.grid or min(self.grid) < 0:
      raise ValueError(f"grid must be non-negative strengths, got {self.grid}")

  def quick(self) -> Config:
    """Digits, 4 strengths, 5 epochs: the smoke test."""
    return dataclasses.replace(
        self, dataset="digits", epochs=5,
        grid=tuple(np.logspace(-4, -1, 4).tolist()), quick_mode=True)


def load(dataset: str, subset: int):
  """Standardized train subset and the whole test set, as JAX arrays."""
  data = js.data.load_digits() if dataset == "digits" else js.data.load_mnist()
  rows = np.random.default_rng(SEED).permutation(len(data.y_train))[:subset]
  data = data._replace(x_train=data.x_train[rows], y_train=data.y_train[rows])
  return (*map(jnp.asarray, data.standardized()), data.num_classes)


def sweep_penalty(ratio, grid, train, num_folds, data, start, key):
  """(per-strength rows, CV's choice, seconds) for l1 = ratio alpha."""
  x, y, x_test, y_test = data
  t0 = time.perf_counter()
  l1, l2 = ms.elastic_net_grid(grid, ratio)
  cv = ms.cross_validate(start, x, y, key, train, l1=l1, l2=l2,
                         num_folds=num_folds)
  path = ms.regularization_path(start, x, y, key, train, l1=l1, l2=l2)
  test_loss, test_acc = jax.vmap(ms.evaluate_linear, in_axes=(0, None, None))(
      path, x_test, y_test
  )
  exact = jax.vmap(ms.weight_sparsity)(path)
  near = jax.vmap(lambda p: ms.weight_sparsity(p, tol=SPARSITY_TOL))(path)
  reporting.block((cv, test_acc, exact, near))
  best = int(cv.best)
  rows = [
      {
          "alpha": float(a),
          "l1": float(l1[i]),
          "l2": float(l2[i]),
          "CV loss": float(cv.mean_loss[i]),
          "CV loss std": float(cv.std_loss[i]),
          "CV acc": float(cv.mean_accuracy[i]),
          "test loss": float(test_loss[i]),
          "test acc": float(test_acc[i]),
          "exact zeros": float(exact[i]),
          f"|w|<{SPARSITY_TOL:g}": float(near[i]),
          "chosen": "<-" if i == best else "",
      }
      for i, a in enumerate(grid)
  ]
  return rows, best, time.perf_counter() - t0


def run(config: Config, workdir: Path | None = None) -> dict[str, Any]:
  """Each penalty's CV and test rows and CV's choice; the figure to workdir."""
  train = ms.TrainConfig(
      optimizer="momentum", learning_rate=0.01, schedule="cosine",
      epochs=config.epochs, batch_size=128,
  )
  load_before = os.getloadavg()
  t_start = time.perf_counter()
  x, y, x_test, y_test, num_classes = load(config.dataset, config.subset)
  start = js.linear_init(jax.random.key(SEED), x.shape[1], num_classes)
  grid = np.asarray(config.grid)
  penalties, summary = {}, []
  for penalty, ratio in PENALTIES.items():
    rows, best, seconds = sweep_penalty(
        ratio, grid, train, config.num_folds, (x, y, x_test, y_test), start,
        jax.random.key(SEED + 1))
    penalties[penalty] = {"l1_ratio": ratio, "rows": rows, "chosen": best,
                          "seconds": seconds}
    summary.append({
        "penalty": penalty,
        "chosen alpha": rows[best]["alpha"],
        "l1": rows[best]["l1"],
        "l2": rows[best]["l2"],
        "CV loss": rows[best]["CV loss"],
        "CV acc": rows[best]["CV acc"],
        "test acc": rows[best]["test acc"],
        f"|w|<{SPARSITY_TOL:g}": rows[best][f"|w|<{SPARSITY_TOL:g}"],
        "seconds": seconds,
    })
  results = {
      "config": {
          "quick": config.quick_mode, "dataset": config.dataset,
          "subset": int(x.shape[0]), "test": int(x_test.shape[0]),
          "features": int(x.shape[1]),
          "num_folds": config.num_folds, "grid": grid.tolist(),
          "train": {"optimizer": train.optimizer,
                    "learning_rate": train.learning_rate,
                    "momentum": 0.9, "schedule": train.schedule,
                    "epochs": train.epochs, "batch_size": train.batch_size},
          "selection": "lowest mean held-out cross-entropy",
          "sparsity": f"share of weights with |w| < {SPARSITY_TOL:g} (biases"
                      " excluded); exact zeros reported beside it",
          "load_average_before": load_before,
          "load_average_after": os.getloadavg(),
      },
      "summary": summary,
      "penalties": penalties,
      "seconds": time.perf_counter() - t_start,
  }
  if workdir is not None:
    results["figure"] = str(plot(results, Path(workdir)))
  return results


def plot(results: dict[str, Any], workdir: Path) -> Path:
  """CV loss, test accuracy and sparsity against the strength."""
  config, penalties = results["config"], results["penalties"]
  grid = config["grid"]

  def series(column):
    return {name: (grid, [r[column] for r in res["rows"]])
            for name, res in penalties.items()}

  sparsity = series(f"|w|<{SPARSITY_TOL:g}")
  sparsity["L1, exact zeros"] = (
      grid, [r["exact zeros"] for r in penalties["L1"]["rows"]])
  suffix = "_quick" if config["quick"] else ""
  return ms.plot_panels(
      workdir / f"regularization{suffix}.png",
      [
          ms.Panel(f"{config['num_folds']}-fold CV loss", "strength alpha",
                   "held-out cross-entropy", series("CV loss"), xscale="log",
                   yscale="log"),
          ms.Panel("test accuracy (refit on the subset)", "strength alpha",
                   "accuracy", series("test acc"), xscale="log"),
          ms.Panel(f"sparsity: share of |w| < {SPARSITY_TOL:g}",
                   "strength alpha", "share of weights", sparsity,
                   xscale="log"),
      ],
  )


def report(results: dict[str, Any]) -> None:
  """Prints each penalty's table and CV's choices."""
  config = results["config"]
  print(
      f"{config['dataset']}: {config['subset']} train (subset) /"
      f" {config['test']} test, d = {config['features']};"
      f" {config['num_folds']}-fold CV over {len(config['grid'])} strengths;"
      f" {config['train']}; load average"
      f" {config['load_average_before'][0]:.2f}"
  )
  for penalty, res in results["penalties"].items():
    ratio = res["l1_ratio"]
    print(f"\n{penalty} (l1 = {ratio:g} alpha, l2 = {1 - ratio:g} alpha),"
          f" {res['seconds']:.1f} s:")
    print(reporting.format_table(res["rows"], list(res["rows"][0])))
  print("\nchosen by cross-validation:")
  print(reporting.format_table(results["summary"],
                               list(results["summary"][0])))
  print(f"total {results['seconds']:.1f} s; load average"
        f" {config['load_average_before'][0]:.2f} before,"
        f" {config['load_average_after'][0]:.2f} after")


def main(argv: list[str] | None = None) -> None:
  _cli.main(Config, run, report, "regularization", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
  main()

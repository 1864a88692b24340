r"""Batch size x learning rate on MNIST: where the linear scaling rule holds.

Command: ``python experiments/batch_size.py`` (``--quick``: scikit-learn's
digits, 4 batch sizes, 3 multipliers, 3 epochs; seconds; a smoke test; every
``Config`` field is a flag).
Expected: with the rule's learning rate (eta = 0.05 * B / 64) the training
objective after 5 epochs is 0.260-0.264 and the test accuracy 0.920-0.922
at every B from 16 to 1024, and the best multiplier is m = 1 there: the rule
holds, even at B = 1024 where eta = 0.8 is above the curvature limit
2 / lambda_max = 0.37 measured at the start (the curvature falls once the
predictions sharpen). It breaks at B = 4096 (70 steps in all): the rule's
rate ends at 0.30, m = 4 ends above the start, and m = 1/2 is best; and at
B = 16384 (15 steps) the rule ends at 1.74, m >= 2 diverge, and the best
(m = 1/8) reaches only 0.40: too few steps for any rate. Measured runtime:
145 s on 2 CPU cores shared with other jobs (load average 6-9).

Plain SGD (``optax.sgd``, constant rate) minimizes mean CE + (l2 / 2)
||Theta||^2 with l2 = 1e-4 from the same start for a fixed 5 epochs, so a
batch B takes 5 * 60000 / B steps. For each B the rule's rate
eta_B = eta_0 B / B_0 (B_0 = 64, eta_0 = 0.05, a good rate at B_0) is
multiplied by m in {1/8, ..., 4}; the six rates of one B train together
under ``jax.vmap`` on the same minibatches
(``model_selection.linear_scaling_sweep``).

Why it breaks: k small steps at rate eta move the weights about as far as
one step of k times the batch at k * eta only while the gradient barely
changes over those k steps. Large steps on a curved loss overshoot: gradient
descent on a quadratic diverges once eta > 2 / lambda_max, with lambda_max
the Hessian's largest eigenvalue, printed here at the start (power iteration
with the closed-form Hessian-vector product on 10000 training images). The
bounded cross-entropy gradient keeps such runs finite, so "diverged" means
an objective above the start's. Cells marked ``*`` have eta > 2 /
lambda_max. Results go to ``results/batch_size.json`` and the figure to
``results/batch_size.png``.

References:
  P. Goyal et al., "Accurate, large minibatch SGD: training ImageNet in 1
  hour", arXiv:1706.02677 (2017), the linear scaling rule; Y. LeCun,
  L. Bottou, G. B. Orr, K.-R. Mueller, "Efficient BackProp", Neural Networks:
  Tricks of the Trade, Springer (1998), the 2 / lambda_max limit.
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

DATASETS = ("mnist", "digits")


@dataclasses.dataclass(frozen=True)
class Config:
  """The batch size x multiplier grid around the rule eta_0 B / B_0."""

  dataset: str = "mnist"
  epochs: int = 5
  l2: float = 1e-4
  base_batch_size: int = 64
  base_learning_rate: float = 0.05
  batch_sizes: tuple[int, ...] = (16, 64, 256, 1024, 4096, 16384)
  multipliers: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
  curvature_rows: int = 10_000
  quick_mode: bool = False

  def __post_init__(self):
    if self.dataset not in DATASETS:
      raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
    for name in ("epochs", "base_batch_size", "curvature_rows"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
    if not self.batch_sizes or min(self.batch_sizes) < 1:
      raise ValueError("batch_sizes must be positive integers, got"
                       f" {self.batch_sizes}")
    if 1.0 not in self.multipliers or min(self.multipliers) <= 0:
      raise ValueError("multipliers must be positive and include 1 (the rule"
                       f" itself), got {self.multipliers}")
    if self.l2 < 0 or self.base_learning_rate <= 0:
      raise ValueError("l2 must be >= 0 and base_learning_rate > 0, got"
                       f" {self.l2} and {self.base_learning_rate}")

  def quick(self) -> Config:
    """Digits, 4 batch sizes, 3 multipliers, 3 epochs: the smoke test."""
    return dataclasses.replace(
        self, dataset="digits", epochs=3, batch_sizes=(16, 64, 256, 1024),
        multipliers=(0.5, 1.0, 2.0), quick_mode=True)


def load(dataset: str):
  """Standardized train and test arrays, and the number of classes."""
  data = js.data.load_digits() if dataset == "digits" else js.data.load_mnist()
  return (*map(jnp.asarray, data.standardized()), data.num_classes)


def grid_table(sweep, values, fmt, *, epochs, num_train, limit):
  """One row per batch size: ``fmt`` of each multiplier's value, best m."""
  multipliers = list(sweep.multipliers)
  out = []
  for i, b in enumerate(sweep.batch_sizes):
    row = {"B": int(b), "steps": epochs * (num_train // int(b)),
           "rule eta": float(sweep.learning_rates[i, multipliers.index(1.0)])}
    for j, m in enumerate(multipliers):
      mark = "*" if sweep.learning_rates[i, j] > limit else ""
      row[f"m={m:g}"] = fmt(values[i, j]) + mark
    best = int(np.nanargmin(np.where(
        np.isfinite(sweep.train_loss[i]), sweep.train_loss[i], np.nan)))
    row["best m"] = f"{multipliers[best]:g}"
    out.append(row)
  return out


def run(config: Config, workdir: Path | None = None) -> dict[str, Any]:
  """Trains the grid; returns its objectives, accuracies and lambda_max.

  The figure goes to ``workdir`` when given.
  """
  train = ms.TrainConfig(
      optimizer="sgd", learning_rate=config.base_learning_rate,
      schedule="constant", epochs=config.epochs,
      batch_size=config.base_batch_size,
  )
  load_before = os.getloadavg()
  t_start = time.perf_counter()
  x, y, x_test, y_test, num_classes = load(config.dataset)
  batch_sizes = tuple(b for b in config.batch_sizes if b <= x.shape[0])
  params = js.linear_init(jax.random.key(0), x.shape[1], num_classes)
  start = float(js.softmax_regression_loss(params, x, y, l2=config.l2))
  rows = np.random.default_rng(0).permutation(x.shape[0])[:config.curvature_rows]
  lam_max = float(ms.hessian_top_eigenvalue(
      params, x[rows], y[rows], jax.random.key(1), l2=config.l2, iterations=50
  ))
  limit = 2.0 / lam_max
  sweep = ms.linear_scaling_sweep(
      params, x, y, jax.random.key(2), train, batch_sizes=batch_sizes,
      multipliers=config.multipliers, eval_data=(x_test, y_test),
      l2=config.l2,
  )
  table = lambda values, fmt: grid_table(  # noqa: E731
      sweep, values, fmt, epochs=config.epochs, num_train=x.shape[0],
      limit=limit)
  objective_table = table(sweep.train_loss, lambda v: (
      "diverged" if not np.isfinite(v) or v > start else f"{v:.4f}"))
  accuracy_table = table(sweep.test_accuracy, lambda v: f"{v:.4f}")
  results = {
      "config": {
          "quick": config.quick_mode, "dataset": config.dataset,
          "epochs": config.epochs, "l2": config.l2,
          "optimizer": "sgd (constant rate)",
          "base_batch_size": config.base_batch_size,
          "base_learning_rate": config.base_learning_rate,
          "batch_sizes": [int(b) for b in sweep.batch_sizes],
          "multipliers": list(config.multipliers),
          "load_average_before": load_before,
          "load_average_after": os.getloadavg(),
      },
      "num_train": int(x.shape[0]),
      "num_test": int(x_test.shape[0]),
      "start_objective": start,
      "hessian_lambda_max": lam_max,
      "stability_limit": limit,
      "learning_rates": sweep.learning_rates.tolist(),
      "train_objective": sweep.train_loss.tolist(),
      "test_loss": sweep.test_loss.tolist(),
      "test_accuracy": sweep.test_accuracy.tolist(),
      "seconds_per_batch_size": sweep.seconds.tolist(),
      "tables": {"objective": objective_table, "accuracy": accuracy_table},
      "seconds": time.perf_counter() - t_start,
  }
  if workdir is not None:
    results["figure"] = str(plot(results, Path(workdir)))
  return results


def plot(results: dict[str, Any], workdir: Path) -> Path:
  """Objective and test accuracy against B, one curve per multiplier."""
  config = results["config"]
  b_list = config["batch_sizes"]
  # Diverged runs are off the scale of interest; leave them out of the plot.
  objective = np.asarray(results["train_objective"])
  capped = np.where(objective > results["start_objective"], np.nan, objective)
  accuracy = np.asarray(results["test_accuracy"])
  suffix = "_quick" if config["quick"] else ""
  multipliers = config["multipliers"]
  return ms.plot_panels(
      workdir / f"batch_size{suffix}.png",
      [
          ms.Panel("final training objective", "batch size B",
                   "objective (diverged runs omitted)",
                   {f"eta = {m:g} x rule": (b_list, capped[:, j].tolist())
                    for j, m in enumerate(multipliers)},
                   xscale="log", yscale="log"),
          ms.Panel("test accuracy", "batch size B", "accuracy",
                   {f"eta = {m:g} x rule": (b_list, accuracy[:, j].tolist())
                    for j, m in enumerate(multipliers)},
                   xscale="log"),
      ],
      title=(f"SGD, {config['epochs']} epochs, rule eta ="
             f" {config['base_learning_rate']:g} B /"
             f" {config['base_batch_size']}; 2 / lambda_max ="
             f" {results['stability_limit']:.3f}"),
  )


def report(results: dict[str, Any]) -> None:
  """Prints the grid's two tables and the timings."""
  config = results["config"]
  print(
      f"{config['dataset']}: {results['num_train']} train /"
      f" {results['num_test']} test; SGD, {config['epochs']} epochs, l2 ="
      f" {config['l2']:g}; rule eta = {config['base_learning_rate']:g} * B /"
      f" {config['base_batch_size']}; load average"
      f" {config['load_average_before'][0]:.2f}"
  )
  print(f"start objective {results['start_objective']:.4f}; lambda_max of the"
        f" Hessian at the start {results['hessian_lambda_max']:.3f}, so 2 /"
        f" lambda_max = {results['stability_limit']:.3f}")
  columns = ["B", "steps", "rule eta",
             *[f"m={m:g}" for m in config["multipliers"]], "best m"]
  print("\nfinal training objective (m = multiplier of the rule's rate;"
        " * = eta above 2 / lambda_max; best m by objective):")
  print(reporting.format_table(results["tables"]["objective"], columns))
  print("\ntest accuracy:")
  print(reporting.format_table(results["tables"]["accuracy"], columns))
  print("per batch size (s, compile included): "
        + ", ".join(f"B={b}: {s:.1f}" for b, s in
                    zip(config["batch_sizes"],
                        results["seconds_per_batch_size"])))
  print(f"total {results['seconds']:.1f} s; load average"
        f" {config['load_average_before'][0]:.2f} before,"
        f" {config['load_average_after'][0]:.2f} after")


def main(argv: list[str] | None = None) -> None:
  _cli.main(Config, run, report, "batch_size", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
  main()

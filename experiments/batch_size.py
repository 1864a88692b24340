r"""Batch size x learning rate on MNIST: where the linear scaling rule holds.

Command: ``python experiments/batch_size.py`` (``--quick``: scikit-learn's
digits, 4 batch sizes, 3 epochs; seconds; a smoke test).
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
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoftmax as js
from jaxsoftmax import model_selection as ms
from jaxsoftmax import reporting

L2 = 1e-4
BASE_BATCH, BASE_LR = 64, 0.05
BATCH_SIZES = (16, 64, 256, 1024, 4096, 16384)
MULTIPLIERS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
QUICK_BATCH_SIZES = (16, 64, 256, 1024)
QUICK_MULTIPLIERS = (0.5, 1.0, 2.0)
CURVATURE_ROWS = 10_000


def load(quick: bool):
  """Standardized train and test arrays, and the number of classes."""
  data = js.data.load_digits() if quick else js.data.load_mnist()
  return (*map(jnp.asarray, data.standardized()), data.num_classes)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--epochs", type=int, help="epochs per run (5)")
  args = parser.parse_args()
  batch_sizes = QUICK_BATCH_SIZES if args.quick else BATCH_SIZES
  multipliers = QUICK_MULTIPLIERS if args.quick else MULTIPLIERS
  config = ms.TrainConfig(
      optimizer="sgd", learning_rate=BASE_LR, schedule="constant",
      epochs=args.epochs or (3 if args.quick else 5), batch_size=BASE_BATCH,
  )

  load_before = os.getloadavg()
  t_start = time.perf_counter()
  x, y, x_test, y_test, num_classes = load(args.quick)
  batch_sizes = tuple(b for b in batch_sizes if b <= x.shape[0])
  print(
      f"{'digits' if args.quick else 'MNIST'}: {x.shape[0]} train /"
      f" {x_test.shape[0]} test; SGD, {config.epochs} epochs, l2 = {L2:g};"
      f" rule eta = {BASE_LR:g} * B / {BASE_BATCH}; load average"
      f" {load_before[0]:.2f}"
  )
  params = js.linear_init(jax.random.key(0), x.shape[1], num_classes)
  start = float(js.softmax_regression_loss(params, x, y, l2=L2))
  rows = np.random.default_rng(0).permutation(x.shape[0])[:CURVATURE_ROWS]
  lam_max = float(ms.hessian_top_eigenvalue(
      params, x[rows], y[rows], jax.random.key(1), l2=L2, iterations=50
  ))
  limit = 2.0 / lam_max
  print(f"start objective {start:.4f}; lambda_max of the Hessian at the"
        f" start {lam_max:.3f}, so 2 / lambda_max = {limit:.3f}")

  sweep = ms.linear_scaling_sweep(
      params, x, y, jax.random.key(2), config, batch_sizes=batch_sizes,
      multipliers=multipliers, eval_data=(x_test, y_test), l2=L2,
  )

  def grid_table(values, fmt):
    out = []
    for i, b in enumerate(sweep.batch_sizes):
      row = {"B": int(b), "steps": config.epochs * (x.shape[0] // int(b)),
             "rule eta": float(sweep.learning_rates[i, multipliers.index(1.0)])}
      for j, m in enumerate(multipliers):
        mark = "*" if sweep.learning_rates[i, j] > limit else ""
        row[f"m={m:g}"] = fmt(values[i, j]) + mark
      best = int(np.nanargmin(np.where(
          np.isfinite(sweep.train_loss[i]), sweep.train_loss[i], np.nan)))
      row["best m"] = f"{multipliers[best]:g}"
      out.append(row)
    return out

  columns = ["B", "steps", "rule eta", *[f"m={m:g}" for m in multipliers],
             "best m"]
  objective_fmt = lambda v: (  # noqa: E731
      "diverged" if not np.isfinite(v) or v > start else f"{v:.4f}")
  objective_table = grid_table(sweep.train_loss, objective_fmt)
  accuracy_table = grid_table(sweep.test_accuracy, lambda v: f"{v:.4f}")
  print("\nfinal training objective (m = multiplier of the rule's rate;"
        " * = eta above 2 / lambda_max; best m by objective):")
  print(reporting.format_table(objective_table, columns))
  print("\ntest accuracy:")
  print(reporting.format_table(accuracy_table, columns))
  total = time.perf_counter() - t_start
  load_after = os.getloadavg()
  print(f"per batch size (s, compile included): "
        + ", ".join(f"B={b}: {s:.1f}" for b, s in
                    zip(sweep.batch_sizes, sweep.seconds)))
  print(f"total {total:.1f} s; load average {load_before[0]:.2f} before,"
        f" {load_after[0]:.2f} after")

  suffix = "_quick" if args.quick else ""
  b_list = [int(b) for b in sweep.batch_sizes]
  # Diverged runs are off the scale of interest; leave them out of the plot.
  capped = np.where(sweep.train_loss > start, np.nan, sweep.train_loss)
  figure = ms.plot_panels(
      reporting.RESULTS_DIR / f"batch_size{suffix}.png",
      [
          ms.Panel("final training objective", "batch size B",
                   "objective (diverged runs omitted)",
                   {f"eta = {m:g} x rule": (b_list, capped[:, j].tolist())
                    for j, m in enumerate(multipliers)},
                   xscale="log", yscale="log"),
          ms.Panel("test accuracy", "batch size B", "accuracy",
                   {f"eta = {m:g} x rule":
                    (b_list, sweep.test_accuracy[:, j].tolist())
                    for j, m in enumerate(multipliers)},
                   xscale="log"),
      ],
      title=(f"SGD, {config.epochs} epochs, rule eta = {BASE_LR:g} B /"
             f" {BASE_BATCH}; 2 / lambda_max = {limit:.3f}"),
  )
  path = reporting.save_results(f"batch_size{suffix}", {
      "config": {
          "quick": args.quick, "epochs": config.epochs, "l2": L2,
          "optimizer": "sgd (constant rate)", "base_batch_size": BASE_BATCH,
          "base_learning_rate": BASE_LR, "batch_sizes": b_list,
          "multipliers": list(multipliers),
          "load_average_before": load_before,
          "load_average_after": load_after,
      },
      "start_objective": start,
      "hessian_lambda_max": lam_max,
      "stability_limit": limit,
      "learning_rates": sweep.learning_rates.tolist(),
      "train_objective": sweep.train_loss.tolist(),
      "test_loss": sweep.test_loss.tolist(),
      "test_accuracy": sweep.test_accuracy.tolist(),
      "seconds_per_batch_size": sweep.seconds.tolist(),
      "tables": {"objective": objective_table, "accuracy": accuracy_table},
      "seconds": total,
  })
  print(f"wrote {path} and {figure}")


if __name__ == "__main__":
  main()

"""Serving costs of softmax regression and an MLP: latency, throughput, size.

Command: ``python benchmarks/bench_inference.py``. A smoke test:
``python benchmarks/bench_inference.py --quick``.

The production questions of the "training multinomial logistic regression at
scale" chapter, answered for two MNIST-shaped models (784 float32 features,
10 classes): softmax regression (784 -> 10, 7850 parameters) and a ReLU MLP
(784 -> 256 -> 10, 203530 parameters).

* **Latency**: ``jaxsoftmax.predict`` called as a user calls it (argument
  checks in Python, then the jitted argmax of the logits), blocked on, for 1
  and for 100 samples already on the device: P50 and P99 over many calls
  after a warm-up, the four (model, size) cases timed in alternation. Beside
  it, the floor: the same computation as one bare ``jax.jit`` function with no
  checks. Latency and throughput do not depend on the parameter values, so
  these rows use random parameters (``linear_init`` / ``mlp_init``) and random
  normal inputs.
* **Throughput**: ``predict`` on one batch of 10000 samples, median of
  alternated repeats, in samples per second.
* **Model size**: the bytes of the ``.npz`` file ``save_params`` writes with
  float32, float16 and bfloat16 storage.
* **Accuracy after 16-bit storage**: a model trained briefly on real MNIST
  (``fit``, Adam at 1e-3, batches of 128, as many epochs as reach
  ``MIN_STEPS`` steps: one epoch on 55000 standardized images;
  scikit-learn's digits when MNIST is not cached, which the output says) is
  saved in each storage dtype, loaded back, cast to float32 and evaluated on
  the test set: test accuracy, its change from float32 storage, and the share
  of test predictions that changed. ``--quick`` trains on 2000 MNIST images
  for 27 epochs (digits: all 1437 training images, 37 epochs) and reaches a test accuracy of about 0.86
  (MNIST) and 0.89 (digits) for softmax regression, 0.89 and 0.97 for the
  MLP.

Measured on this shared 2-core machine at load average 9 (other jobs
running, so every figure here is slower than on an idle machine; compare
within one run): P50 latency of ``predict`` about 470 us at 1 sample for both
models, of which the bare jitted call is 150-180 us (the rest is the Python
argument checks and dispatch); throughput about 230k samples/s (softmax
regression) and 38k samples/s (MLP); float16 or bfloat16 storage halves the
files (31.7 -> 16.3 KiB, 797 -> 399 KiB) and moves test accuracy by at most
0.01 points (bfloat16 changes 1 and 3 of 10000 predictions, float16 none).
Runtime about 85 s wall at that load (``--quick``: about 25 s of CPU time,
mostly compilation).

Figures go to ``results/bench_inference.json`` (``--quick``:
``results/bench_inference_quick.json``, so a smoke test never overwrites a
real run); ``JAXSOFTMAX_RESULTS`` moves the folder.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoftmax as js
from jaxsoftmax import metrics
from jaxsoftmax import reporting

NUM_FEATURES = 784
NUM_CLASSES = 10
HIDDEN = 256
MODELS = {
    "softmax regression": (js.linear_logits, js.softmax_regression_loss),
    "MLP 784-256-10": (js.mlp_logits, js.mlp_loss),
}
STORAGE = {"float32": jnp.float32, "float16": jnp.float16,
           "bfloat16": jnp.bfloat16}
BATCH_SIZE = 128
# A step budget rather than an epoch count, so a small training set (the
# quick subset, or digits when MNIST is missing) is not left at a dozen
# steps and chance accuracy; one epoch of MNIST's 55000 images already
# takes 429 steps.
MIN_STEPS = 400


def init(model: str, key: jax.Array, num_features: int) -> Any:
  if model == "softmax regression":
    return js.linear_init(key, num_features, NUM_CLASSES)
  return js.mlp_init(key, [num_features, HIDDEN, NUM_CLASSES])


def percentile_us(times: list[float], q: float) -> float:
  return float(np.percentile(times, q)) * 1e6


def latency_and_throughput(
    calls: int, repeats: int, batch: int
) -> list[dict[str, Any]]:
  """P50 / P99 latency at 1 and 100 samples and throughput, per model."""
  key = jax.random.key(0)
  rows = []
  fns = {}
  for i, (model, (logits_fn, _)) in enumerate(MODELS.items()):
    params = init(model, jax.random.fold_in(key, i), NUM_FEATURES)
    bare = jax.jit(lambda p, x, f=logits_fn: jnp.argmax(f(p, x), axis=-1))
    for n in (1, 100):
      x = jax.random.normal(jax.random.fold_in(key, 100 + n), (n, NUM_FEATURES))
      fns[(model, n, "predict")] = (
          lambda p=params, x=x, f=logits_fn: js.predict(p, x, logits_fn=f))
      fns[(model, n, "bare jit")] = lambda p=params, x=x, g=bare: g(p, x)
    xb = jax.random.normal(jax.random.fold_in(key, 7), (batch, NUM_FEATURES))
    fns[(model, batch, "throughput")] = (
        lambda p=params, x=xb, f=logits_fn: js.predict(p, x, logits_fn=f))

  latency = {k: f for k, f in fns.items() if k[2] != "throughput"}
  times = reporting.alternate(latency, repeats=calls, warmup=20)
  bulk = {k: f for k, f in fns.items() if k[2] == "throughput"}
  bulk_times = reporting.alternate(bulk, repeats=repeats, warmup=2)
  for model in MODELS:
    for n in (1, 100):
      for how in ("predict", "bare jit"):
        t = times[(model, n, how)]
        rows.append({
            "model": model, "call": how, "samples": n,
            "p50_us": percentile_us(t, 50), "p99_us": percentile_us(t, 99),
            "calls": len(t),
        })
    seconds = reporting.median(bulk_times[(model, batch, "throughput")])
    rows.append({
        "model": model, "call": "predict", "samples": batch,
        "p50_us": seconds * 1e6, "samples_per_s": batch / seconds,
        "calls": repeats,
    })
  return rows


def trained_models(quick: bool) -> tuple[str, int, dict[str, Any], tuple]:
  """A briefly trained copy of each model and the test split to score it on.

  Returns the dataset's name, the number of epochs trained, the trained
  params per model and ``(x_test, y_test)``.
  """
  try:
    data = js.data.load_mnist()
    dataset = "MNIST"
    n = len(data.y_train) - 5000
  except FileNotFoundError:
    data = js.data.load_digits()
    dataset = "digits (MNIST is not cached: `make data`)"
    n = len(data.y_train)
  x_train, y_train = data.x_train[:n], data.y_train[:n]
  x_test, y_test = data.x_test, data.y_test
  if quick:
    x_train, y_train = x_train[:2000], y_train[:2000]
    x_test, y_test = x_test[:1000], y_test[:1000]
  x_train, x_test = js.data.standardize(x_train, x_test)
  optimizer = js.make_optimizer("adam", 1e-3)
  epochs = math.ceil(MIN_STEPS / (len(y_train) // BATCH_SIZE))
  trained = {}
  for i, (model, (_, loss_fn)) in enumerate(MODELS.items()):
    params = init(model, jax.random.key(10 + i), x_train.shape[1])
    trained[model], _ = js.fit(
        loss_fn, params, (x_train, y_train), optimizer=optimizer, epochs=epochs,
        batch_size=BATCH_SIZE, key=jax.random.key(20 + i),
    )
  return dataset, epochs, trained, (x_test, y_test)


def storage_rows(quick: bool) -> tuple[str, int, list[dict[str, Any]]]:
  """File size per storage dtype, and the accuracy of the reloaded weights."""
  dataset, epochs, trained, (x_test, y_test) = trained_models(quick)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for i, (model, (logits_fn, _)) in enumerate(MODELS.items()):
      shaped = init(model, jax.random.key(i), NUM_FEATURES)
      reference = None
      for name, dtype in STORAGE.items():
        size = js.save_params(os.path.join(tmp, "shaped.npz"), shaped,
                              dtype=dtype)
        path = os.path.join(tmp, f"trained_{name}.npz")
        js.save_params(path, trained[model], dtype=dtype)
        params = jax.tree.map(lambda a: a.astype(jnp.float32),
                              js.load_params(path))
        predictions = js.predict(params, x_test, logits_fn=logits_fn)
        accuracy = float(metrics.accuracy(logits_fn(params, x_test), y_test))
        if reference is None:
          reference = (predictions, accuracy)
        rows.append({
            "model": model, "storage": name, "file_bytes": size,
            "file": reporting.format_bytes(size),
            "test_accuracy": accuracy,
            "accuracy_change_points": 100 * (accuracy - reference[1]),
            "predictions_changed": float(jnp.mean(predictions != reference[0])),
        })
  return dataset, epochs, rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="few calls and a tiny training set (smoke test)")
  args = parser.parse_args()
  calls, repeats, batch = (50, 3, 1000) if args.quick else (2000, 15, 10000)
  load_start = os.getloadavg()

  speed = latency_and_throughput(calls, repeats, batch)
  print(f"Latency (us) and throughput; random parameters, float32, "
        f"{calls} alternated calls per row")
  print(reporting.format_table(
      speed, ["model", "call", "samples", "p50_us", "p99_us", "samples_per_s"]))

  dataset, epochs, storage = storage_rows(args.quick)
  print(f"\nModel size and accuracy after 16-bit storage (trained {epochs}"
        f" epoch{'s' * (epochs > 1)} on {dataset})")
  print(reporting.format_table(
      storage, ["model", "storage", "file", "test_accuracy",
                "accuracy_change_points", "predictions_changed"]))
  load_end = os.getloadavg()
  print(f"\nload average (1 min) {load_start[0]:.2f} at start,"
        f" {load_end[0]:.2f} at end on {os.cpu_count()} CPUs")

  name = "bench_inference_quick" if args.quick else "bench_inference"
  path = reporting.save_results(name, {
      "config": {"quick": args.quick, "calls": calls, "repeats": repeats,
                 "throughput_batch": batch, "hidden": HIDDEN,
                 "parameters": "random for latency / throughput"},
      "latency_throughput": speed,
      "storage_dataset": dataset,
      "storage_epochs": epochs,
      "storage": storage,
      "load_average": {"start": load_start, "end": load_end},
  })
  print(f"wrote {path}")


if __name__ == "__main__":
  main()

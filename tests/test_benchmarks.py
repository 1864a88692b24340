"""Smoke tests for benchmarks/: each script runs end to end in --quick mode.

Only that they run, agree with their anchors (the scripts check that
themselves and exit non-zero otherwise) and write their JSON; speed is never
asserted in tests.
"""

import json
import os
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, results_dir: Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAXSOFTMAX_RESULTS": str(results_dir)}
  return subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_bench_loss_quick_runs_and_writes_results(tmp_path):
  proc = run_quick("bench_loss.py", tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "manual VJP" in proc.stdout and "optax + jax.grad" in proc.stdout

  data = json.loads((tmp_path / "bench_loss_quick.json").read_text())
  assert {"name", "machine", "config", "gemm_roofline", "results",
          "targets"} <= set(data)
  assert data["config"]["quick"] is True
  assert data["gemm_roofline"]["gflops"] > 0
  assert len(data["results"]) == len(data["config"]["sizes"]) >= 1
  for res in data["results"]:
    assert {"batch", "features", "classes", "flops_per_step", "repeats",
            "max_relative_error_vs_optax", "rows"} <= set(res)
    assert res["flops_per_step"] == (
        6 * res["batch"] * res["features"] * res["classes"]
    )
    assert set(res["rows"]) == {
        "manual_vjp", "optax", "plain_autodiff", "gemm_only"
    }
    for row in res["rows"].values():
      assert {"median_ms", "gflops", "roofline_fraction",
              "time_ratio_to_optax", "memory", "temp_ratio_to_optax"} <= set(row)
      assert row["median_ms"] > 0
      assert {"argument", "output", "temp", "total"} <= set(row["memory"])
  assert {"manual_not_slower_than_optax", "roofline_at_k"} <= set(
      data["targets"]
  )


def test_bench_inference_quick_runs_and_writes_results(tmp_path):
  proc = run_quick("bench_inference.py", tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "p99_us" in proc.stdout and "bfloat16" in proc.stdout

  data = json.loads((tmp_path / "bench_inference_quick.json").read_text())
  assert data["config"]["quick"] is True
  rows = data["latency_throughput"]
  models = {r["model"] for r in rows}
  assert len(models) == 2
  for model in models:
    cases = {(r["call"], r["samples"]) for r in rows if r["model"] == model}
    assert {("predict", 1), ("predict", 100), ("bare jit", 1),
            ("bare jit", 100)} <= cases
  for r in rows:
    assert r["p50_us"] > 0
    if "p99_us" in r:
      assert r["p99_us"] >= r["p50_us"]
    else:
      assert r["samples_per_s"] > 0

  storage = data["storage"]
  for model in models:
    sizes = {r["storage"]: r for r in storage if r["model"] == model}
    assert set(sizes) == {"float32", "float16", "bfloat16"}
    # Half the bytes per weight; the container overhead is small.
    for half in ("float16", "bfloat16"):
      ratio = sizes[half]["file_bytes"] / sizes["float32"]["file_bytes"]
      assert 0.5 < ratio < 0.6, (model, half, ratio)
      # 16-bit rounding moves a logit by ~0.1-0.4%: few predictions flip.
      assert sizes[half]["predictions_changed"] < 0.02
    assert sizes["float32"]["accuracy_change_points"] == 0
    # About 0.86-0.96 after the quick run's 400 steps on MNIST or digits;
    # chance is 0.1, and a too-short training run (one epoch of digits is
    # 11 steps) lands near it.
    assert sizes["float32"]["test_accuracy"] > 0.8, (
        model, data["storage_dataset"], sizes["float32"]["test_accuracy"])


def test_bench_sklearn_quick_runs_and_writes_results(tmp_path):
  proc = run_quick("bench_sklearn.py", tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  data = json.loads((tmp_path / "bench_sklearn_quick.json").read_text())
  assert data["config"]["quick"] is True
  solvers = [row["solver"] for row in data["rows"]]
  assert solvers == [
      "scikit-learn lbfgs, 1 thread", "scikit-learn lbfgs, 2 threads",
      "jaxsoftmax lbfgs_solve, tol 0.0001", "jaxsoftmax lbfgs_solve, tol 0.001",
      "jaxsoftmax newton_solve",
  ]
  for row in data["rows"]:
    assert row["converged"], row
    assert row["median s"] > 0
    assert row["test accuracy"] > 0.9
  # The same objective, minimized by both: the JAX solvers end no higher
  # than scikit-learn (up to the target's tolerance).
  assert data["targets"]["objective_within"]["met"]
  assert data["targets"]["row"].startswith("jaxsoftmax lbfgs_solve")
  assert {"speedup", "objective_within"} <= set(data["targets"])


def test_bench_samplers_quick_runs_and_writes_results(tmp_path):
  proc = run_quick("bench_samplers.py", tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  data = json.loads((tmp_path / "bench_samplers_quick.json").read_text())
  names = {row["sampler"] for row in data["rows"]}
  assert names == {"uniform", "unigram", "midx_uniform", "midx_pop",
                   "midx_exact"}
  assert all(row["us per query"] > 0 for row in data["rows"])
  assert set(data["targets"]) == {"midx_uniform", "midx_pop"}


def test_bench_large_k_quick_runs_and_writes_results(tmp_path):
  proc = run_quick("bench_large_k.py", tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  data = json.loads((tmp_path / "bench_large_k_quick.json").read_text())
  assert data["roofline_gflops"] > 0 and len(data["results"]) >= 1
  for res in data["results"]:
    rows = res["rows"]
    assert set(rows) == {"optax", "fused", "sampled", "hierarchical"}
    for name, row in rows.items():
      assert row["median_ms"] > 0, name
      assert row["memory"]["temp"] > 0, name
    assert rows["optax"]["time_ratio_to_optax"] == 1.0
  # Each target line carries its verdict; quick sizes need not meet them.
  assert data["targets"] and all(
      ": met" in t or ": NOT met" in t for t in data["targets"]), data


def test_bench_sharded_quick_runs_and_writes_results(tmp_path):
  proc = run_quick("bench_sharded.py", tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  data = json.loads((tmp_path / "bench_sharded_quick.json").read_text())
  assert data["measured_equals_analytic"] is True
  for res in data["results"]:
    methods = res["methods"]
    assert {"vocab_parallel", "vocab_parallel_smoothing",
            "all_gather"} <= set(methods)
    for name, m in methods.items():
      assert m["measured_bytes"] == m["analytic_bytes"] > 0, name
    # The point of the vocab-parallel loss: far fewer bytes than the logits.
    assert methods["all_gather"]["bytes_ratio_to_vocab_parallel"] > 10

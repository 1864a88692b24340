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

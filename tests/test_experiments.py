"""Smoke tests: each experiment script runs end to end in its --quick mode.

The scripts run in a subprocess, as a user would run them, with their results
directed to a temporary directory through ``JAXSOFTMAX_RESULTS``.
"""

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
import subprocess
import sys

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run_experiment(name, results_dir, *args):
  env = dict(os.environ, JAXSOFTMAX_RESULTS=str(results_dir))
  return subprocess.run(
      [sys.executable, str(ROOT / "experiments" / f"{name}.py"), *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
  )


def test_gradient_check_quick(tmp_path):
  proc = run_experiment("gradient_check", tmp_path, "--quick")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  for header in ("Table 1:", "Table 1b:", "Table 2:", "f64 rel",
                 "FD rel (max)", "mem ratio", "time ratio"):
    assert header in proc.stdout, header

  results = json.loads((tmp_path / "gradient_check.json").read_text())
  assert results["passed"] and results["quick"]
  rows = results["correctness"]
  assert {r["case"].split()[0] for r in rows} == {
      "softmax_regression_grad", "mlp_grad", "cross_entropy",
      "naive_jacobian_grad"}
  for r in rows:
    assert r["f64 rel"] < 1e-10, r
    assert r["loss rel"] < 1e-10, r
    # Finite differences are limited by their own truncation and rounding.
    assert r["FD rel (median)"] < 1e-5, r
  for r in results["complexity"]:
    assert r["memory ratio"] > 1, r


def load_experiment(name, monkeypatch):
  """Imports experiments/<name>.py (registered only for this test)."""
  spec = importlib.util.spec_from_file_location(
      f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  # Dataclasses resolve their annotations through sys.modules.
  monkeypatch.setitem(sys.modules, spec.name, module)
  spec.loader.exec_module(module)
  return module


def test_gradient_check_flags_a_wrong_gradient(monkeypatch):
  gc = load_experiment("gradient_check", monkeypatch)
  case = gc.make_cases(np.random.default_rng(0), (4, 6, 3))[0]
  off = lambda theta, data: jax.tree.map(
      lambda g: g * (1 + 1e-8), case.grad(theta, data))
  row = gc.check_case(dataclasses.replace(case, grad=off),
                      np.random.default_rng(1))
  assert row["f64 rel"] > gc.TOLERANCE
  assert row["FD rel (median)"] > 1e-9

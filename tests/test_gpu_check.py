"""benchmarks/gpu_check.py: its quick mode runs end to end and records all.

The full mode needs an accelerator; here only that the quick mode (what
``make gpu-check`` runs on a CPU-only machine) runs every step, reads back
each step's figures and writes one JSON, and that a step over its time limit
is stopped and recorded without stopping the check.
"""

import importlib.util
import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check(monkeypatch, tmp_path):
  """Imports benchmarks/gpu_check.py with its results under ``tmp_path``."""
  spec = importlib.util.spec_from_file_location(
      "benchmarks_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
  module = importlib.util.module_from_spec(spec)
  # Dataclasses resolve their annotations through sys.modules.
  monkeypatch.setitem(sys.modules, spec.name, module)
  spec.loader.exec_module(module)
  monkeypatch.setattr(module, "RESULTS_DIR", tmp_path)
  return module


def test_quick_mode_runs_every_step_and_writes_one_json(tmp_path):
  env = dict(os.environ, JAXSOFTMAX_RESULTS=str(tmp_path))
  proc = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "quick mode (--quick)" in proc.stdout
  data = json.loads((tmp_path / "gpu_check_quick.json").read_text())
  assert data["mode"] == "quick" and data["passed"] is True
  assert data["device"]["device_kind"] and data["device"]["device_count"] >= 1
  assert data["seconds"] > 0
  ran = set(data["steps"]) | set(data["skipped"])
  assert ran == {"tests", "bench_loss", "bench_large_k", "mnist"}
  assert set(data["skipped"]) <= {"mnist"}
  tests = data["steps"]["tests"]["tests"]
  assert tests["passed"] >= 1 and tests["failed"] == []
  for name in ("bench_loss", "bench_large_k"):
    step = data["steps"][name]
    assert step["status"] == "ok" and step["seconds"] > 0
    assert step["figures"] == {f"{name}_quick.json": step["figures"][
        f"{name}_quick.json"]}
    # The sub-run's JSON is read back whole, whatever fields it has.
    assert step["figures"][f"{name}_quick.json"]["results"]
  # Sub-runs write beside the record, never over results/<script>.json.
  assert not (tmp_path / "bench_loss_quick.json").exists()


def test_a_step_over_its_limit_is_stopped_and_recorded(gpu_check, tmp_path):
  step = gpu_check.Step("sleepy", ("-c", "import time; time.sleep(60)"), 1)
  result = gpu_check.run_step(step, tmp_path / "sleepy")
  assert result["status"] == "timeout"
  assert result["seconds"] < 1 + gpu_check.GRACE_SECONDS + 5
  assert result["figures"] == {}


def test_a_failing_step_does_not_stop_the_others(gpu_check, monkeypatch):
  steps = (gpu_check.Step("fails", ("-c", "raise SystemExit(3)"), 30),
           gpu_check.Step("writes", ("-c", _WRITE_FIGURES), 30))
  config = gpu_check.Config(mode="quick", steps=steps)
  record = gpu_check.run(config, device={"platform": "cpu"})
  assert record["passed"] is False
  assert record["steps"]["fails"]["status"] == "failed"
  assert record["steps"]["fails"]["returncode"] == 3
  assert record["steps"]["writes"]["figures"] == {"x.json": {"value": 1.5}}
  written = gpu_check.RESULTS_DIR / "gpu_check_quick.json"
  assert json.loads(written.read_text())["steps"]["writes"]["status"] == "ok"


_WRITE_FIGURES = (
    "import json, os, pathlib; pathlib.Path(os.environ['JAXSOFTMAX_RESULTS'],"
    " 'x.json').write_text(json.dumps({'value': 1.5}))"
)

"""The README's `make demo` job reaches its stated accuracy."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_reaches_095_test_accuracy_on_digits(tmp_path):
  """Softmax regression with the manual gradient: >= 0.95 test accuracy."""
  env = {**os.environ, "JAXSOFTMAX_RESULTS": str(tmp_path)}
  proc = subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "softmax_regression.py")],
      env=env, capture_output=True, text=True, timeout=300, check=False,
  )
  assert proc.returncode == 0, proc.stderr
  assert "test accuracy" in proc.stdout
  result = json.loads((tmp_path / "softmax_regression.json").read_text())
  assert result["test_accuracy"] >= 0.95, result
  assert result["train_accuracy"] >= result["test_accuracy"] - 0.01

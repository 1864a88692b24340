"""Two local processes train one class-sharded model together over gloo.

Runs ``experiments/sharded_vocab.py --num-processes 2 --quick`` as a user
would: two processes with 4 simulated CPU devices each call
``jax.distributed.initialize`` and ``fit`` on a mesh spanning both, and the
launcher compares their losses with a single-device run. The launcher kills
its workers when one fails or after ``--timeout``; the test kills the whole
process group after a hard deadline, so a stuck collective cannot hang CI.
"""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER_TIMEOUT = 120
HARD_TIMEOUT = 150


def test_two_processes_train_like_one_device(tmp_path):
  env = dict(os.environ, JAXSOFTMAX_RESULTS=str(tmp_path))
  command = [sys.executable, str(ROOT / "experiments" / "sharded_vocab.py"),
             "--num-processes", "2", "--quick",
             "--timeout", str(WORKER_TIMEOUT)]
  # A session of its own: on timeout the launcher and its workers go together.
  proc = subprocess.Popen(command, cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=HARD_TIMEOUT)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    pytest.fail(f"no result after {HARD_TIMEOUT} s; output:\n{out}")
  assert proc.returncode == 0, out
  assert "multi-process losses equal the single-device run" in out

  data = json.loads(
      (tmp_path / "sharded_vocab_multiprocess_quick.json").read_text())
  assert data["processes_agree"] and data["equal"]
  assert data["mesh"] == {"data": 2, "model": 4}
  multi = data["multi_process_losses"]
  single = data["single_device_losses"]
  assert len(multi) == len(single) == data["config"]["steps"]
  np.testing.assert_allclose(multi, single, rtol=1e-5)
  assert multi[-1] < multi[0]

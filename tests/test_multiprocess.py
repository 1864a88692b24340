"""Two local processes train one class-sharded model together over gloo.

Runs ``experiments/sharded_vocab.py --num-processes 2 --quick`` as a user
would: two processes with 4 simulated CPU devices each call
``jax.distributed.initialize`` and ``fit`` on a mesh spanning both, and the
launcher compares their losses with a single-device run. The launcher kills
its workers when one fails or after ``--timeout``; the test kills the whole
process group after a hard deadline, so a stuck collective cannot hang CI.

The fault tests kill one worker: the launcher must stop the run within 10 s
naming the worker, and a worker whose peer died, left alone, must end itself
within a minute, also while it is still starting up.
"""

import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "sharded_vocab.py"
WORKER_TIMEOUT = 120
HARD_TIMEOUT = 150
LAUNCHER_BOUND_S = 10
SURVIVOR_BOUND_S = 60
# Enough steps that no worker finishes before the test has killed its peer.
ENDLESS = ("--quick", "--steps", "1000000")


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


def _start(command, **kwargs):
  """A process in its own session, killed with its children at HARD_TIMEOUT."""
  proc = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True,
                          **kwargs)
  guard = threading.Timer(HARD_TIMEOUT, os.killpg, (proc.pid, signal.SIGKILL))
  guard.start()
  proc.guard = guard
  return proc


def _finish(proc):
  """Output of ``proc`` (after it ended) and the seconds waited for its end."""
  t0 = time.monotonic()
  out, _ = proc.communicate()
  proc.guard.cancel()
  return out, time.monotonic() - t0


def test_launcher_stops_every_worker_when_one_dies(tmp_path):
  env = dict(os.environ, JAXSOFTMAX_RESULTS=str(tmp_path))
  launcher = _start([sys.executable, str(SCRIPT), "--num-processes", "2",
                     *ENDLESS, "--timeout", str(WORKER_TIMEOUT)], env=env)
  pids, lines = {}, []
  while len(pids) < 2:
    line = launcher.stdout.readline()
    assert line, "".join(lines)
    lines.append(line)
    if line.startswith("worker ") and ": pid " in line:
      worker, pid = line.split(": pid ")
      pids[int(worker.split()[1])] = int(pid)
  # Killed during start-up: worker 0 then waits for it in initialize.
  os.kill(pids[1], signal.SIGKILL)
  out, seconds = _finish(launcher)
  out = "".join(lines) + out
  assert launcher.returncode != 0, out
  assert seconds < LAUNCHER_BOUND_S, out
  assert "worker 1 exited with code -9 (SIGKILL)" in out
  with pytest.raises(ProcessLookupError):
    os.kill(pids[0], 0)


def _worker(index, port):
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return _start([sys.executable, str(SCRIPT), "--worker", str(index),
                 "--num-processes", "2", "--port", str(port), *ENDLESS],
                env=env)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_worker_ends_when_the_coordinator_is_lost_during_start_up():
  # Worker 0 (the coordinator) died before it served: worker 1 is alone.
  t0 = time.monotonic()
  survivor = _worker(1, _free_port())
  out, _ = _finish(survivor)
  assert survivor.returncode != 0, out
  assert time.monotonic() - t0 < SURVIVOR_BOUND_S, out
  assert "another task died" in out


def test_coordinator_ends_when_a_worker_dies_while_training():
  port = _free_port()
  coordinator, worker = _worker(0, port), _worker(1, port)
  # Each worker says when it is connected; then both start training.
  for i, proc in enumerate((coordinator, worker)):
    lines = []
    while f"worker {i}: connected" not in "".join(lines[-1:]):
      lines.append(proc.stdout.readline())
      assert lines[-1], "".join(lines)
  worker.kill()
  _finish(worker)
  out, seconds = _finish(coordinator)
  assert coordinator.returncode != 0, out
  assert seconds < SURVIVOR_BOUND_S, out
  assert "another task died" in out or "another worker has probably died" in out

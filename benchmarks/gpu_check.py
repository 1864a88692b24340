"""One prepared accelerator check: tests, benchmarks and the MNIST job.

Command: ``make gpu-check`` (or ``python benchmarks/gpu_check.py``). On a
machine with a GPU or TPU it runs in under 8 minutes (the steps' time limits
add up to 405 s, plus 10 s each to wrap up) and writes
``results/gpu_check.json``. On a CPU-only
machine it says so and runs its quick mode instead (``--quick`` forces it):
a handful of tests and the sub-scripts' ``--quick`` runs, about a minute on 2
CPU cores, written to ``results/gpu_check_quick.json`` so that a smoke test
never overwrites a real run.

Steps, each a subprocess of this interpreter with its own time limit (on
expiry it is interrupted, so pytest still writes its report, and the next
step runs):

  tests          pytest on the accelerator-relevant files (fused, sampled
                 and sparse steps, sharded on the real devices, training),
                 with float32 matmuls pinned to full precision by
                 ``tests/conftest.py``
  bench_loss     ``benchmarks/bench_loss.py``
  bench_large_k  ``benchmarks/bench_large_k.py`` up to K = 10^6
  mnist          ``experiments/mnist.py`` (``make demo``; needs ``make data``)

The JSON holds the device (platform, kind, count, as the first subprocess
sees it), the JAX version, the mode and why, and per step its command, exit
status, wall time, output tail and its figures: every JSON file the step
wrote, read back whole (sub-runs write into ``results/gpu_check/<step>/``,
or ``gpu_check_quick/``, not over the CPU figures in ``results/``), and for
the tests the counts from pytest's JUnit report. This script itself never
initializes JAX, so each subprocess gets the accelerator's memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Any
import xml.etree.ElementTree as ET

from jaxsoftmax._core import io as _io
from jaxsoftmax.data import MNIST

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(os.environ.get("JAXSOFTMAX_RESULTS", ROOT / "results"))
# Files whose tests exercise what an accelerator changes: the fused and
# sampled kernels, the cheap heads' (row-sparse) training steps, the sharded
# losses on the real devices, and fit.
ACCELERATOR_TESTS = (
    "tests/test_fused.py",
    "tests/test_sampled.py",
    "tests/test_sparse.py",
    "tests/test_large_vocab.py",
    "tests/test_sharded.py",
    "tests/test_sharded_training.py",
    "tests/test_training.py",
)
QUICK_TESTS = ("tests/test_sharded.py", "-k",
               "padding_classes_is_exact or top_k_and_predict_match")
LARGE_KS = ("1000", "10000", "100000", "1000000")
# After its limit a step gets SIGINT, then this long to write its report;
# the full mode's limits and graces add up to under 8 minutes.
GRACE_SECONDS = 10
TAIL_CHARS = 2000

_DEVICE_PROBE = (
    "import json, jax; d = jax.devices(); print(json.dumps({'platform':"
    " d[0].platform, 'device_kind': d[0].device_kind, 'device_count':"
    " len(d), 'jax_version': jax.__version__}))"
)


@dataclasses.dataclass(frozen=True)
class Step:
  """One subprocess: ``python <args>``, stopped after ``limit_s``.

  ``pytest`` steps also write a JUnit report; ``needs_mnist`` ones are
  skipped, with the reason, when MNIST is not cached.
  """

  name: str
  args: tuple[str, ...]
  limit_s: float
  pytest: bool = False
  needs_mnist: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
  """The steps of one check: :meth:`full` (accelerators) or :meth:`quick`."""

  mode: str
  steps: tuple[Step, ...]

  @classmethod
  def full(cls) -> Config:
    return cls(mode="full", steps=(
        Step("tests", ("-m", "pytest", *ACCELERATOR_TESTS), 180,
             pytest=True),
        Step("bench_loss", ("benchmarks/bench_loss.py",), 70),
        # The training-step table up to 10^6 too; 10^7 would not fit the
        # time limit.
        Step("bench_large_k", ("benchmarks/bench_large_k.py", "--ks",
                               *LARGE_KS, "--big-k", "0"), 110),
        Step("mnist", ("experiments/mnist.py",), 45, needs_mnist=True),
    ))

  @classmethod
  def quick(cls) -> Config:
    return cls(mode="quick", steps=(
        Step("tests", ("-m", "pytest", *QUICK_TESTS), 120, pytest=True),
        Step("bench_loss", ("benchmarks/bench_loss.py", "--quick"), 120),
        Step("bench_large_k", ("benchmarks/bench_large_k.py", "--quick"),
             120),
        Step("mnist", ("experiments/mnist.py", "--quick"), 120,
             needs_mnist=True),
    ))

  @property
  def name(self) -> str:
    return "gpu_check" if self.mode == "full" else f"gpu_check_{self.mode}"


def probe_device() -> dict[str, Any]:
  """The default backend's devices, as a fresh process sees them."""
  out = subprocess.run([sys.executable, "-c", _DEVICE_PROBE], cwd=ROOT,
                       capture_output=True, text=True, check=True, timeout=120)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _junit_counts(path: Path) -> dict[str, Any] | None:
  if not path.exists():
    return None
  suite = ET.parse(path).getroot()
  suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
  counts = {k: int(suite.get(k, 0))
            for k in ("tests", "failures", "errors", "skipped")}
  counts["passed"] = (counts["tests"] - counts["failures"] - counts["errors"]
                      - counts["skipped"])
  counts["seconds"] = float(suite.get("time", 0))
  counts["failed"] = [
      f"{case.get('classname')}::{case.get('name')}"
      for case in suite.iter("testcase")
      if case.find("failure") is not None or case.find("error") is not None
  ]
  return counts


def _read_figures(folder: Path) -> dict[str, Any]:
  """Every JSON file a step wrote, by file name, read whole."""
  return {p.name: json.loads(p.read_text())
          for p in sorted(folder.glob("*.json"))}


def run_step(step: Step, folder: Path) -> dict[str, Any]:
  """Runs one step into ``folder``; its status, time, tail and figures."""
  folder.mkdir(parents=True, exist_ok=True)
  junit = folder / "junit.xml"
  # Figures left by an earlier run must not pass for this one's.
  for old in (*folder.glob("*.json"), junit):
    old.unlink(missing_ok=True)
  args = list(step.args)
  if step.pytest:
    args += ["-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
  start = time.perf_counter()
  proc = subprocess.Popen(
      [sys.executable, *args], cwd=ROOT,
      env={**os.environ, "JAXSOFTMAX_RESULTS": str(folder)},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
  )
  timed_out = False
  try:
    output, _ = proc.communicate(timeout=step.limit_s)
  except subprocess.TimeoutExpired:
    timed_out = True
    proc.send_signal(signal.SIGINT)
    try:
      output, _ = proc.communicate(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
      proc.kill()
      output, _ = proc.communicate()
  seconds = time.perf_counter() - start
  if timed_out:
    status = "timeout"
  elif proc.returncode == 0:
    status = "ok"
  else:
    status = "failed"
  result = {
      "command": " ".join(["python", *args]),
      "status": status,
      "returncode": proc.returncode,
      "limit_seconds": step.limit_s,
      "seconds": round(seconds, 2),
      "output_tail": output[-TAIL_CHARS:],
      "figures": _read_figures(folder),
  }
  if step.pytest:
    result["tests"] = _junit_counts(junit)
  return result


def _missing_data(step: Step) -> str | None:
  if not step.needs_mnist:
    return None
  try:
    MNIST.require()
  except FileNotFoundError as e:
    return str(e)
  return None


def run(config: Config, device: dict[str, Any] | None = None,
        mode_reason: str = "") -> dict[str, Any]:
  """Runs every step of ``config``; the whole record (also written).

  A step that fails or times out does not stop the others; the record's
  ``passed`` is True when none did (a step skipped for missing data says
  so under ``skipped``).
  """
  start = time.perf_counter()
  device = probe_device() if device is None else device
  steps, skipped = {}, {}
  for step in config.steps:
    reason = _missing_data(step)
    if reason:
      skipped[step.name] = reason
      print(f"[gpu-check] {step.name}: skipped: {reason}", flush=True)
      continue
    print(f"[gpu-check] {step.name} (limit {step.limit_s:.0f} s) ...",
          flush=True)
    steps[step.name] = run_step(step, RESULTS_DIR / config.name / step.name)
    print(f"[gpu-check] {step.name}: {steps[step.name]['status']} in"
          f" {steps[step.name]['seconds']:.1f} s", flush=True)
  record = {
      "name": config.name,
      "mode": config.mode,
      "mode_reason": mode_reason,
      "device": device,
      "steps": steps,
      "skipped": skipped,
      "passed": all(s["status"] == "ok" for s in steps.values()),
      "seconds": round(time.perf_counter() - start, 2),
  }
  path = RESULTS_DIR / f"{config.name}.json"
  with _io.atomic_open(path, "w") as f:
    json.dump(record, f, indent=2)
  print(f"[gpu-check] {'passed' if record['passed'] else 'NOT passed'} in"
        f" {record['seconds']:.0f} s; wrote {path}")
  return record


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="the quick mode even on an accelerator")
  args = parser.parse_args(argv)
  device = probe_device()
  reason = ""
  if args.quick:
    reason = "--quick"
  elif device["platform"] == "cpu":
    reason = ("no GPU or TPU: JAX's default backend is cpu, so this is the"
              " quick mode, whose figures say nothing about accelerators")
  if reason:
    print(f"[gpu-check] quick mode ({reason})", flush=True)
  config = Config.quick() if reason else Config.full()
  record = run(config, device, reason)
  if not record["passed"]:
    sys.exit(1)


if __name__ == "__main__":
  main()

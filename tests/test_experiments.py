"""Each experiment runs end to end on its quick config, in this process.

A test imports ``experiments/<name>.py`` as a module and checks the numbers
``run(Config().quick())`` returns. One test runs a script's command line in
a subprocess, as a user would, with its results directed to a temporary
directory through ``JAXSOFTMAX_RESULTS``.
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
import pytest

from jaxsoftmax import reporting

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
PNG = b"\x89PNG\r\n\x1a\n"


def load_experiment(name, monkeypatch):
  """Imports experiments/<name>.py (registered only for this test)."""
  # The scripts import their shared command-line helper as a sibling.
  monkeypatch.syspath_prepend(str(EXPERIMENTS))
  spec = importlib.util.spec_from_file_location(
      f"experiments_{name}", EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  # Dataclasses resolve their annotations through sys.modules.
  monkeypatch.setitem(sys.modules, spec.name, module)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def float32():
  """The scripts' own default dtype; conftest turns float64 on for the suite."""
  with jax.enable_x64(False):
    yield


def test_command_line_quick_writes_its_results(tmp_path):
  env = dict(os.environ, JAXSOFTMAX_RESULTS=str(tmp_path))
  proc = subprocess.run(
      [sys.executable, str(EXPERIMENTS / "softmax_regression.py"), "--quick",
       "--epochs", "2"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "test accuracy" in proc.stdout
  results = json.loads((tmp_path / "softmax_regression_quick.json").read_text())
  assert results["config"]["epochs"] == 2 and results["config"]["quick_mode"]
  assert len(results["train_losses"]) == 2
  # Two epochs of SGD with momentum on digits are far above chance.
  assert results["test_accuracy"] > 0.5


def test_flags_override_the_quick_config(monkeypatch):
  bs = load_experiment("batch_size", monkeypatch)
  config = bs._cli.parse(bs.Config, ["--quick", "--epochs", "2",
                                     "--batch-sizes", "16,64", "128"])
  assert config == dataclasses.replace(
      bs.Config().quick(), epochs=2, batch_sizes=(16, 64, 128))
  with pytest.raises(SystemExit):
    bs._cli.parse(bs.Config, ["--multipliers", "0.5,2"])
  with pytest.raises(ValueError, match="multipliers must"):
    bs.Config(multipliers=(0.5, 2.0))


def test_gradient_check_quick(monkeypatch, capsys):
  gc = load_experiment("gradient_check", monkeypatch)
  results = gc.run(gc.Config().quick())
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
    assert r["FD rel (max)"] >= r["FD rel (median)"], r
  for r in results["complexity"]:
    assert r["memory ratio"] > 1, r
  # Every column of the printed tables has its number.
  gc.report(results)
  display = [gc.complexity_display(r) for r in results["complexity"]]
  assert all(set(gc.TABLE2_COLUMNS) <= set(d) for d in display)
  assert all(set(gc.TABLE1_COLUMNS) <= set(r) for r in rows)
  assert "Table 2:" in capsys.readouterr().out


def test_gradient_check_flags_a_wrong_gradient(monkeypatch):
  gc = load_experiment("gradient_check", monkeypatch)
  case = gc.make_cases(np.random.default_rng(0), (4, 6, 3))[0]
  off = lambda theta, data: jax.tree.map(
      lambda g: g * (1 + 1e-8), case.grad(theta, data))
  row = gc.check_case(dataclasses.replace(case, grad=off),
                      np.random.default_rng(1))
  assert row["f64 rel"] > gc.TOLERANCE
  assert row["FD rel (median)"] > 1e-9


def mnist_cached():
  from jaxsoftmax.data import MNIST
  try:
    MNIST.require()
  except FileNotFoundError:
    return False
  return True


def test_mnist_without_data_says_make_data(tmp_path, monkeypatch):
  mnist = load_experiment("mnist", monkeypatch)
  monkeypatch.setenv("JAXSOFTMAX_DATA", str(tmp_path / "empty"))
  monkeypatch.setattr(reporting, "RESULTS_DIR", tmp_path)
  # The command line exits with the message, not a traceback.
  with pytest.raises(SystemExit) as exit_:
    mnist.main(["--quick"])
  assert "make data" in str(exit_.value.code)
  assert list(tmp_path.glob("*.json")) == []


@pytest.mark.skipif(not mnist_cached(), reason="MNIST not cached: make data")
def test_mnist_quick(tmp_path, monkeypatch, float32):
  mnist = load_experiment("mnist", monkeypatch)
  results = mnist.run(mnist.Config().quick(), tmp_path)
  assert {"test_error", "train_seconds", "train_seconds_excluding_compile",
          "ece_before", "ece_after", "nll_before", "nll_after", "dataset",
          "model", "temperature", "history", "targets"} <= set(results)
  assert results["dataset"]["name"] == "MNIST"
  assert results["dataset"]["train"] == 2000
  assert results["model"]["parameters"] == 784 * 10 + 10
  # One epoch on 2000 images is far from converged, but well above chance.
  assert results["test_error"] < 0.5
  # The timed second fit must reproduce the first exactly.
  assert results["rerun_identical"]
  assert results["temperature"] > 0
  assert 0 <= results["ece_after"] <= 1 and results["nll_after"] > 0
  # Temperature scaling minimizes the validation NLL it was fitted on.
  assert results["val_nll_after"] <= results["val_nll_before"] + 1e-6
  assert results["history"]["epoch"] == [1]
  for kind in ("curves", "reliability", "confusion", "weights"):
    png = tmp_path / f"mnist_quick_{kind}.png"
    assert png.read_bytes()[:8] == PNG, kind


def test_optimizers_quick(tmp_path, monkeypatch, float32):
  opt = load_experiment("optimizers", monkeypatch)
  results = opt.run(opt.Config().quick(), tmp_path)
  names = [r["optimizer"] for r in results["table"]]
  assert names == ["sgd", "momentum", "adam", "adamw", "lbfgs"]
  for name, curve in results["curves"].items():
    assert curve["objective"][0] == results["start_objective"], name
    assert len(curve["objective"]) == len(curve["seconds"]) == len(curve["epoch"])
    # Cumulative epoch times; L-BFGS: one solve per growing iteration budget.
    key = "seconds" if name != "lbfgs" else "epoch"
    assert np.all(np.diff(curve[key]) > 0), (name, curve[key])
  # Full-batch L-BFGS on digits ends below every 3-epoch first-order run.
  assert results["best_objective"] == min(results["curves"]["lbfgs"]["objective"])
  assert (tmp_path / "optimizers_quick.png").read_bytes()[:8] == PNG


def test_regularization_quick(tmp_path, monkeypatch, float32):
  reg = load_experiment("regularization", monkeypatch)
  results = reg.run(reg.Config().quick(), tmp_path)
  assert [s["penalty"] for s in results["summary"]] == [
      "L2", "L1", "elastic net (r = 0.5)"]
  for penalty in results["penalties"].values():
    rows = penalty["rows"]
    assert len(rows) == len(results["config"]["grid"])
    best = penalty["chosen"]
    assert rows[best]["CV loss"] == min(r["CV loss"] for r in rows)
    for r in rows:
      assert 0 <= r["exact zeros"] <= r["|w|<0.001"] <= 1
  l1_near = [r["|w|<0.001"] for r in results["penalties"]["L1"]["rows"]]
  assert l1_near[-1] > l1_near[0]
  assert (tmp_path / "regularization_quick.png").read_bytes()[:8] == PNG


def test_batch_size_quick(tmp_path, monkeypatch, float32):
  bs = load_experiment("batch_size", monkeypatch)
  results = bs.run(bs.Config().quick(), tmp_path)
  config = results["config"]
  rates = np.asarray(results["learning_rates"])
  sizes = np.asarray(config["batch_sizes"], float)
  rule = config["base_learning_rate"] * sizes / config["base_batch_size"]
  np.testing.assert_allclose(
      rates, rule[:, None] * np.asarray(config["multipliers"])[None, :])
  assert np.asarray(results["test_accuracy"]).shape == rates.shape
  assert results["stability_limit"] == 2 / results["hessian_lambda_max"]
  assert (tmp_path / "batch_size_quick.png").read_bytes()[:8] == PNG


def gcide_cached():
  from jaxsoftmax.data import GCIDE
  try:
    GCIDE.require()
  except FileNotFoundError:
    return False
  return True


def test_sharded_vocab_quick(monkeypatch, float32):
  sv = load_experiment("sharded_vocab", monkeypatch)
  assert jax.device_count() == 8  # conftest's simulated CPU devices
  results = sv.run(sv.Config().quick())
  assert results["targets"] == {"equal_to_single_device": True,
                                "memory_scales": True}
  rows = results["rows"]
  assert [r["devices"] for r in rows] == [1, 2, 4, 8]
  for r in rows:
    assert r["loss_rel_err"] < 1e-5 and r["grad_rel_err"] < 1e-4, r
    # w's columns are split over the devices: exactly 1/P of the bytes.
    assert r["w_bytes_per_device"] * r["devices"] == rows[0][
        "w_bytes_per_device"], r


def test_large_vocab_without_data_says_make_data_text(tmp_path, monkeypatch):
  lv = load_experiment("large_vocab", monkeypatch)
  monkeypatch.setenv("JAXSOFTMAX_DATA", str(tmp_path / "empty"))
  monkeypatch.setattr(reporting, "RESULTS_DIR", tmp_path)
  with pytest.raises(SystemExit) as exit_:
    lv.main(["--quick"])
  assert "make data-text" in str(exit_.value.code)
  assert list(tmp_path.glob("*.json")) == []


@pytest.mark.skipif(not gcide_cached(),
                    reason="GCIDE not cached: make data-text")
def test_large_vocab_quick(tmp_path, monkeypatch, float32):
  lv = load_experiment("large_vocab", monkeypatch)
  results = lv.run(lv.Config().quick(), tmp_path)
  assert results["quick"]
  rows = results["rows"]
  # One sampled configuration in quick mode, so one row per method.
  assert [r["method"].split()[0] for r in rows] == [
      "full", "sampled", "nce", "negative_sampling", "hierarchical_huffman",
      "hierarchical_balanced", "class_based"]
  for r in rows:
    h = r["history"]
    assert r["steps"] >= 1 and r["temp MiB"] > 0, r["method"]
    assert h["steps"][0] == 0 and h["seconds"][0] == 0, r["method"]
    assert h["seconds"][-1] >= results["config"]["budget_seconds"], r["method"]
    assert np.isfinite(h["perplexity"]).all(), r["method"]
  # The exact heads cannot do worse than uniform over K = 300 once trained.
  for r in rows:
    if r["method"] in ("full", "hierarchical_balanced", "class_based"):
      assert r["ppl"] < 300, r
  assert (tmp_path / "large_vocab.png").read_bytes()[:8] == PNG


@pytest.mark.skipif(not gcide_cached(),
                    reason="GCIDE not cached: make data-text")
def test_midx_quick(monkeypatch, float32):
  midx = load_experiment("midx", monkeypatch)
  results = midx.run(midx.Config().quick())
  rows = {r["sampler"]: r for r in results["rows"]}
  assert list(rows) == ["uniform", "unigram", "midx_uniform", "midx_pop",
                        "midx_exact"]
  for name, r in rows.items():
    assert r["steps"] >= 1 and np.isfinite(r["ppl"]), name
    assert r["KL(q||p)"] >= 0 and 0 < r["ESS frac"] <= 1, name
    assert (r["refreshes"] > 0) == name.startswith("midx"), name
  # MIDX-exact proposes the model's own softmax.
  assert rows["midx_exact"]["KL(q||p)"] < 1e-5
  assert rows["midx_exact"]["ESS frac"] > 0.999
  same = {r["sampler"]: r for r in results["same_model"]}
  assert same["midx_exact"]["kl_qp"] < 1e-5
  assert same["uniform"]["kl_qp"] > same["midx_uniform"]["kl_qp"]

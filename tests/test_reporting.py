"""Reporting helpers: atomic JSON results, tables, compiled memory, alternating timer."""

import json
import math
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoftmax import reporting


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
  path = tmp_path / "results"
  monkeypatch.setattr(reporting, "RESULTS_DIR", path)
  return path


def test_save_results_writes_valid_json(results_dir):
  """Pins results/<name>.json: the payload (NumPy/JAX values as lists), name and machine facts."""
  payload = {
      "accuracy": np.float32(0.5),
      "losses": jnp.arange(3.0),
      "table": [{"k": 10, "ratio": 1.25}],
  }
  path = reporting.save_results("exp", payload)
  assert path == results_dir / "exp.json"
  data = json.loads(path.read_text())
  assert data["name"] == "exp"
  assert data["accuracy"] == 0.5
  assert data["losses"] == [0.0, 1.0, 2.0]
  assert data["table"] == [{"k": 10, "ratio": 1.25}]
  assert set(data["machine"]) >= {"platform", "device", "jax", "python", "cpu_count"}
  assert sorted(p.name for p in results_dir.iterdir()) == ["exp.json"]


def test_save_results_overwrites(results_dir):
  """Pins that a second save replaces the first, leaving one file."""
  reporting.save_results("exp", {"v": 1})
  path = reporting.save_results("exp", {"v": 2})
  assert json.loads(path.read_text())["v"] == 2
  assert sorted(p.name for p in results_dir.iterdir()) == ["exp.json"]


def test_save_results_failure_keeps_previous_file(results_dir):
  """Pins atomicity: a serialization error leaves the old file intact and no temporary file."""
  path = reporting.save_results("exp", {"v": 1})
  before = path.read_bytes()
  with pytest.raises(TypeError, match=r"cannot write object to JSON"):
    # The bad value comes after good ones, so a partial file was being written.
    reporting.save_results("exp", {"a": list(range(100)), "z": object()})
  assert path.read_bytes() == before
  assert sorted(p.name for p in results_dir.iterdir()) == ["exp.json"]


def test_save_results_failure_on_first_write_leaves_nothing(results_dir):
  """Pins that a failed first save leaves no results file and no temporary file."""
  with pytest.raises(TypeError):
    reporting.save_results("exp", {"z": {1, 2}})
  assert list(results_dir.iterdir()) == []


def test_save_results_permissions_like_open(results_dir):
  """Pins that the results file gets open()'s umask-based mode, not mkstemp's 0600."""
  path = reporting.save_results("exp", {"v": 1})
  reference = results_dir / "reference.txt"
  reference.write_text("x")
  assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def test_format_table():
  """Pins header, rule, right-aligned columns, 4 significant digits for floats, blanks for missing cells."""
  rows = [
      {"name": "manual", "time": 0.000123456, "ratio": 1.0, "k": 10},
      {"name": "autodiff", "time": np.float32(12.5), "k": 1000},
  ]
  table = reporting.format_table(rows, ["name", "time", "ratio", "k"])
  lines = table.split("\n")
  assert len(lines) == 4
  assert lines[0].split() == ["name", "time", "ratio", "k"]
  assert set(lines[1].replace(" ", "")) == {"-"}
  assert lines[2].split() == ["manual", "0.0001235", "1", "10"]
  assert lines[3].split() == ["autodiff", "12.5", "1000"]
  assert len({len(line) for line in lines}) == 1  # aligned
  assert lines[3].endswith("1000") and lines[2].endswith("  10")


def test_format_table_without_rows():
  """Pins that an empty result set formats as header and rule, not a crash."""
  table = reporting.format_table([], ["name", "time"])
  assert table.split("\n")[0].split() == ["name", "time"]


def test_format_bytes_and_median():
  """Pins the byte formatter's units and the median helper."""
  assert reporting.format_bytes(512) == "512 B"
  assert reporting.format_bytes(2048) == "2.0 KiB"
  assert reporting.format_bytes(3 * 1024**3) == "3.0 GiB"
  assert reporting.median([3.0, 1.0, 2.0]) == 2.0


def test_compiled_memory_of_known_programs():
  """Pins output/argument bytes of XLA's analysis for programs of known size (shapes only)."""
  vec = jax.ShapeDtypeStruct((1024,), jnp.float32)
  stats = reporting.compiled_memory(lambda a: a + 1, vec)
  assert stats["output"] == 1024 * 4
  assert stats["argument"] == 1024 * 4
  assert stats["total"] == stats["argument"] + stats["output"] + stats["temp"]
  a = jax.ShapeDtypeStruct((256, 128), jnp.float64)
  b = jax.ShapeDtypeStruct((128, 64), jnp.float64)
  stats = reporting.compiled_memory(jnp.dot, a, b)
  assert stats["output"] == 256 * 64 * 8
  assert stats["argument"] == (256 * 128 + 128 * 64) * 8
  assert all(isinstance(v, int) and v >= 0 for v in stats.values())


def test_alternate_returns_repeats_timings_and_alternates():
  """Pins `repeats` timings per function, warmup calls first, then strict alternation."""
  calls = []

  def make(name):
    def fn():
      calls.append(name)
      return jnp.zeros(())

    return fn

  times = reporting.alternate({"a": make("a"), "b": make("b")}, repeats=3, warmup=2)
  assert set(times) == {"a", "b"}
  for ts in times.values():
    assert len(ts) == 3
    assert all(isinstance(t, float) and math.isfinite(t) and t >= 0 for t in ts)
  assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3


@pytest.mark.parametrize("repeats, warmup", [(0, 1), (-1, 1), (1, -1)])
def test_alternate_rejects_bad_counts(repeats, warmup):
  """Pins a ValueError for repeats < 1 or warmup < 0, before anything runs."""
  calls = []
  with pytest.raises(ValueError, match=r"repeats must be >= 1"):
    reporting.alternate({"a": lambda: calls.append(1)}, repeats=repeats, warmup=warmup)
  assert calls == []


def test_machine_facts():
  """Pins the machine description saved with every result."""
  facts = reporting.machine()
  assert facts["jax"] == jax.__version__
  assert facts["device_count"] == jax.device_count() >= 1
  json.dumps(facts)

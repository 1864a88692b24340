"""The README's quick example runs as printed."""

import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_example_runs_and_learns(capsys):
  """Executes the first ```python block; it must print an accuracy > 0.9."""
  block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
  exec(compile(block, str(README), "exec"), {})
  accuracy = float(capsys.readouterr().out.strip().splitlines()[-1])
  assert accuracy > 0.9


def test_readme_sparse_step_runs_on_a_million_classes(capsys):
  """The second block: three row-sparse steps at K = 10^6, finite loss."""
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  namespace = {}
  exec(compile(blocks[1], str(README), "exec"), namespace)
  loss = float(capsys.readouterr().out.strip().splitlines()[-1])
  # A sampled estimate near the untrained model's log K, and finite.
  assert 0 < loss < math.log(10**6) + 1
  # Only the rows of labels and candidates moved; the others are still 0.
  w = namespace["params"]["w"]
  moved = int((abs(w).sum(axis=1) > 0).sum())
  assert 256 <= moved <= 256 + 3 * 512

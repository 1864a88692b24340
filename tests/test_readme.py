"""The README's quick example runs as printed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_example_runs_and_learns(capsys):
  """Executes the first ```python block; it must print an accuracy > 0.9."""
  block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
  exec(compile(block, str(README), "exec"), {})
  accuracy = float(capsys.readouterr().out.strip().splitlines()[-1])
  assert accuracy > 0.9

"""Every notebook executes top to bottom, and its .py and .ipynb pair agree."""

from pathlib import Path

import jupytext
import pytest

# The notebooks execute once per run (the execute_notebook fixture), so the
# notebook and docs tests share one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("notebooks")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, execute_notebook):
  """Runs the notebook's cells in a fresh kernel; any exception fails.

  The executed copy is kept for the session: tests/test_docs.py renders it.
  """
  execute_notebook(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_pair_in_sync(path):
  """The committed .ipynb holds the same cells as its paired .py."""
  paired = path.with_suffix(".ipynb")
  assert paired.exists(), f"{paired.name} missing: run jupytext --sync {path.name}"
  source = [c.source for c in jupytext.read(path).cells]
  assert [c.source for c in jupytext.read(paired).cells] == source

"""Stages the notebooks under ``<srcdir>/notebooks`` so myst-nb renders them.

The notebooks are executed once per CI run, by ``tests/test_notebooks.py``;
the docs test hands that run's executed copies to the build through the
``executed_notebooks`` option (``-D executed_notebooks=DIR``), and myst-nb
renders their outputs without executing anything. A plain ``make docs`` has
no such folder, so the committed (output-free) notebooks are staged and
myst-nb executes them through jupyter-cache, which re-runs a notebook only
when its code changed.
"""

import shutil
from pathlib import Path


def stage_notebooks(app, config):
  """Copies the .ipynb files in and picks the matching execution mode."""
  executed = config.executed_notebooks
  source = Path(executed) if executed else Path(config.notebooks_source)
  if not source.is_absolute():
    source = Path(app.confdir) / source
  notebooks = sorted(source.glob("*.ipynb"))
  if not notebooks:
    raise FileNotFoundError(f"no .ipynb notebooks in {source}")
  out = Path(app.srcdir) / "notebooks"
  out.mkdir(exist_ok=True)
  for stale in set(p.name for p in out.glob("*.ipynb")) - set(
      p.name for p in notebooks):
    (out / stale).unlink()
  for path in notebooks:
    target = out / path.name
    if not target.exists() or target.read_bytes() != path.read_bytes():
      shutil.copyfile(path, target)
  config.nb_execution_mode = "off" if executed else "cache"


def setup(app):
  app.add_config_value("executed_notebooks", "", "env", types=[str])
  app.add_config_value("notebooks_source", "../notebooks", "env", types=[str])
  # Before myst-nb reads its options in its own config-inited handler.
  app.connect("config-inited", stage_notebooks, priority=100)
  return {"parallel_read_safe": True, "parallel_write_safe": True}

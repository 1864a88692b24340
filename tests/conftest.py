"""Strict test settings: float64 references available, no silent rank promotion,
full-precision float32 matmuls on accelerators."""

import os

# `make test` runs the suite on several pytest-xdist processes, which may
# share one accelerator: none of them takes most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Eight simulated CPU devices for the sharded tests; must be set before jax is
# imported. On a machine with accelerators this only affects the CPU backend.
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import hypothesis  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

# float64 references need x64; float32 tests ask for float32 explicitly.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Float32 tests compare against float64 references at tolerances near 1e-5;
# at JAX's default precision GPUs multiply float32 as TF32 and TPUs as one
# bfloat16 pass (about 1e-3), so off CPU every test runs full float32
# matmuls. The library and the benchmarks keep the faster default.
if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "highest")

# Shapes vary per example, so each one compiles: no per-example deadline, and a
# fixed seed in CI so a run is reproducible.
hypothesis.settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile(
    "ci",
    parent=hypothesis.settings.get_profile("default"),
    derandomize=True,
    print_blob=True,
)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(scope="session")
def execute_notebook(tmp_path_factory):
  """Executes a notebook at most once per session; returns the executed .ipynb.

  Shared by the notebook test and the docs test, which renders these outputs,
  so a `make test` run executes each notebook once.
  """
  # Imported here so that sessions without notebook tests never load Jupyter.
  import jupytext
  import nbclient
  import nbformat

  out = tmp_path_factory.mktemp("executed_notebooks")
  done = {}

  def execute(path):
    if path not in done:
      nb = jupytext.read(path)
      nbclient.NotebookClient(
          nb, timeout=300, kernel_name="python3",
          resources={"metadata": {"path": str(path.parent)}},
      ).execute()
      done[path] = out / path.with_suffix(".ipynb").name
      nbformat.write(nb, done[path])
    return done[path]

  return execute

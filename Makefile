# Each target that runs code depends on the venv stamp, so `make test` or `make demo`
# on a fresh clone creates .venv first, and a later run reinstalls only when
# pyproject.toml is newer than the stamp. EXTRAS picks the optional
# dependencies (`make gpu-check EXTRAS=dev,docs,cuda` on a GPU machine); each set
# has its own stamp, so switching sets installs the new one once.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev,docs
PY := $(VENV)/bin/python
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: test demo gradient-check bench docs gpu-check clean data data-fashion data-text

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

# Some tests read the real datasets, so a fresh machine fetches them first (a
# no-op once cached); without them, tests that need the data would skip.
# The suite runs on TEST_WORKERS processes (pytest-xdist; auto: one per core).
TEST_WORKERS ?= auto
test: $(STAMP) data data-fashion data-text
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The MNIST job; `data` is a quick no-op once MNIST is cached.
demo: $(STAMP) data
	$(PY) experiments/mnist.py

gradient-check: $(STAMP)
	$(PY) experiments/gradient_check.py

bench: $(STAMP)
	$(PY) benchmarks/bench_loss.py

# The documentation site, into docs/_build/html (see docs/README.md). Warnings
# are errors, as in the test. The notebooks execute through jupyter-cache, so
# a rebuild re-runs only a notebook whose code changed.
SPHINXOPTS ?=
docs: $(STAMP)
	$(PY) -m sphinx -b html -W --keep-going -n $(SPHINXOPTS) docs docs/_build/html

# Tests, benchmarks and the MNIST job on the accelerator (under 8 minutes),
# into results/gpu_check.json; on a CPU-only machine, its quick mode.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

# Datasets, fetched once into $JAXSOFTMAX_DATA (default ~/.cache/jaxsoftmax)
# and checked against pinned SHA-256s; re-running a target is a no-op.
data: $(STAMP)
	$(PY) -m jaxsoftmax.data.fetch mnist

data-fashion: $(STAMP)
	$(PY) -m jaxsoftmax.data.fetch fashion-mnist

data-text: $(STAMP)
	$(PY) -m jaxsoftmax.data.fetch text

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis docs/_build docs/api docs/notebooks

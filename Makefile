# Each target that runs code depends on the venv stamp, so `make test` or `make demo`
# on a fresh clone creates .venv first, and a later run reinstalls only when
# pyproject.toml is newer than the stamp. EXTRAS picks the optional
# dependencies (`make gpu-check EXTRAS=dev,cuda` on a GPU machine); each set
# has its own stamp, so switching sets installs the new one once.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev
PY := $(VENV)/bin/python
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: test demo gradient-check bench gpu-check clean data data-fashion data-text

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# The MNIST job; `data` is a quick no-op once MNIST is cached.
demo: $(STAMP) data
	$(PY) experiments/mnist.py

gradient-check: $(STAMP)
	$(PY) experiments/gradient_check.py

bench: $(STAMP)
	$(PY) benchmarks/bench_loss.py

# Tests, benchmarks and the MNIST job on the accelerator (under 8 minutes),
# into results/gpu_check.json; on a CPU-only machine, its quick mode.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

# Datasets, fetched once into $JAXSOFTMAX_DATA (default ~/.cache/jaxsoftmax)
# and checked against pinned SHA-256s; re-running a target is a no-op.
data: $(STAMP)
	$(PY) -m jaxsoftmax._fetch mnist

data-fashion: $(STAMP)
	$(PY) -m jaxsoftmax._fetch fashion-mnist

data-text: $(STAMP)
	$(PY) -m jaxsoftmax._fetch text

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis

# One way to run things. Every target creates .venv and installs what it needs.
#   make demo       the main job
#   make test       the test suite (CPU: reference, Triton interpreter, TVM on llvm, CUTLASS compile-only)
#   make test-slow  the tests marked slow
#   make bench      CPU benchmarks (pytest-benchmark), ratios against baselines in the same run

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of the dev/CI machines; installed first so no extra can drag in a CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

# Caches and temp files stay inside the work area.
export TRITON_CACHE_DIR ?= $(CURDIR)/.cache/triton
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor
export HYSPARSE_CACHE ?= $(CURDIR)/.cache/hysparse
export TMPDIR := $(CURDIR)/.cache/tmp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PYTEST := $(PY) -m pytest -q -p no:cacheprovider --basetemp=$(CURDIR)/.cache/pytest

.PHONY: install demo test test-slow test-gpu bench clean

$(STAMP): pyproject.toml setup.py
	@mkdir -p $(TMPDIR)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all,test]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hysparse info
	$(PY) examples/demo.py
	$(VENV)/bin/hysparse ir hysparse-80b-a3b --seq-len 32768
	$(VENV)/bin/hysparse models
	$(PY) -m hysparse_kernels.training.demo

test: $(STAMP)
	$(PYTEST) -m "not slow" tests

test-slow: $(STAMP)
	$(PYTEST) -m slow tests

# On a machine with a CUDA device: the GPU-only tests (they skip elsewhere).
test-gpu: $(STAMP)
	$(PYTEST) -m gpu tests

bench: $(STAMP)
	$(PYTEST) bench --benchmark-only --benchmark-columns=median,iqr,rounds

clean:
	rm -rf $(VENV) .cache

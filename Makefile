# Quick start: `make demo` trains and evaluates the embedded default, `make test` runs the suite.
# Both create .venv and install the package into it on first use; make test also installs the system
# libraries the tests use (tools/install_system_deps.sh).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m timm_tenet.demo

test: $(VENV)/.installed
	bash tools/install_system_deps.sh
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/step_overhead.py

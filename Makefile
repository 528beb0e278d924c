# MorphoLoop: the two commands of the README contract.
#   make run   -> creates .venv if missing, installs, runs the main job on embedded defaults
#   make test  -> creates .venv if missing, installs, runs the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint-imports clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: a closed-loop dry-run campaign against the simulators (data/dry-run; rerunning resumes it).
run: $(STAMP)
	$(VENV)/bin/morphloop dry-run --data-dir data/dry-run

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_describe.py

lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache

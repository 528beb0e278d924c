# MorphoLoop: the two commands of the README contract.
#   make run   -> creates .venv if missing, installs, runs the main job on embedded defaults
#   make test  -> creates .venv if missing, installs, runs the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Every dependency at the version the suite last passed with; `make test CONSTRAINTS=` installs the newest allowed.
CONSTRAINTS ?= constraints.txt

.PHONY: run test bench lint-imports lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list or the locked versions change.
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
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

# Re-resolve every dependency to its newest allowed version in a scratch environment and record the result;
# run `make test` on it before committing constraints.txt.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache

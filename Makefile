# Every target bootstraps .venv itself; stamps make re-runs cheap. Creating and installing into
# .venv hold a lock, so `make run` and `make test` started at once on a fresh clone do not
# install over each other. The lock is taken by python3 itself (fcntl), not by flock(1), which
# not every system has: python3 and make are all a first run needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
LOCKED := $(PYTHON) -c 'import fcntl, subprocess, sys; lock = open("$(VENV).lock", "w"); fcntl.flock(lock, fcntl.LOCK_EX); sys.exit(subprocess.call(sys.argv[1:]))'

.PHONY: install dev run test lint typecheck unit format bench clean

$(PY):
	$(LOCKED) sh -c 'test -x $(PY) || $(PYTHON) -m venv $(VENV)'

$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(LOCKED) $(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml constraints.txt | $(PY)
	$(LOCKED) $(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

run: install
	$(BIN)/orderflow serve

lint: dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports --no-cache

typecheck: dev
	$(BIN)/mypy

# The systemd unit in deploy/, checked by systemd-analyze against the orderflow of .venv.
unit: install
	deploy/verify-unit $(BIN)/orderflow

format: dev
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

test: lint typecheck unit
	$(BIN)/pytest --cov=orderflow --cov-report=term-missing

bench: dev
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(VENV).lock .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.*

# Two commands on a fresh machine: `make bench` (the benchmarks, the main job, on the
# embedded SQLite default: no server) and `make test` (the whole suite; starts the local
# PostgreSQL if it is not answering). BENCH_ARGS / PYTEST_ARGS pass options through.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: test lint bench example clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[postgres,fastapi,dev]'
	touch $@

test: $(VENV)/.installed
	scripts/ensure-postgres
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) -m benchmarks $(BENCH_ARGS)

example: $(VENV)/.installed
	$(PY) examples/quickstart.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Two commands on a fresh machine: `make bench` (the benchmarks, the main job, on the
# embedded SQLite default: no server) and `make test` (the whole suite; starts the local
# PostgreSQL if it is not answering and installs PgBouncer if it is missing). BENCH_ARGS / PYTEST_ARGS pass options through.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: test test-fastapi-min test-newest lint docs bench example check-wheel clean

# The FastAPI tests again on the oldest FastAPI we support (pyproject's fastapi extra).
FASTAPI_MIN ?= 0.121.0
FASTAPI_TESTS := tests/atom_async_db/test_fastapi.py tests/atom_async_db/test_fastapi_transaction.py \
	tests/atom_async_db/test_disconnects.py tests/sync_compat/test_fastapi.py examples

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[postgres,fastapi,alembic,sqlmodel,otel,prometheus,migrate,docs,dev]'
	touch $@

test: $(VENV)/.installed
	scripts/ensure-servers
	$(PY) -m pytest $(PYTEST_ARGS)

# (Its Starlette imports an anyio alias that the newest anyio deprecates: not ours to fix.)
test-fastapi-min:
	$(PYTHON) -m venv .venv-fastapi-min
	.venv-fastapi-min/bin/python -m pip install --quiet -e '.[postgres,dev]' 'fastapi==$(FASTAPI_MIN)'
	scripts/ensure-postgres
	.venv-fastapi-min/bin/python -m pytest -W ignore::DeprecationWarning $(FASTAPI_TESTS)

# The suite on the newest releases of the drivers and SQLAlchemy, past pyproject's upper
# bounds: run it before raising a bound (not in CI: a new release must not turn main red).
test-newest:
	$(PYTHON) -m venv .venv-newest
	.venv-newest/bin/python -m pip install --quiet -e '.[postgres,fastapi,alembic,sqlmodel,dev]'
	.venv-newest/bin/python -m pip install --quiet --upgrade --pre 'sqlalchemy[asyncio]' aiosqlite asyncpg 'psycopg[binary]'
	.venv-newest/bin/python -m pip list 2>/dev/null | grep -iE '^(sqlalchemy|aiosqlite|asyncpg|psycopg) '
	scripts/ensure-postgres
	.venv-newest/bin/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) -m benchmarks $(BENCH_ARGS)

example: $(VENV)/.installed
	$(PY) examples/quickstart.py

# The documentation site (mkdocs.yml, docs/) into site/. --strict: a warning (a broken link
# or cross-reference, a missing snippet) fails it; `$(VENV)/bin/mkdocs serve` previews it.
# (The suite builds it too: tests/test_docs.py.)
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The sdist and wheel built from a clean copy of the tree, checked (twine, contents), and the
# wheel installed as users install it (bare, all extras, each extra alone), exercised from
# outside the checkout (~100 s). CHECK_WHEEL_ARGS=--strict: advisories fail too.
check-wheel:
	$(PYTHON) scripts/check-wheel $(CHECK_WHEEL_ARGS)

clean:
	rm -rf $(VENV) .venv-fastapi-min .venv-newest .pytest_cache .mypy_cache .ruff_cache site

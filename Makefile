# The README's commands. `make run` serves on SQLite; `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: run test test-schemas soak bench lint format docs screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The test extras are a superset of the runtime ones, so installing them satisfies `run` too.
$(VENV)/.installed-run: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml clients/python/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test]' -e clients/python
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/flask --app wsgi db upgrade
	exec $(BIN)/gunicorn -c deploy/gunicorn.conf.py wsgi:app

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The suite in as many processes as cores (pytest-xdist; each worker has its own databases
# and Redis database); `make test XDIST=` runs it in one process.
XDIST ?= -n auto --dist worksteal

test: lint
	$(BIN)/pytest $(XDIST) $(PYTEST_ARGS)

# The reliability suite at full length (fuzzing, races, crashes, outages, authorization,
# hostile input, secrets) with a summary per category; `make test` runs it short.
soak: $(VENV)/.installed-test
	$(BIN)/python scripts/soak.py

# Every PostgreSQL test again, on the phase-2 layout (one schema per module, DB_SCHEMAS=on).
test-schemas: $(VENV)/.installed-test
	TEST_DB_SCHEMAS=1 $(BIN)/pytest -m postgres $(XDIST) $(PYTEST_ARGS)

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

$(VENV)/.installed-bench: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[bench]'
	touch $@ $(VENV)/.installed-run

# The benchmark (bench/README.md): real gunicorn + wrk on loopback; not part of `make test`.
# Installs wrk from Debian when it is missing; writes bench/results.json.
bench: $(VENV)/.installed-bench
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m bench $(BENCH_ARGS)

# Regenerate the generated tables in docs/ (ownership, settings) from the code.
docs: $(VENV)/.installed-run
	$(BIN)/python scripts/render_docs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

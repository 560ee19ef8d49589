# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DO_NOT_TRACK := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := false

.PHONY: install demo test dev lint sandbox clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/activation demo

# Tests wait on I/O part of the time (sandbox, dbt, Dagster runs, Celery workers): four
# workers on two cores, each test file whole on one worker so its module fixtures (a sandbox, a
# checked warehouse) are built once. Files go out in collection order (e2e, integration,
# sandbox, unit): xdist's default hands out files with many tests first, which left the
# few-test, minute-long e2e and detached files for the end. Same machine, same tree: 3 workers
# 814 s, 4 workers 705 s, 4 workers in collection order 681 s.
TEST_WORKERS ?= 4

test: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder --durations=15

dev: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/activation dev

lint: install
	$(BIN)/ruff check activation tests benchmarks
	$(BIN)/ruff format --check activation tests benchmarks
	$(BIN)/mypy -p activation

clean:
	rm -rf .activation dbt_project/target dbt_project/logs

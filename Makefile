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

# Most tests wait on I/O (sandbox, dbt, Dagster runs, Celery workers): three workers on two cores
# (the whole suite used 148% CPU with three), each test file whole on one worker so its module
# fixtures (a sandbox, a checked warehouse) are built once.
TEST_WORKERS ?= 3

test: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

dev: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/activation dev

lint: install
	$(BIN)/ruff check activation tests benchmarks
	$(BIN)/ruff format --check activation tests benchmarks
	$(BIN)/mypy -p activation

clean:
	rm -rf .activation dbt_project/target dbt_project/logs

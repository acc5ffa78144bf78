# Two entry points on a fresh machine with Python 3.11+ and make: `make demo` and `make test`.
# The first interpreter that really runs and is 3.11+ (pyenv shims may exist for absent versions).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
# The demo needs Mercia alone; the test suite also needs the test, benchmark and Spark extras (about
# 1 GB more: pyspark, a browser driver), installed the first time `make test` runs.
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2 --dist loadscope --no-loadscope-reorder

.PHONY: demo test env clean

$(CORE): pyproject.toml
	@test -n "$(PYTHON)" || { echo 'Mercia needs Python 3.11 or newer on PATH' >&2; exit 1; }
	@echo "Installing Mercia and its dependencies into $(VENV) (the first time: a few minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(CORE)

$(STAMP): $(CORE)
	@echo "Installing the test, benchmark and Spark extras into $(VENV) (the first time: a few minutes)"
	$(BIN)/python -m pip install --quiet -e '.[test,bench,spark]'
	touch $(STAMP)

env: $(STAMP)

demo: $(CORE)
	@echo "Federated network (a hub and one node per organisation): $(BIN)/mercia federation demo --dir /tmp/mercia-federation"
	$(BIN)/mercia demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-data .pytest_cache

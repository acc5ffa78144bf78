# Two entry points on a fresh machine with Python 3.11+ and make: `make demo` and `make test`.
# The first interpreter that really runs and is 3.11+ (pyenv shims may exist for absent versions).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2 --dist loadscope --no-loadscope-reorder

.PHONY: demo test env clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo 'Mercia needs Python 3.11 or newer on PATH' >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,spark]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	@echo "Federated network (a hub and one node per organisation): $(BIN)/mercia federation demo --dir /tmp/mercia-federation"
	$(BIN)/mercia demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-data .pytest_cache

# `make run`: set up .venv and run the worker with the embedded Temporal dev server.
# `make test`: set up .venv and run the test suite.
PYTHON ?= python3.11
VENV := .venv

.PHONY: setup run test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/python worker.py --dev

test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

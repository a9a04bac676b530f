# `make run`: set up .venv and run the worker with the embedded Temporal dev server.
# `make test`: set up .venv and run the test suite.
PYTHON ?= python3.11
VENV := .venv

.PHONY: setup run test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	# Bytecode up front, for where no .pyc may be written (PYTHONDONTWRITEBYTECODE): the tests
	# run workflows in the SDK's sandbox, which imports their modules again for every workflow.
	$(VENV)/bin/python -m compileall -q platformctl workflows activities worker.py
	touch $@

setup: $(VENV)/.installed

# The example platform's deploy key is made on first use: none ships in the repo, and
# a dry run of the example checks everything a real run needs, the key included.
example/keys/platform_deploy:
	mkdir -p example/keys
	ssh-keygen -q -t ed25519 -N '' -C platform-example -f $@

# Serves example/ unless PLATFORM_ROOT names your own platform.
run: setup example/keys/platform_deploy
	PLATFORM_ROOT="$${PLATFORM_ROOT:-$(CURDIR)/example}" $(VENV)/bin/python worker.py --dev

test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

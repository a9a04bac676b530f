# `make run`: set up .venv and run the worker with the embedded Temporal dev server.
# `make test`: set up .venv and run the test suite.
# `make lock`: refresh requirements*.lock to the newest versions pyproject.toml allows.
# `make test-latest`: run the suite in .venv-latest against those newest versions, lock untouched.
PYTHON ?= python3.11
VENV := .venv
UV := $(VENV)/bin/uv
LATEST := .venv-latest
LOCK := requirements.lock
RUNTIME_LOCK := requirements-runtime.lock
# The editable install is built without isolation, from the lock's setuptools
# (the bound is [build-system]'s): nothing unhashed is installed.
BUILD_REQUIREMENT := setuptools>=68
COMPILE := $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes --no-header --upgrade

.PHONY: setup run test lint lock test-latest

# Exactly the lock: uv first (its own hashed lines, installed by pip), then uv
# installs the rest and removes anything the lock does not name.
$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	awk '/^uv==/ {p=1; print; next} p && /^ +--hash/ {print; next} {p=0}' $(LOCK) > $(VENV)/uv.lock.txt
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r $(VENV)/uv.lock.txt
	$(UV) pip sync --quiet --python $(VENV)/bin/python --require-hashes $(LOCK)
	$(UV) pip install --quiet --python $(VENV)/bin/python --no-deps --no-build-isolation -e .
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

# Everything (worker, tests, benchmarks) for setup and CI; the worker alone for the image.
lock: setup
	echo '$(BUILD_REQUIREMENT)' | $(COMPILE) pyproject.toml - --all-extras -o $(LOCK)
	echo '$(BUILD_REQUIREMENT)' | $(COMPILE) pyproject.toml - -c $(LOCK) -o $(RUNTIME_LOCK)

test-latest: setup
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade -e '.[test]'
	$(LATEST)/bin/python -m pytest

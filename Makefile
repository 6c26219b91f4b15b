# `make app` sets up and runs the app on the shipped default model; `make test` sets up, lints and runs every test;
# `make test-fast` skips the tests marked slow; `make lint` is ruff's check and format check alone (the settings
# in pyproject.toml); `make lock` refreshes the lock files from requirements*.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The locks: exact versions with hashes for CPython 3.11 on Linux x86_64, made by uv (in its own venv).
LOCK_VENV := .venv-lock
UV_VERSION := 0.13.9
UV := $(LOCK_VENV)/bin/uv
UV_COMPILE := $(UV) pip compile --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--generate-hashes --custom-compile-command "make lock"

.PHONY: app test test-fast lint setup setup-dev browser lock lock-upgrade

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Install from the locks once per venv (and again when a lock changes): the stamp files say it is done.
$(VENV)/.installed-app: requirements.lock | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	touch $@

$(VENV)/.installed-dev: requirements-dev.lock | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements-dev.lock
	touch $@

setup: $(VENV)/.installed-app

setup-dev: $(VENV)/.installed-dev

# Debian's chromium for the browser test (playwright drives /usr/bin/chromium; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

app: setup
	$(BIN)/streamlit run app.py

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint browser
	$(BIN)/python -m pytest -q

test-fast: setup-dev
	$(BIN)/python -m pytest -q -m "not slow"

$(UV):
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q "uv==$(UV_VERSION)"

# Keeps the pinned versions that still satisfy requirements*.txt and resolves what is new or changed (e.g. an
# added dependency); the dev lock is constrained to the app lock's versions.
lock: $(UV)
	$(UV_COMPILE) requirements.txt -o requirements.lock
	$(UV_COMPILE) -c requirements.lock requirements-dev.txt -o requirements-dev.lock

# The newest versions within requirements*.txt's ranges: run the whole suite before committing the result.
lock-upgrade: $(UV)
	$(UV_COMPILE) --upgrade requirements.txt -o requirements.lock
	$(UV_COMPILE) --upgrade -c requirements.lock requirements-dev.txt -o requirements-dev.lock

# Development entry points. `make run` starts a local cluster, `make test` is what CI runs.
# Both work on a fresh Debian machine that has Python 3.11: missing system packages are
# installed with apt (slow, so only when a command is missing), Python ones into .venv.

PY ?= python3
VENV = .venv
BIN = $(VENV)/bin
# pip runs again only when pyproject.toml changed since the last install
STAMP = $(VENV)/.installed
ARGS ?=

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL = $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y

.PHONY: venv sysdeps browser-deps tool-deps js-deps node run test lint clean distclean

venv: $(STAMP)

# Debian's python3 makes venvs only with python3-venv (ensurepip) installed.
$(BIN)/python:
	$(PY) -m venv $(VENV) || { rm -rf $(VENV) && $(APT_INSTALL) python3-venv && $(PY) -m venv $(VENV); }

# dev: tests and linters; load: locust and py-spy, which the test suite runs too (a short
# `make loadtest` in tests/integration/test_locust.py)
# The client is its own distribution (client/python) that the server pins: install both in one
# pip run, so the pin is met by the local copy and never looked up on PyPI.
$(STAMP): pyproject.toml setup.py VERSION client/python/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e client/python -e '.[dev,load]'
	touch $@

sysdeps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		echo "installing redis-server"; \
		$(APT_INSTALL) redis-server && \
		{ $(SUDO) systemctl stop redis-server 2>/dev/null || $(SUDO) service redis-server stop 2>/dev/null || true; }; \
	fi

# Only tests need a browser (headless Chromium for the browser tests).
browser-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing chromium"; \
		$(APT_INSTALL) chromium; \
	fi

# Only tests need promtool (Debian's prometheus package: the alert unit tests) and haproxy
# (its config check). Debian's packages may start their daemons: stop them, tests start
# their own.
tool-deps:
	@if ! command -v promtool >/dev/null 2>&1; then \
		echo "installing prometheus (promtool)"; \
		$(APT_INSTALL) prometheus && \
		{ $(SUDO) systemctl stop prometheus 2>/dev/null || $(SUDO) service prometheus stop 2>/dev/null || true; }; \
	fi
	@if ! command -v haproxy >/dev/null 2>&1; then \
		echo "installing haproxy"; \
		$(APT_INSTALL) haproxy && \
		{ $(SUDO) systemctl stop haproxy 2>/dev/null || $(SUDO) service haproxy stop 2>/dev/null || true; }; \
	fi

# The JS SDK's dev dependencies (the `ws` package its Node tests inject), exactly as its
# lockfile pins them; again only when the lockfile changed.
JS = client/js
js-deps: $(JS)/node_modules/.package-lock.json

# Node and npm are usually there already; Debian's packages otherwise (bookworm: Node 18).
node:
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
		echo "installing nodejs and npm"; \
		$(APT_INSTALL) nodejs npm; \
	fi

$(JS)/node_modules/.package-lock.json: $(JS)/package-lock.json $(JS)/package.json | node
	cd $(JS) && npm ci --no-audit --no-fund
	touch $@

run: venv sysdeps
	$(BIN)/switchboard up $(ARGS)

# The suite runs in TEST_WORKERS pytest-xdist workers (each test's ports come from its
# worker's own block: tests/support.py). The browser tests run after, in one process of their
# own: Playwright's sync API keeps an event loop in the main thread that asyncio tests run
# after it in the same process could not start theirs under.
TEST_WORKERS ?= 4

test: venv sysdeps browser-deps tool-deps js-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -n $(TEST_WORKERS) tests --ignore=tests/browser
	$(BIN)/pytest -q -p no:xdist tests/browser

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# Load testing: locust, websocket-client and py-spy come from the `load` extra (in the venv).
# `make loadtest` runs locust headless against a `switchboard up` it starts and stops itself
# (reports in loadtest/reports/); `make bench` runs every benchmark scenario at sizes that
# finish in a few minutes on two cores (see BENCHMARKS.md for the full-size commands).
LOADTEST_ARGS ?= --duration 60 --users 300 --processes 2
BENCH_ARGS ?= --connections 5000 --duration 5 --users 1000 --runs 3 \
	--profile loadtest/reports/profiles --out loadtest/reports/bench.json

.PHONY: loadtest bench

loadtest: venv sysdeps
	$(BIN)/python -m loadtest.run_locust $(LOADTEST_ARGS)

bench: venv sysdeps
	$(BIN)/python -m loadtest.bench all $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info client/python/build client/python/*.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(JS)/node_modules

# One command per task; CI runs the same ones (.ci/run).
#   make demo   the whole system on an embedded PostgreSQL (or DATABASE_URL)
#   make test   the test suite against a real PostgreSQL (embedded, or TEST_DATABASE_URL)
#   make lint   ruff, mypy and hadolint

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := node_modules/.installed
SUPABASE_VENV := .venv-supabase
SUPABASE_INSTALLED := $(SUPABASE_VENV)/.installed
CHROMIUM ?= /usr/bin/chromium
HAPROXY ?= /usr/sbin/haproxy
REDIS_SERVER ?= /usr/bin/redis-server
PROMTOOL ?= /usr/bin/promtool
CADDY ?= /usr/bin/caddy
SHELLCHECK ?= /usr/bin/shellcheck

.PHONY: demo test test-db lint bench bench-full clean

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (PYTHON=$(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# htmx, from the npm registry (package-lock.json), and the relay's JavaScript client
# (clients/js, linked), served by the portal itself; and, for the tests only, the
# Supabase JavaScript clients and TypeScript (devDependencies).
$(NODE_INSTALLED): package.json package-lock.json clients/js/package.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The Supabase Python clients the tests drive (pyproject.toml, extra supabase-clients),
# in a venv of their own: they need websockets<16, the relay's tests run on the newest.
$(SUPABASE_INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(SUPABASE_VENV)
	$(PYTHON) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["supabase-clients"]))' > $(SUPABASE_VENV)/requirements.txt
	$(SUPABASE_VENV)/bin/pip install --quiet -r $(SUPABASE_VENV)/requirements.txt
	@touch $@

# The browser tests drive Debian's chromium (playwright cannot download one
# here); the tests of several relays put Debian's haproxy in front of them, and
# join their rooms through a redis-server of their own.
$(CHROMIUM) $(HAPROXY) $(REDIS_SERVER):
	@command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || \
		{ echo "$@ is missing: install Debian's chromium, haproxy and redis-server (apt-get install chromium haproxy redis-server)"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium haproxy redis-server >/dev/null

# The deployment's checks (tests/deploy/): promtool checks and unit-tests the alert
# rules, caddy adapts and validates the Caddyfile, shellcheck checks the workflow's
# scripts for actionlint.
$(PROMTOOL) $(CADDY) $(SHELLCHECK):
	@command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || \
		{ echo "$@ is missing: install Debian's prometheus, caddy and shellcheck (apt-get install prometheus caddy shellcheck)"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus caddy shellcheck >/dev/null

demo: $(INSTALLED) $(NODE_INSTALLED)
	$(BIN)/python -m portal.demo

test: $(INSTALLED) $(NODE_INSTALLED) $(SUPABASE_INSTALLED) $(CHROMIUM) $(HAPROXY) $(REDIS_SERVER) $(PROMTOOL) $(CADDY) $(SHELLCHECK)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The database tests only: .ci/run runs them a second time against another
# PostgreSQL major version, named by TEST_DATABASE_URL.
test-db: $(INSTALLED) $(NODE_INSTALLED) $(SUPABASE_INSTALLED) $(CHROMIUM) $(HAPROXY) $(REDIS_SERVER) $(PROMTOOL) $(CADDY) $(SHELLCHECK)
	$(BIN)/python -m pytest -m db $(PYTEST_ARGS)

# Benchmarks: `make bench` is quick (small sizes, a few minutes), `make
# bench-full` runs the sizes of the benchmark issue. Results: bench/results/.
BENCH_INSTALLED := $(VENV)/.installed-bench
$(BENCH_INSTALLED): $(INSTALLED)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $@

bench: $(BENCH_INSTALLED)
	$(BIN)/python -m bench.run --quick

bench-full: $(BENCH_INSTALLED)
	$(BIN)/python -m bench.run --full

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf $(VENV) $(SUPABASE_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# pouchdb-server (a CouchDB-compatible server, in memory) for the tests of
# --user-tokens couchdb:URL, installed in the repository, never globally.
NODE_PREFIX := .node
POUCHDB_STAMP := $(NODE_PREFIX)/.installed

.PHONY: setup postgresql strace systemd-analyze lint test test-fast run soak bench drill clean

setup: $(STAMP) $(POUCHDB_STAMP) postgresql strace systemd-analyze

# Reinstall whenever the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

$(POUCHDB_STAMP):
	npm install --no-audit --no-fund --prefix $(NODE_PREFIX) pouchdb-server@4.2.0
	touch $(POUCHDB_STAMP)

# Debian's PostgreSQL, only when no initdb can be found (we run as root here).
postgresql:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "PostgreSQL found"; \
	else \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	fi

# The export-fs test reads the system calls an export makes (fsync before rename).
strace:
	@command -v strace >/dev/null 2>&1 || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q strace)

# The tests verify contrib/systemd/'s units with it (Debian's systemd package).
systemd-analyze:
	@command -v systemd-analyze >/dev/null 2>&1 || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd)

# ruff (lint and format) and mypy, as configured in pyproject.toml; part of `make test`.
LINTED := pgblobs tests bench migrations/env.py
lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

# Everything, tests/fast included.
test: setup lint
	$(PY) -m pytest -q

# The tests that need no PostgreSQL and no real seconds (a fake clock, an
# in-memory transport, the memory backend): seconds, for every change.
test-fast: setup
	$(PY) -m pytest -q tests/fast

# The embedded default: a PostgreSQL kept in ./.pgblobs, the API on 127.0.0.1:9000,
# the services listener (mail delivery) on 127.0.0.1:9001.
run: setup
	$(VENV)/bin/pgblobs serve --services-listen tcp:9001:interface=127.0.0.1

# pg_dump against pg_basebackup at these numbers of large objects (1,000,000 takes ~20 min).
BACKUP_COUNTS ?= 100000 1000000

# pgblobs against the large-object ceiling, plain files, nginx and bare twisted.web (small
# requests driven by wrk); writes bench/results.md; sustained writes from an empty database
# (bench/sustained.md); one user's big stream upload against other users' small writes; the
# cutover from a Soledad store, step by step (bench/cutover.md); the change feed against
# Soledad's two listings per sync, push latency across nodes, 1,000 held requests'
# memory and CPU (bench/changes.md).
bench: setup
	$(PIP) install --quiet -e '.[test,bench]'
	@command -v nginx >/dev/null 2>&1 || ls /usr/sbin/nginx >/dev/null 2>&1 || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light)
	@command -v wrk >/dev/null 2>&1 || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk)
	PATH="$$PATH:/usr/sbin" $(PY) -m bench.run
	$(PY) -m bench.sustained
	$(PY) -m bench.stall
	$(PY) -m bench.cutover
	$(PY) -m bench.changes
	$(PY) -m bench.uploads
	$(PY) -m bench.backups $(BACKUP_COUNTS)

# The restore drill (README "Backups and restore"): base backup, archived WAL, point-in-time
# restore into a new cluster, fsck --verify-content; part of `make test` too.
drill: setup
	$(PY) -m pytest -q -s tests/reliability/test_backup_drill.py

# Two nodes, ~50 clients, a node killed and PostgreSQL restarted; not run by CI.
soak: setup
	$(PY) -m tests.soak --minutes 3

clean:
	rm -rf $(VENV) $(NODE_PREFIX) build *.egg-info

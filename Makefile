# Every target sets up what it needs, so `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(PYTHON) -m uv
# Real TFTP clients, etcd for the cluster tests, QEMU + iPXE for the firmware boot test,
# debootstrap + systemd-nspawn for the test hosts, promtool (prometheus) for the alert rules,
# gcc for the benchmark's C yardstick (benchmarks/reference).
APT_PACKAGES := tftp-hpa atftp curl etcd-server qemu-system-x86 ipxe-qemu debootstrap \
	systemd-container iproute2 prometheus gcc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps run test lint unit interop bench clean

.venv/.synced: pyproject.toml uv.lock daemon/simple_tftpd/_fastpath.c
	$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --all-groups
	touch $@

setup: .venv/.synced

# Real TFTP clients from Debian for the interop tests.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The daemon on the embedded default: ./tftpboot on UDP 69, API on 8080.
run: setup
	$(UV) run simple-tftpd serve

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

unit: setup
	$(UV) run pytest tests/unit -q

interop: system-deps setup
	$(UV) run pytest tests/interop -q

# Azurite (Azure Blob emulator) for tests/backup, from npm into tests/.npm (git-ignored).
# Node.js and npm come from Debian when missing (Debian's nodejs package has no npm).
AZURITE_VERSION := 3.35.0
AZURITE := tests/.npm/node_modules/.bin/azurite-blob

$(AZURITE):
	@command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; }
	npm install --prefix tests/.npm --no-audit --no-fund --no-save azurite@$(AZURITE_VERSION)
	touch $@

.PHONY: test-npm-deps
test-npm-deps: $(AZURITE)

# system-deps before setup: gcc must be there when setup builds the compiled fast path.
test: system-deps setup test-npm-deps lint
	$(UV) run pytest -q

# Side-by-side benchmark against tftpd-hpa, atftpd and tftpy (peers fetched by the harness);
# rewrites docs/benchmarks.md (`make bench ARGS=--quick`: a small run into benchmarks/results/).
bench: system-deps setup
	$(UV) run python benchmarks/run.py $(ARGS)

# Seconds-long run of the harness itself against simple-tftpd only (no peers, no apt).
.PHONY: bench-smoke
bench-smoke: system-deps setup
	$(UV) run python benchmarks/run.py --quick --servers simple-tftpd --repeats 1 --out /tmp/simple-tftpd-bench-smoke.md

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache

# Roll-outs end to end on systemd-nspawn test hosts (a clustered site with etcd, an nginx load
# balancer, a spare host that `fab cluster-join` adds, and a TLS site;
# root; the hosts' Debian root is built once and cached in /var/cache/simple-tftpd-testbed).
# `make test` runs it too. `make testbed-clean` removes what a killed run left behind.
.PHONY: e2e testbed-clean
e2e: system-deps setup
	$(UV) run pytest tests/deploy -q -m e2e

testbed-clean: setup
	$(UV) run python -m testbed down

# Set-up and everyday commands. Everything a fresh machine lacks is installed by these targets:
# a virtualenv from the pinned requirements, Azurite from npm into node_modules/.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AZURITE := node_modules/.bin/azurite
AZURITE_DIR := .azurite

.PHONY: install run test lint bench clean azurite

CHROMIUM := /usr/bin/chromium
CLOUD_INIT := /usr/bin/cloud-init

install: $(VENV)/.installed node_modules/.installed $(CHROMIUM) $(CLOUD_INIT)

$(VENV)/.installed: requirements.txt agent/requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt \
		-r agent/requirements.txt -r requirements-dev.txt
	touch $@

# The dashboard's browser tests drive Debian's Chromium through Playwright (Playwright's own
# browser download is not used). CI is root on Debian; elsewhere, install the package yourself.
$(CHROMIUM):
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "install Debian's chromium package (sudo apt-get install chromium)" >&2; exit 1; fi

# `cloud-init schema` validates the pool VMs' cloud-config (tests/pool/test_vm_description.py).
$(CLOUD_INIT):
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cloud-init; \
	else echo "install Debian's cloud-init package (sudo apt-get install cloud-init)" >&2; exit 1; fi

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Azurite alone on its default ports (10000-10002), data kept in .azurite/.
azurite: node_modules/.installed
	$(AZURITE) --silent --disableTelemetry --skipApiVersionCheck --location $(AZURITE_DIR)

run: install
	$(PY) -m tools.run_local

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(PY) scripts/check_infra.py

# Benchmarks print their figures and write bench/results/ and docs/benchmarks.md tables.
bench: install
	$(PY) -m bench.policy
	$(PY) -m bench.spot
	$(PY) -m bench.latency
	$(PY) -m bench.twin
	$(PY) -m bench.agent_throughput | tee bench/results/agent_throughput.txt
	$(PY) -m bench.durable_engine --activities 1000 --rounds 3 | tee bench/results/durable_1000.txt
	$(PY) -m bench.durable_engine --activities 10000 --rounds 1 | tee bench/results/durable_10000.txt
	$(PY) -m bench.report

clean:
	rm -rf $(VENV) .venv-worker .venv-infra node_modules .local-pool $(AZURITE_DIR) .pytest_cache .ruff_cache

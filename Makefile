# braggflow: `make run` runs the whole workflow on config/config.yaml, `make test` runs the tests,
# `make report` writes the provenance report of the run (results/report.html, one self-contained file).
# All install what they need first: a virtual environment (.venv) and, where apt is available,
# the Debian packages of the stages and tests that use them (DIALS, cctbx; Chromium opens the report in the tests;
# SLURM, munge, slurmdbd and MariaDB make the one-node cluster of tests/test_slurm.py).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
REPORT ?= results/report.html
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
APT_PACKAGES := python3-venv dials python3-cctbx chromium slurm-wlm munge slurmdbd mariadb-server

.PHONY: run test report dry-run install system-deps clean

run: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/pytest

# Brings the run up to date first (nothing to do after `make run`), then writes the report.
report: run
	$(BIN)/snakemake --report $(REPORT)

dry-run: install
	$(BIN)/snakemake -n

install: system-deps $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

# Installs only what is missing; explains and carries on where apt or root is not available
# (the tests that need these programs then skip, saying why).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "system packages present: $(APT_PACKAGES)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "NOTE: apt-get not found; not installing$$missing (stages and tests that need them are skipped)"; \
	else \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq || echo "NOTE: apt-get update failed"; \
	  for p in $$missing; do \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$p >/dev/null \
	      || echo "NOTE: could not install $$p (not root, or not in this distribution); what needs it is skipped"; \
	  done; \
	fi

clean:
	rm -rf results logs .snakemake

# cryptobots: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
# setup re-installs only when these change (their hash, with SETUP_VERSION, is kept in the venv)
SETUP_INPUTS := requirements.txt pyproject.toml
SETUP_VERSION := bytecode-1
# setup compiles site-packages to bytecode; a few files ccxt vendors do not compile (they
# are never imported), so compileall's exit status is ignored
SETUP_STAMP := $(VENV)/.cryptobots-setup

.PHONY: help setup bench-deps browser run test test-unit test-integration test-e2e lint bench gpu-check lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

setup: ## create .venv with the pinned requirements and the project (quick when nothing changed)
	@want=$$( (cat $(SETUP_INPUTS); echo $(SETUP_VERSION)) | sha256sum | cut -d' ' -f1); \
	if [ -x $(PY) ] && [ "$$(cat $(SETUP_STAMP) 2>/dev/null)" = "$$want" ]; then \
		echo "setup: $(VENV) is up to date"; exit 0; fi; \
	set -e; \
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION); \
	$(VENV)/bin/uv pip install --python $(PY) --quiet -r requirements.txt; \
	$(VENV)/bin/uv pip install --python $(PY) --quiet --no-deps -e .; \
	echo "setup: compiling site-packages to bytecode once (uv does not, and with"; \
	echo "  PYTHONDONTWRITEBYTECODE set every process would compile TensorFlow and GX again)"; \
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
		>/dev/null || true; \
	echo "$$want" > $(SETUP_STAMP); \
	echo "setup: $(VENV) ready"

bench-deps: setup ## Stable-Baselines3 and a CPU torch (requirements-bench.txt): the SB3 example, its test, the SB3 benches
	@# pip, not uv: pip takes the CPU wheel from PIP_FIND_LINKS; uv would fetch a CUDA torch build
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	@if $(PY) -m pip list 2>/dev/null | grep -qi '^nvidia-'; then \
		echo "bench-deps: a CUDA torch was installed (nvidia-* packages): point PIP_FIND_LINKS at a CPU wheel of torch"; fi

browser: ## install Debian's chromium and chromium-driver for the browser tests (root or sudo)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "browser: chromium and chromedriver present"; exit 0; fi; \
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver

run: setup ## the main job: simulator, Airflow, backfill, a first model, the paper trader (Ctrl-C stops)
	$(PY) -m pipeline run $(ARGS)

test: setup lint ## lint, then the whole suite, two test groups at a time (ARGS="-n 0": one at a time)
	$(PY) -m pytest -n 2 --durations=30 $(ARGS)

test-unit: setup ## the unit layer: no network, no database, under a minute
	$(PY) -m pytest tests/unit $(ARGS)

test-integration: setup ## the integration layer: real Postgres, the simulator, Airflow
	$(PY) -m pytest tests/integration $(ARGS)

test-e2e: setup ## the end-to-end layer: `make run` as a user starts it, and the browser
	$(PY) -m pytest tests/e2e $(ARGS)

lint: setup ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup ## every benchmark in bench/ but the long or GPU-only ones (ALL=1: all), each with its ratios
	@on_request=" celery_overhead gpu_check time_to_quality "; failed=""; skipped=""; \
	for script in bench/[a-z]*.py; do \
		name=$$(basename $$script .py); \
		[ "$$name" = common ] && continue; \
		if [ -z "$(ALL)" ] && [[ "$$on_request" == *" $$name "* ]]; then \
			skipped="$$skipped $$name"; continue; fi; \
		echo "== $$script"; \
		$(PY) -m bench.$$name || failed="$$failed $$name"; \
	done; \
	if [ -n "$$skipped" ]; then \
		echo "bench: skipped$$skipped (long or GPU-only): make bench ALL=1 runs them too"; fi; \
	if [ -n "$$failed" ]; then echo "bench: failed (floors or errors):$$failed"; exit 1; fi

gpu-check: setup ## prove the GPU paths (training device, ONNX Runtime CUDA vs CPU, parity); fails without a GPU
	$(PY) -m bench.gpu_check --require-gpu $(ARGS)

lock: setup ## recompile the pinned requirements files from the *.in files
	$(VENV)/bin/uv pip compile --quiet --python-version 3.11 requirements.in -o requirements.txt
	$(VENV)/bin/uv pip compile --quiet --python-version 3.11 requirements-gpu.in -c requirements.txt -o requirements-gpu.txt
	$(VENV)/bin/uv pip compile --quiet --python-version 3.11 serving/requirements.in \
		-c requirements.txt -o serving/requirements.txt

clean: ## remove .venv and everything under var/
	rm -rf $(VENV) var

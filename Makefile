# Everyday commands. Each target installs what it needs first (a venv in .venv/).
#   make retrain DATA_SRC=../shared/data/chest_xray WEIGHTS=none   # the retraining job, offline
#   make test                                                      # the whole test suite
PYTHON ?= python$(shell cat .python-version)
VENV ?= .venv
BIN := $(VENV)/bin
DATA_SRC ?=
WEIGHTS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install lock audit system-deps data retrain test test-fast rehearsal lint format bench bench-pipeline clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

# The venv is installed from the development lock (requirements-dev.txt: exact versions, every
# file's sha256), which includes the pipeline's and the app's locks. The install stamp names the
# hash of the lock: a changed lock reinstalls, a copy of the same files (a fresh checkout, a CI
# workspace) does not.
LOCK := requirements-dev.txt
INSTALLED := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml .python-version | sha256sum | cut -c1-16)

$(INSTALLED):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed*
	touch $@

install: $(INSTALLED) ## create .venv from the development lock (pipeline, app and dev tools)

lock: install ## re-lock after editing a requirements*.in (UPGRADE=1: newest versions the inputs allow)
	$(BIN)/python -m pneumonia.locks compile $(if $(UPGRADE),--upgrade)

system-deps: ## Debian packages from .ci/apt-packages.txt (chromium for the browser test...), as root
	@if [ -n "$(SKIP_SYSTEM_DEPS)" ]; then exit 0; fi; \
	missing=$$(grep -v '^#' .ci/apt-packages.txt | while read -r p; do \
	  dpkg -s "$$p" >/dev/null 2>&1 || echo "$$p"; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "missing Debian packages: $$missing (run 'sudo make system-deps')" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends $$missing

data: install ## get data/chest_xray: `dvc pull`, or copy DATA_SRC and check it against chest_xray.dvc
	@if [ -d data/chest_xray ]; then \
	  echo "data/chest_xray is present"; \
	elif [ -n "$(DATA_SRC)" ]; then \
	  echo "copying $(DATA_SRC) to data/chest_xray"; \
	  cp -R "$(DATA_SRC)" data/chest_xray && chmod -R u+w data/chest_xray; \
	else \
	  PATH=$(BIN):$$PATH dvc pull chest_xray.dvc; \
	fi
	@cp chest_xray.dvc .chest_xray.dvc.expected
	@PATH=$(BIN):$$PATH dvc commit -f -q chest_xray.dvc
	@if cmp -s chest_xray.dvc .chest_xray.dvc.expected; then \
	  rm .chest_xray.dvc.expected; echo "data/chest_xray matches the version in chest_xray.dvc"; \
	else \
	  mv .chest_xray.dvc.expected chest_xray.dvc; \
	  echo "error: data/chest_xray differs from the version recorded in chest_xray.dvc." >&2; \
	  echo "  Add new images with 'python -m pneumonia.ingest', or remove data/chest_xray and" >&2; \
	  echo "  run 'make data' again to get the recorded version." >&2; exit 1; \
	fi

retrain: data ## the retraining job: dvc repro (WEIGHTS=none|imagenet|file overrides train.weights)
	@if [ -n "$(WEIGHTS)" ]; then \
	  PATH=$(BIN):$$PATH dvc exp run -S train.weights=$(WEIGHTS); \
	else \
	  PATH=$(BIN):$$PATH dvc repro; \
	fi
	@PATH=$(BIN):$$PATH dvc metrics show

# pytest exits 5 when it collected nothing: a broken selection, not a pass; say so plainly.
test: install system-deps ## all tests, the slow end-to-end ones included (what CI runs)
	@$(BIN)/pytest $(PYTEST_ARGS); status=$$?; \
	  if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$status

test-fast: install ## tests without the slow end-to-end ones
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

rehearsal: install system-deps ## the workflows executed with act against local stand-ins (docs/operations.md)
	$(BIN)/pytest tests/workflows $(PYTEST_ARGS)

lint: install ## ruff, zizmor (workflow security) and the locks against their inputs
	$(BIN)/ruff check src tests django_app bench conftest.py
	$(BIN)/ruff format --check src tests django_app bench conftest.py
	$(BIN)/zizmor --offline --min-severity medium .github/
	$(BIN)/python -m pneumonia.locks check

# pip-audit asks OSV (api.osv.dev) about each locked version: the ci workflow runs it. Machines
# that reach only the package index cannot; OSV_URL points it at another OSV query endpoint.
audit: install ## known vulnerabilities in the locked packages (pip-audit against OSV; OSV_URL=...)
	$(BIN)/pip-audit --strict --progress-spinner off --vulnerability-service osv \
	  $(if $(OSV_URL),--osv-url $(OSV_URL)) --require-hashes --disable-pip -r $(LOCK)

format: install ## ruff: fix imports and format
	$(BIN)/ruff check --fix src tests django_app
	$(BIN)/ruff format src tests django_app

bench: install ## training step, inference and web benchmarks (QUICK=1: only check they run)
	$(BIN)/python bench/train_step.py $(if $(QUICK),--quick)
	$(BIN)/python bench/inference.py $(if $(QUICK),--quick)
	$(BIN)/python bench/request_profile.py $(if $(QUICK),--quick)
	$(BIN)/python bench/web.py $(if $(QUICK),--quick)
	$(BIN)/python -m bench.upload_memory $(if $(QUICK),--quick)

bench-pipeline: data ## time every stage on the full data (random init): docs/benchmarks.md
	PATH=$(BIN):$$PATH bash bench/pipeline_stages.sh -S train.weights=none

clean: ## remove pipeline outputs (not data, not the DVC cache)
	rm -rf data/prepared models metrics/figures .mlflow

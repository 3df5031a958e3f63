# Kontinual: `make test` builds .venv with everything the test suite needs, starts what the
# tests need (the real control plane of tests/cluster is started by the e2e tier itself) and
# runs every tier. `make up` brings Kontinual up on a local kind cluster.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kontinual-installed
GUARD := $(VENV)/.netguard-installed
TOOLS := .venv-tools
# The Apache-licensed runtime's own venv (kserve and deepsparse[server] cannot share one: fastapi pins).
RUNTIME := .venv-runtime
RUNTIME_STAMP := $(RUNTIME)/.kontinual-installed
TOOLS_STAMP := $(TOOLS)/.installed
PYTEST := $(BIN)/python -m pytest

# No analytics (sparsezoo/deepsparse/sparseml look up an analytics host unless NM_DISABLE_ANALYTICS is set),
# writable config dirs for yolov5/ultralytics. (ultralytics ignores YOLO_OFFLINE: kontinual.trainer.offline
# keeps it from probing the internet.)
export NM_DISABLE_ANALYTICS := 1
export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/.venv/yolo-config
export YOLOV5_CONFIG_DIR := $(CURDIR)/.venv/yolo-config
export PYTHONUNBUFFERED := 1

.PHONY: venv check test test-unit test-emulator test-serving test-training test-chart test-e2e \
        test-node test-runtime bench up down clean lock lock-runtime

venv: $(STAMP) $(GUARD) $(RUNTIME_STAMP)

$(STAMP): requirements/test.txt requirements/dev.txt requirements/lock.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip<26"
	$(BIN)/python -m pip install -q -r requirements/test.txt -r requirements/dev.txt -c requirements/lock.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@mkdir -p $(YOLO_CONFIG_DIR)
	@touch $@

# The egress guard's start-up hook in the venv: every Python process of a test run refuses and
# records connections off this machine (tests/support/netguard.py; tests/conftest.py turns it on).
$(GUARD): $(STAMP) tests/support/netguard.py
	$(BIN)/python tests/support/netguard.py --install-bootstrap
	@touch $@

# The kserve runtime's venv (tests/runtime starts its server from it), from its own lock, with the
# egress guard's bootstrap as in .venv: the servers it starts inherit the guard too.
$(RUNTIME_STAMP): requirements/runtime.txt requirements/runtime-lock.txt tests/support/netguard.py
	@test -x $(RUNTIME)/bin/python || $(PYTHON) -m venv $(RUNTIME)
	$(RUNTIME)/bin/python -m pip install -q --upgrade "pip<26"
	$(RUNTIME)/bin/python -m pip install -q -r requirements/runtime.txt -c requirements/runtime-lock.txt
	$(RUNTIME)/bin/python tests/support/netguard.py --install-bootstrap
	@touch $@

# Static checks: ruff (pyflakes, pycodestyle, bugbear, simplify, complexity), mypy, and the
# import-linter contracts of pyproject.toml (the package's layers). Their own venv: .venv-tools.
$(TOOLS_STAMP): requirements/tools.txt
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q -r requirements/tools.txt
	@touch $@

check: $(TOOLS_STAMP) venv
	$(TOOLS)/bin/ruff check operator tests benchmarks
	$(TOOLS)/bin/mypy --python-executable $(BIN)/python operator/kontinual
	cd operator && ../$(TOOLS)/bin/lint-imports --no-cache ../pyproject.toml

# The static checks first, then every tier in order of speed (unit and emulator first: they fail fast).
test: check
	$(PYTEST) -p no:cacheprovider -ra --durations=15 tests

test-unit: venv
	$(PYTEST) -ra tests/unit
test-emulator: venv
	$(PYTEST) -ra tests/emulator
test-serving: venv
	$(PYTEST) -ra tests/serving
test-training: venv
	$(PYTEST) -ra tests/training
test-chart: venv
	$(PYTEST) -ra tests/chart
test-runtime: venv
	$(PYTEST) -ra tests/runtime
test-e2e: venv
	$(PYTEST) -ra tests/e2e
# A real node (kubelet, kube-proxy, Docker) and the whole loop in real pods; needs root, else it is
# skipped with a banner (see tests/node). `make test` runs it too.
test-node: venv
	$(PYTEST) -p no:cacheprovider -ra --durations=15 tests/node

bench: venv
	$(BIN)/python benchmarks/reconcile.py
	$(BIN)/python benchmarks/logging_overhead.py
	$(BIN)/python benchmarks/sparse_speedup.py
	$(BIN)/python benchmarks/runtimes.py
	$(BIN)/python benchmarks/recipe_cost.py
	$(BIN)/python benchmarks/sparsity_ceiling.py

# A local kind cluster with Kontinual installed and the minimal example serving (needs docker + kind).
up:
	bash hack/up.sh
down:
	bash hack/down.sh

clean:
	rm -rf $(VENV) $(TOOLS) $(RUNTIME) .pytest_cache .mypy_cache .ruff_cache

# Freeze the test environment into requirements/lock.txt (the images' constraints).
lock: venv
	{ echo "# Every package of the test environment (pip freeze of .venv, regenerate with: make lock)."; \
	  echo "# The images use it as constraints, so they run the exact versions the tests ran; tests/chart checks it."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^-e' | sort -f; } > requirements/lock.txt

# Freeze the runtime venv into requirements/runtime-lock.txt (images/server-openvino's constraints).
lock-runtime: $(RUNTIME_STAMP)
	{ echo "# Every package of the kserve runtime's venv (pip freeze of .venv-runtime, regenerate with: make lock-runtime)."; \
	  echo "# images/server-openvino uses it as constraints; tests/runtime/test_licenses.py checks every licence in it."; \
	  $(RUNTIME)/bin/pip freeze --exclude-editable | grep -v '^-e' | sort -f; } > requirements/runtime-lock.txt

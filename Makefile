# hpo — the two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: any unpinned torch requirement would pull a newer CUDA build (gigabytes).
TORCH  ?= torch==2.13.0
# pytest processes (pytest-xdist; each test file runs whole in one of them, so module fixtures are
# made once). 2 on 2 cores: the integration tests spend about half their time waiting on the
# subprocesses and servers they start. PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= 2
PYTEST_XDIST   := -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: install demo test test-fast lint format bench browser clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install  ## run studies/quickstart.yaml on the embedded defaults (SQLite + local MLflow store)
	$(BIN)/hpo study start studies/quickstart.yaml

bench: install  ## measure overhead, throughput, search, parallel, CLI speed, memory (quick mode)
	$(BIN)/python -m benchmarks.run --quick

lint: install
	$(BIN)/ruff check hpo tests $(wildcard benchmarks)
	$(BIN)/ruff format --check hpo tests $(wildcard benchmarks)
	$(BIN)/mypy hpo

test: install lint browser  ## the whole suite (GPU tests skip themselves without CUDA)
	$(BIN)/python -m pytest -q $(PYTEST_XDIST) --durations=20

# Debian's Chromium and ChromeDriver for the MLflow UI browser test (tests/integration/test_ui.py).
# Installed once, as root or with passwordless sudo; elsewhere that test skips and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver for the browser test"; \
	    ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
	      || echo "could not install chromium: the browser test will be skipped"; \
	  else echo "no root, sudo or apt-get: the browser test will be skipped"; fi; \
	fi

test-fast: install
	$(BIN)/python -m pytest -q $(PYTEST_XDIST) -m "not slow"

format: install
	$(BIN)/ruff format hpo tests $(wildcard benchmarks)
	$(BIN)/ruff check --fix hpo tests $(wildcard benchmarks)

clean:
	rm -rf $(VENV) hpo.db mlflow.db mlartifacts mlruns .pytest_cache .mypy_cache .ruff_cache

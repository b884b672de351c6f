# hpo — the two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: any unpinned torch requirement would pull a newer CUDA build (gigabytes).
TORCH  ?= torch==2.13.0

.PHONY: install demo test test-fast lint format bench clean

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

test: install lint  ## the whole suite (GPU tests skip themselves without CUDA)
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

format: install
	$(BIN)/ruff format hpo tests $(wildcard benchmarks)
	$(BIN)/ruff check --fix hpo tests $(wildcard benchmarks)

clean:
	rm -rf $(VENV) hpo.db mlflow.db mlartifacts mlruns .pytest_cache .mypy_cache .ruff_cache

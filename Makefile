# fedveil: `make demo` runs the embedded default experiment, `make test` runs the test suite.
# Both create .venv on first use (idempotent: the venv is rebuilt only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test dashboard bench lint typecheck

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 first, so the CPU build is taken and no CUDA build is pulled in.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedveil run

test: $(STAMP)
	$(BIN)/python -m pytest tests

dashboard: $(STAMP)
	$(BIN)/fedveil dashboard

bench: $(STAMP)
	$(BIN)/fedveil bench all

lint: $(STAMP)
	$(BIN)/ruff check fedveil server client privacy distill dashboard tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

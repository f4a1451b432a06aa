# longer-train — the commands a newcomer needs: `make train` and `make test`.
# Both create .venv and install on first use; later runs reuse it (the stamp file below).
#
#   make setup            create .venv with the pinned torch / fbgemm-gpu / torchrec triple
#   make train            generate the built-in synthetic data (once) and train configs/quickstart.yaml
#   make test             run the CPU test suite
#   make lint             ruff
#   make gpu-check        on the GPU machine: kernel tests at GPU sizes + kernel benchmarks (docs/kernels.md)
#
# CUDA=cpu (default) installs the CPU torch + fbgemm-gpu-cpu; CUDA=cu126 or CUDA=cu130 takes torch and
# fbgemm-gpu from the PyTorch wheel index for that CUDA version (all three must come from one index).
# Triton: CUDA torch wheels bring their own; for CPU we install TRITON_VERSION (kernel tests run it under
# the Triton interpreter).

PYTHON ?= python3
CUDA ?= cpu
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(CUDA)

TORCH_VERSION := 2.13.0
FBGEMM_VERSION := 1.8.0
TORCHREC_VERSION := 1.8.0
TRITON_VERSION := 3.9.0
TORCH_INDEX := https://download.pytorch.org/whl/$(CUDA)

DATA_DIR ?= data/synthetic
CONFIG ?= configs/quickstart.yaml
ARGS ?=

# make gpu-check runs with the GPU machine's own python (torch + triton + pytest, no torchrec, no .venv, no
# install): a throwaway package folder makes the top-level kernels/ importable as longer_train.kernels and
# nothing else of longer_train; PYTHONSAFEPATH=1 keeps the repository root (and its longer_train/) off sys.path.
GPU_PYTHON ?= python3
GPU_PATH := build/gpu-check

.PHONY: setup train data test lint gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifeq ($(CUDA),cpu)
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) fbgemm-gpu-cpu==$(FBGEMM_VERSION) triton==$(TRITON_VERSION)
else
	$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) torch==$(TORCH_VERSION) fbgemm-gpu==$(FBGEMM_VERSION)
endif
	$(PY) -m pip install --quiet --no-deps torchrec==$(TORCHREC_VERSION)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(DATA_DIR)/.complete: | $(STAMP)
	$(VENV)/bin/longer-data synthetic --out $(DATA_DIR)

data: $(DATA_DIR)/.complete

train: $(STAMP) $(DATA_DIR)/.complete
	$(VENV)/bin/longer-train $(CONFIG) data.root=$(DATA_DIR) $(ARGS)

test: $(STAMP)
	WANDB_MODE=offline $(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m ruff check longer_train kernels tests benchmarks

gpu-check:
	rm -rf $(GPU_PATH) && mkdir -p $(GPU_PATH)/longer_train benchmarks/results
	touch $(GPU_PATH)/longer_train/__init__.py && ln -s $(CURDIR)/kernels $(GPU_PATH)/longer_train/kernels
	PYTHONSAFEPATH=1 PYTHONPATH=$(GPU_PATH) KERNELS_TEST_SIZE=gpu LONGER_KERNELS_AUTOTUNE=0 timeout 110 \
		$(GPU_PYTHON) -m pytest -q -p no:cacheprovider tests/kernels > benchmarks/results/kernel_tests_h200.txt 2>&1; \
		status=$$?; cat benchmarks/results/kernel_tests_h200.txt; exit $$status
	PYTHONSAFEPATH=1 PYTHONPATH=$(GPU_PATH) timeout 180 $(GPU_PYTHON) benchmarks/kernels.py --out benchmarks/results/kernels_h200.md

clean:
	rm -rf $(VENV) data runs wandb build

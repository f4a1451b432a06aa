# longer-train — the commands a newcomer needs: `make train` and `make test`.
# Both create .venv and install on first use; later runs reuse it (the stamp file below).
#
#   make setup            create .venv with the pinned torch / fbgemm-gpu / torchrec triple and the versions of
#                         constraints.txt (make deps: the dependencies only; make constraints: write it again)
#   make train            generate the built-in synthetic data (once) and train configs/quickstart.yaml
#   make train-paper      the same with the paper's final model (configs/paper.yaml: d = 32, Merge8 + InnerTrans,
#                         k = 100, 2,000-event history, batches of 64); prints its FLOPs beside the Transformer's
#   make test             run the CPU test suite
#   make lint             ruff
#   make gpu-check        on the GPU machine, at most 8 minutes: the dense model in bf16 (step time, MFU against the
#                         rated peak, memory, LONGER vs the Transformer and the stock encoder), trainer throughput
#                         against the loader, kernel benchmarks, kernel tests at GPU sizes; files named by the
#                         device (docs/kernels.md); its CPU dry run is in make test
#   make bench-quality DATA=movielens   every model of the paper's Table 1 on a dataset, SEEDS=3 seeds of
#                         LONGER, Transformer, HSTU, DIN and BASELINE_SEEDS=1 of the rest;
#                         (DATA = synthetic | match_long | match_recent | movielens | taobao; MULTI_SEED='...'
#                         names the experiments run with SEEDS seeds, REFERENCE the row of the paired
#                         differences, default longer; OVERRIDES='key=value ...' for every run, e.g.
#                         model.candidate_match=attention_readout for the match benchmark); prepares the data first if missing,
#                         from SRC (default: the copy in ../shared/data), keeping USERS random users
#                         (default 800 generated users for synthetic, 0 = all for the others) and at
#                         most ROWS random rows per user and split (default 3
#                         for movielens, 24 for taobao; 0 = all); writes
#                         benchmarks/results/quality_$(DATA).md and its section of docs/results.md
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
DEPS_STAMP := $(VENV)/.deps-$(CUDA)

TORCH_VERSION := 2.13.0
FBGEMM_VERSION := 1.8.0
TORCHREC_VERSION := 1.8.0
TRITON_VERSION := 3.9.0
TORCH_INDEX := https://download.pytorch.org/whl/$(CUDA)

DATA_DIR ?= data/synthetic
CONFIG ?= configs/quickstart.yaml
ARGS ?=

# make gpu-check runs with the GPU machine's own python, no .venv and no install: benchmarks/gpu_check.sh
GPU_PYTHON ?= python3

BENCH_ARGS = $(if $(SRC),--src $(SRC)) $(if $(USERS),--sample-users $(USERS)) $(if $(ROWS),--rows-per-user $(ROWS)) $(if $(SEEDS),--seeds $(SEEDS)) \
	$(if $(BASELINE_SEEDS),--baseline-seeds $(BASELINE_SEEDS)) $(if $(MULTI_SEED),--multi-seed $(MULTI_SEED)) \
	$(if $(REFERENCE),--reference $(REFERENCE)) $(if $(OVERRIDES),--overrides $(OVERRIDES))

# every claim's sweep: the synthetic tables, the real-data Table 1, the final model at 2,000 events
SWEEPS := scale_spread table1 table2_merge table2_queries table2_rules scaling_length scaling_params scaling_flops precision \
	table1_taobao table1_movielens table1_movielens_2000 final_2000
SWEEP ?= $(SWEEPS)
# and the benchmarks behind claim 6 (KV-cache speed) and claim 7's memory, unless SWEEP names sweeps to run
CLAIM_BENCHES ?= $(if $(filter file,$(origin SWEEP)),serving activation_memory)
JOBS ?= 2
SWEEP_ARGS ?=
# make reproduce writes the committed tables and figures (a plain longer-sweep writes under runs/sweeps/)
REPRODUCE_OUT := --results benchmarks/results/sweeps --figures docs/figures

.PHONY: setup deps constraints train train-paper data test lint gpu-check clean bench-quality reproduce

setup: $(STAMP)

# torchrec goes in last and with --no-deps: its metadata requires fbgemm-gpu (the CUDA build; on CPU we install
# fbgemm-gpu-cpu), so any pip install after it would end with the resolver's harmless
# "ERROR ... torchrec requires fbgemm-gpu, which is not installed" (docs/install.md)

# Two steps, so that a Docker layer (docker/) can install the dependencies before the code is copied in:
# deps: the pinned triple, then every other dependency at the version in constraints.txt (the versions make test
# passed with; `make constraints` writes it again after a dependency changes in pyproject.toml); setup: this
# package itself, editable, its dependencies held to the same constraints.
deps: $(DEPS_STAMP)

$(DEPS_STAMP): Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifeq ($(CUDA),cpu)
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) fbgemm-gpu-cpu==$(FBGEMM_VERSION) triton==$(TRITON_VERSION)
else
	$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) torch==$(TORCH_VERSION) fbgemm-gpu==$(FBGEMM_VERSION)
endif
	$(PY) -m pip install --quiet -r constraints.txt
	$(PY) -m pip install --quiet --no-deps torchrec==$(TORCHREC_VERSION)
	touch $(DEPS_STAMP)

$(STAMP): $(DEPS_STAMP) pyproject.toml
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

constraints: $(STAMP)
	( echo "# Every dependency but the torch / fbgemm-gpu / triton / torchrec pins of the Makefile, at the version"; \
	  echo "# make test passed with (Python 3.11). Written by make constraints; used by make deps and make setup."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(torch==|torchrec==|fbgemm|triton==|nvidia|cuda)' ) > constraints.txt

$(DATA_DIR)/.complete: | $(STAMP)
	$(VENV)/bin/longer-data synthetic --out $(DATA_DIR)

data: $(DATA_DIR)/.complete

train: $(STAMP) $(DATA_DIR)/.complete
	$(VENV)/bin/longer-train $(CONFIG) data.root=$(DATA_DIR) $(ARGS)

train-paper: CONFIG = configs/paper.yaml
train-paper: train

test: $(STAMP)
	WANDB_MODE=offline $(PY) -m pytest -q tests

bench-quality: $(STAMP)
	$(PY) benchmarks/quality.py $(DATA) $(BENCH_ARGS)

reproduce: $(STAMP)
	@for sweep in $(SWEEP); do \
		echo "$$ longer-sweep configs/sweeps/$$sweep.yaml --jobs $(JOBS) $(REPRODUCE_OUT) $(SWEEP_ARGS)"; \
		$(VENV)/bin/longer-sweep configs/sweeps/$$sweep.yaml --jobs $(JOBS) $(REPRODUCE_OUT) $(SWEEP_ARGS) || exit $$?; \
	done
	@for bench in $(CLAIM_BENCHES); do \
		echo "$$ python benchmarks/$$bench.py --out benchmarks/results/$${bench}_cpu.md"; \
		$(PY) benchmarks/$$bench.py --out benchmarks/results/$${bench}_cpu.md || exit $$?; \
	done

lint: $(STAMP)
	$(PY) -m ruff check longer_train kernels tests benchmarks

gpu-check:
	GPU_PYTHON=$(GPU_PYTHON) bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) data runs wandb build

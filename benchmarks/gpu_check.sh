#!/usr/bin/env bash
# `make gpu-check`: everything a GPU machine should measure, in one run of at most 8 minutes including Triton's
# compilation and autotuning, by the GPU machine's own python (torch + triton + pytest; no torchrec, fbgemm_gpu,
# omegaconf, yaml or numpy needed, no .venv, nothing installed). The steps, most informative first, each under
# its own time limit (190 + 60 + 110 + 100 s = 460 s by default, and never past GPU_CHECK_SECONDS, 470 s, from
# the start); every table is rewritten as each row is measured, longest histories first, so a limit cuts only a
# step's last (shortest) rows. Files are named by the device (components/device_specs.py `device_tag`: h100,
# h100-pcie, h200, ...):
#   1. the dense model at the paper's settings in bf16, batch 256, recomputation, L = 10k, 5k, 2k: LONGER with the
#      Triton, SDPA and reference attention, the Transformer baseline and the stock nn.TransformerEncoder
#      (is_causal) of the same shape as the reference row, alternated (benchmarks/dense_step.py): ms/step,
#      samples/s, MFU against the device's rated dense bf16 peak beside % of the measured bf16 matmul peak, peak
#      memory, every ratio against the stock encoder                  -> benchmarks/results/dense_step_TAG.md
#   2. trainer throughput, quickstart and paper model: the step against the real loader with 1 and 4 workers,
#      input-bound or not (benchmarks/throughput.py; with torch alone the dense model's step, and the loader
#      rows name the missing module)                                   -> benchmarks/results/throughput_TAG.md
#   3. the kernel benchmarks at the paper model's shapes (head dim 64), L = 10k, 4k, 2k, 1k, and their targets
#                                                                      -> benchmarks/results/kernels_TAG.md
#   4. the kernel tests at GPU sizes                                   -> benchmarks/results/kernel_tests_TAG.txt
# Triton's compile cache is build/triton-cache (TRITON_CACHE_DIR, unless set): a second run skips compilation.
# A throwaway package folder makes the top-level kernels/ importable as longer_train.kernels next to the rest of
# longer_train (whose dense models import with torch alone); PYTHONSAFEPATH=1 keeps the repository root off
# sys.path. Every step runs even when an earlier one fails (its numbers are still wanted); the exit status is
# the first failure's.
#   GPU_PYTHON (default python3); DENSE_TIMEOUT / THROUGHPUT_TIMEOUT / BENCH_TIMEOUT / TEST_TIMEOUT (s, the limits
#   above); GPU_CHECK_SECONDS (470); DENSE_ARGS / THROUGHPUT_ARGS / BENCH_ARGS (extra arguments of the dense,
#   throughput and kernel benchmarks); GPU_CHECK_TAG (the file names' device tag, default detected).
#   GPU_CHECK_DRY_RUN=1: the CPU dry run (`make test` runs it, tests/test_gpu_check.py): the Triton interpreter,
#   tiny sizes, the kernel tests only collected (make test runs them), files tagged dry-run, written to
#   GPU_CHECK_OUT (default benchmarks/results) — checks that this script and what it calls still run.
set -u
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
OUT=${GPU_CHECK_OUT:-benchmarks/results}
DRY=${GPU_CHECK_DRY_RUN:-0}
TOTAL=${GPU_CHECK_SECONDS:-470}
pkg=build/gpu-check
rm -rf "$pkg" && mkdir -p "$pkg/longer_train" "$OUT"
for entry in longer_train/*; do ln -s "$PWD/$entry" "$pkg/$entry"; done
ln -s "$PWD/kernels" "$pkg/longer_train/kernels"
export PYTHONSAFEPATH=1 PYTHONPATH="$PWD/$pkg${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/build/triton-cache}
start=$SECONDS
status=0
note() { echo "gpu-check: $1 exit $2 after $((SECONDS - start)) s"; [ "$status" -eq 0 ] && status=$2; return 0; }
# the step's limit: its own, or what is left of GPU_CHECK_SECONDS if that is less
limit() { local left=$((TOTAL - (SECONDS - start))); [ "$left" -lt "$1" ] && echo $((left > 1 ? left : 1)) || echo "$1"; }

if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1
    tag=${GPU_CHECK_TAG:-dry-run}
    dense=(--smoke --threads 1 --lengths 40 24 --impls triton sdpa reference --models longer transformer stock)
    throughput=(--smoke --data "$pkg/throughput-data")
    bench=(--smoke)
else
    tag=${GPU_CHECK_TAG:-$("$PY" -c 'from longer_train.components.device_specs import device_tag; print(device_tag())')}
    dense=(--device cuda --dtype bfloat16 --recompute all --batch 256 --repeats 3 --warmup 2 --peak-size 8192
           --lengths 10000 5000 2000 --impls triton sdpa reference --models longer transformer stock)
    throughput=()
    bench=()
fi
echo "gpu-check: device tag ${tag}; tables in $OUT"

timeout "$(limit "${DENSE_TIMEOUT:-190}")" "$PY" benchmarks/dense_step.py "${dense[@]}" \
    --out "$OUT/dense_step_$tag.md" ${DENSE_ARGS:-}
note "dense model" $?
timeout "$(limit "${THROUGHPUT_TIMEOUT:-60}")" "$PY" benchmarks/throughput.py "${throughput[@]}" \
    --out "$OUT/throughput_$tag.md" ${THROUGHPUT_ARGS:-}
note "trainer throughput" $?
timeout "$(limit "${BENCH_TIMEOUT:-110}")" "$PY" benchmarks/kernels.py "${bench[@]}" \
    --out "$OUT/kernels_$tag.md" ${BENCH_ARGS:-}
note "kernel benchmarks" $?
if [ "$DRY" = 1 ]; then
    "$PY" -m pytest -q -p no:cacheprovider --collect-only tests/kernels > "$OUT/kernel_tests_$tag.txt" 2>&1
    note "kernel tests (collected only)" $?
else
    # pytest-xdist, where installed, compiles the kernels of different tests in parallel
    parallel=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 4")
    KERNELS_TEST_SIZE=gpu LONGER_KERNELS_AUTOTUNE=0 timeout "$(limit "${TEST_TIMEOUT:-100}")" \
        "$PY" -m pytest -q -p no:cacheprovider $parallel --durations=5 tests/kernels \
        > "$OUT/kernel_tests_$tag.txt" 2>&1
    code=$?
    cat "$OUT/kernel_tests_$tag.txt"
    note "kernel tests" $code
fi
echo "gpu-check: $((SECONDS - start)) s in all; tables in $OUT (tag $tag)"
exit "$status"

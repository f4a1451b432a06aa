#!/usr/bin/env bash
# `make gpu-check`: everything a GPU machine should measure, in one run of at most ~8 minutes, by the GPU
# machine's own python (torch + triton + pytest; no torchrec, no omegaconf, no .venv, nothing installed):
#   1. the kernel tests at GPU sizes              -> benchmarks/results/kernel_tests_h200.txt
#   2. the kernel benchmarks and their targets    -> benchmarks/results/kernels_h200.md
#   3. the dense model at the paper's settings in bf16 (benchmarks/dense_step.py): step time, % of the
#      measured bf16 matmul peak (MFU), peak memory at L = 2k / 5k / 10k, batch 256, recomputation,
#      Triton against the reference attention inside the model -> benchmarks/results/dense_step_h200.md
#   4. LONGER against the Transformer baseline at L = 2k (same batch and policies)
#                                                  -> benchmarks/results/dense_ratio_h200.md
# A throwaway package folder makes the top-level kernels/ importable as longer_train.kernels next to the
# rest of longer_train (whose dense models import with torch alone); PYTHONSAFEPATH=1 keeps the repository
# root off sys.path. Every step runs even when an earlier one fails (its numbers are still wanted); the exit
# status is the first failure's.
#   GPU_PYTHON (default python3), TEST_TIMEOUT / BENCH_TIMEOUT / DENSE_TIMEOUT / RATIO_TIMEOUT (s; 110 + 110 +
#   150 + 90 by default: 7.7 minutes), BENCH_ARGS / DENSE_ARGS
#   (extra arguments of the kernel / dense benchmarks).
#   GPU_CHECK_DRY_RUN=1: the CPU dry run (`make test` runs it, tests/test_gpu_check.py): the Triton
#   interpreter, tiny sizes, the kernel tests only collected (make test runs them), the tables written to
#   GPU_CHECK_OUT (default benchmarks/results) — checks that this script and what it calls still run.
set -u
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
OUT=${GPU_CHECK_OUT:-benchmarks/results}
DRY=${GPU_CHECK_DRY_RUN:-0}
pkg=build/gpu-check
rm -rf "$pkg" && mkdir -p "$pkg/longer_train" "$OUT"
for entry in longer_train/*; do ln -s "$PWD/$entry" "$pkg/$entry"; done
ln -s "$PWD/kernels" "$pkg/longer_train/kernels"
export PYTHONSAFEPATH=1 PYTHONPATH="$PWD/$pkg${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS
status=0
note() { echo "gpu-check: $1 exit $2 after $((SECONDS - start)) s"; [ "$status" -eq 0 ] && status=$2; return 0; }

if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1
    "$PY" -m pytest -q -p no:cacheprovider --collect-only tests/kernels > "$OUT/kernel_tests_h200.txt" 2>&1
    note "kernel tests (collected only)" $?
    "$PY" benchmarks/kernels.py --smoke --out "$OUT/kernels_h200.md"
    note "kernel benchmarks" $?
    dense=(--smoke --threads 1 --lengths 24 --impls triton sdpa reference --models longer)
    ratio=(--smoke --threads 1 --lengths 40 --models longer transformer --transformer-max-len 40)
else
    # pytest-xdist, where installed, compiles the kernels of different tests in parallel
    parallel=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 4")
    KERNELS_TEST_SIZE=gpu LONGER_KERNELS_AUTOTUNE=0 timeout "${TEST_TIMEOUT:-110}" \
        "$PY" -m pytest -q -p no:cacheprovider $parallel --durations=5 tests/kernels \
        > "$OUT/kernel_tests_h200.txt" 2>&1
    code=$?
    cat "$OUT/kernel_tests_h200.txt"
    note "kernel tests" $code
    timeout "${BENCH_TIMEOUT:-110}" "$PY" benchmarks/kernels.py --out "$OUT/kernels_h200.md" ${BENCH_ARGS:-}
    note "kernel benchmarks" $?
    common=(--device cuda --dtype bfloat16 --recompute all --batch 256 --repeats 5 --warmup 2 --peak-size 8192)
    dense=("${common[@]}" --lengths 2000 5000 10000 --impls triton sdpa reference --models longer)
    ratio=("${common[@]}" --lengths 2000 --models longer transformer)
fi
timeout "${DENSE_TIMEOUT:-150}" "$PY" benchmarks/dense_step.py "${dense[@]}" --out "$OUT/dense_step_h200.md" ${DENSE_ARGS:-}
note "dense model" $?
timeout "${RATIO_TIMEOUT:-90}" "$PY" benchmarks/dense_step.py "${ratio[@]}" --out "$OUT/dense_ratio_h200.md" ${DENSE_ARGS:-}
note "LONGER / Transformer" $?
echo "gpu-check: $((SECONDS - start)) s in all; tables in $OUT"
exit "$status"

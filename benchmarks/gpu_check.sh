#!/usr/bin/env bash
# `make gpu-check`: the kernel tests at GPU sizes, then the kernel benchmarks, run by the GPU machine's own
# python (torch + triton + pytest; no torchrec, no .venv, nothing installed). A throwaway package folder makes
# the top-level kernels/ importable as longer_train.kernels and nothing else of longer_train;
# PYTHONSAFEPATH=1 keeps the repository root (and its longer_train/) off sys.path.
# Writes benchmarks/results/kernel_tests_h200.txt and benchmarks/results/kernels_h200.md. The benchmarks
# run even when a test fails (their numbers are still wanted); the exit status is the tests' first.
#   GPU_PYTHON (default python3), TEST_TIMEOUT / BENCH_TIMEOUT (s), BENCH_ARGS (extra benchmark arguments)
set -u
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
pkg=build/gpu-check
rm -rf "$pkg" && mkdir -p "$pkg/longer_train" benchmarks/results
touch "$pkg/longer_train/__init__.py" && ln -s "$PWD/kernels" "$pkg/longer_train/kernels"
export PYTHONSAFEPATH=1 PYTHONPATH="$PWD/$pkg" PYTHONUNBUFFERED=1
# pytest-xdist, where installed, compiles the kernels of different tests in parallel
parallel=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 4")
start=$SECONDS
KERNELS_TEST_SIZE=gpu LONGER_KERNELS_AUTOTUNE=0 timeout "${TEST_TIMEOUT:-150}" \
    "$PY" -m pytest -q -p no:cacheprovider $parallel --durations=5 tests/kernels \
    > benchmarks/results/kernel_tests_h200.txt 2>&1
tests=$?
cat benchmarks/results/kernel_tests_h200.txt
echo "gpu-check: kernel tests exit $tests after $((SECONDS - start)) s"
timeout "${BENCH_TIMEOUT:-200}" "$PY" benchmarks/kernels.py --out benchmarks/results/kernels_h200.md ${BENCH_ARGS:-}
bench=$?
echo "gpu-check: benchmarks exit $bench; $((SECONDS - start)) s in all"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"

"""`make gpu-check` (benchmarks/gpu_check.sh) cannot rot: its CPU dry run — the Triton interpreter, tiny
sizes, a python without torchrec, fbgemm_gpu, omegaconf or yaml, like the GPU machine's — runs every step
and writes every table, named by the device tag."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("| ").split("|")]


def test_gpu_check_dry_run_writes_every_table(tmp_path):
    env = {
        **os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_OUT": str(tmp_path), "GPU_PYTHON": sys.executable,
        "PYTHONPATH": str(REPO / "tests" / "gpu_machine"), "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dense_step_dry-run.md", "kernel_tests_dry-run.txt", "kernels_dry-run.md", "throughput_dry-run.md"]
    assert "collected" in (tmp_path / "kernel_tests_dry-run.txt").read_text()
    assert "| cross-causal | 64 |" in (tmp_path / "kernels_dry-run.md").read_text()
    # the dense table: the longest length first, every model of it, LONGER against the Transformer and the stock
    # encoder, the MFU column n/a off a known GPU
    rows = [_cells(line) for line in (tmp_path / "dense_step_dry-run.md").read_text().splitlines()
            if line.startswith("| full |")]
    assert [(row[1], row[3]) for row in rows[:5]] == [("40", "LONGER (triton)"), ("40", "LONGER (sdpa)"),
                                                      ("40", "LONGER (reference)"), ("40", "Transformer"),
                                                      ("40", "stock encoder")]
    longer = rows[0]
    assert longer[9] == "n/a" and longer[11].endswith("x") and longer[12].endswith("x")  # MFU, / Transformer, / stock
    # throughput: the dense model's step per config; the loader rows say what this python lacks
    throughput = (tmp_path / "throughput_dry-run.md").read_text()
    for config in ("quickstart", "paper"):
        assert f"| {config} | 8 | 8 | step (dense model) |" in throughput
        assert f"| {config} | 8 | 8 | loader | 4 | - | not measured: this python has no omegaconf" in throughput


def test_gpu_side_benchmarks_need_no_numpy_tqdm_or_pyarrow(tmp_path):
    """The steps that run on the GPU outside the Triton interpreter (the dense model, trainer throughput without
    the training stack, the kernel benchmarks' PyTorch rows) import and run with torch alone, from the package
    layout gpu_check.sh makes."""
    package = tmp_path / "pkg" / "longer_train"
    package.mkdir(parents=True)
    for entry in (REPO / "longer_train").iterdir():
        (package / entry.name).symlink_to(entry)
    (package / "kernels").symlink_to(REPO / "kernels")
    env = {
        **os.environ, "PYTHONPATH": f"{REPO / 'tests' / 'gpu_machine'}{os.pathsep}{package.parent}",
        "GPU_MACHINE_ALSO_MISSING": "numpy,tqdm,pyarrow", "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": "1",
    }
    env.pop("TRITON_INTERPRET", None)
    runs = {
        "dense_step.py": ["--smoke", "--threads", "1", "--lengths", "24", "--impls", "sdpa", "reference",
                          "--models", "longer", "transformer", "stock"],
        "throughput.py": ["--smoke", "--data", str(tmp_path / "data")],
        "kernels.py": ["--smoke"],
    }
    for script, args in runs.items():
        proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{script}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        if script == "throughput.py":
            assert "not measured: this python has no pyarrow" in proc.stdout

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

"""`make gpu-check` (benchmarks/gpu_check.sh) cannot rot: its CPU dry run — the Triton interpreter, tiny
sizes, a python without torchrec, fbgemm_gpu, omegaconf or yaml, like the GPU machine's — runs every step
and writes every table."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_table(tmp_path):
    env = {
        **os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_OUT": str(tmp_path), "GPU_PYTHON": sys.executable,
        "PYTHONPATH": str(REPO / "tests" / "gpu_machine"), "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "collected" in (tmp_path / "kernel_tests_h200.txt").read_text()
    assert "| cross-causal | 64 |" in (tmp_path / "kernels_h200.md").read_text()
    dense = (tmp_path / "dense_step_h200.md").read_text()
    assert "| LONGER (triton) |" in dense and "| LONGER (reference) |" in dense
    ratio = (tmp_path / "dense_ratio_h200.md").read_text().splitlines()
    longer = next(line for line in ratio if line.startswith("| full | 40 | 40 | LONGER |"))
    assert longer.rstrip(" |").endswith("x")  # the LONGER / Transformer time ratio
    assert any(line.startswith("| full | 40 | 40 | Transformer |") for line in ratio)

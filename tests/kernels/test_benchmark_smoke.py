"""benchmarks/kernels.py runs (tiny CPU shapes, reference and SDPA paths) and prints the promised table; it
and the kernels load without torchrec."""

import runpy
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


def test_smoke_benchmark_writes_the_table(tmp_path, capsys):
    out = tmp_path / "kernels.md"
    main = runpy.run_path(str(BENCHMARK), run_name="benchmark")["main"]
    main(["--smoke", "--impls", "reference", "sdpa-math", "--out", str(out)])
    table = out.read_text()
    assert table == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "command: `python benchmarks/kernels.py --smoke --impls reference sdpa-math --out " in table
    header = next(line for line in table.splitlines() if line.startswith("| op "))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "op", "raw L", "lengths", "B", "impl", "fwd ms", "fwd TFLOP/s", "fwd GB/s", "fwd+bwd ms", "fwd+bwd TFLOP/s",
        "fwd+bwd GB/s",
    ]
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| ") and line != header]
    ops = {(r[0].strip(), r[2].split("(")[0].strip(), r[4].strip()) for r in rows}
    for op in ("cross-causal", "self-causal", "group K=8"):
        for dist in ("real", "full"):
            assert (op, dist, "reference") in ops
    assert all(float(cell) > 0 for r in rows for cell in r[5:])  # every cell timed, none failed


def test_kernels_and_their_benchmark_never_import_torchrec():
    """The GPU machine has torch + triton only: the Triton modules and benchmarks/kernels.py must load there."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='benchmark'); "
        "import longer_train.kernels.hybrid_attention_triton, longer_train.kernels.group_attention_triton; "
        "assert 'torchrec' not in sys.modules, 'torchrec was imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(BENCHMARK)], check=True)

"""`longer-sweep`: multi-run experiments from a sweep spec (`spec.py`), run one `longer-train` process per run and
resumable (`cli.py`), summarised with paired statistics (`summary.py`) and, for numeric axes, power-law fits and
figures (`scaling.py`); `runs.py` holds what they share with benchmarks/quality.py."""

"""Mean ± std of the test metrics of results lines (`train.runs_table` JSONL), grouped by run name without
its `-seed<N>` suffix: the table behind a check run outside `make bench-quality` (docs/results.md).

    python benchmarks/summarise_runs.py benchmarks/results/quality_movielens_pool_norm.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from longer_train.sweep.runs import mean_std
from longer_train.sweep.summary import METRICS


def summarise(lines: list[dict]) -> list[str]:
    """Markdown rows: run group, n, then mean ± std of each metric (the latest line of a repeated run)."""
    runs = {row["run"]: row for row in lines}
    groups: dict[str, list[dict]] = {}
    for name, row in runs.items():
        groups.setdefault(re.sub(r"-seed\d+$", "", name), []).append(row)
    header = ["| runs | n | " + " | ".join(label for _, label, _ in METRICS) + " |",
              "|---|---:|" + "---:|" * len(METRICS)]
    return header + [f"| {group} | {len(rows)} | " + " | ".join(mean_std([r[key] for r in rows], digits)
                                                               for key, _, digits in METRICS) + " |"
                     for group, rows in groups.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jsonl", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.jsonl:
        print(f"{path}:\n")
        print("\n".join(summarise([json.loads(line) for line in path.read_text().splitlines() if line.strip()])))
        print()


if __name__ == "__main__":
    main()

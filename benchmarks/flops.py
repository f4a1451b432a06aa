"""Analytic forward GFLOPs per sample of dense models (`model.dense.flops`, the number the trainer and the sweeps
report) at several history lengths, with no data and no training: the FLOPs columns of docs/paper.md and
docs/results.md at lengths the CPU could not train.

Each row is NAME=EXPERIMENT[:override,override...]; `model.num_queries` may be given as a percentage of the merged
length (as in the sweep specs). The dense FLOPs do not depend on vocabulary sizes, so tables are sized 1,000.

    python benchmarks/flops.py --lengths 512 2000 \\
        --row no_merge=longer_paper:model.merge=concat,model.merge_k=1,model.head_dim=32,model.num_queries=100% \\
        --row concat_k4=longer_paper:model.merge=concat,model.merge_k=4,model.num_queries=100%
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from longer_train.config import load_config  # noqa: E402
from longer_train.models.ranking import build_model  # noqa: E402
from longer_train.sweep.spec import resolve_percent_queries  # noqa: E402

DATASET = ROOT / "configs" / "datasets" / "synthetic.yaml"


def gflops(experiment: str, overrides: list[str], length: int) -> float:
    configs = [DATASET, ROOT / "configs" / "experiments" / f"{experiment}.yaml"]
    sizes = [f"data.tables.{t}.num_embeddings=1000" for t in load_config(configs).data.tables]
    overrides = resolve_percent_queries(configs, [*sizes, f"data.max_len={length}", *overrides], "benchmarks/flops.py")
    model = build_model(load_config(configs, overrides))
    return model.dense.flops([length]) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2000])
    parser.add_argument("--row", action="append", required=True, metavar="NAME=EXPERIMENT[:OVERRIDES]")
    args = parser.parse_args(argv)
    rows = []
    for item in args.row:
        name, _, rest = item.partition("=")
        experiment, _, overrides = rest.partition(":")
        rows.append((name, experiment, [o for o in overrides.split(",") if o]))
    print("# command: python benchmarks/flops.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print("| row | " + " | ".join(f"GFLOPs at {n}" for n in args.lengths) + " |")
    print("|---|" + "---:|" * len(args.lengths))
    for name, experiment, overrides in rows:
        print(f"| {name} | " + " | ".join(f"{gflops(experiment, overrides, n):.3f}" for n in args.lengths) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`longer-data`: build datasets in the sample schema (today: `synthetic`; public-data preparation later)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from longer_train.data import synthetic


def _synthetic(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / ".complete").exists() and not args.force:
        print(f"{out} is already there ({out / '.complete'} exists); pass --force to regenerate it")
        return 0
    start = time.perf_counter()
    try:
        meta = synthetic.generate(out, users=args.users, max_len=args.max_len, seed=args.seed,
                                  items=args.items, categories=args.categories)
    except (FileExistsError, ValueError) as err:
        print(f"longer-data synthetic: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s "
          f"(users={args.users}, max_len={args.max_len}, seed={args.seed})")
    print(f"  {'split':<6} {'rows':>8} {'positive rate':>14}")
    for split, rows in meta["rows"].items():
        print(f"  {split:<6} {rows:>8} {meta['positive_rate'][split]:>14.3f}")
    length = meta["history_length"]
    print("  history length: " + ", ".join(f"{k} {v}" for k, v in length.items()))
    print("  vocab: " + ", ".join(f"{k} {v}" for k, v in meta["vocab"].items()))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longer-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    syn = commands.add_parser("synthetic", help="generate the synthetic long-sequence dataset")
    syn.add_argument("--out", required=True, help="output folder (train/, valid/, test/, meta.json)")
    syn.add_argument("--users", type=int, default=4000)
    syn.add_argument("--max-len", type=int, default=512, help="longest history kept per row")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--items", type=int, default=20000)
    syn.add_argument("--categories", type=int, default=50)
    syn.add_argument("--force", action="store_true", help="regenerate even if OUT/.complete exists")
    syn.set_defaults(run=_synthetic)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())

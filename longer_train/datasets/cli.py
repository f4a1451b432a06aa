"""`longer-data`: build datasets in the sample schema (`synthetic`, or `prepare` a public dataset).

Bad input (an unreadable or malformed source, an output folder that cannot be written) is one line on
stderr and exit code 2; --debug (or LONGER_DEBUG=1) shows the traceback."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from longer_train.components.run_logger import setup_logging
from longer_train.datasets import prepare, synthetic, synthetic_match
from longer_train.errors import HelpFormatter, add_debug_flag, debug_enabled, run_cli


def _build(args: argparse.Namespace, write) -> dict | int:
    """The dataset's meta from `write()`, or 0 (the exit code) when OUT is already a complete dataset and
    --force is not given."""
    out = Path(args.out)
    if (out / ".complete").exists() and not args.force:
        print(f"{out} is already there ({out / '.complete'} exists); pass --force to build it again")
        return 0
    return write()


def _synthetic(args: argparse.Namespace) -> int:
    out = Path(args.out)
    start = time.perf_counter()
    if args.task == "match":
        write = lambda: synthetic_match.generate(
            out, users=args.users or 6000, max_len=args.max_len or 1000, seed=args.seed, items=args.items,
            categories=args.categories or 500, variant=args.variant)
    else:
        write = lambda: synthetic.generate(
            out, users=args.users or 4000, max_len=args.max_len or 512, seed=args.seed, items=args.items,
            categories=args.categories or 50)
    meta = _build(args, write)
    if isinstance(meta, int):
        return meta
    params = ", ".join(f"{k}={v}" for k, v in meta["params"].items())
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s ({params})")
    _print_meta(meta)
    if "oracle_auc" in meta:
        _print_oracles(meta["oracle_auc"])
    return 0


def _print_oracles(oracle: dict) -> None:
    """The test AUC a model can reach on this data: the label model's own probabilities, and simpler scores."""
    names = list(oracle["test"])
    print(f"  {'AUC of':<26}" + "".join(f"{split:>8}" for split in oracle))
    for name in names:
        print(f"  {name:<26}" + "".join(f"{oracle[split][name]:>8.4f}" for split in oracle))


def _print_meta(meta: dict) -> None:
    print(f"  {'split':<6} {'rows':>8} {'positive rate':>14}")
    for split, rows in meta["rows"].items():
        print(f"  {split:<6} {rows:>8} {meta['positive_rate'][split]:>14.3f}")
    length = meta["history_length"]
    print("  history length: " + ", ".join(f"{k} {v}" for k, v in length.items()))
    print("  vocab: " + ", ".join(f"{k} {v}" for k, v in meta["vocab"].items()))


def _prepare(args: argparse.Namespace) -> int:
    out = Path(args.out)
    start = time.perf_counter()
    meta = _build(args, lambda: prepare.prepare(
        args.name, args.src, out, force=args.force, sample_users=args.sample_users, rows_per_user=args.rows_per_user,
        memory_budget=args.memory_budget, threads=args.threads))
    if isinstance(meta, int):
        return meta
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s ({meta['source']['format']}, {meta['events']['rows']} "
          f"events, {meta['size_mb']} MB; card: {out / 'CARD.md'})")
    _print_meta(meta)
    if "before_sampling" in meta:
        before = meta["before_sampling"]
        print(f"  sampling ({', '.join(meta['sampling'])}) changed the rows and the label balance:")
        print(f"  {'split':<6} {'rows before':>12} {'positive before':>16} {'rows after':>11} {'positive after':>15}")
        for split, rows in meta["rows"].items():
            print(f"  {split:<6} {before['rows'][split]:>12} {before['positive_rate'][split]:>16.3f} {rows:>11} "
                  f"{meta['positive_rate'][split]:>15.3f}")
    for reason, count in meta["skipped"].items():
        print(f"  skipped {reason}: {count} (first: {meta['skipped_first'][reason]})")
    if not meta["skipped"]:
        print("  skipped: none")
    print(f"  duplicate rows (kept): {meta['duplicate_rows']}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longer-data", description=__doc__, formatter_class=HelpFormatter)
    common = add_debug_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    syn = commands.add_parser("synthetic", help="generate the synthetic long-sequence dataset", parents=[common],
                              formatter_class=HelpFormatter)
    syn.add_argument("--out", required=True, help="output folder (train/, valid/, test/, meta.json)")
    syn.add_argument("--task", choices=("default", "match"), default="default",
                     help="default: the long-sequence CTR data of the quickstart; match: the label depends only on "
                          "the candidate's category occurring in the history (docs/data.md)")
    syn.add_argument("--variant", choices=synthetic_match.VARIANTS, default="long",
                     help="match task: the label counts the whole history (long) or the newest 50 events (recent)")
    syn.add_argument("--users", type=int, default=0, help="default 4000 (match: 6000)")
    syn.add_argument("--max-len", type=int, default=0, help="longest history kept per row; default 512 (match: 1000)")
    syn.add_argument("--seed", type=int, default=0, help="random seed of the generator")
    syn.add_argument("--items", type=int, default=20000, help="distinct items")
    syn.add_argument("--categories", type=int, default=0, help="default 50 (match: 500)")
    syn.add_argument("--force", action="store_true", help="regenerate even if OUT/.complete exists")
    syn.set_defaults(run=_synthetic)
    prep = commands.add_parser("prepare", help="turn a public dataset (MovieLens, Taobao) into a sequence store",
                               parents=[common], formatter_class=HelpFormatter)
    prep.add_argument("name", choices=prepare.DATASETS)
    prep.add_argument("--src", required=True, help="the downloaded file, archive or folder")
    prep.add_argument("--out", required=True,
                      help="output folder (events/, train/, valid/, test/, vocab/, meta.json, CARD.md)")
    prep.add_argument("--memory-budget", default=prepare.DEFAULT_BUDGET, metavar="SIZE",
                      help="memory the preparation may use, e.g. 1GB; the engine spills "
                           "sorts to disk beyond it")
    prep.add_argument("--threads", type=int, default=None, help="engine threads (default: every core)")
    prep.add_argument("--sample-users", type=int, default=0, metavar="N",
                      help="keep N users drawn at random (seed 0) with all their rows; ids, vocab and time split "
                           "stay those of the whole dataset (default 0: every user)")
    prep.add_argument("--rows-per-user", type=int, default=0, metavar="M",
                      help="keep at most M random rows (seed 0) of each user in each split; histories unchanged "
                           "(prints the rows and positive rate before and after the cut)")
    prep.add_argument("--force", action="store_true", help="prepare again even if OUT/.complete exists")
    prep.set_defaults(run=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = debug_enabled(args.debug)
    setup_logging(debug=debug)
    # the builders raise ValueError (PrepareError is one) for input they cannot use: one line, like the rest
    return run_cli(f"longer-data {args.command}", lambda: args.run(args), debug, also=(ValueError,))


if __name__ == "__main__":
    raise SystemExit(main())

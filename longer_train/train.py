"""Entry point: `longer-train CONFIG [CONFIG ...] [key=value ...]`, also `torchrun ... -m longer_train.train CONFIG`.

Several CONFIG files are merged in order, e.g. a dataset config then an experiment config:
`longer-train configs/datasets/movielens.yaml configs/experiments/din.yaml train.seed=1`.

A config, data or checkpoint error is printed as one line (naming the key, file, row, column) with exit
code 2; `--debug` or `LONGER_DEBUG=1` shows its traceback instead (errors.py). `--print-config` prints the
resolved config with the source of each value (a file, an override or the default) and trains nothing.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .components.run_logger import setup_logging
from .config import describe, load_config
from .errors import EXIT_DIVERGED, HelpFormatter, add_debug_flag, debug_enabled, report, report_stopped, run_cli


def _train(configs: list[str], overrides: list[str], debug: bool) -> int:
    cfg = load_config(configs, overrides)
    setup_logging(all_ranks=cfg.logging.all_ranks, debug=debug)

    from .distributed.process_group import destroy_distributed
    from .trainer import (  # heavy imports (torchrec) only once the config is valid
        Trainer,
        TrainingDiverged,
        TrainingStopped,
    )

    try:
        Trainer(cfg).train()
    except KeyboardInterrupt:  # Ctrl-C before training started (once it has, the stop is handled: below)
        print("longer-train: interrupted before training started; nothing was written", file=sys.stderr)
        return 128 + signal.SIGINT
    except TrainingDiverged as err:
        report("longer-train", err)
        return EXIT_DIVERGED
    except TrainingStopped as stop:
        saved = (f"checkpoint saved ({stop.checkpoint})" if stop.checkpoint
                 else "no checkpoint (train.checkpoint=false: the run starts over)")
        return report_stopped(
            "longer-train", f"stopped at step {stop.step} by {stop.signal_name}, {saved}; run the same command "
            "to resume"
        )
    finally:
        destroy_distributed()
    return 0


def _print_config(configs: list[str], overrides: list[str]) -> int:
    """The resolved config (vocabulary sizes filled from the data when it is there) with each value's source."""
    from .data.vocab import dataset_sizes
    from .machine import check_machine, resolve

    sources: dict[str, str] = {}
    cfg = load_config(configs, overrides, sources)
    if dataset_sizes(cfg.data.root):
        auto = [name for name, table in cfg.data.tables.items() if table.num_embeddings == "auto"]
        resolve(cfg)
        sources.update({f"data.tables.{name}.num_embeddings": f"auto: {cfg.data.root}/meta.json" for name in auto})
    else:  # no data here yet: its sizes stay auto
        check_machine(cfg)
    print(describe(cfg, sources))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="longer-train", description="Train a LONGER ranking model from a YAML config.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("args", nargs="+", metavar="CONFIG|key=value",
                        help="YAML config(s) merged in order, e.g. configs/quickstart.yaml, then dotted key=value "
                             "overrides, e.g. train.seed=1")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, each value with its source (file, override, default), "
                             "and exit without training")
    add_debug_flag(parser)
    parsed = parser.parse_intermixed_args(argv)  # --debug may come anywhere
    args = parsed.args
    configs = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if args[:len(configs)] != configs:
        parser.error("config files go before the key=value overrides")
    debug = debug_enabled(parsed.debug)
    if parsed.print_config:
        return run_cli("longer-train", lambda: _print_config(configs, overrides), debug)
    # torch is imported only now, so that --help and --print-config answer at once; under torchrun, `record`
    # puts a failing rank's error into the job's failure summary
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(lambda: run_cli("longer-train", lambda: _train(configs, overrides, debug), debug))()


if __name__ == "__main__":
    sys.exit(main())

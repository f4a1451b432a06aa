"""Entry point: `longer-train CONFIG [key=value ...]`, also `torchrun ... -m longer_train.train CONFIG`."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from torch.distributed.elastic.multiprocessing.errors import record

from .config import ConfigError, load_config


@record  # under torchrun, a failing rank's traceback goes into the job's error summary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="longer-train", description="Train a LONGER ranking model from a YAML config."
    )
    parser.add_argument("config", help="YAML experiment config, e.g. configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.seed=1")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"longer-train: config error: {err}", file=sys.stderr)
        return 2

    # TorchRec's planner and FX warn on every run about things a user cannot act on; keep the console to
    # what the run reports (errors still show)
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    from .distributed.process_group import destroy_distributed
    from .trainer import Trainer  # heavy imports (torchrec) only once the config is valid

    try:
        Trainer(cfg).train()
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())

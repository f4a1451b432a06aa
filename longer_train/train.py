"""Entry point: `longer-train CONFIG [CONFIG ...] [key=value ...]`, also `torchrun ... -m longer_train.train CONFIG`.

Several CONFIG files are merged in order, e.g. a dataset config then an experiment config:
`longer-train configs/datasets/movielens.yaml configs/experiments/din.yaml train.seed=1`.
"""

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
    parser.add_argument("args", nargs="+", metavar="CONFIG|key=value",
                        help="YAML config(s) merged in order, e.g. configs/quickstart.yaml, then dotted key=value "
                             "overrides, e.g. train.seed=1")
    args = parser.parse_args(argv).args
    configs = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if args[:len(configs)] != configs:
        parser.error("config files go before the key=value overrides")
    try:
        cfg = load_config(configs, overrides)
    except ConfigError as err:
        print(f"longer-train: config error: {err}", file=sys.stderr)
        return 2

    # TorchRec's planner and FX warn on every run about things a user cannot act on; keep the console to
    # what the run reports (errors still show)
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    logging.getLogger("longer_train").setLevel(logging.WARNING)  # ours still show, e.g. a kernel fallback's reason
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

"""Entry point: `longer-train CONFIG [key=value ...]`, also `torchrun ... -m longer_train.train CONFIG`."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config


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

    from .distributed.process_group import destroy_distributed
    from .trainer import Trainer  # heavy imports (torchrec) only once the config is valid

    try:
        Trainer(cfg).train()
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())

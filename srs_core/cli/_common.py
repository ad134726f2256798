"""Config arguments shared by the command groups (`print_json` is public: `srs_core.cli`)."""

from __future__ import annotations

import argparse

from srs_core.config import Config, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE`, `--preset NAME` and trailing `section.key=value` overrides."""
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config file (repeatable; later files win)")
    parser.add_argument("--preset", default=None, help="tiny | paper (default: paper)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, e.g. train.epochs=2")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides, preset=args.preset)

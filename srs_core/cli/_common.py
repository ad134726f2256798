"""Helpers shared by the command groups: config arguments and JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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


def print_json(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2, ensure_ascii=False, sort_keys=False)
    sys.stdout.write("\n")

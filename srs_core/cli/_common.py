"""Config arguments and count-option types shared by the command groups (`print_json` is
public: `srs_core.cli`)."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

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


# ----------------------------------------------------------------------------- count options
# Every number a command takes goes through one of these argparse types, so an out-of-range
# value is a usage error (exit 2) naming the option and the range, as a config value's is.
# tests/test_cli_counts.py checks that no option of any command takes a bare int or float.


def count(low: int = 0, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]`` (``high`` None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    parse.__name__ = "count"  # argparse names the type in "invalid count value"
    return parse


def seconds(allow_zero: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number of seconds (or milliseconds), > 0 (or >= 0)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(
                f"must be {'>= 0' if allow_zero else '> 0'}, got {text}")
        return value

    parse.__name__ = "duration"
    return parse


POSITIVE = count(1)  # workers, batch sizes, k, n: at least one
NON_NEGATIVE = count(0)  # seeds, "0 = none/auto" options
PORT = count(1, 65535)

_ID_RANGE = (-(2**63), 2**64)  # the readers' set ids: signed or unsigned 64-bit
_DECIMAL = re.compile(r"-?[0-9]{1,20}")


def set_ids(text: str) -> list[int]:
    """An argparse ``type``: comma-separated sticker set ids (64-bit integers, decimal)."""
    ids = []
    for item in text.split(","):
        word = item.strip()
        value = int(word) if _DECIMAL.fullmatch(word) else None
        if value is None or not _ID_RANGE[0] <= value < _ID_RANGE[1]:
            raise argparse.ArgumentTypeError(
                f"{word!r} is not a set id (a decimal 64-bit integer); give ids as 1,2,3")
        ids.append(value)
    return ids

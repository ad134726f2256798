"""The `srs` command: a thin face over the library.

Each module of this package registers one command group through ``register(subparsers)``;
packages outside `srs_core` (the KFP pipelines) plug in through the ``srs.commands`` entry
point group so that the library never imports them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from importlib.metadata import entry_points

from srs_core import __version__
from srs_core.errors import SrsError

log = logging.getLogger("srs")


def _command_groups():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}").register
    for entry in entry_points(group="srs.commands"):
        yield entry.load()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srs", description="Sticker response selection (Perceive before Respond) workflow."
    )
    parser.add_argument("--version", action="version", version=f"srs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _command_groups():
        register(sub)
    return parser


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        code = args.func(args)
    except SrsError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

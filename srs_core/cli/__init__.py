"""The `srs` command: a thin face over the library.

Each module of this package registers one command group through ``register(subparsers)``;
packages outside `srs_core` (the KFP pipelines) plug in through the ``srs.commands`` entry
point group so that the library never imports them; they print results with
:func:`print_json`, as the groups here do.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import pkgutil
import sys
from importlib.metadata import entry_points
from typing import Any

from srs_core import __version__
from srs_core.errors import ConfigError, SrsError
from srs_core.process import die_with_parent, keep_freed_memory

log = logging.getLogger("srs")
DEBUG_ENV = "SRS_DEBUG"


def print_json(payload: Any) -> None:
    """A command's result on stdout as indented JSON (logs go to stderr)."""
    json.dump(payload, sys.stdout, indent=2, ensure_ascii=False, sort_keys=False)
    sys.stdout.write("\n")


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
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of a failure (or set {DEBUG_ENV}=1)")
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


_ERRNO_ADVICE = {
    errno.ENOSPC: "free some space or choose another output location",
    errno.EDQUOT: "free some space or choose another output location",
    errno.EROFS: "the file system is read-only: choose a writable output location",
    errno.EACCES: "check the permissions, or choose another location",
    errno.EPERM: "check the permissions, or choose another location",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
}


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """One line saying what went wrong (naming the path) and what to do, and the exit code:
    2 for configuration/usage errors, 1 for everything else."""
    if isinstance(exc, ConfigError):
        return str(exc), 2
    if isinstance(exc, SrsError):
        return str(exc), 1
    if isinstance(exc, OSError):
        where = " ".join(str(name) for name in (exc.filename, exc.filename2) if name)
        reason = exc.strerror or str(exc) or type(exc).__name__
        advice = _ERRNO_ADVICE.get(exc.errno or -1, "")
        text = f"{where}: {reason}" if where else reason
        return text + (f" ({advice})" if advice else ""), 1
    if isinstance(exc, MemoryError):
        return ("out of memory: lower the batch size or the number of loader workers, or run "
                "on a machine with more memory"), 1
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first or 'no message'} (run with --debug for details)", 1


def main(argv: list[str] | None = None) -> int:
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: never outlive the agent
        die_with_parent()
    keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    setup_logging(args.verbose or debug)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as exc:  # one clear line, an exit code; the traceback only on request
        message, code = describe_failure(exc)
        log.error("%s", message, exc_info=debug)
        return code
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

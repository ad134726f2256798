"""`srs config show`: print the effective configuration."""

from __future__ import annotations

import argparse
import sys

from srs_core.cli._common import add_config_arguments, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="show the effective configuration")
    cmds = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = cmds.add_parser("show", help="print the merged config as YAML")
    add_config_arguments(show)
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    sys.stdout.write(config_from_args(args).to_yaml())
    return 0

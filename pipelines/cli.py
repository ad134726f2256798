"""`srs pipeline ...`: compile, submit and run the KFP pipeline (plugged into `srs`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pipeline", help="compile, submit or locally run the KFP pipeline")
    parser.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)

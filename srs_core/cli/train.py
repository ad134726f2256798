"""`srs train` (run it under torchrun for DDP) and `srs evaluate`."""

from __future__ import annotations

import argparse

from srs_core.cli import print_json
from srs_core.cli._common import add_config_arguments, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train the sticker selector (resumes from the latest checkpoint in train.output)",
        description="Train the SRS model. Run alone, or as `torchrun --nproc-per-node N "
        "-m srs_core.cli train ...` for DDP (gloo on CPU, NCCL on GPU).",
    )
    add_config_arguments(train)
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="score a split with a trained checkpoint")
    evaluate.add_argument("--checkpoint", required=True, help="URI of best.pt")
    evaluate.add_argument("--split", choices=("val", "test"), default="test")
    evaluate.add_argument("--out", required=True, help="URI for metrics.json and scores.jsonl")
    evaluate.add_argument("--library", default="", metavar="INDEX_URI",
                          help="also rank each answer among every sticker of this index "
                          "(`srs index build`): metrics.json -> library")
    add_config_arguments(evaluate)
    evaluate.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from srs_core.train.loop import train

    summary = train(config_from_args(args))
    if summary.get("rank", 0) == 0:
        print_json(summary)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from srs_core.evaluate import evaluate

    print_json(evaluate(config_from_args(args), args.checkpoint, args.split, args.out,
                        library=args.library))
    return 0

"""`srs train` (run it under torchrun for DDP) and `srs evaluate`."""

from __future__ import annotations

import argparse
import logging

from srs_core.cli import print_json
from srs_core.cli._common import add_config_arguments, config_from_args

RESTART_SCHEDULE_HELP = (
    "when the checkpoint to resume was written with other settings (batch size, seed, "
    "epochs, data, model...), load its weights only and start a new schedule at step 0 with "
    "a fresh optimizer, instead of refusing (train.on_settings_change=restart_schedule)")


def add_restart_schedule_argument(parser: argparse.ArgumentParser) -> None:
    """`--restart-schedule` of the training commands (applied by :func:`run_training`)."""
    parser.add_argument("--restart-schedule", action="store_true", help=RESTART_SCHEDULE_HELP)


def run_training(args: argparse.Namespace, run) -> tuple[object, int]:
    """``run(cfg)`` with the config of ``args`` (``--restart-schedule`` applied): its result
    and exit code 0, or None and 143 when SIGTERM stopped it after a checkpoint."""
    from srs_core.runtime.trainer import PREEMPTED_EXIT_CODE, Preempted

    cfg = config_from_args(args)
    if args.restart_schedule:
        cfg.train.on_settings_change = "restart_schedule"
    try:
        return run(cfg), 0
    except Preempted as stop:
        logging.getLogger("srs").warning("%s", stop)
        return None, PREEMPTED_EXIT_CODE


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train the sticker selector (resumes from the latest checkpoint in train.output)",
        description="Train the SRS model. Run alone, or as `torchrun --nproc-per-node N "
        "-m srs_core.cli train ...` for DDP (gloo on CPU, NCCL on GPU).",
    )
    add_restart_schedule_argument(train)
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
    from srs_core.tracking import track_training
    from srs_core.train.loop import train

    summary, code = run_training(args, lambda cfg: track_training(cfg, train))
    if summary is not None and summary.get("rank", 0) == 0:
        print_json(summary)
    return code


def _evaluate(args: argparse.Namespace) -> int:
    from srs_core.evaluate import evaluate
    from srs_core.tracking import track_evaluation

    cfg = config_from_args(args)
    print_json(track_evaluation(cfg, args.checkpoint, args.split, args.out, lambda: evaluate(
        cfg, args.checkpoint, args.split, args.out, library=args.library)))
    return 0

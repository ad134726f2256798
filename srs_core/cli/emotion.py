"""`srs emotion train | anchors`: the SER30K emotion teacher and the anchors clustered from it."""

from __future__ import annotations

import argparse

from srs_core.cli import print_json
from srs_core.cli._common import NON_NEGATIVE, POSITIVE, add_config_arguments, config_from_args
from srs_core.cli.train import add_restart_schedule_argument, run_training
from srs_core.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("emotion", help="train the emotion teacher, cluster the anchors")
    cmds = parser.add_subparsers(dest="emotion_command", metavar="ACTION", required=True)

    train = cmds.add_parser(
        "train", help="train the SER30K teacher (timm ResNet50, 7 classes)",
        description="Train on SER30K train, pick the best epoch on val, score test once. Writes "
        "OUT/teacher.pth (backbone without classifier), OUT/metrics.json and per-epoch "
        "checkpoints; running it again resumes. Under torchrun it trains with DDP.",
    )
    train.add_argument("--ser30k", metavar="URI", help="SER30K root (default emotion.ser30k)")
    train.add_argument("--out", required=True, metavar="URI", help="output prefix")
    train.add_argument("--init", metavar="URI", default=None,
                       help="timm-format ResNet50 weights to start from (the classifier of "
                       "another shape is skipped)")
    add_restart_schedule_argument(train)
    add_config_arguments(train)
    train.set_defaults(func=_train)

    anchors = cmds.add_parser(
        "anchors", help="k-means per emotion over teacher features -> [7*K, 2048] .npy",
        description="Extract teacher features of the SER30K training images and cluster each "
        "emotion into K anchors. Writes OUT (.npy) and a .json sidecar next to it.",
    )
    anchors.add_argument("--ser30k", metavar="URI", help="SER30K root (default emotion.ser30k)")
    anchors.add_argument("--teacher", metavar="URI", help="teacher.pth (default emotion.teacher)")
    anchors.add_argument("--k", type=POSITIVE, default=None, help="anchors per emotion (emotion.k)")
    anchors.add_argument("--out", required=True, metavar="URI", help="anchors .npy URI")
    anchors.add_argument("--backend", choices=("auto", "kmcuda", "cpu"), default=None,
                         help="k-means backend (default emotion.kmeans_backend)")
    anchors.add_argument("--seed", type=NON_NEGATIVE, default=None, help="default emotion.seed")
    anchors.add_argument("--batch-size", type=POSITIVE, default=256, help="feature batch size")
    anchors.add_argument("--features-out", metavar="URI", default="",
                         help="also save the features and labels (.npz), e.g. for bench/")
    add_config_arguments(anchors)
    anchors.set_defaults(func=_anchors)


def _train(args: argparse.Namespace) -> int:
    from srs_core.emotion.teacher import train_teacher

    def run(cfg):
        if args.ser30k:
            cfg.emotion.ser30k = args.ser30k
        if args.init is not None:
            cfg.emotion.init = args.init
        return train_teacher(cfg, args.out, init_uri=cfg.emotion.init)

    metrics, code = run_training(args, run)
    if metrics:  # only rank 0 reports
        print_json({key: value for key, value in metrics.items() if key != "history"})
    return code


def _anchors(args: argparse.Namespace) -> int:
    from srs_core.emotion.anchors import build_anchors

    cfg = config_from_args(args)
    e = cfg.emotion
    k = e.k if args.k is None else args.k
    if k < 1:  # --k 0 means 0, which is no anchors: an error, not "the preset's K"
        raise ConfigError(f"--k must be at least 1, got {k}")
    sidecar = build_anchors(
        args.ser30k or e.ser30k, args.teacher or e.teacher, k, args.out,
        backend=args.backend or e.kmeans_backend,
        seed=e.seed if args.seed is None else args.seed, image_size=e.image_size,
        iterations=e.kmeans_iterations, batch_size=args.batch_size,
        features_uri=args.features_out,
    )
    print_json(sidecar)
    return 0

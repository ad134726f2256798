"""`srs data validate | synth | upload`: check, generate and copy data sets."""

from __future__ import annotations

import argparse
import sys

from srs_core.cli import print_json
from srs_core.cli._common import NON_NEGATIVE, POSITIVE


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="validate, generate or upload data sets")
    cmds = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = cmds.add_parser(
        "validate", help="check StickerChat / SER30K data and report every problem",
        description="Read everything and report problems per class with their first locations. "
        "Exit 1 in --strict mode on any error, or when nothing usable remains. With a run's "
        "settings (--config, --preset, overrides, --anchors-k, --batch-size, --processes, "
        "--eval-split) also judge those that depend on the data (anchors per class against the "
        "SER30K classes, the batch against the usable training dialogs, the splits the run "
        "needs): exit 2 when one does not fit.",
    )
    check.add_argument("--stickerchat", metavar="URI", help="StickerChat root (path or s3://)")
    check.add_argument("--ser30k", metavar="URI", help="SER30K root (path or s3://)")
    check.add_argument("--strict", action="store_true", help="fail on any error (not warnings)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--workers", type=POSITIVE, default=8,
                       help="parallel file reads (default 8)")
    run = check.add_argument_group(
        "run settings", "judge a run's data-dependent settings too (any of these turns it on)")
    run.add_argument("--config", action="append", default=[], metavar="FILE",
                     help="the run's YAML config file (repeatable; later files win)")
    run.add_argument("--preset", default=None, help="tiny | paper (default: paper)")
    run.add_argument("--anchors-k", type=POSITIVE, metavar="K",
                     help="anchors per class (emotion.k)")
    run.add_argument("--batch-size", type=POSITIVE, metavar="N",
                     help="dialogs per process and step (train.batch_size)")
    run.add_argument("--processes", type=POSITIVE, metavar="N",
                     help="training processes, nodes x GPUs per node (default 1)")
    run.add_argument("--eval-split", choices=("val", "test"),
                     help="the split the run evaluates (default test)")
    run.add_argument("overrides", nargs="*", metavar="section.key=value",
                     help="config overrides, e.g. train.grad_accumulation=2")
    check.set_defaults(func=_validate)

    synth = cmds.add_parser(
        "synth", help="write deterministic demo data in both formats",
        description="Write DIR/stickerchat and DIR/ser30k with a learnable signal "
        "(see srs_core.data.synth).",
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="output root (path or s3://)")
    synth.add_argument("--seed", type=NON_NEGATIVE, default=0)
    synth.add_argument("--dialogs", type=POSITIVE, default=2000,
                       help="training dialogs; val and test get a sixth each (default 2000)")
    synth.add_argument("--sets", type=POSITIVE, default=50, help="sticker sets (default 50)")
    synth.add_argument("--images", type=POSITIVE, default=1400,
                       help="SER30K training images; val and test get a fifth each "
                       "(default 1400)")
    synth.add_argument("--image-size", type=POSITIVE, default=64, help="sticker side in pixels")
    synth.set_defaults(func=_synth)

    upload = cmds.add_parser(
        "upload", help="copy a data directory to the object store (parallel, resumable)",
        description="An object already at the destination with the same content (compared "
        "by MD5: the ETag of a single-part object, the srs-md5 metadata stored at upload for a "
        "multipart one) is skipped; any other is sent again, so an interrupted or changed "
        "upload can simply be run again.",
    )
    upload.add_argument("source", metavar="DIR", help="local directory (or any store URI)")
    upload.add_argument("destination", metavar="URI", help="e.g. s3://bucket/prefix")
    upload.add_argument("--workers", type=POSITIVE, default=8, help="parallel uploads (default 8)")
    upload.add_argument("--json", action="store_true", help="print the result as JSON")
    upload.add_argument("--strict", action="store_true",
                        help="copy nothing when a source entry cannot be copied (symlinks "
                        "leading outside the source, broken links)")
    upload.set_defaults(func=_upload)


def _run_settings(args: argparse.Namespace):
    """``(config, names)`` of the run settings given, or ``(None, {})`` when none is."""
    from srs_core.config import load_config

    given = {"--anchors-k": args.anchors_k, "--batch-size": args.batch_size}
    if not (args.config or args.preset or args.overrides or args.processes is not None
            or args.eval_split or any(v is not None for v in given.values())):
        return None, {}
    keys = {"--anchors-k": "emotion.k", "--batch-size": "train.batch_size"}
    settings = [f"{keys[flag]}={value}" for flag, value in given.items() if value is not None]
    cfg = load_config(args.config, [*args.overrides, *settings], preset=args.preset)
    names = {keys[flag]: flag for flag, value in given.items() if value is not None}
    if args.eval_split:
        names["eval_split"] = "--eval-split"
    return cfg, names


def _validate(args: argparse.Namespace) -> int:
    from srs_core.data.validate import validate

    cfg, names = _run_settings(args)  # a bad setting fails before the data is read
    result = validate(args.stickerchat, args.ser30k, workers=args.workers)
    if cfg is not None:
        result.check_run(cfg, processes=args.processes or 1,
                         eval_split=args.eval_split or "test", names=names)
    if args.json:
        print_json(result.as_dict(strict=args.strict))
    else:
        sys.stdout.write(result.render(strict=args.strict) + "\n")
    return result.exit_code(args.strict)


def _synth(args: argparse.Namespace) -> int:
    from srs_core.artifacts import DataRoots
    from srs_core.data.synth import synthesize

    manifest = synthesize(args.out, seed=args.seed, dialogs=args.dialogs, sets=args.sets,
                          images=args.images, image_size=args.image_size, progress=True)
    roots = DataRoots(args.out)
    sys.stdout.write(
        f"wrote {roots.stickerchat} ({len(manifest['sets'])} sets, dialogs "
        f"{manifest['dialogs']}) and {roots.ser30k} (images {manifest['ser30k_images']})\n"
    )
    return 0


def _upload(args: argparse.Namespace) -> int:
    from srs_core import store

    report = store.copy_tree(args.source, args.destination, workers=args.workers,
                             strict=args.strict)
    if args.json:
        print_json({"copied": report.copied, "skipped": report.skipped, "bytes": report.bytes,
                    "problems": report.problems})
    else:
        sys.stdout.write(f"copied {report.copied} objects ({report.bytes} bytes), "
                         f"skipped {report.skipped} already present\n")
        for line in report.problems:
            sys.stdout.write(f"not copied: {line}\n")
    return 1 if report.problems else 0

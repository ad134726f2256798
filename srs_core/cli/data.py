"""`srs data validate | synth | upload`: check, generate and copy data sets."""

from __future__ import annotations

import argparse
import sys

from srs_core.cli import print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="validate, generate or upload data sets")
    cmds = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = cmds.add_parser(
        "validate", help="check StickerChat / SER30K data and report every problem",
        description="Read everything and report problems per class with their first locations. "
        "Exit 1 in --strict mode on any error, or when nothing usable remains.",
    )
    check.add_argument("--stickerchat", metavar="URI", help="StickerChat root (path or s3://)")
    check.add_argument("--ser30k", metavar="URI", help="SER30K root (path or s3://)")
    check.add_argument("--strict", action="store_true", help="fail on any error (not warnings)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--workers", type=int, default=8, help="parallel file reads (default 8)")
    check.set_defaults(func=_validate)

    synth = cmds.add_parser(
        "synth", help="write deterministic demo data in both formats",
        description="Write DIR/stickerchat and DIR/ser30k with a learnable signal "
        "(see srs_core.data.synth).",
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="output root (path or s3://)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--dialogs", type=int, default=2000,
                       help="training dialogs; val and test get a sixth each (default 2000)")
    synth.add_argument("--sets", type=int, default=50, help="sticker sets (default 50)")
    synth.add_argument("--images", type=int, default=1400,
                       help="SER30K training images; val and test get a fifth each "
                       "(default 1400)")
    synth.add_argument("--image-size", type=int, default=64, help="sticker side in pixels")
    synth.set_defaults(func=_synth)

    upload = cmds.add_parser(
        "upload", help="copy a data directory to the object store (parallel, resumable)",
        description="Objects already present with the same size are skipped, so an "
        "interrupted upload can simply be run again.",
    )
    upload.add_argument("source", metavar="DIR", help="local directory (or any store URI)")
    upload.add_argument("destination", metavar="URI", help="e.g. s3://bucket/prefix")
    upload.add_argument("--workers", type=int, default=8, help="parallel uploads (default 8)")
    upload.add_argument("--json", action="store_true", help="print the result as JSON")
    upload.add_argument("--strict", action="store_true",
                        help="copy nothing when a source entry cannot be copied (symlinks "
                        "leading outside the source, broken links)")
    upload.set_defaults(func=_upload)


def _validate(args: argparse.Namespace) -> int:
    from srs_core.data.validate import validate

    result = validate(args.stickerchat, args.ser30k, workers=args.workers)
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

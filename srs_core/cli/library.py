"""`srs index build`, `srs suggest` and `srs serve`: suggestions from the whole library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from srs_core.cli import print_json
from srs_core.cli._common import NON_NEGATIVE, PORT, POSITIVE, seconds, set_ids
from srs_core.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="sticker index of the whole library")
    index_sub = index.add_subparsers(dest="index_command", metavar="COMMAND", required=True)
    build = index_sub.add_parser(
        "build", help="embed every sticker of every set (ITA embedding + emotion)",
        description="Writes embeddings.npy, emotions.npy, ids.json and index.json to --out.")
    build.add_argument("--checkpoint", required=True, help="URI of best.pt")
    build.add_argument("--stickerchat", required=True, help="StickerChat root URI")
    build.add_argument("--out", required=True, help="URI of the index")
    build.add_argument("--cache", default="",
                       help="sticker cache URI (default <out>/sticker-cache)")
    build.add_argument("--teacher", default="", help="teacher.pth: emotions from the teacher")
    build.add_argument("--anchors", default="", help="anchors .npy (with --teacher)")
    build.add_argument("--batch-size", type=POSITIVE, default=128)
    build.set_defaults(func=_build)

    suggest = sub.add_parser(
        "suggest", help="suggest stickers from the whole library for dialog contexts",
        description="Input: JSON Lines dialogs in StickerChat format (one per line, the "
        "context's utterances are used), or plain text lines forming one context. Output: "
        "one JSON object per context.")
    _model_arguments(suggest)
    suggest.add_argument("--dialog", required=True, help="file, or - for stdin")
    suggest.add_argument("-k", type=POSITIVE, default=5, help="stickers to return (>= 1)")
    suggest.add_argument("-n", type=POSITIVE, default=50,
                         help="ITA candidates reranked by ITM (>= -k)")
    suggest.add_argument("--sets", type=set_ids, default=None,
                         help="comma-separated set ids to search within (each must be in the "
                         "index)")
    suggest.add_argument("--per-set", type=NON_NEGATIVE, default=0,
                         help="at most this many stickers of one set (0: no limit)")
    suggest.set_defaults(func=_suggest)

    serve = sub.add_parser("serve", help="KServe model server answering suggest (v1 REST)")
    _model_arguments(serve)
    serve.add_argument("--port", type=PORT, default=8080)
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--name", default="srs", help="model name in /v1/models/<name>")
    serve.add_argument("--max-batch", type=POSITIVE, default=16,
                       help="contexts scored together from concurrent requests")
    serve.add_argument("--batch-wait-ms", type=seconds(allow_zero=True), default=5.0,
                       help="how long a request waits for others to batch with")
    serve.set_defaults(func=_serve)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="URI of best.pt")
    parser.add_argument("--index", required=True, help="URI of the sticker index")
    parser.add_argument("--search", choices=("flat", "hnsw", "ivf"), default="flat",
                        help="flat: exact inner product; hnsw/ivf: approximate")
    parser.add_argument("--token-cache", type=NON_NEGATIVE, default=4096,
                        help="image-token LRU entries (reranked stickers kept encoded)")


def _build(args: argparse.Namespace) -> int:
    from srs_core.library import build_index

    print_json(build_index(args.checkpoint, args.stickerchat, args.out, args.cache,
                           args.teacher, args.anchors, args.batch_size))
    return 0


def read_contexts(text: str) -> Iterator[list[str]]:
    """StickerChat JSON Lines (``{"context": [...]}`` per line), else one plain-text context.

    A JSON line over :data:`~srs_core.data.limits.MAX_LINE_BYTES` is refused unparsed; a long
    plain-text line is one utterance, which the suggester cuts to its limit.
    """
    from srs_core.data import limits
    from srs_core.data.stickerchat import utterance_text

    lines = [line for line in text.splitlines() if line.strip()]
    if lines and all(line.lstrip().startswith("{") for line in lines):
        for number, line in enumerate(lines, start=1):
            limit = limits.MAX_LINE_BYTES
            if len(line) > limit or len(line.encode("utf-8", "replace")) > limit:
                raise ConfigError(
                    f"dialog line {number}: {len(line.encode('utf-8', 'replace'))} bytes; at "
                    f"most {limit} per line (limits.MAX_LINE_BYTES): a dialog line is a few KB")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"dialog line {number}: not valid JSON ({exc.msg})") from None
            context = record.get("context") if isinstance(record, dict) else None
            if not isinstance(context, list):
                raise ConfigError(f"dialog line {number}: no \"context\" list")
            yield [item.get("text", "") if isinstance(item, dict) else str(item)
                   for item in context]
        return
    yield [utterance_text(line) for line in lines]


def _suggest(args: argparse.Namespace) -> int:
    from srs_core.library import Suggester

    if args.n < args.k:  # before anything is loaded; never silently widened
        raise ConfigError(f"-n {args.n} is smaller than -k {args.k}: rerank at least as many "
                          "candidates as stickers returned (give -n >= -k)")
    if args.dialog == "-":
        text = sys.stdin.read()
    else:
        from srs_core import store

        text = store.read_text(args.dialog)
    contexts = list(read_contexts(text))
    if not contexts or not any(contexts):
        raise ConfigError(f"{args.dialog}: no utterance to suggest for")
    suggester = Suggester.open(args.checkpoint, args.index, args.search, args.token_cache)
    unknown = suggester.unknown_sets(args.sets or ())
    if unknown:
        raise ConfigError(f"--sets: unknown set id(s) {', '.join(map(str, unknown))}: not in "
                          f"the index {args.index} ({len(suggester.known_sets)} sets)")
    for result in suggester.suggest(contexts, k=args.k, n=args.n, sets=args.sets,
                                    per_set=args.per_set):
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from srs_core.serving import serve

    serve(args.checkpoint, args.index, port=args.port, host=args.host, name=args.name,
          kind=args.search, token_cache=args.token_cache, max_batch=args.max_batch,
          batch_wait_ms=args.batch_wait_ms)
    return 0

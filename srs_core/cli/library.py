"""`srs index build`, `srs suggest` and `srs serve`: suggestions from the whole library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from srs_core.cli import print_json
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
    build.add_argument("--batch-size", type=int, default=128)
    build.set_defaults(func=_build)

    suggest = sub.add_parser(
        "suggest", help="suggest stickers from the whole library for dialog contexts",
        description="Input: JSON Lines dialogs in StickerChat format (one per line, the "
        "context's utterances are used), or plain text lines forming one context. Output: "
        "one JSON object per context.")
    _model_arguments(suggest)
    suggest.add_argument("--dialog", required=True, help="file, or - for stdin")
    suggest.add_argument("-k", type=int, default=5, help="stickers to return")
    suggest.add_argument("-n", type=int, default=50, help="ITA candidates reranked by ITM")
    suggest.add_argument("--sets", default="", help="comma-separated set ids to search within")
    suggest.add_argument("--per-set", type=int, default=0,
                         help="at most this many stickers of one set (0: no limit)")
    suggest.set_defaults(func=_suggest)

    serve = sub.add_parser("serve", help="KServe model server answering suggest (v1 REST)")
    _model_arguments(serve)
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--name", default="srs", help="model name in /v1/models/<name>")
    serve.add_argument("--max-batch", type=int, default=16,
                       help="contexts scored together from concurrent requests")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0,
                       help="how long a request waits for others to batch with")
    serve.set_defaults(func=_serve)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="URI of best.pt")
    parser.add_argument("--index", required=True, help="URI of the sticker index")
    parser.add_argument("--search", choices=("flat", "hnsw", "ivf"), default="flat",
                        help="flat: exact inner product; hnsw/ivf: approximate")
    parser.add_argument("--token-cache", type=int, default=4096,
                        help="image-token LRU entries (reranked stickers kept encoded)")


def _build(args: argparse.Namespace) -> int:
    from srs_core.library import build_index

    print_json(build_index(args.checkpoint, args.stickerchat, args.out, args.cache,
                           args.teacher, args.anchors, args.batch_size))
    return 0


def read_contexts(text: str) -> Iterator[list[str]]:
    """StickerChat JSON Lines (``{"context": [...]}`` per line), else one plain-text context."""
    from srs_core.data.stickerchat import utterance_text

    lines = [line for line in text.splitlines() if line.strip()]
    if lines and all(line.lstrip().startswith("{") for line in lines):
        for number, line in enumerate(lines, start=1):
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

    if args.dialog == "-":
        text = sys.stdin.read()
    else:
        from srs_core import store

        text = store.read_text(args.dialog)
    contexts = list(read_contexts(text))
    if not contexts or not any(contexts):
        raise ConfigError(f"{args.dialog}: no utterance to suggest for")
    sets = [int(s) for s in args.sets.split(",") if s.strip()] if args.sets else None
    suggester = Suggester.open(args.checkpoint, args.index, args.search, args.token_cache)
    for result in suggester.suggest(contexts, k=args.k, n=args.n, sets=sets,
                                    per_set=args.per_set):
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from srs_core.serving import serve

    serve(args.checkpoint, args.index, port=args.port, host=args.host, name=args.name,
          kind=args.search, token_cache=args.token_cache, max_batch=args.max_batch,
          batch_wait_ms=args.batch_wait_ms)
    return 0

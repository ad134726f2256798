"""Score a dialog file in chunks (in this process or a process pool), resumably.

Work is split into chunks of dialogs scored by a process pool. Each chunk's lines and then its
counts are committed as separate objects under ``<name>.chunks/``; a re-run of the same command
after a kill scores only the chunks whose counts are missing, then concatenates all chunks in
order, so the output is byte-identical to an uninterrupted run. Memory stays bounded: the input
is streamed and at most ``2 * workers`` chunks are in flight.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from srs_core import store
from srs_core.artifacts import SentimentOutputs
from srs_core.data.report import DataProblem, Report
from srs_core.data.stickerchat import SPLITS, Dialog, dialog_uri, iter_dialogs
from srs_core.errors import DataError
from srs_core.runlock import LOCK_NAME, RunLock
from srs_core.sentiment.scoring import chunk_uris, chunks, init_worker, score_chunk

log = logging.getLogger(__name__)

CHUNK_SIZE = 2000  # dialogs per chunk: ~1 MB of output, a few seconds of work per process
FORMAT_VERSION = 1
_RELEASE = re.compile(r"release_([a-z]+)\.json")

# Called in the calling process with each newly scored chunk's counts once they are committed.
ChunkHook = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class _Job:
    """One scoring run: ``source`` (the dialog file, as named in messages) of ``root``/``split``
    into ``out``."""

    source: str
    root: str
    split: str
    out: str
    workers: int
    chunk_size: int
    strict: bool

    @property
    def work(self) -> str:
        """Prefix of the committed chunks (``<name>.chunks/``)."""
        return _sibling(self.out, ".chunks")


def _split_source(dialogs_uri: str) -> tuple[str, str]:
    """``(root, split)`` of a ``.../release_<split>.json`` URI given on the command line."""
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
    on_chunk: ChunkHook | None = None,
) -> dict[str, Any]:
    """Score every utterance of a ``release_<split>.json``; writes ``out_uri`` and a summary.

    ``workers`` = 0 uses every core, 1 runs in this process. Re-running after an interruption
    resumes from the completed chunks. ``on_chunk`` (a progress hook) gets each newly scored
    chunk's counts in this process once the chunk is committed; an exception it raises stops
    the run there, as a kill would (tests use it to check resumption). Returns the summary.
    """
    _check_chunk_size(chunk_size)
    started = time.time()
    root, split = _split_source(dialogs_uri)
    job = _Job(dialogs_uri, root, split, out_uri, workers, chunk_size, strict)
    return _score(job, started, on_chunk)


def sentiment_of_split(
    stickerchat: str,
    split: str,
    outputs: SentimentOutputs,
    workers: int = 0,
    chunk_size: int = CHUNK_SIZE,
    strict: bool = False,
    on_chunk: ChunkHook | None = None,
) -> dict[str, Any]:
    """``run_sentiment`` of one split of a StickerChat root into ``outputs.split(split)``."""
    _check_chunk_size(chunk_size)
    started = time.time()
    job = _Job(dialog_uri(stickerchat, split), stickerchat, split, outputs.split(split),
               workers, chunk_size, strict)
    return _score(job, started, on_chunk)


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise DataError(f"chunk_size must be positive, got {chunk_size}")


def _score(job: _Job, started: float, on_chunk: ChunkHook | None) -> dict[str, Any]:
    # before any work: the chunks and the summary are named after it (s3://bucket would
    # put them in a bucket "bucket.chunks")
    store.check_object_uri(job.out)
    if job.workers <= 0:
        job = dataclasses.replace(job, workers=default_workers())
    with RunLock(job.work, "srs sentiment"):
        summary = _run(job, started, on_chunk)
    local = store.local_path(job.work)
    if local is not None and local.is_dir() and not any(local.iterdir()):
        local.rmdir()
    return summary


def _run(job: _Job, started: float, on_chunk: ChunkHook | None) -> dict[str, Any]:
    manifest = {"input": job.source, "input_bytes": store.size(job.source),
                "chunk_size": job.chunk_size, "format": FORMAT_VERSION}
    done = _prepare_work(job.work, manifest)
    report = Report(strict=job.strict)
    dialogs = iter_dialogs(job.root, job.split, report=report, strict=job.strict)
    stats: dict[int, dict[str, Any]] = {}

    def collect(result: dict[str, Any]) -> None:
        if "error" in result:
            raise DataProblem(*result["error"])
        stats[result["index"]] = result
        if on_chunk is not None:
            on_chunk(result)

    total = _score_chunks(job, dialogs, done, collect)
    for index in sorted(done):
        if index < total:
            _, stats_uri = chunk_uris(job.work, index)
            stats[index] = json.loads(store.read_text(stats_uri))
    counts = _concatenate(job, stats, total, report)
    if counts["dialogs"] == 0:
        message = (f"sentiment of {job.source}: no dialog could be scored "
                   f"({report.render() if report.counts else 'the file has no dialogs'})")
        if job.strict:
            raise DataError(message)
        log.warning("%s; %s is empty", message, job.out)
    seconds = time.time() - started
    summary = {
        "input": job.source, "output": job.out, **counts,
        "skipped": report.as_dict(), "chunks": total, "chunks_resumed": len(done & set(stats)),
        "workers": job.workers, "seconds": round(seconds, 3),
        "dialogs_per_s": round(counts["dialogs"] / max(seconds, 1e-9), 1),
    }
    store.write_text(summary_uri(job.out), json.dumps(summary, indent=2, ensure_ascii=False))
    _clear_work(job.work)
    log.info("sentiment: %d dialogs, %d utterances in %.1fs (%d skipped) -> %s",
             counts["dialogs"], counts["utterances"], seconds, report.skipped, job.out)
    return summary


def _score_chunks(job: _Job, dialogs: Iterable[Dialog], done: set[int],
                  collect: Callable[[dict[str, Any]], None]) -> int:
    """Score the chunks not in ``done`` (in this process or a pool); returns the chunk count."""
    total = 0

    def tasks() -> Iterator[dict[str, Any]]:
        nonlocal total
        for index, batch in chunks(dialogs, job.chunk_size):
            total = index + 1
            if index not in done:
                yield {"index": index, "work": job.work, "source": job.source,
                       "strict": job.strict, "dialogs": batch}

    if job.workers == 1:
        for task in tasks():
            collect(score_chunk(task))
        return total
    context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
    with ProcessPoolExecutor(job.workers, mp_context=context, initializer=init_worker) as pool:
        pending: deque[Future] = deque()
        try:
            for task in tasks():
                pending.append(pool.submit(score_chunk, task))
                while len(pending) >= 2 * job.workers:  # bounded: the reader waits here
                    collect(pending.popleft().result())
            while pending:
                collect(pending.popleft().result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return total


def _concatenate(job: _Job, stats: dict[int, dict[str, Any]], total: int,
                 report: Report) -> dict[str, int]:
    """Write the chunks in order to ``job.out``; returns the summed counts."""
    counts = {"dialogs": 0, "utterances": 0, "non_chinese_utterances": 0}
    with store.open_write(job.out) as output:
        for index in range(total):
            for key in counts:
                counts[key] += stats[index][key]
            _merge(report, stats[index]["problems"])
            with store.open_read(chunk_uris(job.work, index)[0]) as chunk:
                shutil.copyfileobj(chunk, output, 1 << 20)
    return counts


def _clear_work(work: str) -> None:
    for info in list(store.list_objects(work)):
        if info.relpath not in ("manifest.json", LOCK_NAME):
            store.delete(info.uri)
    store.delete(store.join(work, "manifest.json"))  # last: a half-cleaned prefix stays valid


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

"""Moving bytes between a local file and any URI, and copying whole trees in parallel."""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from srs_core.errors import StoreError, StoreNotFound
from srs_core.store.backend import ObjectInfo, backend_for
from srs_core.store.local import atomic_file, missing
from srs_core.store.objects import (
    exists,
    list_objects,
    list_with_problems,
    local_path,
    open_read,
    open_write,
)
from srs_core.store.uri import join

log = logging.getLogger(__name__)


@dataclass
class CopyReport:
    copied: int = 0
    skipped: int = 0
    bytes: int = 0
    # source entries never copied: symlinks leading outside the source root, broken or looping
    # symlinks, unreadable directories; one line each, naming the path and why
    problems: list[str] = field(default_factory=list)


def upload(local_path: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy a local file to a URI (atomically)."""
    source = Path(local_path)
    if not source.is_file():
        raise missing(source, "upload")
    text = os.fspath(uri)
    backend_for(text).upload(source, text)


def download(uri: str | os.PathLike, local_path: str | os.PathLike) -> None:
    """Copy an object to a local file (atomically)."""
    target = Path(local_path)
    with open_read(uri) as src, atomic_file(target) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _copy_one(src: str, dst: str) -> None:
    src_path, dst_path = local_path(src), local_path(dst)
    if src_path is not None:
        upload(src_path, dst)
    elif dst_path is not None:
        download(src, dst_path)
    else:
        with open_read(src) as reader, open_write(dst) as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)


def _md5(info: ObjectInfo) -> str | None:
    """MD5 of an object's content, or None when the backend does not say it."""
    return backend_for(info.uri).content_md5(info)


def _same_content(src: ObjectInfo, dst: ObjectInfo | None) -> bool:
    if dst is None or dst.size != src.size:
        return False
    # the remote side first: when it cannot say its MD5, no local file is hashed for nothing
    first, second = (dst, src) if local_path(dst.uri) is None else (src, dst)
    digest = _md5(first)
    return digest is not None and digest == _md5(second)


def _copy_if_changed(src: ObjectInfo, dst: ObjectInfo | None, dst_uri: str) -> bool:
    """Copy ``src`` unless ``dst`` already holds the same bytes; True if it copied."""
    if _same_content(src, dst):
        return False
    _copy_one(src.uri, dst_uri)
    return True


def _run_copies(objects: list[ObjectInfo], existing: dict[str, ObjectInfo],
                dst_uri: str | os.PathLike, workers: int, progress: bool,
                report: CopyReport) -> None:
    """Copy ``objects`` in parallel, counting into ``report``; the first failure stops all."""
    from tqdm import tqdm

    bar = tqdm(total=len(objects), unit="obj", desc="copy", disable=not progress or not objects)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_copy_if_changed, info, existing.get(info.relpath),
                               join(dst_uri, info.relpath)): info for info in objects}
        try:
            for future in as_completed(futures):
                if future.result():
                    report.copied += 1
                    report.bytes += futures[future].size
                else:
                    report.skipped += 1
                bar.update(1)
        except BaseException:
            # the rest would most likely fail the same way (a dead endpoint, a full disk)
            for future in futures:
                future.cancel()
            raise
        finally:
            bar.close()


def copy_tree(
    src_uri: str | os.PathLike,
    dst_uri: str | os.PathLike,
    workers: int = 8,
    progress: bool = True,
    strict: bool = False,
) -> CopyReport:
    """Copy every object under ``src_uri`` to ``dst_uri`` in parallel.

    Resumable: an object already at the destination with the same content (compared by MD5:
    the ETag of a single-part object, the ``srs-md5`` metadata of a multipart one) is skipped,
    so a re-run after an interruption sends only what is missing, incomplete or changed.

    A local source's symlinks that lead outside it (or loop, or are broken) are never copied:
    they are ``problems`` of the report, and with ``strict`` a StoreError before anything is
    copied. The first failed object stops the copy; the objects not started are not tried.
    """
    problems: list[str] = []
    objects = list(list_with_problems(src_uri, True, problems))
    if problems and strict:
        raise StoreError(f"copy {os.fspath(src_uri)}: {len(problems)} source entries cannot be "
                         f"copied (strict): " + "; ".join(problems[:5]))
    if not objects and not problems and not exists(src_uri):
        raise StoreNotFound(f"copy {os.fspath(src_uri)}: nothing to copy (no such prefix)")
    existing = {info.relpath: info for info in list_objects(dst_uri)}
    report = CopyReport(problems=problems)
    _run_copies(objects, existing, dst_uri, workers, progress, report)
    log.info("copied %d objects (%d bytes), skipped %d already present, %d problems",
             report.copied, report.bytes, report.skipped, len(problems))
    return report

"""Local copies of remote objects (``SRS_CACHE_DIR``), validated by the object's ETag."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from srs_core.errors import StoreNotFound
from srs_core.store.backend import backend_for
from srs_core.store.local import (
    CACHE_DIR_ENV,
    atomic_file,
    cache_dir,
    disk_full_errors,
    missing,
)
from srs_core.store.transfer import copy_tree, download

__all__ = ["CACHE_DIR_ENV", "cache_root", "fetch", "fetch_tree"]


def cache_root() -> Path:
    """Local directory for cached downloads and scratch files (``SRS_CACHE_DIR``)."""
    root = cache_dir()
    with disk_full_errors(root):
        root.mkdir(parents=True, exist_ok=True)
    return root


_fetch_lock = threading.Lock()


def fetch(uri: str | os.PathLike) -> Path:
    """A local file with the object's content: the path itself, or a cached download.

    The cache is keyed by the object's URI and validated by its ETag, so a changed object is
    downloaded again.
    """
    text = os.fspath(uri)
    backend = backend_for(text)
    path = backend.local_path(text)
    if path is not None:
        if not path.is_file():
            raise missing(path, "fetch")
        return path
    info = backend.stat(text, "fetch")
    digest = hashlib.sha256(info.uri.encode()).hexdigest()[:16]
    target = cache_root() / "objects" / digest / info.relpath
    marker = target.with_name(target.name + ".etag")
    with _fetch_lock:
        if target.exists() and marker.exists() and marker.read_text() == info.etag:
            return target
    download(uri, target)
    with atomic_file(marker) as handle:
        handle.write(info.etag.encode())
    return target


def fetch_tree(prefix_uri: str | os.PathLike) -> Path:
    """A local directory holding every object under a prefix."""
    text = os.fspath(prefix_uri)
    backend = backend_for(text)
    path = backend.local_path(text)
    if path is not None:
        if not path.is_dir():
            raise missing(path, "fetch")
        return path
    canonical = backend.canonical(text)
    digest = hashlib.sha256(canonical.rstrip("/").encode()).hexdigest()[:16]
    root = cache_root() / "trees" / digest
    report = copy_tree(prefix_uri, root, progress=False)
    if report.copied + report.skipped == 0:
        raise StoreNotFound(f"fetch {canonical}: no objects under this prefix")
    return root

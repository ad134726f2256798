"""One small object-store API over URIs: ``s3://bucket/key`` (MinIO/S3) and local paths.

Every step of the workflow reads and writes through these functions, so the same code runs
against a local directory, MinIO in a cluster, or any S3-protocol server. Each URI scheme has
a backend (:mod:`.local` for paths and ``file://``, :mod:`.s3` for ``s3://``, its settings in
:mod:`.s3_config`) registered by scheme in :mod:`.backend`; the functions here pick it.

Writes are atomic: local files are written beside their target and renamed into place; S3
objects are uploaded from a finished local file, so a reader never sees a partial object.
:func:`fetch` keeps local copies of remote objects under ``SRS_CACHE_DIR`` (:mod:`.cache`).
Failures are :class:`~srs_core.errors.StoreError` naming the object (``StoreNotFound`` when it
does not exist, ``DiskFullError`` naming the file and the free space when a write runs out of
space: the previous version stays and no temporary file is left).
"""

from __future__ import annotations

# Each backend registers its URI schemes when imported.
from srs_core.store import local, s3  # noqa: F401
from srs_core.store.backend import ObjectInfo
from srs_core.store.cache import cache_root, fetch, fetch_tree
from srs_core.store.local import reserve
from srs_core.store.objects import (
    check_object_uri,
    delete,
    exists,
    list_objects,
    local_path,
    open_read,
    open_write,
    read_bytes,
    read_text,
    size,
    write_bytes,
    write_text,
)
from srs_core.store.transfer import CopyReport, copy_tree, download, upload
from srs_core.store.uri import is_s3, join

__all__ = [
    "CopyReport",
    "ObjectInfo",
    "cache_root",
    "check_object_uri",
    "copy_tree",
    "delete",
    "download",
    "exists",
    "fetch",
    "fetch_tree",
    "is_s3",
    "join",
    "list_objects",
    "local_path",
    "open_read",
    "open_write",
    "read_bytes",
    "read_text",
    "reserve",
    "size",
    "upload",
    "write_bytes",
    "write_text",
]

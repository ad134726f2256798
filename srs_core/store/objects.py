"""Single objects through whichever backend owns the URI: read, write, stat, list, delete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from srs_core.errors import StoreError
from srs_core.store.backend import ObjectInfo, backend_for


@contextlib.contextmanager
def open_read(uri: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Stream an object's bytes."""
    text = os.fspath(uri)
    with backend_for(text).open_read(text) as handle:
        yield handle


@contextlib.contextmanager
def open_write(uri: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Write an object; it appears only when the block exits without an exception."""
    text = os.fspath(uri)
    with backend_for(text).open_write(text) as handle:
        yield handle


def check_object_uri(uri: str | os.PathLike) -> None:
    """Refuse, before any work, a URI that cannot name an object to write: an S3 URI without a
    key (a bare bucket, or a prefix ending in '/'), a key with '.' or '..' segments, a local
    directory. For outputs from which sibling names are derived (``<out>.chunks/``)."""
    text = os.fspath(uri)
    backend_for(text).check_object(text)


def read_bytes(uri: str | os.PathLike) -> bytes:
    with open_read(uri) as handle:
        return handle.read()


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    with open_write(uri) as handle:
        handle.write(data)


def read_text(uri: str | os.PathLike) -> str:
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreError(f"read {os.fspath(uri)}: not UTF-8 text (byte {exc.start})") from None


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str | os.PathLike) -> bool:
    text = os.fspath(uri)
    return backend_for(text).exists(text)


def size(uri: str | os.PathLike) -> int:
    """Size in bytes; StoreNotFound if the object does not exist."""
    text = os.fspath(uri)
    return backend_for(text).stat(text, "stat").size


def list_objects(prefix_uri: str | os.PathLike, recursive: bool = True) -> Iterator[ObjectInfo]:
    """Objects under a prefix (a directory for local URIs), sorted by relative path.

    Locally, symlinks leading outside the directory, broken or looping are skipped with a
    warning (see :func:`copy_tree`, which reports them).
    """
    return list_with_problems(prefix_uri, recursive, [])


def list_with_problems(prefix_uri: str | os.PathLike, recursive: bool,
                       problems: list[str]) -> Iterator[ObjectInfo]:
    """:func:`list_objects`, adding the entries it cannot list to ``problems``."""
    text = os.fspath(prefix_uri)
    yield from backend_for(text).list(text, recursive, problems)


def delete(uri: str | os.PathLike) -> None:
    """Remove an object; a missing object is not an error."""
    text = os.fspath(uri)
    backend_for(text).delete(text)


def local_path(uri: str | os.PathLike) -> Path | None:
    """The local file behind a URI, or None for remote objects."""
    text = os.fspath(uri)
    return backend_for(text).local_path(text)

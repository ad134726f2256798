"""What a storage backend does, and the registry that picks one by URI scheme.

A backend module registers itself for its schemes when imported (``srs_core.store`` imports
each one); adding a kind of storage is one module that implements :class:`Backend` and calls
:func:`register`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from srs_core.errors import StoreError
from srs_core.store.uri import scheme


@dataclass(frozen=True)
class ObjectInfo:
    """One object under a listed prefix; ``relpath`` uses ``/`` separators."""

    uri: str
    relpath: str
    size: int
    etag: str | None = None  # S3 only, without quotes


class Backend(Protocol):
    """The operations of one kind of storage; every ``uri`` is a string of its schemes.

    Missing objects raise :class:`StoreNotFound`, other failures :class:`StoreError`, each
    naming the object and the action ("read", "stat", "fetch", ...).
    """

    def open_read(self, uri: str) -> AbstractContextManager[IO[bytes]]:
        """Stream an object's bytes."""
        ...

    def open_write(self, uri: str) -> AbstractContextManager[IO[bytes]]:
        """Write an object atomically: it appears only when the block exits cleanly; running
        out of local space is a DiskFullError naming the file and the free space."""
        ...

    def upload(self, source: Path, uri: str) -> None:
        """Copy an existing local file to ``uri`` atomically."""
        ...

    def exists(self, uri: str) -> bool: ...

    def check_object(self, uri: str) -> object:
        """StoreError, naming ``uri``, when it cannot name an object to write."""
        ...

    def stat(self, uri: str, action: str) -> ObjectInfo:
        """One object: ``uri`` in its canonical spelling, ``relpath`` its name, size, etag."""
        ...

    def list(self, prefix_uri: str, recursive: bool,
             problems: list[str]) -> Iterator[ObjectInfo]:
        """Objects under a prefix, sorted by relative path; entries never listed go to
        ``problems`` (one line each, naming the entry and why)."""
        ...

    def delete(self, uri: str) -> None:
        """Remove an object; a missing object is not an error."""
        ...

    def local_path(self, uri: str) -> Path | None:
        """The local file behind ``uri``, or None when the bytes are remote."""
        ...

    def canonical(self, uri: str) -> str:
        """``uri`` in one spelling per object (keys the fetch cache)."""
        ...

    def content_md5(self, info: ObjectInfo) -> str | None:
        """Hex MD5 of a listed object's content, or None when the backend cannot say it."""
        ...


_BACKENDS: dict[str, Backend] = {}


def register(uri_scheme: str, backend: Backend) -> None:
    """Serve ``<uri_scheme>://`` URIs (``""``: plain paths) with ``backend``."""
    _BACKENDS[uri_scheme] = backend


def backend_for(uri: str | os.PathLike) -> Backend:
    """The backend registered for the URI's scheme; StoreError for any other scheme."""
    found = _BACKENDS.get(scheme(uri))
    if found is None:
        remote = sorted(f"{name}://" for name in _BACKENDS if name not in ("", "file"))
        raise StoreError(f"{os.fspath(uri)}: unsupported URI scheme (use "
                         f"{', '.join([*remote, 'file://'])} or a path)")
    return found

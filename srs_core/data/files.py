"""Reading data files under a root: one bad file is one located problem, never a crash.

Every reader opens its files through :func:`open_data` / :func:`read_data`, which for a local
root

- refuse a path that resolves outside the root (``path_escapes_root``): a symlinked file or set
  directory pointing elsewhere, or a name with ``..`` that slipped through, is not read;
- turn what the operating system says into a problem of that file (``unreadable_file``): a
  directory where a file should be, a broken symlink, a file without read permission.

An absent file is :class:`~srs_core.errors.StoreNotFound`, as from the store, because each
reader names that case itself (``npy_missing``, ``image_missing``, ...). S3 keys have no
symlinks and the store refuses ``..`` in keys, so remote roots are read as they are.

:func:`describe_encoding` names what a file that is not UTF-8 looks like, so such a file is one
problem instead of one per line.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from srs_core import store
from srs_core.data.report import DataProblem
from srs_core.errors import StoreNotFound

# Byte-order marks of the encodings a text editor or a Windows tool may have saved a file in;
# the UTF-32 ones first, since UTF-32 LE starts with the UTF-16 LE mark.
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32 LE"),
    (b"\x00\x00\xfe\xff", "UTF-32 BE"),
    (b"\xff\xfe", "UTF-16 LE"),
    (b"\xfe\xff", "UTF-16 BE"),
)


def describe_encoding(head: bytes, bad_offset: int | None = None) -> str | None:
    """Why a file is not UTF-8, from its first bytes, or None when nothing says so.

    ``bad_offset`` (the file offset of the first byte that does not decode) is used when no
    byte-order mark names the encoding.
    """
    for mark, name in _BOMS:
        if head.startswith(mark):
            return f"{name} (byte-order mark {mark.hex(' ')}), not UTF-8"
    start = head[:64]
    if start and start.count(0) * 4 >= len(start):
        # JSON and the mapping text never hold a raw NUL; UTF-16/32 text of ASCII is half NULs
        return "NUL bytes near the start: looks like UTF-16 or UTF-32 without a byte-order mark"
    if bad_offset is not None:
        return f"not UTF-8 (first bad byte at offset {bad_offset})"
    return None


def _checked_path(root: Path, path: Path, uri: str) -> Path:
    """The resolved path of ``path``; DataProblem when it leads outside ``root``."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise DataProblem("path_escapes_root", uri, f"resolves to {real} (through a symlink or "
                          f"'..'), outside the data root {real_root}")
    return Path(real)


def _local_problem(uri: str, path: Path, error: OSError) -> DataProblem | StoreNotFound:
    if isinstance(error, FileNotFoundError):
        if os.path.islink(path):
            return DataProblem("unreadable_file", uri, "broken symlink (its target "
                               f"{os.readlink(path)} does not exist)")
        return StoreNotFound(f"read {uri}: no such file")
    if isinstance(error, NotADirectoryError):
        return DataProblem("unreadable_file", uri, "a folder on its path is a file")
    if isinstance(error, PermissionError):
        return DataProblem("unreadable_file", uri, "permission denied")
    return DataProblem("unreadable_file", uri, error.strerror or type(error).__name__)


@contextlib.contextmanager
def open_data(root: str, uri: str) -> Iterator[IO[bytes]]:
    """Open ``uri`` (a file under ``root``) for reading; see the module docstring."""
    root_path, path = store.local_path(root), store.local_path(uri)
    if root_path is None or path is None:
        with store.open_read(uri) as handle:
            yield handle
        return
    real = _checked_path(root_path, path, uri)
    try:
        mode = os.stat(real).st_mode
        # checked before open(): opening a FIFO would block, a device could be endless
        if stat.S_ISDIR(mode):
            raise DataProblem("unreadable_file", uri, "is a directory, expected a file")
        if not stat.S_ISREG(mode):
            raise DataProblem("unreadable_file", uri, "not a regular file (device, FIFO, socket)")
        handle = open(real, "rb")  # noqa: SIM115 - closed by the with-block below
    except OSError as exc:
        raise _local_problem(uri, path, exc) from None
    with handle:
        yield handle


def present(uri: str) -> bool:
    """Whether anything is at ``uri``: a file, a directory, even a broken symlink (which
    ``Path.exists`` calls absent, hiding the problem)."""
    path = store.local_path(uri)
    return os.path.lexists(path) if path is not None else store.exists(uri)


def read_data(root: str, uri: str) -> bytes:
    """All bytes of ``uri`` (a file under ``root``), checked as :func:`open_data` does."""
    with open_data(root, uri) as handle:
        return handle.read()

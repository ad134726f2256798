"""Local files: plain paths and ``file://`` URIs; writes land beside the target, then rename."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from srs_core.errors import StoreError, StoreNotFound
from srs_core.store.backend import ObjectInfo, register
from srs_core.store.uri import join

log = logging.getLogger(__name__)

# Marks a file being written (see atomic_file); never listed, so never copied half-written.
TMP_MARK = ".srs-tmp-"


def to_path(uri: str) -> Path:
    return Path(urlparse(uri).path) if uri.startswith("file://") else Path(uri)


def missing(path: Path, action: str) -> StoreNotFound:
    return StoreNotFound(f"{action} {path}: no such file")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Write ``path`` through a temporary file beside it, renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def local_files(root: Path, recursive: bool, problems: list[str]) -> Iterator[tuple[str, Path]]:
    """``(relpath, path)`` of the files under ``root``, depth first in name order.

    A symlink is followed only when it resolves inside ``root``: one leading elsewhere would
    copy whatever it points to (a home directory, /etc) and one looping back would never end.
    Those and broken symlinks are problems (logged and added to ``problems``), never listed.
    """
    real_root = os.path.realpath(root)

    def problem(path: Path, why: str) -> None:
        problems.append(f"{path}: {why}")
        log.warning("list %s: %s; skipped", path, why)

    def visit(directory: Path, rel: str, chain: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            problem(directory, f"cannot list ({exc.strerror})")
            return
        for entry in entries:
            path, relpath = Path(entry.path), rel + entry.name
            if entry.is_symlink():
                real = os.path.realpath(path)
                if os.path.commonpath([real_root, real]) != real_root:
                    problem(path, f"symlink to {real}, outside the source root {real_root}")
                    continue
                if not os.path.exists(real):
                    problem(path, "broken symlink")
                    continue
                if real in chain:
                    problem(path, f"symlink loop (to {real}, a folder above it)")
                    continue
            if entry.is_dir():
                if recursive:
                    yield from visit(path, relpath + "/", (*chain, os.path.realpath(path)))
            elif entry.is_file() and TMP_MARK not in entry.name:
                yield relpath, path

    yield from visit(root, "", (real_root,))


class LocalBackend:
    """A directory tree is a bucket; a file is an object."""

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[IO[bytes]]:
        path = to_path(uri)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the context manager below
        except FileNotFoundError:
            raise missing(path, "read") from None
        except IsADirectoryError:
            raise StoreError(f"read {path}: is a directory, expected a file") from None
        with handle:
            yield handle

    @contextlib.contextmanager
    def open_write(self, uri: str) -> Iterator[IO[bytes]]:
        with atomic_file(to_path(uri)) as handle:
            yield handle

    def upload(self, source: Path, uri: str) -> None:
        with open(source, "rb") as src, atomic_file(to_path(uri)) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def exists(self, uri: str) -> bool:
        return to_path(uri).exists()

    def stat(self, uri: str, action: str) -> ObjectInfo:
        path = to_path(uri)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise missing(path, action) from None
        return ObjectInfo(str(path), path.name, size)

    def list(self, prefix_uri: str, recursive: bool,
             problems: list[str]) -> Iterator[ObjectInfo]:
        root, base = to_path(prefix_uri), prefix_uri.rstrip("/")
        if root.is_file():
            raise StoreError(f"list {root}: is a file, expected a directory prefix")
        if not root.exists():
            return
        for rel, path in local_files(root, recursive, problems):
            yield ObjectInfo(join(base, rel), rel, path.stat().st_size)

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            to_path(uri).unlink()

    def local_path(self, uri: str) -> Path | None:
        return to_path(uri)

    def canonical(self, uri: str) -> str:
        return str(to_path(uri))

    def content_md5(self, info: ObjectInfo) -> str:
        return file_md5(to_path(info.uri))


register("", LocalBackend())
register("file", LocalBackend())

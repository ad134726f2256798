"""Local files: plain paths and ``file://`` URIs; writes land beside the target, then rename."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from srs_core.errors import DiskFullError, StoreError, StoreNotFound
from srs_core.store.backend import ObjectInfo, register
from srs_core.store.uri import join

log = logging.getLogger(__name__)

# Marks a file being written (see atomic_file); never listed, so never copied half-written.
TMP_MARK = ".srs-tmp-"


def to_path(uri: str) -> Path:
    return Path(urlparse(uri).path) if uri.startswith("file://") else Path(uri)


def missing(path: Path, action: str) -> StoreNotFound:
    return StoreNotFound(f"{action} {path}: no such file")


CACHE_DIR_ENV = "SRS_CACHE_DIR"  # where fetch keeps downloads (default ~/.cache/srs)


def cache_dir() -> Path:
    """``SRS_CACHE_DIR`` (default ``~/.cache/srs``), not created (see ``cache.cache_root``)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "srs")


# Out of space: the disk or the quota is full, or the file passed the file-size limit.
_FULL = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (past the file-size limit, `ulimit -f`, or the file "
                 "system's largest file)",
}


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def _size_text(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def free_space(path: Path) -> str:
    """``"<n> free on <dir>"`` for the nearest existing directory above ``path``."""
    where = Path(os.path.abspath(path))
    while not where.is_dir() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return f"free space of {where} unknown ({exc.strerror})"
    return f"{_size_text(free)} free on {where}"


def disk_full(path: Path, exc: OSError, target: str | None = None) -> DiskFullError:
    """The one-line error of a write of ``path`` (the local file of ``target``, when given)
    that ran out of space."""
    reason = _FULL.get(exc.errno or -1) or exc.strerror or str(exc)
    cache = os.path.abspath(cache_dir())
    in_cache = os.path.commonpath([cache, os.path.abspath(path)]) == cache
    if target is not None and target != str(path):
        what = f"write {target}: {reason} for its local copy {path}"
    else:
        what = f"write {path}: {reason}"
    advice = (f"free some space there or set {CACHE_DIR_ENV} to a larger disk" if in_cache
              else "free some space or choose another output location")
    return DiskFullError(f"{what} ({free_space(path)}); the previous version, if any, is "
                         f"unchanged; {advice}")


class WriteGuard:
    """A writable file that remembers the first out-of-space failure of its writes.

    Some writers hide it: ``torch.save`` turns a failed write into ``RuntimeError: [enforce
    fail at inline_container.cc] unexpected pos``. :func:`disk_full_errors` reads it back. A
    short write (fewer bytes written than given) counts as out of space too.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.failure: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            written = self._handle.write(data)
        except OSError as exc:
            if is_disk_full(exc) and self.failure is None:
                self.failure = exc
            raise
        expected = memoryview(data).nbytes
        if written is not None and written < expected:
            self.failure = OSError(errno.ENOSPC, f"short write ({written} of {expected} bytes "
                                                 "written): no space left on device")
            raise self.failure
        return expected if written is None else written

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as exc:
            if is_disk_full(exc) and self.failure is None:
                self.failure = exc
            raise

    def check(self) -> None:
        """Raise the failure a writer swallowed: the file is then incomplete."""
        if self.failure is not None:
            raise self.failure

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._handle)


@contextlib.contextmanager
def disk_full_errors(path: Path, target: str | None = None,
                     guard: WriteGuard | None = None) -> Iterator[None]:
    """Turn running out of space while writing ``path`` into a :class:`DiskFullError`: an
    out-of-space ``OSError`` raised in the block, or any error raised after ``guard`` saw one
    (a write failure that the writer turned into another error)."""
    try:
        yield
        if guard is not None:
            guard.check()
    except DiskFullError:
        raise
    except Exception as exc:
        failure = guard.failure if guard is not None else None
        if failure is None and is_disk_full(exc):
            failure = exc
        if failure is None:
            raise
        raise disk_full(path, failure, target) from None


@contextlib.contextmanager
def atomic_file(path: Path, target: str | None = None) -> Iterator[IO[bytes]]:
    """Write ``path`` through a temporary file beside it, renamed into place when complete.

    On any failure the temporary file is removed and ``path`` keeps its previous content;
    running out of space is a :class:`DiskFullError` naming ``path`` (or ``target``, the object
    it is the local copy of) and the free space.
    """
    with disk_full_errors(path, target):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    handle = os.fdopen(fd, "wb")
    guard = WriteGuard(handle)
    try:
        # outside the handle: closing it flushes its buffer, which may fail the same way
        with disk_full_errors(path, target, guard):
            with handle:
                yield guard  # type: ignore[misc]  # a file-like proxy of the handle
                guard.check()
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def reserve(path: Path, size: int | None = None) -> None:
    """Allocate ``path``'s blocks up to ``size`` (default: its length) now, so that writing
    through a memory map of it cannot fault (SIGBUS) when the disk is full: a DiskFullError
    here instead. A file system that cannot preallocate is left as it is."""
    with disk_full_errors(path), open(path, "r+b") as handle:
        length = os.fstat(handle.fileno()).st_size if size is None else size
        if length <= 0 or not hasattr(os, "posix_fallocate"):
            return
        try:
            os.posix_fallocate(handle.fileno(), 0, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
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
        path = self.check_object(uri)
        with atomic_file(path) as handle:
            yield handle

    def upload(self, source: Path, uri: str) -> None:
        with open(source, "rb") as src, atomic_file(to_path(uri)) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def exists(self, uri: str) -> bool:
        return to_path(uri).exists()

    def check_object(self, uri: str) -> Path:
        """``uri``'s path, when it can be written as a file; StoreError if it is a directory."""
        path = to_path(uri)
        if path.is_dir():
            raise StoreError(f"write {path}: is a directory, expected a file")
        return path

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

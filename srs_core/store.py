"""One small object-store API over URIs: ``s3://bucket/key`` (MinIO/S3) and local paths.

Every step of the workflow reads and writes through these functions, so the same code runs
against a local directory, MinIO in a cluster, or any S3-protocol server.

S3 settings come from the environment (in a cluster, from a Kubernetes Secret):

``SRS_S3_ENDPOINT``    ``host:port`` or ``http(s)://host:port`` of the server
``SRS_S3_ACCESS_KEY``  access key
``SRS_S3_SECRET_KEY``  secret key (never logged or put in an error message)
``SRS_S3_SECURE``      ``true``/``false``: TLS (default: true, or what the endpoint's scheme says)
``SRS_S3_REGION``      optional region
``SRS_S3_RETRIES``     attempts on transient network errors (default 5, exponential backoff)
``SRS_CACHE_DIR``      where :func:`fetch` keeps downloaded objects (default ``~/.cache/srs``)

Writes are atomic: local files are written beside their target and renamed into place; S3
objects are uploaded from a finished local file in one PUT (or a multipart upload that only
becomes visible when completed), so a reader never sees a partial object.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import urlparse

from srs_core.errors import StoreAuthError, StoreError, StoreNotFound

log = logging.getLogger(__name__)

_TMP_MARK = ".srs-tmp-"
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "ResourceNotFound", "NoSuchObject"}


@dataclass(frozen=True)
class ObjectInfo:
    """One object under a listed prefix; ``relpath`` uses ``/`` separators."""

    uri: str
    relpath: str
    size: int


@dataclass
class CopyReport:
    copied: int = 0
    skipped: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class _S3:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _parse(uri: str | os.PathLike) -> _S3 | Path:
    text = os.fspath(uri)
    if text.startswith("s3://"):
        parsed = urlparse(text)
        if not parsed.netloc:
            raise StoreError(f"{text}: an s3 URI needs a bucket (s3://bucket/key)")
        return _S3(parsed.netloc, parsed.path.lstrip("/"))
    if text.startswith("file://"):
        return Path(urlparse(text).path)
    if "://" in text:
        raise StoreError(f"{text}: unsupported URI scheme (use s3://, file:// or a path)")
    return Path(text)


def is_s3(uri: str | os.PathLike) -> bool:
    return os.fspath(uri).startswith("s3://")


def _check_relative(part: str, base: str) -> str:
    pure = PurePosixPath(part.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise StoreError(f"key {part!r} escapes its prefix {base!r} (absolute or '..')")
    return str(pure) if str(pure) != "." else ""


def join(base: str | os.PathLike, *parts: str) -> str:
    """Append relative keys to a URI; keys that are absolute or contain '..' are rejected."""
    base = os.fspath(base)
    clean = [p for p in (_check_relative(part, base) for part in parts) if p]
    if not clean:
        return base
    return base.rstrip("/") + "/" + "/".join(clean)


# ----------------------------------------------------------------------------- S3 client


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise StoreError(f"{name}={value!r}: expected true or false")


def _s3_settings() -> tuple[str, str, str, bool, str | None, int]:
    endpoint = os.environ.get("SRS_S3_ENDPOINT", "")
    if not endpoint:
        raise StoreError("s3:// URI used but SRS_S3_ENDPOINT is not set (host:port of MinIO/S3)")
    secure_default = not endpoint.startswith("http://")
    if "://" in endpoint:
        endpoint = urlparse(endpoint).netloc
    access = os.environ.get("SRS_S3_ACCESS_KEY", "")
    secret = os.environ.get("SRS_S3_SECRET_KEY", "")
    if not access or not secret:
        raise StoreError("SRS_S3_ACCESS_KEY and SRS_S3_SECRET_KEY must both be set for s3:// URIs")
    retries = int(os.environ.get("SRS_S3_RETRIES", "5"))
    secure = _env_bool("SRS_S3_SECURE", secure_default)
    return endpoint, access, secret, secure, os.environ.get("SRS_S3_REGION") or None, retries


@functools.lru_cache(maxsize=8)
def _make_client(endpoint, access, secret, secure, region, retries):
    import urllib3
    from minio import Minio

    # urllib3 retries transient failures (refused/reset connections, 5xx, throttling) with
    # exponential backoff; bounded so that a dead endpoint fails in seconds, not minutes.
    retry = urllib3.Retry(
        total=retries,
        connect=retries,
        read=retries,
        backoff_factor=0.2,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
    )
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=300), maxsize=32, retries=retry
    )
    return Minio(
        endpoint, access_key=access, secret_key=secret, secure=secure, region=region,
        http_client=http,
    )


def _client():
    return _make_client(*_s3_settings())


@contextlib.contextmanager
def _s3_errors(loc: _S3, action: str) -> Iterator[None]:
    """Translate minio/urllib3 failures into StoreErrors that name the object, never the secret."""
    import urllib3
    from minio.error import S3Error

    try:
        yield
    except S3Error as exc:
        if exc.code in _MISSING_CODES:
            what = "bucket" if exc.code == "NoSuchBucket" else "object"
            name = loc.bucket if what == "bucket" else loc.uri
            raise StoreNotFound(f"{action} {loc.uri}: {what} {name!r} does not exist") from None
        if exc.code in _AUTH_CODES:
            raise StoreAuthError(
                f"{action} {loc.uri}: the server refused the credentials ({exc.code}); "
                "check SRS_S3_ACCESS_KEY / SRS_S3_SECRET_KEY"
            ) from None
        raise StoreError(f"{action} {loc.uri}: {exc.code}: {exc.message}") from None
    except urllib3.exceptions.HTTPError as exc:
        endpoint = os.environ.get("SRS_S3_ENDPOINT", "?")
        raise StoreError(
            f"{action} {loc.uri}: cannot reach {endpoint} after retries "
            f"({type(exc).__name__}); check SRS_S3_ENDPOINT and the network"
        ) from None


# ----------------------------------------------------------------------------- local helpers


def _local_missing(path: Path, action: str) -> StoreNotFound:
    return StoreNotFound(f"{action} {path}: no such file")


@contextlib.contextmanager
def _atomic_local_file(path: Path) -> Iterator[IO[bytes]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}", dir=path.parent)
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


# ----------------------------------------------------------------------------- public API


@contextlib.contextmanager
def open_read(uri: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Stream an object's bytes."""
    loc = _parse(uri)
    if isinstance(loc, Path):
        try:
            handle = open(loc, "rb")  # noqa: SIM115 - closed by the context manager below
        except FileNotFoundError:
            raise _local_missing(loc, "read") from None
        except IsADirectoryError:
            raise StoreError(f"read {loc}: is a directory, expected a file") from None
        with handle:
            yield handle
        return
    with _s3_errors(loc, "read"):
        response = _client().get_object(loc.bucket, loc.key)
    try:
        yield response
    finally:
        response.close()
        response.release_conn()


@contextlib.contextmanager
def open_write(uri: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Write an object; it appears only when the block exits without an exception."""
    loc = _parse(uri)
    if isinstance(loc, Path):
        with _atomic_local_file(loc) as handle:
            yield handle
        return
    with tempfile.NamedTemporaryFile(prefix="srs-upload-", dir=cache_root()) as handle:
        yield handle
        handle.flush()
        _upload_s3(Path(handle.name), loc)


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
    loc = _parse(uri)
    if isinstance(loc, Path):
        return loc.exists()
    try:
        size(uri)
    except StoreNotFound:
        return False
    return True


def size(uri: str | os.PathLike) -> int:
    """Size in bytes; StoreNotFound if the object does not exist."""
    loc = _parse(uri)
    if isinstance(loc, Path):
        try:
            return loc.stat().st_size
        except FileNotFoundError:
            raise _local_missing(loc, "stat") from None
    with _s3_errors(loc, "stat"):
        return _client().stat_object(loc.bucket, loc.key).size


def list_objects(prefix_uri: str | os.PathLike, recursive: bool = True) -> Iterator[ObjectInfo]:
    """Objects under a prefix (a directory for local URIs), sorted by relative path."""
    loc = _parse(prefix_uri)
    base = os.fspath(prefix_uri).rstrip("/")
    if isinstance(loc, Path):
        if loc.is_file():
            raise StoreError(f"list {loc}: is a file, expected a directory prefix")
        if not loc.exists():
            return
        pattern = "**/*" if recursive else "*"
        for path in sorted(loc.glob(pattern)):
            if path.is_file() and _TMP_MARK not in path.name:
                rel = path.relative_to(loc).as_posix()
                yield ObjectInfo(join(base, rel), rel, path.stat().st_size)
        return
    prefix = loc.key.rstrip("/") + "/" if loc.key else ""
    with _s3_errors(loc, "list"):
        objects = list(_client().list_objects(loc.bucket, prefix=prefix, recursive=recursive))
    for obj in sorted(objects, key=lambda o: o.object_name):
        if obj.is_dir:
            continue
        rel = obj.object_name[len(prefix):]
        yield ObjectInfo(f"s3://{loc.bucket}/{obj.object_name}", rel, obj.size or 0)


def _upload_s3(path: Path, loc: _S3) -> None:
    with _s3_errors(loc, "write"):
        _client().fput_object(loc.bucket, loc.key, str(path))


def upload(local_path: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy a local file to a URI (atomically)."""
    source = Path(local_path)
    if not source.is_file():
        raise _local_missing(source, "upload")
    loc = _parse(uri)
    if isinstance(loc, Path):
        with open(source, "rb") as src, _atomic_local_file(loc) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return
    _upload_s3(source, loc)


def download(uri: str | os.PathLike, local_path: str | os.PathLike) -> None:
    """Copy an object to a local file (atomically)."""
    target = Path(local_path)
    with open_read(uri) as src, _atomic_local_file(target) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def delete(uri: str | os.PathLike) -> None:
    """Remove an object; a missing object is not an error."""
    loc = _parse(uri)
    if isinstance(loc, Path):
        with contextlib.suppress(FileNotFoundError):
            loc.unlink()
        return
    with _s3_errors(loc, "delete"):
        _client().remove_object(loc.bucket, loc.key)


def local_path(uri: str | os.PathLike) -> Path | None:
    """The local file behind a URI, or None for remote objects."""
    loc = _parse(uri)
    return loc if isinstance(loc, Path) else None


def cache_root() -> Path:
    """Local directory for cached downloads and scratch files (``SRS_CACHE_DIR``)."""
    root = Path(os.environ.get("SRS_CACHE_DIR") or Path.home() / ".cache" / "srs")
    root.mkdir(parents=True, exist_ok=True)
    return root


_fetch_lock = threading.Lock()


def fetch(uri: str | os.PathLike) -> Path:
    """A local file with the object's content: the path itself, or a cached download.

    The cache is keyed by the object's URI and validated by its ETag, so a changed object is
    downloaded again.
    """
    loc = _parse(uri)
    if isinstance(loc, Path):
        if not loc.is_file():
            raise _local_missing(loc, "fetch")
        return loc
    with _s3_errors(loc, "fetch"):
        etag = _client().stat_object(loc.bucket, loc.key).etag or ""
    digest = hashlib.sha256(loc.uri.encode()).hexdigest()[:16]
    target = cache_root() / "objects" / digest / PurePosixPath(loc.key).name
    marker = target.with_name(target.name + ".etag")
    with _fetch_lock:
        if target.exists() and marker.exists() and marker.read_text() == etag:
            return target
    download(uri, target)
    marker.write_text(etag)
    return target


def fetch_tree(prefix_uri: str | os.PathLike) -> Path:
    """A local directory holding every object under a prefix."""
    loc = _parse(prefix_uri)
    if isinstance(loc, Path):
        if not loc.is_dir():
            raise _local_missing(loc, "fetch")
        return loc
    digest = hashlib.sha256(loc.uri.rstrip("/").encode()).hexdigest()[:16]
    root = cache_root() / "trees" / digest
    report = copy_tree(prefix_uri, root, progress=False)
    if report.copied + report.skipped == 0:
        raise StoreNotFound(f"fetch {loc.uri}: no objects under this prefix")
    return root


def _copy_one(src: str, dst: str) -> None:
    src_path, dst_loc = local_path(src), _parse(dst)
    if src_path is not None:
        upload(src_path, dst)
    elif isinstance(dst_loc, Path):
        download(src, dst_loc)
    else:
        with open_read(src) as reader, open_write(dst) as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)


def copy_tree(
    src_uri: str | os.PathLike,
    dst_uri: str | os.PathLike,
    workers: int = 8,
    progress: bool = True,
) -> CopyReport:
    """Copy every object under ``src_uri`` to ``dst_uri`` in parallel.

    Resumable: an object already at the destination with the same size is skipped, so a re-run
    after an interruption sends only what is missing or incomplete.
    """
    from tqdm import tqdm

    objects = list(list_objects(src_uri))
    if not objects and not exists(src_uri):
        raise StoreNotFound(f"copy {os.fspath(src_uri)}: nothing to copy (no such prefix)")
    existing = {info.relpath: info.size for info in list_objects(dst_uri)}
    todo = [info for info in objects if existing.get(info.relpath) != info.size]
    report = CopyReport(skipped=len(objects) - len(todo))
    bar = tqdm(total=len(todo), unit="obj", desc="copy", disable=not progress or not todo)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_copy_one, info.uri, join(dst_uri, info.relpath)): info
                   for info in todo}
        for future in as_completed(futures):
            future.result()
            report.copied += 1
            report.bytes += futures[future].size
            bar.update(1)
    bar.close()
    log.info("copied %d objects (%d bytes), skipped %d already present",
             report.copied, report.bytes, report.skipped)
    return report

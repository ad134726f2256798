"""One small object-store API over URIs: ``s3://bucket/key`` (MinIO/S3) and local paths.

Every step of the workflow reads and writes through these functions, so the same code runs
against a local directory, MinIO in a cluster, or any S3-protocol server.

S3 settings come from the environment (in a cluster, from a Kubernetes Secret):

``SRS_S3_ENDPOINT``    ``host:port`` or ``http(s)://host:port`` of the server
``SRS_S3_ACCESS_KEY``  access key
``SRS_S3_SECRET_KEY``  secret key (never logged or put in an error message)
``SRS_S3_SECURE``      ``true``/``false``: TLS (default: true, or what the endpoint's scheme says)
``SRS_S3_REGION``      optional region
``SRS_S3_RETRIES``     retries of a request after a transient error (default 5, exponential
                       backoff); one budget per request, and at most about one per command
``SRS_S3_TIMEOUT``     seconds a request may wait on the server (default 60): the read timeout,
                       i.e. the longest silence while awaiting an answer or between two bytes of
                       a transfer, not a limit on a whole transfer; connecting waits at most
                       ``min(10, SRS_S3_TIMEOUT)``. A timed-out attempt is retried, so a server
                       that never answers fails after about ``(retries + 1) * timeout`` seconds.
``SRS_CACHE_DIR``      where :func:`fetch` keeps downloaded objects (default ``~/.cache/srs``)

Writes are atomic: local files are written beside their target and renamed into place; S3
objects are uploaded from a finished local file in one PUT (or a multipart upload that only
becomes visible when completed), so a reader never sees a partial object.

Every S3 failure ends as a :class:`StoreError` that names the object and the endpoint: an
endpoint that does not answer (timeouts), one that answers but is not S3 (a web page, a
proxy's error page), or one that dies. Once one request has spent its retries on an endpoint,
the other requests to it give up at their next failure, so a parallel copy to a dead server
ends within about one retry budget. A read whose connection drops mid-body resumes from the
byte reached (a ranged GET of the same ETag).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, NamedTuple
from urllib.parse import urlparse
from xml.etree.ElementTree import ParseError

import urllib3
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)

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
# MD5 of the content, stored at upload: a multipart object's ETag is not the MD5 of its bytes
_MD5_META = "x-amz-meta-srs-md5"
# Every S3 server (AWS, MinIO, Ceph, moto; GCS's interoperability API) sends headers with
# one of these prefixes, a web page or a proxy's error page does not.
_S3_HEADER_PREFIXES = ("x-amz", "x-minio", "x-goog")


@dataclass(frozen=True)
class ObjectInfo:
    """One object under a listed prefix; ``relpath`` uses ``/`` separators."""

    uri: str
    relpath: str
    size: int
    etag: str | None = None  # S3 only, without quotes


@dataclass
class CopyReport:
    copied: int = 0
    skipped: int = 0
    bytes: int = 0
    # source entries never copied: symlinks leading outside the source root, broken or looping
    # symlinks, unreadable directories; one line each, naming the path and why
    problems: list[str] = field(default_factory=list)


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


class _Settings(NamedTuple):
    endpoint: str
    access: str
    secret: str
    secure: bool
    region: str | None
    retries: int
    timeout: float


def _endpoint() -> str:
    """``host:port`` of the configured endpoint ('' if unset); names it in messages."""
    endpoint = os.environ.get("SRS_S3_ENDPOINT", "")
    return urlparse(endpoint).netloc if "://" in endpoint else endpoint


def _env_number(name: str, default: float, parse: Callable[[str], float],
                valid: Callable[[float], bool], expected: str) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise StoreError(f"{name}={text!r}: expected {expected}")
    return value


def _s3_settings() -> _Settings:
    raw = os.environ.get("SRS_S3_ENDPOINT", "")
    if not raw:
        raise StoreError("s3:// URI used but SRS_S3_ENDPOINT is not set (host:port of MinIO/S3)")
    access = os.environ.get("SRS_S3_ACCESS_KEY", "")
    secret = os.environ.get("SRS_S3_SECRET_KEY", "")
    if not access or not secret:
        raise StoreError("SRS_S3_ACCESS_KEY and SRS_S3_SECRET_KEY must both be set for s3:// URIs")
    retries = int(_env_number("SRS_S3_RETRIES", 5, int, lambda v: v >= 0, "a whole number >= 0"))
    timeout = _env_number("SRS_S3_TIMEOUT", 60.0, float, lambda v: 0 < v < math.inf,
                          "a number of seconds > 0")
    secure = _env_bool("SRS_S3_SECURE", not raw.startswith("http://"))
    region = os.environ.get("SRS_S3_REGION") or None
    return _Settings(_endpoint(), access, secret, secure, region, retries, timeout)


# Endpoints on which a request has spent its whole retry budget and that no request has
# reached since: the circuit breaker of _Retry (set operations are atomic under the GIL).
_down: set[str] = set()


class _Retry(urllib3.Retry):
    """urllib3's retries with exponential backoff, plus a circuit breaker per endpoint.

    Without the breaker, each of N parallel or queued requests to a dead server would spend
    its own budget; with it, once one request has spent its budget the others give up at
    their next failure, and the first request that succeeds closes the breaker (_s3_errors).
    """

    endpoint = ""

    def new(self, **kw: Any) -> _Retry:
        retry = super().new(**kw)  # urllib3 copies the policy at every attempt
        retry.endpoint = self.endpoint
        return retry

    def increment(self, method: str | None = None, url: str | None = None,
                  response: Any = None, error: Exception | None = None, _pool: Any = None,
                  _stacktrace: Any = None) -> _Retry:
        if self.endpoint in _down:
            raise MaxRetryError(_pool, url, error or ResponseError(f"{self.endpoint} is down"))
        try:
            return super().increment(method, url, response, error, _pool, _stacktrace)
        except MaxRetryError:
            _down.add(self.endpoint)
            raise


def _retry_policy(settings: _Settings) -> _Retry:
    """The one retry/backoff policy: every request, and resumed reads (_ResumingReader)."""
    # Transient failures (refused/reset connections, timeouts, 5xx, throttling) are retried
    # with exponential backoff; bounded so that a dead endpoint fails in seconds, not minutes.
    retry = _Retry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        backoff_factor=0.2,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
    )
    retry.endpoint = settings.endpoint
    return retry


class _NotS3(Exception):
    """An answer that no S3 server gives; _s3_errors turns it into a StoreError."""


class _S3Pool(urllib3.PoolManager):
    """Refuses web pages before minio tries to parse them as S3 XML or returns them as data.

    An endpoint that is a web console, a login portal or a proxy answering with its own error
    page sends HTML without any S3 header; an HTML *object* on S3 comes with S3 headers.
    """

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
        response = super().urlopen(method, url, redirect=redirect, **kw)
        kind = response.headers.get("Content-Type", "")
        if "html" not in kind.lower() or any(
            name.lower().startswith(_S3_HEADER_PREFIXES) for name in response.headers
        ):
            return response
        body = response.data if kw.get("preload_content", True) else response.read(4096)
        response.close()
        title = re.search(rb"<title[^>]*>(.*?)</title>", body or b"", re.I | re.S)
        name = " ".join(title.group(1).decode("utf-8", "replace").split())[:80] if title else ""
        gateway = (": a proxy's error page, the S3 server behind it may be down"
                   if response.status >= 500 else "")
        raise _NotS3(f"HTTP {response.status} with a web page ({kind}"
                     + (f", title {name!r})" if name else ")") + gateway)


@functools.lru_cache(maxsize=8)
def _make_client(settings: _Settings) -> Any:
    from minio import Minio

    timeout = urllib3.Timeout(connect=min(10.0, settings.timeout), read=settings.timeout)
    http = _S3Pool(timeout=timeout, maxsize=32, retries=_retry_policy(settings))
    return Minio(
        settings.endpoint, access_key=settings.access, secret_key=settings.secret,
        secure=settings.secure, region=settings.region, http_client=http,
    )


def _client() -> Any:
    return _make_client(_s3_settings())


def _network_error(action: str, loc: _S3, exc: urllib3.exceptions.HTTPError) -> StoreError:
    reason = exc.reason if isinstance(exc, MaxRetryError) else exc
    endpoint, settings = _endpoint(), _s3_settings()
    budget = f"retried up to SRS_S3_RETRIES={settings.retries} times"
    # NewConnectionError (refused, no route, DNS) subclasses urllib3's TimeoutError
    if isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
        reason, NewConnectionError
    ):
        return StoreError(
            f"{action} {loc.uri}: {endpoint} did not answer within {settings.timeout:g} s "
            f"({type(reason).__name__}; {budget}); raise SRS_S3_TIMEOUT if the server is only "
            "slow, else check SRS_S3_ENDPOINT and the server"
        )
    what = "lost the connection to" if isinstance(reason, ProtocolError) else "cannot reach"
    return StoreError(
        f"{action} {loc.uri}: {what} {endpoint} ({type(reason).__name__}; {budget}); "
        "check SRS_S3_ENDPOINT, the server and the network"
    )


@contextlib.contextmanager
def _s3_errors(loc: _S3, action: str) -> Iterator[None]:
    """Translate minio/urllib3 failures into StoreErrors that name the object, never the secret."""
    from minio.error import InvalidResponseError, S3Error, ServerError

    not_s3 = (f"{action} {loc.uri}: {_endpoint()} does not answer like an S3 server; check "
              "SRS_S3_ENDPOINT (the S3 API address of MinIO/S3, not a web console or a proxy)")
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
        if exc.code == "PreconditionFailed":  # the If-Match of a resumed read
            raise StoreError(f"{action} {loc.uri}: the object changed while it was being read; "
                             "read it again") from None
        raise StoreError(f"{action} {loc.uri}: {exc.code}: {exc.message}") from None
    except _NotS3 as exc:
        raise StoreError(f"{not_s3}: it answered {exc}") from None
    except InvalidResponseError as exc:
        kind = exc._content_type or "no content type"  # minio keeps these as private fields only
        raise StoreError(f"{not_s3}: it answered HTTP {exc._code} with {kind}") from None
    except ParseError:
        raise StoreError(f"{not_s3}: its answer is not S3's XML") from None
    except ServerError as exc:
        raise StoreError(f"{action} {loc.uri}: {_endpoint()} failed with HTTP "
                         f"{exc.status_code} after retries (SRS_S3_RETRIES)") from None
    except urllib3.exceptions.HTTPError as exc:
        raise _network_error(action, loc, exc) from None
    else:
        _down.discard(_endpoint())  # it answered: close the circuit breaker


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


class _ResumingReader(io.RawIOBase):
    """An S3 object's bytes; a connection that drops mid-body is resumed from the byte reached.

    The resumed GET asks for the same ETag (If-Match), so the bytes joined are of one version
    of the object, and its retries come out of the same SRS_S3_RETRIES budget as a request's.
    """

    def __init__(self, loc: _S3) -> None:
        super().__init__()
        self._loc, self._pos = loc, 0
        self._retry = _retry_policy(_s3_settings())
        self._response = self._get(None)
        self._etag = self._response.headers["ETag"]

    def _get(self, etag: str | None) -> Any:
        with _s3_errors(self._loc, "read"):
            response = _client().get_object(
                self._loc.bucket, self._loc.key, offset=self._pos,
                request_headers={"If-Match": etag} if etag else None,
            )
            ranged = self._pos > 0
            if not response.headers.get("ETag") or (ranged and response.status != 206):
                response.close()  # no ETag, or a ranged GET answered from byte 0
                raise _NotS3(f"HTTP {response.status} to a GET of an object"
                             + (" with a Range header" if ranged else " without an ETag"))
        return response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _s3_errors(self._loc, "read"):
            while True:
                try:
                    # read1 (urllib3 2): what has arrived, so a drop loses no bytes received
                    data = getattr(self._response, "read1", self._response.read)(len(buffer))
                except (ProtocolError, ReadTimeoutError) as exc:
                    # raises MaxRetryError once the budget is spent; _s3_errors reports it
                    self._retry = self._retry.increment("GET", self._loc.uri, error=exc)
                    self._retry.sleep()
                    self._release()
                    log.info("read %s: connection lost at byte %d, resuming (%s)",
                             self._loc.uri, self._pos, type(exc).__name__)
                    self._response = self._get(self._etag)
                    continue
                buffer[: len(data)] = data
                self._pos += len(data)
                return len(data)

    def readall(self) -> bytes:
        # RawIOBase.readall reads 8 KiB at a time; objects here are often large checkpoints
        chunks = []
        while chunk := self.read(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def _release(self) -> None:
        self._response.close()
        self._response.release_conn()

    def close(self) -> None:
        if not self.closed and hasattr(self, "_response"):  # not when the first GET failed
            self._release()
        super().close()


def _stat(loc: _S3, action: str) -> Any:
    with _s3_errors(loc, action):
        info = _client().stat_object(loc.bucket, loc.key)
        if not info.etag:
            raise _NotS3("an object's metadata without an ETag")
    return info


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
    with io.BufferedReader(_ResumingReader(loc), 1 << 20) as reader:
        yield reader


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
    return _stat(loc, "stat").size


def _local_files(root: Path, recursive: bool, problems: list[str]) -> Iterator[tuple[str, Path]]:
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
            elif entry.is_file() and _TMP_MARK not in entry.name:
                yield relpath, path

    yield from visit(root, "", (real_root,))


def list_objects(prefix_uri: str | os.PathLike, recursive: bool = True) -> Iterator[ObjectInfo]:
    """Objects under a prefix (a directory for local URIs), sorted by relative path.

    Locally, symlinks leading outside the directory, broken or looping are skipped with a
    warning (see :func:`copy_tree`, which reports them).
    """
    return _list(prefix_uri, recursive, [])


def _list(prefix_uri: str | os.PathLike, recursive: bool,
          problems: list[str]) -> Iterator[ObjectInfo]:
    loc = _parse(prefix_uri)
    base = os.fspath(prefix_uri).rstrip("/")
    if isinstance(loc, Path):
        if loc.is_file():
            raise StoreError(f"list {loc}: is a file, expected a directory prefix")
        if not loc.exists():
            return
        for rel, path in _local_files(loc, recursive, problems):
            yield ObjectInfo(join(base, rel), rel, path.stat().st_size)
        return
    prefix = loc.key.rstrip("/") + "/" if loc.key else ""
    with _s3_errors(loc, "list"):
        objects = list(_client().list_objects(loc.bucket, prefix=prefix, recursive=recursive))
    for obj in sorted(objects, key=lambda o: o.object_name):
        if obj.is_dir:
            continue
        rel = obj.object_name[len(prefix):]
        yield ObjectInfo(f"s3://{loc.bucket}/{obj.object_name}", rel, obj.size or 0, obj.etag)


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _upload_s3(path: Path, loc: _S3) -> None:
    # the MD5 in the metadata lets copy_tree compare content even for multipart objects
    metadata = {_MD5_META: _file_md5(path)}
    with _s3_errors(loc, "write"):
        result = _client().fput_object(loc.bucket, loc.key, str(path), metadata=metadata)
        if not result.etag:
            raise _NotS3("an upload without an ETag")


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
    etag = _stat(loc, "fetch").etag
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


def _md5(info: ObjectInfo) -> str | None:
    """MD5 of an object's content, or None when the server does not say it."""
    path = local_path(info.uri)
    if path is not None:
        return _file_md5(path)
    # A single-part object's ETag is its MD5 (a multipart one's is "<md5 of md5s>-<parts>").
    # (With SSE-KMS/SSE-C it is neither: the object then only compares unequal and is re-sent.)
    if info.etag and re.fullmatch(r"[0-9a-f]{32}", info.etag):
        return info.etag
    return _stat(_parse(info.uri), "stat").metadata.get(_MD5_META)


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
    from tqdm import tqdm

    problems: list[str] = []
    objects = list(_list(src_uri, True, problems))
    if problems and strict:
        raise StoreError(f"copy {os.fspath(src_uri)}: {len(problems)} source entries cannot be "
                         f"copied (strict): " + "; ".join(problems[:5]))
    if not objects and not problems and not exists(src_uri):
        raise StoreNotFound(f"copy {os.fspath(src_uri)}: nothing to copy (no such prefix)")
    existing = {info.relpath: info for info in list_objects(dst_uri)}
    report = CopyReport(problems=problems)
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
    log.info("copied %d objects (%d bytes), skipped %d already present, %d problems",
             report.copied, report.bytes, report.skipped, len(problems))
    return report

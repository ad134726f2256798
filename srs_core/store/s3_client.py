"""The minio client of the S3 backend: retries, a circuit breaker, and errors that say where.

Every S3 failure ends as a :class:`StoreError` that names the object and the endpoint: an
endpoint that does not answer (timeouts), one that answers but is not S3 (a web page, a
proxy's error page), or one that dies. Once one request has spent its retries on an endpoint,
the other requests to it give up at their next failure, so a parallel copy to a dead server
ends within about one retry budget.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse
from xml.etree.ElementTree import ParseError

import urllib3
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ResponseError

from srs_core.errors import StoreAuthError, StoreError, StoreNotFound
from srs_core.store.s3_config import (
    ACCESS_KEY_ENV,
    ENDPOINT_ENV,
    RETRIES_ENV,
    SECRET_KEY_ENV,
    TIMEOUT_ENV,
    Settings,
    endpoint,
    settings,
)

_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "ResourceNotFound", "NoSuchObject"}
# Every S3 server (AWS, MinIO, Ceph, moto; GCS's interoperability API) sends headers with
# one of these prefixes, a web page or a proxy's error page does not.
_S3_HEADER_PREFIXES = ("x-amz", "x-minio", "x-goog")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse(uri: str | os.PathLike, action: str = "", need_key: bool = False) -> S3Location:
    """Bucket and key of ``s3://bucket/key``; StoreError naming the URI for names no S3 server
    takes (checked here, before any request): a missing or malformed bucket, a key with a
    ``.`` or ``..`` segment, and, with ``need_key`` (an object, not a prefix), no key."""
    from minio.helpers import check_bucket_name

    text = os.fspath(uri)
    where = f"{action} {text}" if action else text
    parsed = urlparse(text)
    if not parsed.netloc:
        raise StoreError(f"{where}: an s3 URI needs a bucket (s3://bucket/key)")
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    try:
        check_bucket_name(bucket)
    except ValueError:
        raise StoreError(f"{where}: {bucket!r} is not a valid bucket name (3 to 63 lowercase "
                         "letters, digits, '.' and '-')") from None
    if {".", ".."} & set(key.split("/")):
        raise StoreError(f"{where}: the key has a '.' or '..' path segment, which S3 servers "
                         "refuse; give the key without it")
    if need_key and (not key or key.endswith("/")):
        raise StoreError(f"{where}: an object URI needs an object key after the bucket "
                         "(s3://bucket/path/name), not a bare bucket or a prefix ending in '/'")
    return S3Location(bucket, key)


# Endpoints on which a request has spent its whole retry budget and that no request has
# reached since: the circuit breaker of _Retry (set operations are atomic under the GIL).
_down: set[str] = set()


class _Retry(urllib3.Retry):
    """urllib3's retries with exponential backoff, plus a circuit breaker per endpoint.

    Without the breaker, each of N parallel or queued requests to a dead server would spend
    its own budget; with it, once one request has spent its budget the others give up at
    their next failure, and the first request that succeeds closes the breaker (errors()).
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


def retry_policy(config: Settings) -> urllib3.Retry:
    """The one retry/backoff policy: every request, and resumed reads (s3.ResumingReader)."""
    # Transient failures (refused/reset connections, timeouts, 5xx, throttling) are retried
    # with exponential backoff; bounded so that a dead endpoint fails in seconds, not minutes.
    retry = _Retry(
        total=config.retries,
        connect=config.retries,
        read=config.retries,
        backoff_factor=0.2,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
    )
    retry.endpoint = config.endpoint
    return retry


class NotS3(Exception):
    """An answer that no S3 server gives; errors() turns it into a StoreError."""


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
        raise NotS3(f"HTTP {response.status} with a web page ({kind}"
                    + (f", title {name!r})" if name else ")") + gateway)


@functools.lru_cache(maxsize=8)
def _make_client(config: Settings) -> Any:
    from minio import Minio

    timeout = urllib3.Timeout(connect=min(10.0, config.timeout), read=config.timeout)
    http = _S3Pool(timeout=timeout, maxsize=32, retries=retry_policy(config))
    return Minio(
        config.endpoint, access_key=config.access, secret_key=config.secret,
        secure=config.secure, region=config.region, http_client=http,
    )


def client() -> Any:
    """The minio client of the current settings (one per settings, reused)."""
    return _make_client(settings())


def _network_error(action: str, loc: S3Location, exc: urllib3.exceptions.HTTPError) -> StoreError:
    reason = exc.reason if isinstance(exc, MaxRetryError) else exc
    where, config = endpoint(), settings()
    budget = f"retried up to {RETRIES_ENV}={config.retries} times"
    # NewConnectionError (refused, no route, DNS) subclasses urllib3's TimeoutError
    if isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
        reason, NewConnectionError
    ):
        return StoreError(
            f"{action} {loc.uri}: {where} did not answer within {config.timeout:g} s "
            f"({type(reason).__name__}; {budget}); raise {TIMEOUT_ENV} if the server is only "
            f"slow, else check {ENDPOINT_ENV} and the server"
        )
    what = "lost the connection to" if isinstance(reason, ProtocolError) else "cannot reach"
    return StoreError(
        f"{action} {loc.uri}: {what} {where} ({type(reason).__name__}; {budget}); "
        f"check {ENDPOINT_ENV}, the server and the network"
    )


def _s3_error(exc: Any, loc: S3Location, action: str) -> StoreError:
    """The StoreError of an S3 error answer (minio's S3Error)."""
    if exc.code in _MISSING_CODES:
        what = "bucket" if exc.code == "NoSuchBucket" else "object"
        name = loc.bucket if what == "bucket" else loc.uri
        return StoreNotFound(f"{action} {loc.uri}: {what} {name!r} does not exist")
    if exc.code in _AUTH_CODES:
        return StoreAuthError(
            f"{action} {loc.uri}: the server refused the credentials ({exc.code}); "
            f"check {ACCESS_KEY_ENV} / {SECRET_KEY_ENV}"
        )
    if exc.code == "PreconditionFailed":  # the If-Match of a resumed read
        return StoreError(f"{action} {loc.uri}: the object changed while it was being read; "
                          "read it again")
    return StoreError(f"{action} {loc.uri}: {exc.code}: {exc.message}")


@contextlib.contextmanager
def errors(loc: S3Location, action: str) -> Iterator[None]:
    """Translate minio/urllib3 failures into StoreErrors that name the object, never the secret."""
    from minio.error import InvalidResponseError, S3Error, ServerError

    not_s3 = (f"{action} {loc.uri}: {endpoint()} does not answer like an S3 server; check "
              f"{ENDPOINT_ENV} (the S3 API address of MinIO/S3, not a web console or a proxy)")
    try:
        yield
    except S3Error as exc:
        raise _s3_error(exc, loc, action) from None
    except NotS3 as exc:
        raise StoreError(f"{not_s3}: it answered {exc}") from None
    except InvalidResponseError as exc:
        kind = exc._content_type or "no content type"  # minio keeps these as private fields only
        raise StoreError(f"{not_s3}: it answered HTTP {exc._code} with {kind}") from None
    except ParseError:
        raise StoreError(f"{not_s3}: its answer is not S3's XML") from None
    except ServerError as exc:
        raise StoreError(f"{action} {loc.uri}: {endpoint()} failed with HTTP "
                         f"{exc.status_code} after retries ({RETRIES_ENV})") from None
    except urllib3.exceptions.HTTPError as exc:
        raise _network_error(action, loc, exc) from None
    except ValueError as exc:  # minio's checks of names and arguments, before any request
        raise StoreError(f"{action} {loc.uri}: refused by the S3 client: {exc}") from None
    else:
        _down.discard(endpoint())  # it answered: close the circuit breaker

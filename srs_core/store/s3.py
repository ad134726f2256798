"""``s3://bucket/key`` on MinIO or any S3-protocol server (settings: :mod:`.s3_config`).

Writes upload a finished local file in one PUT (or a multipart upload that only becomes
visible when completed), so a reader never sees a partial object; each upload stores the
content's MD5 in the object's metadata. A read whose connection drops mid-body resumes from
the byte reached (a ranged GET of the same ETag).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from urllib3.exceptions import ProtocolError, ReadTimeoutError

from srs_core.errors import StoreNotFound
from srs_core.store.backend import ObjectInfo, register
from srs_core.store.cache import cache_root
from srs_core.store.local import WriteGuard, disk_full_errors, file_md5
from srs_core.store.s3_client import NotS3, S3Location, client, errors, parse, retry_policy
from srs_core.store.s3_config import settings

log = logging.getLogger(__name__)

# MD5 of the content, stored at upload: a multipart object's ETag is not the MD5 of its bytes
_MD5_META = "x-amz-meta-srs-md5"


class ResumingReader(io.RawIOBase):
    """An S3 object's bytes; a connection that drops mid-body is resumed from the byte reached.

    The resumed GET asks for the same ETag (If-Match), so the bytes joined are of one version
    of the object, and its retries come out of the same SRS_S3_RETRIES budget as a request's.
    """

    def __init__(self, loc: S3Location) -> None:
        super().__init__()
        self._loc, self._pos = loc, 0
        self._retry = retry_policy(settings())
        self._response = self._get(None)
        self._etag = self._response.headers["ETag"]

    def _get(self, etag: str | None) -> Any:
        with errors(self._loc, "read"):
            response = client().get_object(
                self._loc.bucket, self._loc.key, offset=self._pos,
                request_headers={"If-Match": etag} if etag else None,
            )
            ranged = self._pos > 0
            if not response.headers.get("ETag") or (ranged and response.status != 206):
                response.close()  # no ETag, or a ranged GET answered from byte 0
                raise NotS3(f"HTTP {response.status} to a GET of an object"
                            + (" with a Range header" if ranged else " without an ETag"))
        return response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with errors(self._loc, "read"):
            while True:
                try:
                    # read1 (urllib3 2): what has arrived, so a drop loses no bytes received
                    data = getattr(self._response, "read1", self._response.read)(len(buffer))
                except (ProtocolError, ReadTimeoutError) as exc:
                    # raises MaxRetryError once the budget is spent; errors() reports it
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


def _stat(loc: S3Location, action: str) -> Any:
    with errors(loc, action):
        info = client().stat_object(loc.bucket, loc.key)
        if not info.etag:
            raise NotS3("an object's metadata without an ETag")
    return info


def _upload(path: Path, loc: S3Location) -> None:
    # the MD5 in the metadata lets copy_tree compare content even for multipart objects
    metadata = {_MD5_META: file_md5(path)}
    with errors(loc, "write"):
        result = client().fput_object(loc.bucket, loc.key, str(path), metadata=metadata)
        if not result.etag:
            raise NotS3("an upload without an ETag")


class S3Backend:
    """Objects of an S3-protocol server; every call goes through :mod:`.s3_client`."""

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[IO[bytes]]:
        loc = parse(uri, "read", need_key=True)
        with io.BufferedReader(ResumingReader(loc), 1 << 20) as reader:
            yield reader

    @contextlib.contextmanager
    def open_write(self, uri: str) -> Iterator[IO[bytes]]:
        loc = parse(uri, "write", need_key=True)
        root = cache_root()
        # the object is first written to a local file in SRS_CACHE_DIR, which may be full
        with disk_full_errors(root, loc.uri):
            scratch = tempfile.NamedTemporaryFile(prefix="srs-upload-", dir=root)  # noqa: SIM115
        guard = WriteGuard(scratch)
        # outside the file: closing it flushes its buffer, which may fail the same way
        with disk_full_errors(Path(scratch.name), loc.uri, guard), scratch:
            yield guard  # type: ignore[misc]  # a file-like proxy of the handle
            guard.check()
            scratch.flush()
            _upload(Path(scratch.name), loc)

    def upload(self, source: Path, uri: str) -> None:
        _upload(source, parse(uri, "write", need_key=True))

    def exists(self, uri: str) -> bool:
        loc = parse(uri, "stat")
        if not loc.key or loc.key.endswith("/"):
            return False  # a bucket or a prefix, never an object
        try:
            self.stat(uri, "stat")
        except StoreNotFound:
            return False
        return True

    def check_object(self, uri: str) -> None:
        parse(uri, "write", need_key=True)

    def stat(self, uri: str, action: str) -> ObjectInfo:
        loc = parse(uri, action, need_key=True)
        info = _stat(loc, action)
        return ObjectInfo(loc.uri, PurePosixPath(loc.key).name, info.size, info.etag)

    def list(self, prefix_uri: str, recursive: bool,
             problems: list[str]) -> Iterator[ObjectInfo]:
        loc = parse(prefix_uri, "list")
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        with errors(loc, "list"):
            objects = list(client().list_objects(loc.bucket, prefix=prefix, recursive=recursive))
        for obj in sorted(objects, key=lambda o: o.object_name):
            if obj.is_dir:
                continue
            rel = obj.object_name[len(prefix):]
            yield ObjectInfo(f"s3://{loc.bucket}/{obj.object_name}", rel, obj.size or 0, obj.etag)

    def delete(self, uri: str) -> None:
        loc = parse(uri, "delete", need_key=True)
        with errors(loc, "delete"):
            client().remove_object(loc.bucket, loc.key)

    def local_path(self, uri: str) -> None:
        return None

    def canonical(self, uri: str) -> str:
        return parse(uri).uri

    def content_md5(self, info: ObjectInfo) -> str | None:
        # A single-part object's ETag is its MD5 (a multipart one's is "<md5 of md5s>-<parts>").
        # (With SSE-KMS/SSE-C it is neither: the object then only compares unequal and is re-sent.)
        if info.etag and re.fullmatch(r"[0-9a-f]{32}", info.etag):
            return info.etag
        return _stat(parse(info.uri), "stat").metadata.get(_MD5_META)


register("s3", S3Backend())

"""Pure helpers on URIs: the scheme that picks a backend, and joining keys under a prefix."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from srs_core.errors import StoreError


def scheme(uri: str | os.PathLike) -> str:
    """``"s3"`` for ``s3://bucket/key``, ``"file"`` for ``file://...``, ``""`` for a plain path."""
    text = os.fspath(uri)
    return text.split("://", 1)[0] if "://" in text else ""


def is_s3(uri: str | os.PathLike) -> bool:
    return os.fspath(uri).startswith("s3://")


def check_relative(part: str, base: str) -> str:
    """``part`` as a relative ``/`` key ('' for '.'); absolute keys and '..' are refused."""
    pure = PurePosixPath(part.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise StoreError(f"key {part!r} escapes its prefix {base!r} (absolute or '..')")
    return str(pure) if str(pure) != "." else ""


def join(base: str | os.PathLike, *parts: str) -> str:
    """Append relative keys to a URI; keys that are absolute or contain '..' are rejected."""
    base = os.fspath(base)
    clean = [p for p in (check_relative(part, base) for part in parts) if p]
    if not clean:
        return base
    return base.rstrip("/") + "/" + "/".join(clean)

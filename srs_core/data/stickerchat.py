"""StickerChat reader: JSON Lines dialogs and ``npy_stickers`` sets (DESIGN.md section 2).

Layout under a root URI (a local directory or ``s3://bucket/prefix``)::

    release_{train,val,test}.json               one dialog per line
    npy_stickers/<set_id>/emoji_mapping.txt     "<sticker_id>\\t<emoji>" per line, set order
    npy_stickers/<set_id>/<sticker_id>.npy      one image per sticker

Dialogs are streamed line by line, so memory stays bounded for the 320k-line training file,
and a line longer than :data:`srs_core.data.limits.MAX_LINE_BYTES` is skipped unread
(``line_too_long``).
IDs are 64-bit integers: the json module parses integers exactly, and a float, bool or
non-numeric string where an id belongs is a ``bad_id`` problem (a float has already lost
precision). Integer ids written as decimal strings are accepted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from srs_core import store
from srs_core.data import files, limits
from srs_core.data.report import DataProblem, Report
from srs_core.errors import DataError, StoreNotFound

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_INT_TEXT = re.compile(r"-?[0-9]{1,20}")
_ID_RANGE = (-(2**63), 2**64)  # signed or unsigned 64-bit
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Utterance:
    """One context message; ``text`` is kept exactly as in the file (words space-separated)."""

    text: str
    id: int
    from_id: int | None
    reply_to_msg_id: int | None


@dataclass(frozen=True, slots=True)
class Dialog:
    """One line of a release file: the context and the answer sticker; ``line`` is 1-based."""

    line: int
    context: tuple[Utterance, ...]
    sticker_set_id: int
    sticker_id: int
    sticker_alt: str


def utterance_text(utterance: Utterance | str) -> str:
    """The one whitespace rule, for the tokenizer and for sentiment alike: the authors'
    ``text.strip().replace(" ", "")`` -- surrounding whitespace and the word-separating spaces
    go, other whitespace inside (tabs, newlines, U+3000) stays. "" means an empty utterance,
    which is left out of the model's text (no ``[SEP]`` of its own) and not scored."""
    text = utterance if isinstance(utterance, str) else utterance.text
    return text.strip().replace(" ", "")


def dialog_uri(root: str, split: str) -> str:
    """URI of ``release_<split>.json`` under a StickerChat root."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return store.join(root, f"release_{split}.json")


def mapping_uri(root: str, set_id: int) -> str:
    """URI of a set's ``emoji_mapping.txt``."""
    return store.join(root, "npy_stickers", str(set_id), "emoji_mapping.txt")


def sticker_uri(root: str, set_id: int, sticker_id: int) -> str:
    """URI of one sticker's ``.npy`` file."""
    return store.join(root, "npy_stickers", str(set_id), f"{sticker_id}.npy")


# ----------------------------------------------------------------------------- dialogs


class _Bad(Exception):
    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.problem, self.detail = problem, detail


def _as_id(value: Any, name: str, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if type(value) is int:
        number = value
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value):
        number = int(value)
    else:
        raise _Bad("bad_id", f"{name}={value!r} is not an integer id")
    if not _ID_RANGE[0] <= number < _ID_RANGE[1]:
        raise _Bad("bad_id", f"{name}={number} does not fit in 64 bits")
    return number


def _require(record: dict, key: str, where: str) -> Any:
    if key not in record:
        raise _Bad("missing_key", f"no {where}{key!r}")
    return record[key]


def _parse_utterance(item: Any, index: int) -> Utterance:
    name = f"context[{index}]"
    if not isinstance(item, dict):
        raise _Bad("bad_record", f"{name} is {type(item).__name__}, expected an object")
    text = _require(item, "text", f"{name}.")
    if not isinstance(text, str):
        raise _Bad("bad_record", f"{name}.text is {type(text).__name__}, expected a string")
    return Utterance(
        text=text,
        id=_as_id(_require(item, "id", f"{name}."), f"{name}.id"),
        from_id=_as_id(item.get("from_id"), f"{name}.from_id", optional=True),
        reply_to_msg_id=_as_id(
            item.get("reply_to_msg_id"), f"{name}.reply_to_msg_id", optional=True
        ),
    )


def _parse_dialog(record: Any, line: int) -> Dialog:
    """Check and convert one decoded JSON line; raises ``_Bad`` with its problem class."""
    if not isinstance(record, dict):
        raise _Bad("bad_record", f"line is a JSON {type(record).__name__}, expected an object")
    context = _require(record, "context", "")
    current = _require(record, "current", "")
    if not isinstance(context, list):
        raise _Bad("bad_record", "'context' is not a list")
    if not isinstance(current, dict):
        raise _Bad("bad_record", "'current' is not an object")
    utterances = tuple(_parse_utterance(item, i) for i, item in enumerate(context))
    if not any(u.text.strip() for u in utterances):
        raise _Bad("empty_context", f"{len(utterances)} utterance(s), no text")
    alt = current.get("sticker_alt", "")
    return Dialog(
        line=line,
        context=utterances,
        sticker_set_id=_as_id(_require(current, "sticker_set_id", "current."), "sticker_set_id"),
        sticker_id=_as_id(_require(current, "sticker_id", "current."), "sticker_id"),
        sticker_alt=alt if isinstance(alt, str) else str(alt),
    )


@dataclass(frozen=True, slots=True)
class _LongLine:
    """A line over :data:`limits.MAX_LINE_BYTES`: its size and first bytes, never its bytes."""

    size: int
    head: bytes


def _iter_lines(handle: IO[bytes], limit: int) -> Iterator[bytes | _LongLine]:
    """Split a byte stream on newlines, reading fixed-size chunks (works for S3 bodies too).

    A line longer than ``limit`` bytes comes as a :class:`_LongLine`: once the part of it
    read so far passes the limit, the rest is counted and dropped up to its newline, so
    memory stays within ``limit`` plus two chunks whatever the line's length.
    """
    pending = b""
    long_size, long_head = -1, b""  # >= 0: inside a long line, this many bytes of it dropped
    while True:
        block = handle.read(_CHUNK)
        if not block:
            break
        if long_size >= 0:
            end = block.find(b"\n")
            if end < 0:
                long_size += len(block)
                continue
            yield _LongLine(long_size + end, long_head)
            long_size, block = -1, block[end + 1:]
        lines = (pending + block).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line if len(line) <= limit else _LongLine(len(line), line[:64])
        if len(pending) > limit:
            long_size, long_head, pending = len(pending), pending[:64], b""
    if long_size >= 0:
        yield _LongLine(long_size, long_head)
    elif pending:
        yield pending


class _Utf8Check:
    """Undecodable lines are held back until it is clear whether the file is UTF-8.

    A file in another encoding (GBK, Latin-1, ...) fails on every line with non-ASCII text:
    that is one ``not_utf8`` problem of the file, not one per line. Once a line with non-ASCII
    text decodes, or when at the end most lines decoded, the file is UTF-8 and each undecodable
    line is its own problem. Only the first few held-back lines are kept: memory stays bounded.
    """

    def __init__(self, uri: str, report: Report) -> None:
        self.uri, self.report = uri, report
        self.utf8 = False  # a line with non-ASCII text decoded
        self.decoded = self.count = self.first_offset = 0
        self.held: list[tuple[str, str]] = []

    def bad(self, where: str, error: UnicodeDecodeError, line_offset: int) -> None:
        detail = f"invalid byte at column {error.start + 1}"
        if self.utf8:
            self.report.add("not_utf8", where, detail)
            return
        if not self.count:
            self.first_offset = line_offset + error.start
        self.count += 1
        if len(self.held) < self.report.max_locations:
            self.held.append((where, detail))

    def good(self, raw: bytes) -> None:
        self.decoded += 1
        if not self.utf8 and not raw.isascii():
            self._per_line()

    def _per_line(self) -> None:
        self.utf8 = True
        for where, detail in self.held:
            self.report.add("not_utf8", where, detail)
        for _ in range(self.count - len(self.held)):
            self.report.add("not_utf8", self.uri)  # counted; the first locations are listed
        self.held, self.count = [], 0

    def finish(self, head: bytes) -> bool:
        """At the end of the file: report a non-UTF-8 file as one problem (True if so)."""
        if self.utf8 or not self.count:
            return False
        if self.count < self.decoded:  # mostly readable: a few damaged lines
            self._per_line()
            return False
        detail = files.describe_encoding(head, self.first_offset)
        log.warning("%s: %s; %d line(s) skipped", self.uri, detail, self.count)
        self.report.add("not_utf8", self.uri, f"{detail}; {self.count} line(s) skipped",
                        skipped=self.count)
        return True


def _dialog_of(raw: bytes | _LongLine, number: int, where: str, line_offset: int,
               check: _Utf8Check, report: Report) -> Dialog | None:
    """The dialog on one line, or None with the problem counted in ``report``."""
    if isinstance(raw, _LongLine):  # not parsed: a dialog line is a few KB (see limits)
        report.add("line_too_long", where, f"{raw.size} bytes; a line may have at most "
                   f"{limits.MAX_LINE_BYTES} (limits.MAX_LINE_BYTES)")
        return None
    raw = raw.rstrip(b"\r")
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark is not data
    if not raw.strip():
        report.add("blank_line", where, skipped=False)
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        check.bad(where, exc, line_offset)
        return None
    check.good(raw)
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        report.add("bad_json", where, str(exc))
        return None
    try:
        return _parse_dialog(record, number)
    except _Bad as bad:
        report.add(bad.problem, where, bad.detail)
        return None


def _foreign_encoding(uri: str, head: bytes, rest: Iterator[Any], report: Report) -> bool:
    """True, reported as one ``not_utf8`` problem of the file, when its first bytes say
    UTF-16/32: no line of it can be read (``rest``: the lines after the first, counted)."""
    guess = files.describe_encoding(head)
    if not guess:
        return False
    lines = 1 + sum(1 for _ in rest)
    detail = f"{guess}; {lines} line(s) skipped"
    log.warning("%s: %s", uri, detail)
    report.add("not_utf8", uri, detail, skipped=lines)
    return True


def iter_dialogs(
    root: str,
    split: str,
    report: Report | None = None,
    strict: bool = False,
    limit: int = 0,
) -> Iterator[Dialog]:
    """Stream the dialogs of one split; bad lines are skipped and counted in ``report``.

    With ``strict`` (or a strict report) the first bad line raises :class:`DataProblem`.
    Without a report, skips are logged as a warning at the end. ``limit`` > 0 stops after
    that many dialogs. A file that cannot be read, is not UTF-8 or holds no usable dialog is
    one problem of the file (``unreadable_file``, ``not_utf8``, ``empty_input``), logged too.
    """
    uri = dialog_uri(root, split)
    own_report = report is None
    report = Report(strict=strict) if report is None else report
    if strict:
        report.strict = True
    produced = lines = 0
    try:
        with contextlib.ExitStack() as stack:
            try:
                handle = stack.enter_context(files.open_data(root, uri))
            except StoreNotFound:
                raise DataError(
                    f"{uri}: dialog file not found; is {root!r} a StickerChat root?") from None
            except DataProblem as problem:  # a directory, a broken symlink, outside the root
                log.warning("%s", problem)
                report.add_error(problem, skipped=False)
                return
            check, offset, head = _Utf8Check(uri, report), 0, b""
            numbered = enumerate(_iter_lines(handle, limits.MAX_LINE_BYTES), start=1)
            for number, raw in numbered:
                long = raw if isinstance(raw, _LongLine) else None
                size = long.size if long else len(raw)
                lines, line_offset, offset = number, offset, offset + size + 1
                where = f"{uri}:{number}"
                if number == 1:
                    head = long.head if long else raw[:64]
                    if _foreign_encoding(uri, head, numbered, report):
                        return
                dialog = _dialog_of(raw, number, where, line_offset, check, report)
                if dialog is None:
                    continue
                yield dialog
                produced += 1
                if limit and produced >= limit:
                    return
            if not check.finish(head) and not produced:
                detail = (f"none of its {lines} line(s) is a usable dialog" if lines
                          else "the file is empty")
                log.warning("%s: no usable dialog: %s", uri, detail)
                report.add("empty_input", uri, detail, skipped=False)
    finally:
        if own_report and report.counts:
            log.warning("%s: skipped %d line(s): %s", uri, report.skipped, dict(report.counts))
